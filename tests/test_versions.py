"""loopy follows the running Python's asyncio: the flags in loopy/versions.py, and eager tasks.

Each flag is checked against what asyncio itself does on the Python running
the tests, not against a version number, so that a flag set for the wrong
version fails here on that version.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import os
import shutil
import socket
import sys
import tempfile
from typing import Any

import pytest

import loopy
from loopy import versions
from tests.helpers import ALL_KINDS, make_loop


def asyncio_loop() -> asyncio.AbstractEventLoop:
    return asyncio.SelectorEventLoop()


def test_the_flags_describe_the_running_asyncio() -> None:
    assert hasattr(asyncio, "eager_task_factory") == versions.EAGER_TASKS
    parameters = inspect.signature(asyncio.SelectorEventLoop.create_unix_server).parameters
    assert (
        "cleanup_socket" in parameters and parameters["cleanup_socket"].default is True
    ) == versions.UNIX_SERVERS_REMOVE_THEIR_SOCKET

    loop = asyncio_loop()
    try:
        handle = loop.call_soon(print, "secret")
        shown = repr(handle)
        handle.cancel()
        assert ("secret" not in shown) == versions.CALLBACK_ARGUMENTS_ONLY_IN_DEBUG

        future = loop.create_future()
        try:
            future.set_exception(StopIteration())
            wrapped = True
        except TypeError:
            wrapped = False
        assert wrapped == versions.WRAP_STOP_ITERATION

        async def uncancel_clears() -> bool:
            """A cancellation requested before the first step, then taken back."""
            task = asyncio.ensure_future(asyncio.sleep(1))
            task.cancel()
            task.uncancel()
            await asyncio.sleep(0)
            cleared = not task.done()  # still sleeping: the cancellation was called off
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return cleared

        assert loop.run_until_complete(uncancel_clears()) == versions.UNCANCEL_CLEARS_MUST_CANCEL

        stream = socket.socket()
        try:
            with pytest.raises(ValueError) as refused:
                loop.run_until_complete(
                    loop.create_datagram_endpoint(asyncio.DatagramProtocol, sock=stream)
                )
        finally:
            stream.close()
        assert str(refused.value).startswith(versions.DATAGRAM_SOCKET_EXPECTED + ", got")

        seen: list[object] = []
        marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="outside")

        def fail() -> None:
            marker.set("inside the callback")
            raise ZeroDivisionError

        loop.set_exception_handler(lambda loop, context: seen.append(marker.get()))
        loop.call_soon(fail, context=contextvars.copy_context())
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert (seen == ["inside the callback"]) == versions.EXCEPTION_HANDLER_IN_CONTEXT
    finally:
        loop.close()


def test_empty_datagrams_and_their_header_bytes_follow_the_running_asyncio() -> None:
    """Both flags against asyncio's own datagram transport, on a socket that cannot send."""
    directory = tempfile.mkdtemp(prefix="loopy")  # (short: Unix socket paths are limited)
    local, remote = os.path.join(directory, "a"), os.path.join(directory, "b")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(remote)  # and never read: the sender's queue fills up
    loop = asyncio_loop()

    async def queued_sizes() -> tuple[int, bool]:
        transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=local, remote_addr=remote, family=socket.AF_UNIX
        )
        for _ in range(10_000):  # until one datagram has to wait
            transport.sendto(b"x" * 100)
            if transport.get_write_buffer_size():
                break
        before = transport.get_write_buffer_size()
        assert before, "the socket never filled up"
        transport.sendto(b"y" * 10)
        grew = transport.get_write_buffer_size() - before
        transport.sendto(b"")
        empty_counted = transport.get_write_buffer_size() - before - grew
        transport.abort()
        return grew, empty_counted > 0

    try:
        grew, empty_queued = loop.run_until_complete(queued_sizes())
    finally:
        loop.close()
        receiver.close()
        shutil.rmtree(directory)
    assert grew == 10 + versions.DATAGRAM_HEADER_SIZE
    # An empty datagram is queued (and so counted) only where it is sent at all.
    assert empty_queued == versions.EMPTY_DATAGRAMS_ARE_SENT


# -- eager tasks (3.12+) ---------------------------------------------------------------


def eager_factory_for(kind: str) -> Any:
    """The eager task factory a program would use with this kind of loop.

    ``asyncio.eager_task_factory`` makes asyncio's own Tasks, whatever the
    loop; loopy's own task mode gets eager loopy Tasks from
    ``asyncio.create_eager_task_factory(loopy.Task)``.
    """
    if kind == "loopy-own":
        return asyncio.create_eager_task_factory(loopy.Task)  # type: ignore[attr-defined]
    return asyncio.eager_task_factory  # type: ignore[attr-defined]


def eager_program(loop: Any, kind: str) -> list[str]:
    log: list[str] = []

    async def child(number: int) -> int:
        current = asyncio.current_task()
        log.append(f"child {number} starts, current is itself: {current is tasks.get(number)}")
        if number % 2:
            await asyncio.sleep(0)
        log.append(f"child {number} ends")
        return number

    tasks: dict[int, asyncio.Task[int]] = {}

    async def main() -> None:
        loop.set_task_factory(eager_factory_for(kind))
        for number in range(4):
            # The first step runs inside create_task, before it returns.
            log.append(f"creating {number}")
            tasks[number] = loop.create_task(child(number), name=f"child {number}")
            log.append(f"created {number}, done: {tasks[number].done()}")
        log.append(f"names: {[task.get_name() for task in tasks.values()]}")
        log.append(f"results: {await asyncio.gather(*tasks.values())}")
        # Built directly, as aiohttp does: one finishes in its first step, one waits.
        done_at_once = asyncio.Task(child(8), loop=loop, eager_start=True)  # type: ignore[call-arg]
        waits = asyncio.Task(child(9), loop=loop, eager_start=True)  # type: ignore[call-arg]
        log.append(f"built directly, done: {done_at_once.done()}, {waits.done()}")
        log.append(f"results: {done_at_once.result()}, {await waits}")
        log.append(f"type of the factory's tasks: {type(tasks[0]).__name__}")
        log.append(f"all tasks: {len(asyncio.all_tasks())}")

    loop.run_until_complete(main())
    return log


@pytest.mark.skipif(not versions.EAGER_TASKS, reason="eager tasks are new in Python 3.12")
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_eager_tasks_run_as_on_asyncio(kind: str) -> None:
    reference = make_loop("asyncio")
    loop = make_loop(kind)
    try:
        assert eager_program(loop, kind) == eager_program(reference, "asyncio")
    finally:
        loop.close()
        reference.close()
    if kind == "loopy-own":
        assert isinstance(loop, loopy.Loop)


@pytest.mark.skipif(not versions.EAGER_TASKS, reason="eager tasks are new in Python 3.12")
def test_own_mode_eager_factory_makes_loopy_tasks() -> None:
    loop = make_loop("loopy-own")
    try:
        loop.set_task_factory(eager_factory_for("loopy-own"))

        async def main() -> type:
            return type(loop.create_task(asyncio.sleep(0)))

        assert loop.run_until_complete(main()) is loopy.Task
    finally:
        loop.close()


@pytest.mark.skipif(versions.EAGER_TASKS, reason="3.11 only: before eager tasks existed")
def test_before_3_12_asyncio_tasks_refuse_eager_start() -> None:
    loop = make_loop("loopy")

    async def body() -> None:
        pass

    coro = body()
    try:
        with pytest.raises(TypeError, match="eager_start"):
            asyncio.Task(coro, loop=loop, eager_start=True)  # type: ignore[call-arg]
    finally:
        coro.close()
        loop.close()
    assert sys.version_info < (3, 12)
