"""Solutions to the exercises of chapter 15, "Subprocesses" (docs/tour.md).

Exercise 15.1: :class:`Collector` and :func:`run_collecting` -- a child's output,
               errors and exit status through ``loop.subprocess_exec``.
Exercise 15.2: :func:`exit_watcher` -- is this child's exit watched through a
               pidfd or by a waiting thread?
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any


class Collector(asyncio.SubprocessProtocol):
    """Exercise 15.1: collects what the child writes on each pipe; ``finished`` resolves at the end.

    ``finished`` is set in ``connection_lost``, which comes last: after
    ``process_exited`` and after every pipe closed.
    """

    def __init__(self, loop: Any) -> None:
        self.output: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}
        self.events: list[str] = []
        self.transport: Any = None
        self.finished: asyncio.Future[tuple[bytes, bytes, int]] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.events.append("connection_made")

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        assert isinstance(data, bytes)
        self.output[fd] += data

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self.events.append(f"pipe {fd} closed")

    def process_exited(self) -> None:
        self.events.append("process_exited")

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("connection_lost")
        status = self.transport.get_returncode()
        self.finished.set_result((bytes(self.output[1]), bytes(self.output[2]), status))


async def run_collecting(*argv: str) -> tuple[tuple[bytes, bytes, int], list[str]]:
    """Exercise 15.1: run ``argv`` with no stdin; return ``((stdout, stderr, status), events)``."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.subprocess_exec(lambda: Collector(loop), *argv, stdin=None)
    try:
        outcome = await protocol.finished
    finally:
        transport.close()
    return outcome, protocol.events


def exit_watcher(transport: Any) -> str:
    """Exercise 15.2: ``"pidfd"``, ``"thread"`` or ``"exited"`` for a loopy subprocess transport.

    A pidfd is a descriptor the loop watches with ``add_reader``
    (``SubprocessTransport._pidfd`` while the child runs); without one a
    thread named ``loopy-waitpid-<pid>`` blocks in ``waitpid``.
    """
    if getattr(transport, "_pidfd", None) is not None:
        return "pidfd"
    waiting = f"loopy-waitpid-{transport.get_pid()}"
    if any(thread.name == waiting for thread in threading.enumerate()):
        return "thread"
    return "exited"
