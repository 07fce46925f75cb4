"""Solutions to the exercises of chapter 3, "Handles: a callback waiting its turn"
(docs/tour.md).

Exercise 3.1: :class:`Debouncer` -- run a callback once, ``delay`` after the last call.
Exercise 3.2: :func:`cancel_a_queued_sibling` -- cancelling a handle that is
              already in this iteration's ready queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


class Debouncer:
    """Exercise 3.1: ``debounced(*args)`` runs ``callback(*args)`` once, ``delay`` after the last.

    Every call cancels the timer of the previous one and starts a new one.
    Cancelling costs nothing here: it only sets the old handle's flag, and
    the loop drops the handle when it reaches the top of the timer heap.
    """

    def __init__(self, loop: Any, delay: float, callback: Callable[..., object]) -> None:
        self._loop = loop
        self._delay = delay
        self._callback = callback
        self.timer: asyncio.TimerHandle | None = None

    def __call__(self, *args: Any) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self._loop.call_later(self._delay, self._fire, args)

    def _fire(self, args: tuple[Any, ...]) -> None:
        self.timer = None
        self._callback(*args)

    def cancel(self) -> None:
        """Drop the pending call, if any."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def cancel_a_queued_sibling(loop: Any) -> list[str]:
    """Exercise 3.2: callbacks ``a`` and ``b`` are queued for the same iteration; ``a``
    cancels ``b``.  Which of them run?  Returns the names of those that ran.

    Only ``a``: the loop looks at a handle's cancelled flag right before
    running it, so a handle cancelled while it waits in the ready queue --
    even one queued for the iteration already under way -- never runs.
    """
    ran: list[str] = []
    handles: dict[str, asyncio.Handle] = {}

    def a() -> None:
        ran.append("a")
        handles["b"].cancel()

    def b() -> None:
        ran.append("b")

    handles["a"] = loop.call_soon(a)
    handles["b"] = loop.call_soon(b)
    loop.call_soon(loop.stop)
    loop.run_forever()  # one iteration: all three were ready when it began
    return ran
