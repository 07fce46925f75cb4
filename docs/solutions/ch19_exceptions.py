"""Solutions to the exercises of chapter 19, "The three routes of an exception" (docs/tour.md).

Exercise 19.1: :func:`three_routes` -- a callback's, a task's and a protocol's exception, and when
    each is reported.
"""

from __future__ import annotations

import asyncio
import gc
import socket
from typing import Any


def three_routes(loop: Any) -> list[str]:
    """Exercise 19.1: raise the same error three ways and note when the handler hears of it.

    * a callback: reported at once, in the iteration it ran, and the loop
      goes on;
    * a task: stored in the task; reported only when the task is
      garbage-collected with nobody having retrieved it;
    * a protocol's ``data_received``: reported, and the connection is closed
      (``connection_lost`` gets the error).

    Returns a log, in order, of what happened and what the handler received
    (its message's first words and its context's keys besides ``message`` and
    ``exception``).
    """
    log: list[str] = []

    def handler(_loop: Any, context: dict[str, Any]) -> None:
        keys = sorted(set(context) - {"message", "exception"})
        log.append(f"handler: {' '.join(context['message'].split()[:3])} {keys}")

    loop.set_exception_handler(handler)

    # 1. A callback.
    def failing_callback() -> None:
        raise ValueError("callback")

    loop.call_soon(failing_callback)
    loop.call_soon(log.append, "next callback runs")
    loop.run_until_complete(asyncio.sleep(0))

    # 2. A task whose exception nobody retrieves.
    async def failing_task() -> None:
        raise ValueError("task")

    task = loop.create_task(failing_task())
    loop.run_until_complete(asyncio.sleep(0))
    log.append(f"task done: {task.done()}")
    del task
    gc.collect()
    log.append("after gc.collect()")

    # 3. A protocol callback.
    class Failing(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            raise ValueError("protocol")

        def connection_lost(self, exc: Exception | None) -> None:
            log.append(f"connection_lost({type(exc).__name__})")
            lost.set_result(None)

    a, b = socket.socketpair()
    lost = loop.create_future()

    async def connect() -> None:
        await loop.create_connection(Failing, sock=a)
        b.send(b"x")
        await lost

    try:
        loop.run_until_complete(connect())
    finally:
        b.close()
    loop.set_exception_handler(None)
    return log
