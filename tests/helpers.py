"""Test helpers: loops of every kind, and a virtual clock that makes timing exact.

Most loop behaviour is checked on three loops, as uvloop's suite does it:
asyncio's own loop (the reference), loopy with asyncio's C Future/Task (the
default) and loopy with its own pure-Python Future/Task.
"""

from __future__ import annotations

import asyncio
import selectors
from typing import Any

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
