"""Fixtures: the same test runs on asyncio's loop and on loopy's, in both task modes."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import ALL_KINDS, LOOPY_KINDS, make_loop


def _closing(loop: Any) -> Iterator[Any]:
    try:
        yield loop
    finally:
        if not loop.is_closed():
            loop.close()
        asyncio.set_event_loop(None)


@pytest.fixture(params=LOOPY_KINDS)
def loop(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A loopy loop, once per task mode."""
    yield from _closing(make_loop(request.param))


@pytest.fixture(params=ALL_KINDS)
def any_loop(request: pytest.FixtureRequest) -> Iterator[Any]:
    """asyncio's loop and loopy's in both task modes: for behaviour they share."""
    yield from _closing(make_loop(request.param))


@pytest.fixture(params=LOOPY_KINDS)
def vloop(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A loopy loop on a virtual clock (``vloop.virtual_clock``)."""
    yield from _closing(make_loop(request.param, virtual=True))


@pytest.fixture(params=ALL_KINDS)
def any_vloop(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Every kind of loop, on a virtual clock."""
    yield from _closing(make_loop(request.param, virtual=True))


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """Two connected non-blocking sockets, closed afterwards (if nobody else did)."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def start() -> Iterator[Any]:
    """``start(*args)``: the seed program running (``test_cli.Loopy``); killed and reaped after."""
    from tests.test_cli import Loopy  # noqa: PLC0415 (its tests' own helper)

    started: list[Loopy] = []

    def _start(*args: str, **kwargs: Any) -> Loopy:
        started.append(Loopy(*args, **kwargs))
        return started[-1]

    yield _start
    for process in started:
        process.close()


@pytest.fixture(autouse=True)
def _trace_files_are_strict_json(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every trace file loopy writes in a test's tmp_path must be strict JSON (RFC 8259).

    NaN or Infinity in a trace broke the viewer's ``JSON.parse`` and
    Perfetto once; this reads every ``*.json`` file that starts the way
    loopy's writer starts one with a parser that refuses them
    (``tests/test_trace_format.py``).  Files a test damages on purpose are
    written by ``json.dumps``, which starts differently.
    """
    if "tmp_path" not in request.fixturenames:
        yield
        return
    # Asked for now, so that it is torn down after this fixture, not before.
    tmp_path = request.getfixturevalue("tmp_path")
    yield
    from tests.test_trace_format import strict_json_loads  # noqa: PLC0415 - only when needed

    for path in sorted(tmp_path.rglob("*.json"))[:100]:
        data = path.read_bytes()
        if data.startswith(b'{"traceEvents":[\n'):
            strict_json_loads(data)
