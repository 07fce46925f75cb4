"""Solutions to the exercises of chapter 2, "One iteration of the loop" (docs/tour.md).

Exercise 2.1: :func:`call_every` -- a repeating timer that keeps its cadence.
Exercise 2.2: :class:`CountingSelector` and :func:`polls_during_chain` -- count
              the ``select()`` calls of a busy chain of callbacks.
Exercise 2.3: :class:`SkippingSelector` -- the skip-the-poll optimisation, for
              asyncio's own loop, from outside it.
"""

from __future__ import annotations

import asyncio
import math
import selectors
from collections.abc import Callable, Mapping
from typing import Any


class Repeater:
    """What :func:`call_every` returns: ``cancel()`` stops the repetition."""

    def __init__(self, loop: Any, interval: float, callback: Callable[..., object], args: Any):
        self._loop = loop
        self._interval = interval
        self._callback = callback
        self._args = args
        self._start = loop.time()
        self._k = 1  # the next run is due at start + k * interval
        self._timer: asyncio.TimerHandle | None = None
        self._schedule()

    def _schedule(self) -> None:
        self._timer = self._loop.call_at(self._start + self._k * self._interval, self._run)

    def _run(self) -> None:
        self._callback(*self._args)
        if self._timer is None:
            return  # the callback cancelled us
        # The next deadline is computed from the start, never from "now":
        # a slow callback or a late wake-up cannot push the grid.  If we are
        # past one or more deadlines, skip them instead of firing in a burst.
        late_by = math.floor((self._loop.time() - self._start) / self._interval)
        self._k = max(self._k + 1, late_by + 1)
        self._schedule()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def call_every(loop: Any, interval: float, callback: Callable[..., object], *args: Any) -> Repeater:
    """Exercise 2.1: call ``callback(*args)`` at start + interval, start + 2 * interval...

    Each deadline is absolute (``call_at``), so the cadence does not drift
    however long the callback takes; a run that was late past the next
    deadlines skips them.
    """
    return Repeater(loop, interval, callback, args)


class CountingSelector(selectors.DefaultSelector):
    """Exercise 2.2: a real selector that counts its ``select()`` calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        self.calls += 1
        return super().select(timeout)


def polls_during_chain(loop: Any, selector: CountingSelector, n: int) -> int:
    """Exercise 2.2: how many times ``loop`` polls ``selector`` while n callbacks chain.

    Each callback schedules the next with ``call_soon``, so every iteration
    has something ready and the loop never waits: the polls are pure cost.
    ``loop`` must have been made with ``selector``.
    """
    finished = loop.create_future()

    def link(i: int) -> None:
        if i == n:
            finished.set_result(None)
        else:
            loop.call_soon(link, i + 1)

    before = selector.calls
    loop.call_soon(link, 0)
    loop.run_until_complete(finished)
    return selector.calls - before


class SkippingSelector(selectors.BaseSelector):
    """Exercise 2.3: wrap a selector; answer a zero-timeout poll with nothing when only
    one descriptor -- the loop's own wake-up socket -- is registered.

    Such a poll could only report that wake-up socket, and the callbacks it
    announces (``call_soon_threadsafe``) are in the ready queue already.  It
    is what loopy's ``Loop._run_once`` does itself.  One caveat, which loopy
    checks and a selector cannot: signals arrive through that same socket,
    so with signal handlers installed a busy loop would see them late.
    """

    def __init__(self, inner: selectors.BaseSelector) -> None:
        self.inner = inner
        self.skipped = 0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and timeout <= 0 and len(self.inner.get_map()) <= 1:
            self.skipped += 1
            return []
        return self.inner.select(timeout)

    # Everything else goes to the wrapped selector unchanged.

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self.inner.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self.inner.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self.inner.modify(fileobj, events, data)

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        return self.inner.get_key(fileobj)

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self.inner.get_map()

    def close(self) -> None:
        self.inner.close()
