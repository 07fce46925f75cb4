"""loopy's own Task: a coroutine, driven one step at a time by the loop.

A coroutine cannot run by itself.  Something has to call ``coro.send(None)``
to run it up to its next suspension point, and call again once whatever it
waits for is ready.  A Task is that something.  It is also a Future
(``futures.py``) whose result is the coroutine's return value, so other
coroutines can await it.

One step
--------
The loop runs :meth:`Task._step` as an ordinary callback.  A step resumes
the coroutine once -- ``coro.send(None)``, or ``coro.throw(exc)`` to deliver
an error or a cancellation -- and the coroutine runs until it finishes or
yields.  What comes out decides what happens next:

* ``StopIteration(value)``: the coroutine returned; ``value`` is the result.
* ``CancelledError``: the coroutine let a cancellation through; the task
  is cancelled.
* any other exception: it becomes the task's exception.
* a future (``_asyncio_future_blocking`` is true): the coroutine awaits it.
  The task adds :meth:`Task._wakeup` as the future's done callback, and the
  step ends.  Nothing runs this task again until that future is done.
* ``None``, a bare ``yield`` (what ``asyncio.sleep(0)`` does): the coroutine
  only lets others run.  The next step goes to the back of the ready queue.
* anything else is a bug in the coroutine: the next step throws a
  RuntimeError into it.

A whole coroutine thus runs as a chain of callbacks, one per step, and
between two steps the loop is free to run other tasks and watch sockets.

Cancellation
------------
Nothing can stop a coroutine from outside; ``cancel()`` only asks.  If the
task waits for a future, it cancels that future, which wakes the task with
a ``CancelledError`` raised at the ``await``.  Otherwise (a step is already
scheduled) it sets ``_must_cancel``, and the next step throws
``CancelledError`` instead of sending ``None``.  The coroutine may catch it,
clean up, even carry on: the task counts as cancelled only if a
``CancelledError`` comes out of the coroutine.  ``cancelling()`` counts the
requests and ``uncancel()`` takes one back; ``asyncio.timeout`` and
``TaskGroup`` use the count to tell their own cancellations from others'.

Being seen by asyncio
---------------------
``asyncio.current_task()`` and ``asyncio.all_tasks()`` read asyncio's own
registries.  A task joins them with ``asyncio.tasks._register_task`` and
marks each step with ``_enter_task``/``_leave_task``: the hooks asyncio keeps
for tasks it did not make.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import sys
import traceback
from collections.abc import Callable, Coroutine, Generator
from types import FrameType
from typing import IO, Any, TypeVar

from . import versions
from .futures import _PENDING, CancelledError, Future, InvalidStateError

__all__ = ["Task"]

_T = TypeVar("_T")

# asyncio's registry hooks, looked up once: they run twice per step.
_register_task: Callable[[Any], None] = asyncio.tasks._register_task
_enter_task: Callable[[Any, Any], None] = asyncio.tasks._enter_task
_leave_task: Callable[[Any, Any], None] = asyncio.tasks._leave_task
_get_loop: Callable[[Any], Any] = asyncio.futures._get_loop  # type: ignore[attr-defined]

_UNCANCEL_CLEARS_MUST_CANCEL = versions.UNCANCEL_CLEARS_MUST_CANCEL

# Default names: Task-1, Task-2, ...
_task_numbers = itertools.count(1)


class Task(Future[_T]):
    """Runs a coroutine on the loop; its result is the coroutine's.

    While the task is pending it is in exactly one of three situations:

    * waiting: ``_fut_waiter`` is a pending future whose done callbacks
      include ``_wakeup``; no step is scheduled.
    * scheduled: a step (or ``_wakeup``) sits in the loop's ready queue;
      ``_fut_waiter`` is None or done.
    * running: inside ``_step``; ``_fut_waiter`` is None.
    """

    # As for Future: isinstance(task, asyncio.Task) holds, type(task) is the truth.
    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return asyncio.Task

    __slots__ = (
        "_context",
        "_coro",
        "_fut_waiter",
        "_log_destroy_pending",
        "_must_cancel",
        "_name",
        "_num_cancels_requested",
    )

    def __init__(
        self,
        coro: Coroutine[Any, Any, _T] | Generator[Any, None, _T],
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        name: object = None,
        context: contextvars.Context | None = None,
        eager_start: bool = False,
    ) -> None:
        # Report "destroyed but pending" only for a task that was fully made.
        self._log_destroy_pending = False
        super().__init__(loop=loop)
        if not asyncio.iscoroutine(coro):
            raise TypeError(f"a coroutine was expected, got {coro!r}")
        self._coro = coro
        self._name = f"Task-{next(_task_numbers)}" if name is None else str(name)
        # Every step runs in this context, so context variables set by the
        # coroutine survive from one step to the next.
        self._context = contextvars.copy_context() if context is None else context
        # The future the coroutine awaits; see the class docstring.
        self._fut_waiter: Any = None
        # True: the next step throws CancelledError into the coroutine.
        self._must_cancel = False
        # cancel() calls minus uncancel() calls.
        self._num_cancels_requested = 0
        # run_until_complete and friends set this to False for tasks they own.
        self._log_destroy_pending = True

        _register_task(self)
        if eager_start and self._loop.is_running():
            self._start_eagerly()
        else:
            self._loop.call_soon(self._step, context=self._context)

    def __del__(self) -> None:
        if self._log_destroy_pending and self._state is _PENDING:
            context: dict[str, Any] = {
                "message": "Task was destroyed but it is pending!",
                "task": self,
            }
            if self._source_traceback:
                context["source_traceback"] = self._source_traceback
            self._loop.call_exception_handler(context)
        super().__del__()

    def _repr_info(self) -> list[str]:
        info = super()._repr_info()
        if self._num_cancels_requested and self._state is _PENDING:
            info[0] = "cancelling"
        info.insert(1, f"name={self._name!r}")
        info.insert(2, f"coro=<{_describe_coroutine(self._coro)}>")
        if self._fut_waiter is not None:
            info.insert(3, f"wait_for={self._fut_waiter!r}")
        return info

    # ------------------------------------------------------------------
    # Stepping the coroutine
    # ------------------------------------------------------------------

    def _step(self, exc: BaseException | None = None) -> None:
        """Resume the coroutine once, as the current task (a loop callback)."""
        if self._state is not _PENDING:
            raise InvalidStateError(f"_step(): already done: {self!r}, {exc!r}")
        if self._must_cancel:
            # The cancellation asked for while we were not waiting arrives now.
            self._must_cancel = False
            if not isinstance(exc, CancelledError):
                exc = self._make_cancelled_error()
        self._fut_waiter = None
        _enter_task(self._loop, self)
        try:
            self._send_or_throw(exc)
        finally:
            _leave_task(self._loop, self)
            # An exception the task keeps holds a traceback through this
            # frame; without these locals that is no reference cycle, and the
            # exception (with everything its frames hold) is freed at once
            # instead of waiting for the garbage collector.
            del self, exc

    def _send_or_throw(self, exc: BaseException | None) -> None:
        """Run the coroutine to its next yield, then act on what came out."""
        try:
            yielded = self._coro.send(None) if exc is None else self._coro.throw(exc)
        except StopIteration as stop:
            if self._must_cancel:
                # cancel() came during this very step, too late to be thrown in.
                self._must_cancel = False
                super().cancel(self._cancel_message)
            else:
                super().set_result(stop.value)
        except CancelledError as cancelled:
            self._cancelled_exc = cancelled  # result() re-raises this one
            super().cancel()
        except (KeyboardInterrupt, SystemExit) as error:
            super().set_exception(error)
            raise  # these stop the loop, as they stop any program
        except BaseException as error:
            super().set_exception(error)
        else:
            self._on_yield(yielded)
        finally:
            del self, exc  # no cycle through this frame, as in _step

    def _on_yield(self, yielded: Any) -> None:
        """The coroutine suspended with ``yielded``: arrange the next step."""
        blocking = getattr(yielded, "_asyncio_future_blocking", None)
        if blocking is None:
            if yielded is None:
                self._loop.call_soon(self._step, context=self._context)
            else:
                self._throw_later(RuntimeError(f"Task got bad yield: {yielded!r}"))
        elif _get_loop(yielded) is not self._loop:
            self._throw_later(
                RuntimeError(f"Task {self!r} got Future {yielded!r} attached to a different loop")
            )
        elif not blocking:
            # `yield future` instead of `await future`: the flag was not set.
            self._throw_later(
                RuntimeError(
                    f"yield was used instead of yield from in task {self!r} with {yielded!r}"
                )
            )
        elif yielded is self:
            self._throw_later(RuntimeError(f"Task cannot await on itself: {self!r}"))
        else:
            self._wait_for(yielded)

    def _wait_for(self, future: Any) -> None:
        """Sleep until ``future`` is done: it will call ``_wakeup``."""
        future._asyncio_future_blocking = False
        future.add_done_callback(self._wakeup, context=self._context)
        self._fut_waiter = future
        # cancel() came during this step: pass it on to what we now wait for.
        if self._must_cancel and future.cancel(msg=self._cancel_message):
            self._must_cancel = False

    def _throw_later(self, error: BaseException) -> None:
        """Schedule a step that throws ``error`` into the coroutine."""
        self._loop.call_soon(self._step, error, context=self._context)

    def _wakeup(self, future: Any) -> None:
        """Done callback of the awaited future: resume the coroutine."""
        try:
            future.result()
        except BaseException as error:
            # Includes CancelledError: cancelling the future cancels the await.
            self._step(error)
        else:
            # No need to pass the result: the coroutine's __await__ reads it.
            self._step()
        finally:
            del self, future  # no cycle through this frame, as in _step

    def _start_eagerly(self) -> None:
        """Run the first step now, inside the caller (Python 3.12's eager tasks).

        The task that called create_task() is still the current task, so it
        steps aside while this one runs, and is current again afterwards.
        """
        caller = asyncio.current_task(self._loop)
        if caller is not None:
            _leave_task(self._loop, caller)
        _enter_task(self._loop, self)
        try:
            self._context.run(self._send_or_throw, None)
        finally:
            _leave_task(self._loop, self)
            if caller is not None:
                _enter_task(self._loop, caller)

    # ------------------------------------------------------------------
    # Cancellation
    # ------------------------------------------------------------------

    def cancel(self, msg: Any = None) -> bool:
        """Ask the coroutine to stop: throw CancelledError into it at its next step.

        True if the request was made, False if the task is already done.
        """
        # Cancelling counts as looking at the outcome (as in asyncio).
        self._log_traceback = False
        if self._state is not _PENDING:
            return False
        self._num_cancels_requested += 1
        # Cancelling the awaited future wakes us with its CancelledError.
        # _fut_waiter stays: if it is a task that refuses, it may be cancelled again.
        if self._fut_waiter is not None and self._fut_waiter.cancel(msg=msg):
            return True
        self._must_cancel = True
        self._cancel_message = msg
        return True

    def cancelling(self) -> int:
        """How many cancellation requests are outstanding."""
        return self._num_cancels_requested

    def uncancel(self) -> int:
        """Take back one cancellation request; return how many remain."""
        if self._num_cancels_requested > 0:
            self._num_cancels_requested -= 1
            if _UNCANCEL_CLEARS_MUST_CANCEL and self._num_cancels_requested == 0:
                self._must_cancel = False
        return self._num_cancels_requested

    # ------------------------------------------------------------------
    # The rest of asyncio.Task's interface
    # ------------------------------------------------------------------

    def set_result(self, result: _T) -> None:
        """Refused (RuntimeError): a task's result is what its coroutine returns."""
        raise RuntimeError("Task does not support set_result operation")

    def set_exception(self, exception: type[BaseException] | BaseException) -> None:
        """Refused (RuntimeError): a task's exception is what its coroutine raises."""
        raise RuntimeError("Task does not support set_exception operation")

    def get_coro(self) -> Coroutine[Any, Any, _T] | Generator[Any, None, _T]:
        """The coroutine this task drives."""
        return self._coro

    def get_context(self) -> contextvars.Context:
        """The :class:`contextvars.Context` every step of the coroutine runs in."""
        return self._context

    def get_name(self) -> str:
        """The task's name: the one given, or ``Task-N``."""
        return self._name

    def set_name(self, value: object) -> None:
        """Rename the task (``str(value)``); shown in its repr and in traces."""
        self._name = str(value)

    def get_stack(self, *, limit: int | None = None) -> list[FrameType]:
        """The coroutine's frames, oldest first.

        Where it is suspended while it runs (one frame: a suspended coroutine
        does not know who will resume it), the traceback if it failed,
        nothing otherwise.  ``limit`` keeps the newest frames of a stack but
        the oldest of a traceback, as the traceback module does.
        """
        frames: list[FrameType] = []
        frame = getattr(self._coro, "cr_frame", None)
        if frame is not None:
            while frame is not None and (limit is None or len(frames) < limit):
                frames.append(frame)
                frame = frame.f_back
            frames.reverse()
            return frames
        tb = self._exception.__traceback__ if self._exception is not None else None
        while tb is not None and (limit is None or len(frames) < limit):
            frames.append(tb.tb_frame)
            tb = tb.tb_next
        return frames

    def print_stack(self, *, limit: int | None = None, file: IO[str] | None = None) -> None:
        """Print :meth:`get_stack` like a traceback (to stderr by default)."""
        out = sys.stderr if file is None else file
        frames = self.get_stack(limit=limit)
        if not frames:
            print(f"No stack for {self!r}", file=out)
        elif self._exception is not None:
            print(f"Traceback for {self!r} (most recent call last):", file=out)
        else:
            print(f"Stack for {self!r} (most recent call last):", file=out)
        summary = traceback.StackSummary.extract((f, f.f_lineno) for f in frames)
        print("".join(summary.format()), end="", file=out)
        if self._exception is not None:
            print("".join(traceback.format_exception_only(self._exception)), end="", file=out)


def _describe_coroutine(coro: Any) -> str:
    """As asyncio shows a coroutine: ``main() running at app.py:12``, or
    ``main() done, defined at app.py:10``."""
    name = getattr(coro, "__qualname__", None) or type(coro).__name__
    code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
    if code is None:
        return f"{name}()"
    frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
    if frame is None:
        return f"{name}() done, defined at {code.co_filename}:{code.co_firstlineno}"
    return f"{name}() running at {code.co_filename}:{frame.f_lineno}"
