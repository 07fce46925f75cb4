"""Test helpers: loops of every kind, and a virtual clock that makes timing exact.

Most loop behaviour is checked on three loops, as uvloop's suite does it:
asyncio's own loop (the reference), loopy with asyncio's C Future/Task (the
default) and loopy with its own pure-Python Future/Task.
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
from collections.abc import Callable
from typing import Any

import pytest

import loopy

#: Loop kinds: asyncio's reference loop, and loopy in each task mode.
ALL_KINDS = ("asyncio", "loopy", "loopy-own")
LOOPY_KINDS = ("loopy", "loopy-own")


class VirtualClock:
    """A clock that only moves when told to (or when the loop would sleep)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class AutoJumpSelector(selectors.DefaultSelector):
    """A real selector that, instead of sleeping, jumps the virtual clock forward.

    It first polls the real descriptors without waiting.  If nothing is
    ready and the loop asked to wait, the clock jumps by the whole timeout:
    time passes instantly, and every timer fires at exactly its deadline.
    Waiting forever with nothing registered would hang a test, so that
    raises instead.
    """

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__()
        self.clock = clock
        self.timeouts: list[float | None] = []

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        self.timeouts.append(timeout)
        events = super().select(0)
        if events or timeout == 0:
            return events
        if timeout is None:
            # Real I/O may still arrive (a thread, another process): wait for it,
            # but not forever.
            events = super().select(5.0)
            if not events:
                raise RuntimeError("the loop would wait forever: nothing is scheduled")
            return events
        self.clock.advance(timeout)
        return []


def make_loop(kind: str, *, virtual: bool = False) -> Any:
    """A new loop of ``kind`` (see ALL_KINDS); with ``virtual``, on a VirtualClock.

    The virtual clock is reachable as ``loop.virtual_clock``.
    """
    clock = VirtualClock() if virtual else None
    selector = AutoJumpSelector(clock) if clock is not None else None
    loop: Any
    if kind == "asyncio":
        loop = asyncio.SelectorEventLoop(selector)
        if clock is not None:
            loop.time = clock  # asyncio always reads its clock through self.time()
    elif kind in LOOPY_KINDS:
        tasks = "asyncio" if kind == "loopy" else "loopy"
        if clock is not None:
            loop = loopy.Loop(selector=selector, clock=clock, tasks=tasks)
        else:
            loop = loopy.Loop(tasks=tasks)
    else:
        raise ValueError(kind)
    loop.virtual_clock = clock
    return loop


# -- running coroutines in tests ------------------------------------------------

#: A safety net only: every wait in the tests ends on an event well before it.
TIMEOUT = 10.0


def run(loop: Any, coro: Any, timeout: float = TIMEOUT) -> Any:
    """Run ``coro`` on ``loop`` to completion, failing after ``timeout`` seconds."""
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


def catch_errors(loop: Any) -> list[dict[str, Any]]:
    """Route the loop's exception handler into a list, and return the list."""
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    return errors


async def iterations(count: int = 5) -> None:
    """Let the loop run ``count`` iterations (each polls the sockets once)."""
    for _ in range(count):
        await asyncio.sleep(0)


def run_until_interrupted(loop: Any, tidy: Callable[[], object]) -> None:
    """Run ``loop`` until a KeyboardInterrupt escapes it (within TIMEOUT).

    ``tidy()`` must then stop whatever raised it, before the loop runs again
    to finish the timer task.
    """
    sleeper = loop.create_task(asyncio.sleep(TIMEOUT))
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(sleeper)
    finally:
        tidy()
        sleeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(sleeper)


def pending_timers(loop: Any) -> list[Any]:
    """A loopy loop's timers, cancelled ones included, earliest first (ties: scheduling order).

    Also checks every invariant of the loop's timer store (see ``TimerStore``
    in ``loopy/timers.py``).
    """
    check_timer_store(loop._timers)
    return list(loop._timers.pending())


def check_timer_store(store: Any) -> None:
    """Assert the invariants written in ``TimerStore``'s docstring."""
    deadlines, by_deadline = store.deadlines, store.by_deadline
    # A heap, holding each key of by_deadline exactly once.
    assert all(
        deadlines[i] <= deadlines[child]
        for i in range(len(deadlines))
        for child in (2 * i + 1, 2 * i + 2)
        if child < len(deadlines)
    )
    assert sorted(deadlines) == sorted(by_deadline)
    assert len(set(deadlines)) == len(deadlines)
    filed = []
    for when, due in by_deadline.items():
        if isinstance(due, list):
            assert len(due) >= 2  # one timer is kept bare, not in a list
            group = due
        else:
            group = [due]
        assert all(handle._when == when for handle in group)
        filed += group
    held = filed + list(store.incoming)
    assert len({id(handle) for handle in held}) == len(held)  # each handle once
    assert store.count == len(held)
    assert store.cancelled == sum(handle.cancelled() for handle in held)
    assert all(handle._scheduled for handle in held)
