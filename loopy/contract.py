"""The loop's contract: exactly what the rest of loopy uses of a loop.

The loop (``loop.py``) is one class, but the code around it -- the
transports, servers, pipes, datagram endpoints and child processes it
creates, the handles it runs, its own mixins (``signals.py``,
``threads.py``...) and the ``trace`` package that watches it -- holds a
reference to it and calls back into it.  :class:`LoopContract` names every method and
attribute they use, private ones included, so that a change to the loop
that would break one of them is a type error (``mypy --strict`` checks that
``Loop`` satisfies the protocol wherever a loop is passed as one), and so
that a reader sees in one place what the loop promises to its neighbours.

The private names, and why each is shared:

* ``_add_reader``/``_add_writer`` register a callback and return the
  handle; ``_remove_reader``/``_remove_writer`` drop it.  Unlike the public
  methods, they do not refuse a descriptor owned by a transport: the owner
  is the one calling.
* ``_transports`` maps a descriptor to the transport that owns it, so that
  the public ``add_reader`` refuses to steal its events.
* ``_ready``, ``_timers`` and ``_watches`` are the loop's three stores
  (ready queue, timer store, watched descriptors); ``trace.describe`` reads
  them to show the loop's to-do list.  Outside ``loop.py`` and
  ``timers.py`` only ``call_soon_threadsafe`` and signal delivery append to
  ``_ready``, and ``TimerHandle.cancel`` counts in ``_timers``.
* ``_debug``, ``_hooks``, ``_waker`` and ``_check_closed`` are what handles,
  signals and threads read on their hot paths, where the public
  ``get_debug()`` or ``instruments`` would cost a call.
* ``_clock`` is the flight recorder's clock (it times each step);
  ``_thread_id`` and ``_iterations`` are what the monitor and the stall
  watchdog read from their own threads (an int each: a read is atomic).
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import os
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

    from .handles import Handle, TimerHandle
    from .instruments import Hooks
    from .loop import Watch
    from .timers import TimerStore
    from .trace.flight import FlightRecorder
    from .wakeup import Waker

__all__ = ["LoopContract", "LoopMixin"]


class LoopContract(Protocol):
    """Every name of the loop that code outside ``loop.py`` uses (see the module)."""

    # -- the loop's state, read by trace.describe ---------------------------------
    _ready: collections.deque[Handle]
    _timers: TimerStore
    _watches: dict[int, Watch]
    # fd -> the transport that owns it (transports add themselves)
    _transports: weakref.WeakValueDictionary[int, Any]
    # -- read by handles, signals and threads on their hot paths ---------------------
    _debug: bool  # (get_debug() without the call: every Handle reads it)
    _hooks: Hooks | None  # the instruments, or None
    _waker: Waker  # the wake-up socket: threads and signals write to it
    # -- read by the flight recorder (trace/flight.py) and the monitor (monitor/) ------
    task_mode: str  # "asyncio" or "loopy": whose Future and Task the loop makes
    _clock: Callable[[], float]  # time() without the call
    _thread_id: int | None  # the thread running the loop, None when it is not running
    _iterations: int  # _run_once calls so far (read from the monitor's thread)

    def _check_closed(self) -> None:
        """Raise RuntimeError if the loop is closed."""

    # -- public API -------------------------------------------------------------------
    def time(self) -> float:
        """The loop's clock, the time base of ``call_at``."""

    def is_running(self) -> bool:
        """Whether ``run_forever`` runs iterations."""

    def is_closed(self) -> bool:
        """Whether ``close`` was called."""

    def close(self) -> None:
        """Close the loop (not while it runs)."""

    def start_flight_recorder(
        self,
        seconds: float = 10.0,
        *,
        dump_on_stall: float | None = None,
        dump_dir: str | os.PathLike[str] | None = None,
    ) -> FlightRecorder:
        """Keep the last ``seconds`` of the loop's events (``trace/flight.py``)."""

    def call_soon(
        self,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> Handle:
        """Queue ``callback(*args)`` for the next iteration."""

    def call_soon_threadsafe(
        self,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> Handle:
        """``call_soon`` from any thread; wakes the loop."""

    def call_later(
        self,
        delay: float,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> TimerHandle:
        """Run ``callback(*args)`` after ``delay`` seconds."""

    def create_future(self) -> asyncio.Future[Any]:
        """A future bound to the loop, of its task mode's class."""

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        """Report an error the caller caught; never raises."""

    def add_reader(
        self, fd: FileDescriptorLike, callback: Callable[..., object], *args: Any
    ) -> None:
        """Watch ``fd`` for reading (refused for a transport's own descriptor)."""

    def remove_reader(self, fd: FileDescriptorLike) -> bool:
        """Stop watching ``fd`` for reading."""

    def add_instrument(self, instrument: object) -> None:
        """Attach an instrument (see ``instruments.py``)."""

    def remove_instrument(self, instrument: object) -> None:
        """Detach an instrument."""

    # -- private, for the descriptor's owner ------------------------------------------
    def _add_reader(
        self, fd: FileDescriptorLike, callback: Callable[..., object], *args: Any
    ) -> Handle: ...

    def _add_writer(
        self, fd: FileDescriptorLike, callback: Callable[..., object], *args: Any
    ) -> Handle: ...

    def _remove_reader(self, fd: FileDescriptorLike) -> bool: ...

    def _remove_writer(self, fd: FileDescriptorLike) -> bool: ...


if TYPE_CHECKING:
    #: The base of the loop's mixins (``ServerMethods``...): for the type
    #: checker, each is part of a loop, so passing ``self`` where a
    #: LoopContract is expected is checked; at run time, plain ``object``.
    LoopMixin = LoopContract
else:
    LoopMixin = object
