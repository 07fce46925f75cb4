"""Handles: a callback waiting in the loop, and the ticket to cancel it.

Everything the loop ever runs is a :class:`Handle`: ``call_soon`` makes one
and appends it to the ready queue, ``call_later``/``call_at`` make a
:class:`TimerHandle` and hand it to the timer store, and ``add_reader`` keeps one
(an :class:`IOHandle`) per file descriptor that the loop re-queues each time
the descriptor is ready.

A handle is deliberately dumb.  It knows its callback, the callback's
arguments and the :mod:`contextvars` context to run it in, and it can be
cancelled.  Cancelling does not remove it from the queue or heap it sits in
(finding it there would cost a search); the loop simply skips cancelled handles
when it gets to them, and the timer store is compacted when too many of them
pile up (see ``timers.py``).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import os
import reprlib
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from . import versions

if TYPE_CHECKING:
    from .contract import LoopContract


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

# How many frames debug mode records for each handle: enough to find the
# caller, cheap enough to do for every callback.
DEBUG_STACK_DEPTH = 10


def creation_stack() -> traceback.StackSummary:
    """Where the user's code called into loopy, innermost frame last (for debug mode).

    Frames inside the loopy package are skipped, so the last entry is the
    line that called ``call_soon`` (or ``call_later``, ``create_future``...).
    """
    frame: Any = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back
    stack = traceback.StackSummary.extract(
        traceback.walk_stack(frame), limit=DEBUG_STACK_DEPTH, lookup_lines=False
    )
    stack.reverse()
    return stack


def callback_name(callback: Callable[..., object]) -> str:
    """A short, readable name for a callback, for reprs, logs and traces.

    ``functools.partial`` objects are unwrapped and bound methods keep their
    class (``Task.step`` rather than ``step``), which is what a person reading
    a trace wants to see.
    """
    while isinstance(callback, functools.partial):
        callback = callback.func
    name = getattr(callback, "__qualname__", None) or getattr(callback, "__name__", None)
    return name if isinstance(name, str) else repr(callback)


def format_callback(callback: Callable[..., object], args: Sequence[Any], debug: bool) -> str:
    """A callback and its arguments as asyncio's reports show them.

    ``name(arguments) at FILE:LINE``: the arguments shortened by
    :mod:`reprlib` (from Python 3.13, in debug mode only), a partial's own
    arguments first (``f(1)(2)``), and the place of a function's ``def``
    (a method or a builtin has none).
    """
    shown = debug or not versions.CALLBACK_ARGUMENTS_ONLY_IN_DEBUG
    text = _format_arguments(args, {}, shown)
    func: Any = callback
    while isinstance(func, functools.partial):
        text = _format_arguments(func.args, func.keywords, shown) + text
        func = func.func
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
    text = f"{name}{text}"
    unwrapped = inspect.unwrap(func)
    if inspect.isfunction(unwrapped):
        code = unwrapped.__code__
        text += f" at {code.co_filename}:{code.co_firstlineno}"
    return text


def _format_arguments(args: Sequence[Any], keywords: dict[str, Any], shown: bool) -> str:
    if not shown:
        return "()"
    items = [reprlib.repr(arg) for arg in args]
    items += [f"{key}={reprlib.repr(value)}" for key, value in keywords.items()]
    return f"({', '.join(items)})"


def check_callable(callback: object, method: str) -> None:
    """Refuse what asyncio refuses as a callback: a coroutine (function), or no callable.

    A coroutine function called as a callback would only make a coroutine
    that nobody awaits.  The loop checks where asyncio does, in debug mode:
    ``call_soon``, ``call_at``, ``call_soon_threadsafe``, ``run_in_executor``.
    """
    if asyncio.iscoroutine(callback) or asyncio.iscoroutinefunction(callback):
        raise TypeError(f"coroutines cannot be used with {method}()")
    if not callable(callback):
        raise TypeError(f"a callable object was expected by {method}(), got {callback!r}")


class Handle(asyncio.Handle):
    """A callback, its arguments and its context, scheduled on a loop.

    Invariant: once ``_cancelled`` is true, the callback is never called;
    the loop checks the flag right before running the handle.

    It subclasses :class:`asyncio.Handle` only so that code checking
    ``isinstance(h, asyncio.Handle)`` (and type checkers) accept it; every
    method is our own, and the slots (``_callback``, ``_args``, ``_context``,
    ``_loop``, ``_cancelled``, ``_source_traceback``, ``_repr``) come from
    that base class.  Its repr is asyncio's, since users read it in logs:
    ``<Handle cb(args) at FILE:LINE created at FILE:LINE>``.
    """

    __slots__ = ()

    def __init__(
        self,
        callback: Callable[..., object],
        args: tuple[Any, ...],
        loop: LoopContract,
        context: contextvars.Context | None = None,
    ) -> None:
        self._callback: Callable[..., object] | None = callback
        self._args = args
        self._context = context if context is not None else contextvars.copy_context()
        self._loop = loop
        self._cancelled = False
        # In debug mode, where the handle was made, for error reports.
        self._source_traceback = creation_stack() if loop._debug else None

    def cancel(self) -> None:
        """Make sure the callback never runs.  Cancelling twice is harmless."""
        if not self._cancelled:
            self._cancelled = True
            if self._loop._debug:
                # Keep the callback in the repr, for debug mode's reports
                # (a slow callback may cancel its own handle).
                self._repr = repr(self)
            # Drop the references now: a cancelled timer can sit in the heap
            # for a long time, and it must not keep big objects alive.
            self._callback = None
            self._args = ()

    def cancelled(self) -> bool:
        """True once :meth:`cancel` was called."""
        return self._cancelled

    def get_context(self) -> contextvars.Context:
        """The :class:`contextvars.Context` the callback runs in."""
        return self._context

    def _format_callback(self) -> str:
        """The callback and its arguments, for reports (see :func:`format_callback`)."""
        if self._callback is None:
            return "<cancelled>"
        return format_callback(self._callback, self._args, self._loop._debug)

    def _repr_info(self) -> list[str]:
        # As asyncio shows a handle: its class, "cancelled", the callback,
        # and in debug mode the line that scheduled it.
        info = [type(self).__name__]
        if self._cancelled:
            info.append("cancelled")
        if self._callback is not None:
            info.append(self._format_callback())
        if self._source_traceback:
            frame = self._source_traceback[-1]
            info.append(f"created at {frame.filename}:{frame.lineno}")
        return info

    def __repr__(self) -> str:
        kept: str | None = getattr(self, "_repr", None)  # see cancel()
        return kept if kept is not None else f"<{' '.join(self._repr_info())}>"


class IOHandle(Handle):
    """The handle ``add_reader``/``add_writer`` keep for a descriptor, queued each time it is ready.

    One handle serves every readiness of its descriptor until it is removed,
    so it is where what never changes about it is kept: ``_io``, the
    descriptor and direction (``fd * 4`` plus 1 for reading, 2 for
    writing), and ``_flight_code``, the flight recorder's number for this
    step (0 until the recorder first runs it; see ``trace/flight.py``).
    asyncio calls it a Handle, and so does its repr.
    """

    __slots__ = ("_flight_code", "_io")

    def __init__(
        self, callback: Callable[..., object], args: tuple[Any, ...], loop: LoopContract, io: int
    ) -> None:
        super().__init__(callback, args, loop)
        self._io = io
        self._flight_code = 0

    def _repr_info(self) -> list[str]:
        info = super()._repr_info()
        info[0] = "Handle"
        return info


class TimerHandle(Handle, asyncio.TimerHandle):
    """A handle with a deadline, on the loop's clock (``loop.time()``).

    The loop's timer store keeps a heap of deadlines and, for each deadline,
    the timers due then in the order they were scheduled (see ``timers.py``):
    timers with equal deadlines run in that order, a guarantee asyncio's own
    heap does not give.

    Like :class:`Handle`, it subclasses asyncio's class for ``isinstance``
    checks only; ``_when`` and ``_scheduled`` are that class's slots.
    """

    __slots__ = ()

    def __init__(
        self,
        when: float,
        callback: Callable[..., object],
        args: tuple[Any, ...],
        loop: LoopContract,
        context: contextvars.Context | None = None,
    ) -> None:
        super().__init__(callback, args, loop, context)
        self._when = when
        # True while the handle sits in the loop's timer store, which uses it
        # to count cancelled timers that still take up room there.
        self._scheduled = False

    def when(self) -> float:
        """The absolute time, on ``loop.time()``'s clock, the timer is due."""
        return self._when

    def cancel(self) -> None:
        """Cancel the timer: mark it and count it; the loop drops it from its store later."""
        if self._cancelled:
            return
        # Flag and count first, with no call since the test above: a cancel()
        # that interrupts this one (from a signal handler or a finalizer)
        # finds the flag set and counts nothing.  Only a count: this may run
        # in the middle of the loop's own work on its store (timers.py).
        self._cancelled = True
        if self._scheduled:
            self._loop._timers.cancelled += 1
        if self._loop._debug:
            self._repr = repr(
                self
            )  # (as Handle.cancel; a repr may run any code, so after the count)
        self._callback = None
        self._args = ()

    def _repr_info(self) -> list[str]:
        info = super()._repr_info()
        info.insert(2 if self._cancelled else 1, f"when={self._when}")
        return info
