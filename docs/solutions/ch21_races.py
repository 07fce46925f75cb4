"""Solutions to the exercises of chapter 21, "Edges: cancellation races and timers" (docs/tour.md).

Exercise 21.1: :func:`cancel_while_wait_for_finishes` -- 3.11's ``wait_for`` can swallow a
    cancellation.
Exercise 21.2: :func:`swallowed_inside_timeout` -- a swallowed ``CancelledError`` makes a timeout
    pass unnoticed.
Exercise 21.3: :class:`EarlyWaker` and :func:`sleep_at_least` -- timers run up to one clock
    resolution early.
"""

from __future__ import annotations

import asyncio
import selectors
from typing import Any


async def cancel_while_wait_for_finishes() -> list[str]:
    """Exercise 21.1: cancel a task in the iteration in which the work it waits for ends.

    The outer task awaits ``wait_for(inner, 100)``, ``inner`` being a task
    that waits for a gate.  Opening the gate lets ``inner`` finish in the
    next iteration, and this coroutine cancels the outer task right after,
    in that same iteration.  On 3.11, the outer task waits on ``wait_for``'s
    own waiter future, which the cancel cancels; ``wait_for`` then finds
    ``inner`` done and returns its result: the cancellation is lost, and the
    outer task carries on with ``cancelling()`` at 1.  From 3.12 the outer
    task waits on ``inner`` itself (``async with timeout()`` around the
    ``await``), which is done, so the cancel is kept for its next step, and
    ``CancelledError`` arrives.  Returns a log.
    """
    log: list[str] = []
    gate = asyncio.get_running_loop().create_future()

    async def inner() -> str:
        await gate
        return "inner's result"

    async def outer() -> None:
        try:
            log.append(f"wait_for returned {await asyncio.wait_for(work, timeout=100)!r}")
        except asyncio.CancelledError:
            log.append("wait_for raised CancelledError")
            raise
        task = asyncio.current_task()
        assert task is not None
        log.append(f"outer goes on; cancelling() = {task.cancelling()}")

    work = asyncio.ensure_future(inner())
    task = asyncio.ensure_future(outer())
    await asyncio.sleep(0)  # both start: inner waits for the gate, outer inside wait_for
    gate.set_result(None)  # inner's wake-up is queued...
    await asyncio.sleep(0)  # ...and runs before this task's: inner is done
    task.cancel()
    try:
        await task
        log.append("outer finished normally")
    except asyncio.CancelledError:
        log.append("outer cancelled")
    return log


async def swallowed_inside_timeout(swallow: bool) -> list[str]:
    """Exercise 21.2: a block under ``asyncio.timeout(1)`` that catches ``CancelledError``.

    The timeout's expiry is a ``task.cancel()``.  A block that catches the
    ``CancelledError`` and carries on leaves ``Timeout.__aexit__`` nothing
    to turn into ``TimeoutError``: the deadline passes silently and the
    block runs to its end.  Re-raising gives the expected ``TimeoutError``.
    Returns a log, with the loop's time since the start.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    log: list[str] = []
    try:
        async with asyncio.timeout(1):
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                log.append(f"{loop.time() - start:g} block sees CancelledError")
                if not swallow:
                    raise
            await asyncio.sleep(1)
            log.append(f"{loop.time() - start:g} block ran to its end")
    except TimeoutError:
        log.append(f"{loop.time() - start:g} TimeoutError")
    task = asyncio.current_task()
    assert task is not None
    log.append(f"cancelling() = {task.cancelling()}")
    return log


class EarlyWaker(selectors.DefaultSelector):
    """Exercise 21.3: a selector on a virtual clock that wakes ``early`` seconds before its timeout.

    Real ``select()`` calls and clocks are coarse; this one makes the
    rounding visible.  A timer due within the loop's clock resolution of
    "now" is run, so a wake-up slightly early runs the timer slightly early.
    """

    def __init__(self, clock: Any, early: float) -> None:
        super().__init__()
        self.clock = clock
        self.early = early

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = super().select(0)
        if not events and timeout:
            # (A wait no longer than ``early`` is slept in full: time moves on.)
            self.clock.advance(timeout - self.early if timeout > self.early else timeout)
        return events


async def sleep_at_least(delay: float) -> None:
    """Exercise 21.3: sleep ``delay`` seconds by the loop's clock, never less.

    ``asyncio.sleep`` may return up to one clock resolution early; sleep
    again for whatever is left.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + delay
    while (left := deadline - loop.time()) > 0:
        await asyncio.sleep(left)
