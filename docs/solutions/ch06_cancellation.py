"""Solutions to the exercises of chapter 6, "Cancellation" (docs/tour.md).

Exercise 6.1: :func:`guard` -- a shield of your own.
Exercise 6.2: :class:`Deadline` -- a timeout of your own, with ``cancelling()`` and ``uncancel()``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from types import TracebackType
from typing import Any


def guard(awaitable: Awaitable[Any]) -> asyncio.Future[Any]:
    """Exercise 6.1: a future that follows ``awaitable`` but whose cancellation does not reach it.

    A task awaiting the returned future and cancelled meanwhile cancels only
    that future (``Task.cancel`` cancels what the task waits for); the work
    itself, wrapped in a task of its own, carries on.  When the work ends,
    its outcome is copied over -- unless nobody is listening any more.
    """
    work = asyncio.ensure_future(awaitable)
    follower: asyncio.Future[Any] = work.get_loop().create_future()

    def copy_outcome(finished: asyncio.Future[Any]) -> None:
        if follower.done():
            # The follower was cancelled: nobody will look at this outcome,
            # so look at it here, or a failure would be reported as never retrieved.
            if not finished.cancelled():
                finished.exception()
        elif finished.cancelled():
            follower.cancel()
        elif (error := finished.exception()) is not None:
            follower.set_exception(error)
        else:
            follower.set_result(finished.result())

    work.add_done_callback(copy_outcome)
    return follower


class Deadline:
    """Exercise 6.2: ``async with Deadline(seconds):`` -- TimeoutError if the block runs too long.

    At the deadline a timer cancels the task running the block.  On the way
    out, the block's ``CancelledError`` is turned into ``TimeoutError`` only
    if *our* request is the reason: ``uncancel()`` takes our request back and
    says how many remain.  If someone else cancelled the task too, it stays
    a cancellation, and the task is still cancelled as they asked.
    """

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._task: asyncio.Task[Any] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._requests_before = 0
        self.expired = False

    async def __aenter__(self) -> Deadline:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Deadline must be used inside a task")
        self._task = task
        self._requests_before = task.cancelling()
        self._timer = asyncio.get_running_loop().call_later(self._seconds, self._expire)
        return self

    def _expire(self) -> None:
        assert self._task is not None
        self.expired = True
        self._task.cancel()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._task is not None
        assert self._timer is not None
        self._timer.cancel()
        if not self.expired:
            return
        remaining = self._task.uncancel()
        if exc_type is asyncio.CancelledError and remaining <= self._requests_before:
            raise TimeoutError(f"the block ran longer than {self._seconds} s") from exc
