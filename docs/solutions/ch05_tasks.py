"""Solutions to the exercises of chapter 5, "A task drives a coroutine" (docs/tour.md).

Exercise 5.1: :class:`StepCounter` -- count the steps of one task.
Exercise 5.2: :class:`MiniTask` -- a task of your own: ``send``/``throw``, futures
              and bare yields, in about thirty lines.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class StepCounter:
    """Exercise 5.1: an instrument counting the loop callbacks that advance ``task``.

    For loopy's own Task (the ``loopy`` task mode) each step is a handle
    whose callback is a bound method of the task: ``Task._step`` after a bare
    yield or at the start, ``Task._wakeup`` (which calls ``_step`` itself)
    after an awaited future is done.  So a coroutine with three
    ``await asyncio.sleep(0)`` takes four steps.
    """

    def __init__(self, task: Any) -> None:
        self.task = task
        self.steps = 0

    def callback_started(self, loop: Any, handle: Any) -> None:
        if getattr(handle._callback, "__self__", None) is self.task:
            self.steps += 1


class MiniTask:
    """Exercise 5.2: run ``coro`` on ``loop``, one step per callback; ``result`` is a future.

    What it handles, as ``Task._on_yield`` does: the coroutine returns
    (``StopIteration``), raises, yields ``None`` (``asyncio.sleep(0)``: step
    again soon), or yields a future that went through ``__await__`` (its
    ``_asyncio_future_blocking`` flag is set): step again when it is done,
    sending ``None`` or throwing its exception in.

    Not handled: cancellation, and ``asyncio.current_task()``, which does
    not know this class (so ``asyncio.timeout`` would refuse to run in it).
    """

    def __init__(self, loop: Any, coro: Coroutine[Any, Any, Any]) -> None:
        self._loop = loop
        self._coro = coro
        self.result: asyncio.Future[Any] = loop.create_future()
        self.steps = 0
        loop.call_soon(self._step, None)

    def _step(self, error: BaseException | None) -> None:
        self.steps += 1
        try:
            yielded = self._coro.send(None) if error is None else self._coro.throw(error)
        except StopIteration as stop:
            self.result.set_result(stop.value)
            return
        except BaseException as exc:
            self.result.set_exception(exc)
            return
        if yielded is None:
            self._loop.call_soon(self._step, None)
        elif getattr(yielded, "_asyncio_future_blocking", False):
            yielded._asyncio_future_blocking = False  # taken in charge, as Task._wait_for does
            yielded.add_done_callback(self._wake)
        else:
            self._loop.call_soon(self._step, RuntimeError(f"bad yield: {yielded!r}"))

    def _wake(self, future: asyncio.Future[Any]) -> None:
        try:
            future.result()
        except BaseException as exc:
            self._step(exc)
        else:
            self._step(None)  # the coroutine's __await__ reads the result itself
