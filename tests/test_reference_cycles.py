"""An exception is freed as soon as nobody holds it: no reference cycle keeps it alive.

A traceback holds the frames it passed through, and a frame holds its
locals.  A frame that holds the future (or the list, or the task) that in
turn holds the exception makes a reference cycle: the exception, with every
frame of its traceback and everything those frames hold, then lives until
the garbage collector runs.  asyncio takes care to avoid that (CPython
gh-124858), and libraries check it: after catching an error, the error must
have no referrer but the code that caught it.

Each case catches an error from the loop, lets the loop run a few
iterations, collects garbage and asks ``gc.get_referrers`` from the very
coroutine that caught it: that coroutine holds the error in a local, but
while it runs its frame is not among the objects the collector searches,
so the answer must be ``[]``.  Each
runs on asyncio's loop too (it passes all of them here) and on loopy's in
both task modes.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import struct
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest


async def settle() -> None:
    """Let the loop run a few iterations, then collect garbage."""
    for _ in range(5):
        await asyncio.sleep(0)
    gc.collect()


def run(loop: Any, main: Callable[[], Coroutine[Any, Any, list[Any]]]) -> list[Any]:
    """Run ``main()`` (which returns the referrers it found) on ``loop``, for at most 10 s."""

    async def bounded() -> list[Any]:
        async with asyncio.timeout(10):
            return await main()

    result: list[Any] = loop.run_until_complete(bounded())
    return result


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (a connection gets refused)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)
    yield sock
    sock.close()


def reset(sock: socket.socket) -> None:
    """Close ``sock`` with a RST: its peer's next read or write fails."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# Each case catches the error in its own frame, which holds nothing else
# that could lead back to it, and then asks who else holds it.


def test_refused_connection(any_loop: Any, closed_port: int) -> None:
    # (Not with happy_eyeballs_delay: asyncio.staggered.staggered_race, which
    # both loops use for it, keeps its own cycle on 3.11.7, 3.12.1 and 3.13.0.)
    async def main() -> list[Any]:
        try:
            await any_loop.create_connection(asyncio.Protocol, "127.0.0.1", closed_port)
        except ConnectionRefusedError as exc:
            error = exc
        await settle()
        return gc.get_referrers(error)

    assert run(any_loop, main) == []


def test_refused_stream_connection(any_loop: Any, closed_port: int) -> None:
    async def main() -> list[Any]:
        try:
            await asyncio.open_connection("127.0.0.1", closed_port)
        except ConnectionRefusedError as exc:
            error = exc
        await settle()
        return gc.get_referrers(error)

    assert run(any_loop, main) == []


def test_refused_sock_connect(any_loop: Any, closed_port: int) -> None:
    async def main() -> list[Any]:
        with socket.socket() as sock:
            sock.setblocking(False)
            try:
                await any_loop.sock_connect(sock, ("127.0.0.1", closed_port))
            except ConnectionRefusedError as exc:
                error = exc
        await settle()
        return gc.get_referrers(error)

    assert run(any_loop, main) == []


# asyncio's loop fails the next two on 3.11.7, 3.12.1 and 3.13.0 (its
# callbacks keep the future in their frames): loopy's alone.


def test_sock_recv_on_a_reset_connection(loop: Any, listener: socket.socket) -> None:
    async def main() -> list[Any]:
        with socket.create_connection(listener.getsockname()) as client:
            server, _ = listener.accept()
            client.setblocking(False)
            loop.call_later(0.01, reset, server)  # while sock_recv waits
            try:
                await loop.sock_recv(client, 100)
            except ConnectionResetError as exc:
                error = exc
        await settle()
        return gc.get_referrers(error)

    assert run(loop, main) == []


def test_sock_sendall_on_a_reset_connection(loop: Any, listener: socket.socket) -> None:
    async def main() -> list[Any]:
        with socket.create_connection(listener.getsockname()) as client:
            server, _ = listener.accept()
            client.setblocking(False)
            loop.call_later(0.01, reset, server)
            try:
                # More than the buffers take: sock_sendall has to wait for room.
                await loop.sock_sendall(client, b"x" * 50_000_000)
            except (ConnectionResetError, BrokenPipeError) as exc:
                error = exc
        await settle()
        return gc.get_referrers(error)

    assert run(loop, main) == []


def test_server_on_a_port_in_use(any_loop: Any, listener: socket.socket) -> None:
    async def main() -> list[Any]:
        host, port = listener.getsockname()
        try:
            await any_loop.create_server(asyncio.Protocol, host, port)
        except OSError as exc:
            error = exc
        await settle()
        return gc.get_referrers(error)

    assert run(any_loop, main) == []


async def fail_at_once() -> None:
    raise ValueError("at once")


async def fail_later() -> None:
    await asyncio.sleep(0)
    raise ValueError("later")


@pytest.mark.parametrize("body", [fail_at_once, fail_later])
def test_failed_task(any_loop: Any, body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async def main() -> list[Any]:
        task = any_loop.create_task(body())
        try:
            await task
        except ValueError as exc:
            error = exc
        del task
        await settle()
        return gc.get_referrers(error)

    assert run(any_loop, main) == []


def test_failed_future(any_loop: Any) -> None:
    async def main() -> list[Any]:
        future = any_loop.create_future()
        any_loop.call_soon(future.set_exception, ValueError("future"))
        try:
            await future
        except ValueError as exc:
            error = exc
        del future
        await settle()
        return gc.get_referrers(error)

    assert run(any_loop, main) == []
