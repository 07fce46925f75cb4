"""loopy's own Future: a result that is not there yet.

A future is a box that starts empty and is filled exactly once: with a
result, with an exception, or by being cancelled.  Whoever fills it (a socket
callback, a timer, another task) does not know who is waiting for it.  The
future keeps a list of *done callbacks* instead, and when it is filled it
hands each of them to ``loop.call_soon``.  A callback never runs inside
``set_result()``: the code that completes a future keeps control, and every
callback runs later, from the loop, in the order it was added.

How a coroutine waits for a future (the await protocol)
-------------------------------------------------------
``await fut`` runs the generator ``fut.__await__()``.  If the future is
still pending, the generator sets ``fut._asyncio_future_blocking = True`` and
*yields the future itself*.  That value travels up through every ``await``
in the coroutine to the Task that called ``coro.send()`` (see ``tasks.py``).
The Task sees the flag -- "a future, and it came through ``await``, not a
stray ``yield``" -- clears it, adds its wake-up method as a done callback and
ends its step.  When the future is filled, the wake-up runs, the Task resumes
the coroutine, the generator carries on after its ``yield`` and returns
``fut.result()``: that is the value of the ``await`` expression (or the
exception it raises).

No class is named anywhere in this protocol.  Any object with an
``_asyncio_future_blocking`` attribute, ``get_loop()``, ``add_done_callback()``,
``result()`` and ``cancel()`` can be awaited by any task, which is why
asyncio's C Task can await this Future and loopy's Task can await asyncio's
C Future.

Exceptions nobody looked at
---------------------------
An exception stored in a future that is then forgotten would vanish without
a trace.  So the future remembers whether anyone retrieved it (``result()``,
``exception()``, or cancelling the task), and if not, reports it to the
loop's exception handler when it is garbage-collected, as asyncio does.
"""

from __future__ import annotations

import asyncio
import contextvars
import reprlib
from collections.abc import Callable, Generator
from types import TracebackType
from typing import Any, Generic, TypeVar, cast

from . import versions
from .handles import creation_stack, format_callback

__all__ = ["CancelledError", "Future", "InvalidStateError"]

_T = TypeVar("_T")

CancelledError = asyncio.CancelledError
InvalidStateError = asyncio.InvalidStateError

# The states, spelled as asyncio spells them (debuggers and tools read
# ``_state``).  A future only ever holds one of these three objects, so the
# code compares them with ``is``.
_PENDING = "PENDING"
_CANCELLED = "CANCELLED"
_FINISHED = "FINISHED"

# A StopIteration raised inside a generator (``__await__`` is one) would be
# turned into a RuntimeError there anyway (PEP 479), so asyncio never stores
# one: Python 3.11 and 3.12 refuse it, 3.13 stores a RuntimeError caused by it.
_WRAP_STOP_ITERATION = versions.WRAP_STOP_ITERATION
_STOP_ITERATION_MESSAGE = (
    "StopIteration interacts badly with generators and cannot be raised into a Future"
)


class Future(Generic[_T]):
    """A result that will be set later, and a way to wait for it.

    Not thread-safe: only the loop's thread may touch a future (other
    threads go through ``loop.call_soon_threadsafe``).
    """

    # Slots keep futures small and attribute access fast; ``__weakref__``
    # because asyncio keeps tasks in a WeakSet.  A slot named
    # ``_asyncio_future_blocking`` also makes ``asyncio.isfuture()`` true:
    # it checks that the *class* attribute is not None, and a slot is a
    # descriptor on the class.
    __slots__ = (
        "__weakref__",
        "_asyncio_future_blocking",
        "_callbacks",
        "_cancel_message",
        "_cancelled_exc",
        "_exception",
        "_exception_tb",
        "_log_traceback",
        "_loop",
        "_result",
        "_source_traceback",
        "_state",
    )

    # Libraries that look inside tasks (anyio does) first check
    # ``isinstance(waiter, asyncio.Future)``, and asyncio's Future is a C
    # class this one cannot inherit from without becoming it.  isinstance()
    # also consults ``__class__``, so naming asyncio's class here makes such
    # checks pass; ``type(future)`` still tells the truth.
    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return asyncio.Future

    def __init__(self, *, loop: asyncio.AbstractEventLoop | None = None) -> None:
        # __del__ reads these two, and __del__ runs even if __init__ fails below.
        self._state = _PENDING
        # True while an exception is stored that nobody has retrieved yet.
        self._log_traceback = False

        self._loop = asyncio.events.get_event_loop() if loop is None else loop
        # Invariant: _result is only meaningful when FINISHED and _exception is None.
        self._result: _T | None = None
        self._exception: BaseException | None = None
        # The traceback as it was when set: re-raising the exception from
        # result() would otherwise grow its traceback on every await.
        self._exception_tb: TracebackType | None = None
        # (callback, context) pairs.  Invariant: empty unless PENDING; they
        # move to the loop's ready queue the moment the future is done.
        self._callbacks: list[tuple[Callable[[Any], object], contextvars.Context]] = []
        # The message cancel(msg) was given, for the CancelledError it raises.
        self._cancel_message: Any = None
        # The CancelledError that cancelled a task, re-raised once by result()
        # so that the traceback leads to where the cancellation surfaced.
        self._cancelled_exc: BaseException | None = None
        # Set by __await__ just before it yields the future to a task, which
        # clears it.  Only a future that went through __await__ may be waited on.
        self._asyncio_future_blocking = False
        # In debug mode, where the future was made, for error reports.
        self._source_traceback = creation_stack() if self._loop.get_debug() else None

    def __del__(self) -> None:
        if not self._log_traceback:
            return
        context: dict[str, Any] = {
            "message": f"{type(self).__name__} exception was never retrieved",
            "exception": self._exception,
            "future": self,
        }
        if self._source_traceback:
            context["source_traceback"] = self._source_traceback
        self._loop.call_exception_handler(context)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {' '.join(self._repr_info())}>"

    def _repr_info(self) -> list[str]:
        info = [self._state.lower()]
        if self._state is _FINISHED:
            if self._exception is not None:
                info.append(f"exception={self._exception!r}")
            else:
                info.append(f"result={reprlib.repr(self._result)}")
        if self._callbacks:
            # As asyncio lists them: the first and the last, and how many between.
            shown = [format_callback(fn, (), debug=False) for fn, _ in self._callbacks]
            if len(shown) > 2:
                shown = [shown[0], f"<{len(shown) - 2} more>", shown[-1]]
            info.append(f"cb=[{', '.join(shown)}]")
        if self._source_traceback:
            frame = self._source_traceback[-1]
            info.append(f"created at {frame.filename}:{frame.lineno}")
        return info

    # ------------------------------------------------------------------
    # Looking at the state
    # ------------------------------------------------------------------

    def get_loop(self) -> asyncio.AbstractEventLoop:
        """The loop that runs this future's callbacks."""
        return self._loop

    def done(self) -> bool:
        """True once there is a result, an exception, or a cancellation."""
        return self._state is not _PENDING

    def cancelled(self) -> bool:
        """True if the future was cancelled (a result or an exception is not a cancellation)."""
        return self._state is _CANCELLED

    def result(self) -> _T:
        """The result, or raise: the exception, CancelledError, or InvalidStateError if pending."""
        if self._state is _CANCELLED:
            raise self._make_cancelled_error()
        if self._state is _PENDING:
            raise InvalidStateError("Result is not set.")
        self._log_traceback = False
        error = self._exception
        if error is not None:
            try:
                raise error.with_traceback(self._exception_tb)
            finally:
                # The error's traceback now holds this frame: without its
                # locals (the future holds the error) that is no reference
                # cycle, and the error is freed as soon as nobody holds it.
                del self, error
        return cast(_T, self._result)

    def exception(self) -> BaseException | None:
        """The exception, or None if there is a result.  Counts as retrieving it."""
        if self._state is _CANCELLED:
            raise self._make_cancelled_error()
        if self._state is _PENDING:
            raise InvalidStateError("Exception is not set.")
        self._log_traceback = False
        return self._exception

    def _make_cancelled_error(self) -> BaseException:
        """The CancelledError for result() and exception() of a cancelled future.

        A task saves the CancelledError its coroutine raised, and the first
        caller gets that very exception; everyone else gets a new one that
        carries the cancel message.
        """
        saved = self._cancelled_exc
        if saved is not None:
            self._cancelled_exc = None
            return saved
        if self._cancel_message is None:
            return CancelledError()
        return CancelledError(self._cancel_message)

    # ------------------------------------------------------------------
    # Completing (each of these may happen once, and only once)
    # ------------------------------------------------------------------

    def set_result(self, result: _T) -> None:
        """Complete with ``result`` and schedule the done callbacks; InvalidStateError if done."""
        if self._state is not _PENDING:
            raise InvalidStateError(f"{self._state}: {self!r}")
        self._result = result
        self._state = _FINISHED
        self._schedule_callbacks()

    def set_exception(self, exception: type[BaseException] | BaseException) -> None:
        """Complete with an exception; a class is instantiated first."""
        if self._state is not _PENDING:
            raise InvalidStateError(f"{self._state}: {self!r}")
        if isinstance(exception, type):
            exception = exception()
        if not isinstance(exception, BaseException):
            raise TypeError("invalid exception object")
        if isinstance(exception, StopIteration):
            exception = _replace_stop_iteration(exception)
        self._exception = exception
        self._exception_tb = exception.__traceback__
        self._state = _FINISHED
        self._schedule_callbacks()
        self._log_traceback = True

    def cancel(self, msg: Any = None) -> bool:
        """Cancel the future: True if it was pending, False if it was already done."""
        # Cancelling counts as looking at the outcome (as in asyncio).
        self._log_traceback = False
        if self._state is not _PENDING:
            return False
        self._state = _CANCELLED
        self._cancel_message = msg
        self._schedule_callbacks()
        return True

    # ------------------------------------------------------------------
    # Done callbacks
    # ------------------------------------------------------------------

    def add_done_callback(
        self, fn: Callable[[Any], object], *, context: contextvars.Context | None = None
    ) -> None:
        """Call ``fn(future)`` from the loop once the future is done.

        The callback runs in ``context``; by default in a copy of the context
        current *now*, when the callback is added, not when the future completes.
        """
        if self._state is not _PENDING:
            self._loop.call_soon(fn, self, context=context)
            return
        if context is None:
            context = contextvars.copy_context()
        self._callbacks.append((fn, context))

    def remove_done_callback(self, fn: Callable[[Any], object]) -> int:
        """Forget every registration of ``fn`` (compared with ``==``); return how many."""
        kept = [(f, ctx) for f, ctx in self._callbacks if f != fn]
        removed = len(self._callbacks) - len(kept)
        self._callbacks = kept
        return removed

    def _schedule_callbacks(self) -> None:
        """Hand every done callback to the loop, in the order they were added."""
        callbacks, self._callbacks = self._callbacks, []
        for fn, context in callbacks:
            self._loop.call_soon(fn, self, context=context)

    # ------------------------------------------------------------------
    # The await protocol (described at the top of this module)
    # ------------------------------------------------------------------

    def __await__(self) -> Generator[Any, None, _T]:
        try:
            if self._state is _PENDING:
                self._asyncio_future_blocking = True
                yield self  # to the Task, which resumes us once we are done
                if self._state is _PENDING:
                    # Only a Task that waited for our done callback may resume us.
                    raise RuntimeError("await wasn't used with future")
            return self.result()
        finally:
            # Our error, raised here or thrown in at the yield by the task,
            # holds this frame: no cycle through it, as in result().
            del self

    def __iter__(self) -> Generator[Any, None, _T]:
        """``yield from future``, the pre-``async def`` spelling of ``await``."""
        return self.__await__()


def _replace_stop_iteration(stop: StopIteration) -> BaseException:
    """What set_exception() stores instead of a StopIteration, as asyncio does.

    Python 3.13 and later store a RuntimeError caused by it; earlier versions
    refuse exactly ``StopIteration`` with a TypeError (and let subclasses through).
    """
    if _WRAP_STOP_ITERATION:
        error = RuntimeError(_STOP_ITERATION_MESSAGE)
        error.__cause__ = error.__context__ = stop
        return error
    if type(stop) is StopIteration:
        raise TypeError(_STOP_ITERATION_MESSAGE)
    return stop
