"""Solutions to the exercises of chapter 16, "Watching it work" (docs/tour.md).

Exercise 16.1: :class:`PollCounter` -- iterations against ``select()`` calls, by instrument.
Exercise 16.2: :class:`SlowCallbacks` -- name every callback that held the loop too long.
"""

from __future__ import annotations

from typing import Any

from loopy.handles import callback_name


class PollCounter:
    """Exercise 16.1: counts iterations (``iteration_started``) and waits (``wait_started``).

    ``wait_started`` is called right before ``select()``, so a difference
    between the two counts is the polls the loop skipped: in a busy callback
    chain with nothing but the wake-up socket watched, every one of them.
    """

    def __init__(self) -> None:
        self.iterations = 0
        self.polls = 0

    def iteration_started(self, loop: Any) -> None:
        self.iterations += 1

    def wait_started(self, loop: Any, timeout: float | None) -> None:
        self.polls += 1


class SlowCallbacks:
    """Exercise 16.2: records ``(name, seconds)`` of each callback that ran ``threshold`` or more.

    Time is ``loop.time()``: on a virtual clock the figures are exact.  The
    name is taken when the callback starts, because a callback may cancel
    its own handle, which forgets the callback.
    """

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.slow: list[tuple[str, float]] = []
        self._started: tuple[Any, str, float] | None = None

    def callback_started(self, loop: Any, handle: Any) -> None:
        self._started = (handle, callback_name(handle._callback), loop.time())

    def callback_finished(self, loop: Any, handle: Any) -> None:
        if self._started is None or self._started[0] is not handle:
            return  # attached while the callback ran
        _, name, started = self._started
        self._started = None
        took = loop.time() - started
        if took >= self.threshold:
            self.slow.append((name, took))
