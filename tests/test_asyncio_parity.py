"""What a user sees around the results: logs, debug mode, error reports, as asyncio shows them.

Each case runs on asyncio's loop and on loopy's in both task modes and
compares what a user can see: the log records (logger name, level,
message), the keys of the exception handler's context, the exceptions
raised.  Where asyncio changed between versions, the expectation is the
running Python's asyncio, found by running the case on asyncio's loop.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.helpers import ALL_KINDS, make_loop


@pytest.fixture
def records(caplog: pytest.LogCaptureFixture) -> Iterator[list[logging.LogRecord]]:
    """The records of the ``asyncio`` and ``loopy`` loggers, from DEBUG up."""
    caplog.set_level(logging.DEBUG, logger="asyncio")
    caplog.set_level(logging.DEBUG, logger="loopy")
    yield caplog.records


def seen(records: list[logging.LogRecord]) -> list[tuple[str, str, str]]:
    """(logger, level, first line of the message) of each record, addresses masked."""
    return [
        (r.name, r.levelname, _mask(r.getMessage().splitlines()[0]))
        for r in records
        if r.name in ("asyncio", "loopy")
    ]


def _mask(text: str) -> str:
    return re.sub(r"0x[0-9a-f]+", "0x…", text)


def run_briefly(loop: Any, iterations: int = 3) -> None:
    async def settle() -> None:
        for _ in range(iterations):
            await asyncio.sleep(0)

    loop.run_until_complete(settle())


def on_every_loop(case: Callable[[Any], Any], *, virtual: bool = False) -> dict[str, Any]:
    """Run ``case(loop)`` on a new loop of every kind; what each returned, by kind."""
    results = {}
    for kind in ALL_KINDS:
        loop = make_loop(kind, virtual=virtual)
        try:
            results[kind] = case(loop)
        finally:
            loop.close()
            asyncio.set_event_loop(None)
    return results


def assert_all_alike(results: dict[str, Any]) -> Any:
    """Every loop returned what asyncio's did; return that."""
    reference = results["asyncio"]
    for kind, result in results.items():
        assert result == reference, f"{kind} differs from asyncio:\n{result}\n{reference}"
    return reference


# ----------------------------------------------------------------------
# 7. "Task exception was never retrieved", in both task modes
# ----------------------------------------------------------------------


async def _forever() -> None:
    await asyncio.sleep(3600)


async def _fail_at_once() -> None:
    raise ValueError("nobody looks")


def _never_retrieved_reports(loop: Any, issue_program: bool) -> list[str]:
    """Run a program that drops a failed task; the reports once garbage is collected."""
    reports: list[str] = []
    loop.set_exception_handler(lambda _loop, context: reports.append(context["message"]))
    kept: list[Any] = []

    async def gather_it(task: Any) -> None:
        try:
            await asyncio.gather(task)
        except asyncio.CancelledError:
            pass

    def start() -> None:
        # A task cancelled before its first step, which the program keeps.
        cancelled = loop.create_task(_forever())
        cancelled.cancel()
        kept.append(cancelled)
        if issue_program:
            # The program of the issue: a later task awaits gather() of it,
            # and a callback then makes the task that fails.
            loop.create_task(gather_it(cancelled))
            loop.call_soon(lambda: loop.create_task(_fail_at_once()) and None)
        else:
            # Its first step, in the same iteration as the cancelled one's.
            loop.create_task(_fail_at_once())

    loop.call_soon(start)
    # Settle without a task of our own, whose steps would come last in the
    # iterations (the virtual clock makes the wait instant).
    loop.call_later(1, loop.stop)
    loop.run_forever()
    gc.collect()
    return reports


@pytest.mark.parametrize("issue_program", [True, False])
def test_a_dropped_failed_task_is_reported_when_collected(issue_program: bool) -> None:
    # The cancelled task's saved CancelledError holds a traceback through the
    # loop's iteration frame; that frame used to keep the last handle it ran,
    # the failing task's step, and with it the task: never collected, never
    # reported, in loopy's own task mode (on 3.13, in both).
    reports = on_every_loop(
        lambda loop: _never_retrieved_reports(loop, issue_program), virtual=True
    )
    assert assert_all_alike(reports) == ["Task exception was never retrieved"]
