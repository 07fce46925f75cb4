"""The event loop: one thread, one selector, a queue of ready callbacks and a heap of timers.

This is the file to read first.  An event loop is a ``while`` loop around
:meth:`Loop._run_once`, and ``_run_once`` does four things, always in this
order:

1. **Decide how long it may wait.**  Not at all if callbacks are already
   ready (or ``stop()`` was called); until the nearest timer if there is one;
   otherwise for as long as it takes.
2. **Wait for I/O** in the selector (``epoll``, ``kqueue``...) with the
   timeout.  For each file descriptor that became readable or writable,
   queue the callback that ``add_reader``/``add_writer`` registered for it.
3. **Move due timers** from the heap to the ready queue.
4. **Run the callbacks that were ready when this step began**, and only
   those.  A callback that schedules another one (``call_soon`` from a
   callback) gets it run in the *next* iteration, after the loop has looked
   at I/O again: a callback that keeps rescheduling itself cannot starve the
   sockets.

Everything else -- futures, tasks, sockets, signals -- is built on those
primitives: a Task is a callback that advances a coroutine one step, a socket
read is a reader callback that resolves a future, and so on.

The class subclasses :class:`asyncio.AbstractEventLoop`, which holds no code,
only the names asyncio's functions expect, and registers itself as the
running loop while it runs: ``asyncio.sleep``, ``gather``, ``wait_for`` and
``get_running_loop`` then work on it unchanged.  The rest of the loop's API
lives beside it, one concept per file, and the loop inherits it as mixins:
the socket coroutines (``sock_*``) in ``sockets.py``, client connections and
name resolution in ``connections.py``, listening servers in ``servers.py``,
UDP in ``datagrams.py``, pipes in ``pipes.py``, child processes in
``subprocesses.py``, ``sendfile`` in ``sendfile.py``, signal handling in
``signals.py`` and the thread-related methods in ``threads.py``.
Transports, which turn a socket into protocol callbacks, are in
``transports.py``.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import os
import selectors
import socket
import sys
import threading
import time
import traceback
import warnings
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, Literal, TypeVar, TypeVarTuple, Unpack, cast

from . import versions
from .connections import ConnectionMethods
from .datagrams import DatagramMethods
from .epoll import default_selector, readiness_of
from .futures import Future as LoopyFuture
from .handles import DEBUG_STACK_DEPTH, Handle, IOHandle, TimerHandle, check_callable
from .instruments import Hooks
from .pipes import PipeMethods
from .sendfile import SendfileMethods
from .servers import ServerMethods
from .signals import SignalMethods
from .sockets import SocketMethods
from .subprocesses import SubprocessMethods
from .tasks import Task as LoopyTask
from .threads import ThreadMethods
from .timers import TimerStore
from .wakeup import Waker

if TYPE_CHECKING:
    # A descriptor number or an object with fileno(), as add_reader accepts.
    from _typeshed import FileDescriptorLike

    from .trace.flight import FlightRecorder

__all__ = ["TASK_MODES", "Loop", "new_event_loop"]

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")

# The loop reports what asyncio reports (errors in callbacks, errors nobody
# retrieved, slow callbacks in debug mode) where asyncio reports it, on the
# logger named "asyncio": applications configure that one.
logger = logging.getLogger("asyncio")

#: The two kinds of Future and Task a loop can hand out.  ``"asyncio"`` (the
#: default) gives asyncio's own C-accelerated classes, as uvloop does:
#: libraries inspect them and they are fast.  ``"loopy"`` gives loopy's
#: pure-Python classes from ``futures.py`` and ``tasks.py``, which you can read
#: and step through in a debugger.
TASK_MODES = ("asyncio", "loopy")
TaskMode = Literal["asyncio", "loopy"]

#: The environment variable that picks the task mode when none is given.
TASK_MODE_ENV = "LOOPY_TASKS"

# select() with a huge timeout fails on some platforms (and a day-long timer
# gains nothing from one long wait): never wait longer than this in one call.
MAXIMUM_SELECT_TIMEOUT = 24 * 3600


def resolve_task_mode(mode: str | None) -> TaskMode:
    """The task mode to use: ``mode`` if given, else ``$LOOPY_TASKS``, else ``"asyncio"``."""
    if mode is None:
        mode = os.environ.get(TASK_MODE_ENV) or "asyncio"
    if mode == "asyncio":
        return "asyncio"
    if mode == "loopy":
        return "loopy"
    raise ValueError(f"unknown task mode {mode!r}: expected one of {', '.join(TASK_MODES)}")


class Loop(
    ConnectionMethods,
    ServerMethods,
    SocketMethods,
    SignalMethods,
    ThreadMethods,
    DatagramMethods,
    PipeMethods,
    SubprocessMethods,
    SendfileMethods,
    asyncio.AbstractEventLoop,
):
    """A single-threaded event loop built on :mod:`selectors`.

    ``selector`` and ``clock`` exist for tests and for the curious: a fake
    selector and a virtual clock make every timing decision of the loop
    observable and deterministic.  ``tasks`` picks the task mode (see
    :data:`TASK_MODES`).
    """

    def __init__(
        self,
        *,
        selector: selectors.BaseSelector | None = None,
        clock: Callable[[], float] = time.monotonic,
        tasks: str | None = None,
    ) -> None:
        self._selector = selector if selector is not None else default_selector()
        # How to ask the selector what is ready: (fd, events) pairs, and which
        # bits of events mean readable and writable (see epoll.py).
        self._readiness = readiness_of(self._selector)
        self._clock = clock
        # Timers whose deadline is within this much of "now" count as due:
        # the clock cannot tell them apart from "now" anyway.
        self._clock_resolution = time.get_clock_info("monotonic").resolution

        # The ready queue: handles to run, first in, first out.  Only
        # _run_once pops from it; anything, in any thread, may append
        # (deque.append is atomic, which call_soon_threadsafe relies on).
        self._ready: collections.deque[Handle] = collections.deque()
        # The timers, earliest deadline first.  A cancel only counts; the
        # store drops cancelled timers at one known point, the start of
        # step 1 of _run_once (timers.py explains why).
        self._timers = TimerStore()

        self._stopping = False  # stop() was called; leave after this iteration
        self._iterations = 0  # _run_once calls so far; only grows (monitor/ reads it)
        self._closed = False
        self._thread_id: int | None = None  # the running thread, None when not running
        # Debug mode starts on under `python -X dev` or PYTHONASYNCIODEBUG=1, as asyncio's.
        self.set_debug(
            sys.flags.dev_mode
            or (not sys.flags.ignore_environment and bool(os.environ.get("PYTHONASYNCIODEBUG")))
        )
        self.slow_callback_duration = 0.1
        # In debug mode, the handle running now (None between callbacks): an
        # error report made while it runs says where it was scheduled.
        self._current_handle: Handle | None = None
        self._exception_handler: Callable[[Any, dict[str, Any]], object] | None = None
        self._hooks: Hooks | None = None  # None while no instrument is attached
        # The flight recorder (trace/flight.py), or None: _run_once and
        # create_task write into it inline, when it is set.
        self._flight: FlightRecorder | None = None
        # fd -> the transport that owns it; add_reader() and friends refuse those.
        self._transports: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()

        self.task_mode: TaskMode = resolve_task_mode(tasks)
        self._future_class: Callable[..., Any]
        self._task_class: Callable[..., Any]
        if self.task_mode == "asyncio":
            self._future_class, self._task_class = asyncio.Future, asyncio.Task
        else:
            self._future_class, self._task_class = LoopyFuture, LoopyTask
        self._task_factory: Any = None

        # Async generators started on this loop, so shutdown_asyncgens can
        # finalize the ones a program forgot to close.
        self._asyncgens: weakref.WeakSet[AsyncGenerator[Any, Any]] = weakref.WeakSet()
        self._asyncgens_shutdown_called = False

        # Every watched descriptor, the wake-up socket included, by number.
        # Invariant: exactly these are registered with the selector, each
        # with its Watch as data.
        self._watches: dict[int, Watch] = {}
        self._waker = Waker()
        self.add_reader(self._waker.fileno(), self._on_wakeup)
        # The mixins' own set-up and tear-down: each named after its mixin,
        # so that no two can collide (or be skipped by a missing super()).
        self._setup_signals()
        self._setup_threads()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} running={self.is_running()} "
            f"closed={self._closed} tasks={self.task_mode}>"
        )

    # ------------------------------------------------------------------
    # The iteration
    # ------------------------------------------------------------------

    def _run_once(self) -> None:
        """One iteration: wait, collect what is due, run it (the steps: see the module)."""
        ready, timers = self._ready, self._timers
        hooks, flight = self._hooks, self._flight  # instruments.py, trace/flight.py; or None
        self._iterations += 1  # read by the monitor (monitor/), from its own thread
        if hooks is not None and hooks.iteration_started:
            hooks.call("iteration_started", self)

        # 1. How long may select() block?  First the timer store drops what
        #    was cancelled (and files what waits in incoming): its one tidy-up.
        if timers.incoming or timers.cancelled:
            timers.tidy()
        deadlines = timers.deadlines  # (changed in place only: safe to keep)
        if ready or self._stopping:
            timeout: float | None = 0.0
        elif deadlines:
            timeout = deadlines[0] - self._clock()  # (min()/max() would cost more)
            if timeout < 0.0:
                timeout = 0.0
            elif timeout > MAXIMUM_SELECT_TIMEOUT:
                timeout = MAXIMUM_SELECT_TIMEOUT
        else:
            timeout = None

        # 2. Wait for I/O, and queue the callbacks of the descriptors that are ready.
        watches = self._watches
        poll, readable, writable = self._readiness
        if timeout == 0 and len(watches) == 1 and not self._signal_handlers:
            polled = []  # only the wake-up socket, with nothing we could miss: no syscall
        elif hooks is None:
            polled = poll(timeout)
        else:
            polled = self._poll_observed(hooks, timeout)
        for fd, events in polled:
            try:
                watch = watches[fd]
            except KeyError:  # unwatched since the poll (by a hook or a __del__)
                continue
            # An error or hang-up sets both bits: a direction nobody watches has no handle.
            if events & readable and watch.reader is not None:
                ready.append(watch.reader)
            if events & writable and watch.writer is not None:
                ready.append(watch.writer)

        # 3. Move every due timer to the ready queue, earliest first.
        if deadlines and deadlines[0] < (now := self._clock()) + self._clock_resolution:
            fired = timers.pop_due(now + self._clock_resolution)
            ready.extend(fired)
            if hooks is not None and hooks.timer_fired:
                for timer in fired:
                    hooks.call("timer_fired", self, timer, now - timer._when)
            del fired  # (else the handles would all be freed at once, cache-cold, at return)

        # 4. Run exactly the callbacks ready now, what they schedule waits for the next
        #    iteration.  A flight recorder notes the wait's end, then each step's end.
        if flight is not None:
            flight.waited(timeout)
        popleft = ready.popleft
        # Instruments that watch callbacks, and debug mode, see each one.
        observed = self._debug or (hooks is not None and hooks.watches_callbacks)
        for _ in range(len(ready)):
            handle = popleft()
            if handle._cancelled:
                continue
            if flight is not None:
                step = flight.starting(handle)
            if observed:
                started = self._callback_starting(handle)
            try:
                # In the handle's context; without *args when there are none (3x cheaper).
                if handle._cancelled:
                    pass  # (by an instrument's callback_started)
                elif handle._args:  # (both read before *args allocates: a __del__ may cancel)
                    callback, args = handle._callback, handle._args
                    handle._context.run(callback, *args)  # type: ignore[arg-type]
                else:
                    handle._context.run(handle._callback)  # type: ignore[arg-type]
            except (SystemExit, KeyboardInterrupt):
                raise  # these stop the loop, as they stop any Python program
            except BaseException as exc:
                self._callback_failed(handle, exc)  # anything else: report, carry on
            if observed:
                self._callback_finished(handle, started)
            if flight is not None:
                flight.finished(step)
        # (A traceback keeps this frame: the last handle, holding an error,
        # would make a reference cycle.)
        handle = callback = args = None  # type: ignore[assignment]
        if hooks is not None and hooks.iteration_finished:
            hooks.call("iteration_finished", self)

    def _poll_observed(self, hooks: Hooks, timeout: float | None) -> list[tuple[int, int]]:
        """Step 2's ``poll(timeout)`` while instruments watch: they see the wait begin and end."""
        if hooks.wait_started:
            hooks.call("wait_started", self, timeout)
        polled = self._readiness[0](timeout)
        if hooks.wait_finished:
            hooks.call("wait_finished", self, self._ready_masks(polled))
        return polled

    def _ready_masks(self, polled: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """What ``poll`` reported, as ``(fd, EVENT_READ | EVENT_WRITE)`` for the instruments."""
        _, readable, writable = self._readiness
        reported = []
        for fd, events in polled:
            watch = self._watches.get(fd)
            if watch is None:
                continue  # unwatched since the poll (by a __del__ or a signal handler)
            mask = (selectors.EVENT_READ if events & readable else 0) | (
                selectors.EVENT_WRITE if events & writable else 0
            )
            reported.append((fd, mask & watch.events))
        return reported

    def _callback_starting(self, handle: Handle) -> float:
        """Tell the instruments a callback starts; the time it starts, for debug mode."""
        hooks = self._hooks
        if hooks is not None and hooks.callback_started:
            hooks.call("callback_started", self, handle)
        if not self._debug:
            return 0.0
        self._current_handle = handle
        return self._clock()

    def _callback_finished(self, handle: Handle, started: float) -> None:
        """Tell the instruments a callback finished; in debug mode, warn if it was slow.

        Debug mode warns about a callback that held the loop longer than
        ``slow_callback_duration``.
        """
        if self._debug:
            self._current_handle = None
            took = self._clock() - started
            if took >= self.slow_callback_duration:
                logger.warning("Executing %s took %.3f seconds", _describe_handle(handle), took)
        hooks = self._hooks
        if hooks is not None and hooks.callback_finished:
            hooks.call("callback_finished", self, handle)

    def _callback_failed(self, handle: Handle, exc: BaseException) -> None:
        """A callback raised: hand the error to the exception handler.

        In debug mode the report says where the callback was scheduled
        (``source_traceback``), as asyncio's does.
        """
        context: dict[str, Any] = {
            "message": f"Exception in callback {handle._format_callback()}",
            "exception": exc,
            "handle": handle,
        }
        if handle._source_traceback:
            context["source_traceback"] = handle._source_traceback
        self.call_exception_handler(context)

    # ------------------------------------------------------------------
    # Running and stopping
    # ------------------------------------------------------------------

    def run_forever(self) -> None:
        """Run iterations until :meth:`stop` is called."""
        self._check_closed()
        self._check_not_running()
        self._thread_id = threading.get_ident()
        old_hooks = sys.get_asyncgen_hooks()
        sys.set_asyncgen_hooks(
            firstiter=self._asyncgen_firstiter, finalizer=self._asyncgen_finalize
        )
        old_tracking_depth = sys.get_coroutine_origin_tracking_depth()
        self._track_coroutine_origins(self._debug)
        asyncio.events._set_running_loop(self)
        try:
            while True:
                self._run_once()
                if self._stopping:
                    break
        finally:
            self._stopping = False
            self._thread_id = None
            self._current_handle = None  # (a KeyboardInterrupt may have left one)
            asyncio.events._set_running_loop(None)
            sys.set_asyncgen_hooks(*old_hooks)
            sys.set_coroutine_origin_tracking_depth(old_tracking_depth)

    def run_until_complete(self, future: Generator[Any, None, _T] | Awaitable[_T]) -> _T:
        """Run until ``future`` (a future, task or coroutine) is done; return its result."""
        self._check_closed()
        self._check_not_running()
        new_task = not asyncio.isfuture(future)
        fut: asyncio.Future[_T] = asyncio.ensure_future(cast(Awaitable[_T], future), loop=self)
        if new_task:
            # The task is ours and we wait for it, so a "destroyed but
            # pending" warning after an interruption would only be noise.
            fut._log_destroy_pending = False  # type: ignore[attr-defined]
        fut.add_done_callback(_stop_loop_when_done)
        try:
            self.run_forever()
        except BaseException:
            if new_task and fut.done() and not fut.cancelled():
                # The exception escaped run_forever already; mark the task's
                # copy as retrieved so it is not reported a second time.
                fut.exception()
            raise
        finally:
            fut.remove_done_callback(_stop_loop_when_done)
        if not fut.done():
            raise RuntimeError("Event loop stopped before Future completed.")
        return fut.result()

    def stop(self) -> None:
        """Stop after the current iteration.

        Callbacks already ready still run; callbacks they schedule wait for
        the next call to ``run_forever`` (as in asyncio).
        """
        self._stopping = True

    def is_running(self) -> bool:
        """True while :meth:`run_forever` (or ``run_until_complete``) runs iterations."""
        return self._thread_id is not None

    def is_closed(self) -> bool:
        """True once :meth:`close` was called; a closed loop runs nothing more."""
        return self._closed

    def close(self) -> None:
        """Close the loop: drop all pending callbacks and release the selector.

        A closed loop cannot be run again.  Closing twice does nothing.
        """
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self._closed:
            return
        if self._hooks is not None:
            self._hooks.call("loop_closed", self)
        self.stop_flight_recorder()  # (the stall dumps it has taken are written first)
        self._closed = True
        self._ready.clear()
        self._timers.clear()
        self._close_signals()
        self._close_threads()
        self._waker.close()
        # What is still watched stays open (it belongs to its owner), but
        # the loop lets go of it and of the callbacks that waited on it.
        self._watches.clear()
        self._selector.close()

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        if not getattr(self, "_closed", True):
            _warn(f"unclosed event loop {self!r}", ResourceWarning, source=self)

    def _check_closed(self) -> None:
        if self._closed:
            raise RuntimeError("Event loop is closed")

    def _check_not_running(self) -> None:
        if self.is_running():
            raise RuntimeError("This event loop is already running")
        if asyncio.events._get_running_loop() is not None:
            raise RuntimeError("Cannot run the event loop while another loop is running")

    # ------------------------------------------------------------------
    # Scheduling callbacks
    # ------------------------------------------------------------------

    def time(self) -> float:
        """The loop's clock: monotonic seconds, the time base of ``call_at``."""
        return self._clock()

    def call_soon(
        self,
        callback: Callable[[Unpack[_Ts]], object],
        *args: *_Ts,
        context: contextvars.Context | None = None,
    ) -> Handle:
        """Run ``callback(*args)`` in a later iteration, after those queued before it."""
        if self._closed:  # (checked inline: this is the loop's busiest entry point)
            self._check_closed()
        if self._debug:
            self._check_callback(callback, "call_soon")
        handle = Handle(callback, args, self, context)
        self._ready.append(handle)
        return handle

    def call_later(
        self,
        delay: float,
        callback: Callable[[Unpack[_Ts]], object],
        *args: *_Ts,
        context: contextvars.Context | None = None,
    ) -> TimerHandle:
        """Run ``callback(*args)`` once ``delay`` seconds have passed."""
        if delay is None:
            raise TypeError("delay must not be None")
        return self.call_at(self._clock() + delay, callback, *args, context=context)

    def call_at(
        self,
        when: float,
        callback: Callable[[Unpack[_Ts]], object],
        *args: *_Ts,
        context: contextvars.Context | None = None,
    ) -> TimerHandle:
        """Run ``callback(*args)`` once ``loop.time()`` reaches ``when``.

        Timers with the same deadline run in the order they were scheduled.
        """
        if when is None:
            raise TypeError("when cannot be None")
        self._check_closed()
        if self._debug:
            self._check_callback(callback, "call_at")
        handle = TimerHandle(when, callback, args, self, context)
        self._timers.schedule(handle)
        if self._hooks is not None:
            self._hooks.call("timer_scheduled", self, handle)
        return handle

    def _check_callback(self, callback: object, method: str) -> None:
        """Debug mode's checks of a callback scheduled from the loop's own thread."""
        check_callable(callback, method)
        if self._thread_id is not None and self._thread_id != threading.get_ident():
            raise RuntimeError(
                "Non-thread-safe operation invoked on an event loop other than the current one"
            )

    def _on_wakeup(self) -> None:
        """The wake-up socket is readable: drain it and deliver any signals."""
        data = self._waker.drain()
        if self._signal_handlers:
            self._deliver_signals(data)

    # ------------------------------------------------------------------
    # Watching file descriptors
    # ------------------------------------------------------------------
    #
    # Each registered descriptor has a Watch (below) in ``_watches`` and as
    # its selector data: the handle to queue when it is readable and the one
    # to queue when it is writable.

    def add_reader(
        self, fd: FileDescriptorLike, callback: Callable[[Unpack[_Ts]], object], *args: *_Ts
    ) -> None:
        """Call ``callback(*args)`` every iteration in which ``fd`` is readable."""
        self._check_no_transport(fd)
        self._add_reader(fd, callback, *args)

    def add_writer(
        self, fd: FileDescriptorLike, callback: Callable[[Unpack[_Ts]], object], *args: *_Ts
    ) -> None:
        """Call ``callback(*args)`` every iteration in which ``fd`` is writable."""
        self._check_no_transport(fd)
        self._add_writer(fd, callback, *args)

    def remove_reader(self, fd: FileDescriptorLike) -> bool:
        """Stop watching ``fd`` for reading; True if it was watched."""
        self._check_no_transport(fd)
        return self._unwatch(fd, selectors.EVENT_READ)

    def remove_writer(self, fd: FileDescriptorLike) -> bool:
        """Stop watching ``fd`` for writing; True if it was watched."""
        self._check_no_transport(fd)
        return self._unwatch(fd, selectors.EVENT_WRITE)

    def _check_no_transport(self, fd: FileDescriptorLike) -> None:
        """Refuse to touch a descriptor an open transport owns: it would steal its events."""
        if not self._transports:
            return
        fileno = fd if isinstance(fd, int) else fd.fileno()
        transport = self._transports.get(fileno)
        if transport is not None and not transport.is_closing():
            raise RuntimeError(f"File descriptor {fd!r} is used by transport {transport!r}")

    def _add_reader(
        self, fd: FileDescriptorLike, callback: Callable[..., object], *args: Any
    ) -> Handle:
        """``add_reader`` that returns the handle registered.

        ``sock_recv`` and friends keep it, to remove only their own
        registration later (see ``sockets.py``).  asyncio's pidfd child
        watcher calls this very name.
        """
        self._check_closed()
        return self._watch(fd, selectors.EVENT_READ, callback, args)

    def _add_writer(
        self, fd: FileDescriptorLike, callback: Callable[..., object], *args: Any
    ) -> Handle:
        """``add_writer`` that returns the handle registered."""
        self._check_closed()
        return self._watch(fd, selectors.EVENT_WRITE, callback, args)

    def _remove_reader(self, fd: FileDescriptorLike) -> bool:
        """``remove_reader`` for the descriptor's own transport."""
        return self._unwatch(fd, selectors.EVENT_READ)

    def _remove_writer(self, fd: FileDescriptorLike) -> bool:
        """``remove_writer`` for the descriptor's own transport."""
        return self._unwatch(fd, selectors.EVENT_WRITE)

    def _watch(
        self,
        fileobj: FileDescriptorLike,
        event: int,
        callback: Callable[..., object],
        args: tuple[Any, ...],
    ) -> IOHandle:
        fd = fd_of(fileobj)
        direction = 1 if event == selectors.EVENT_READ else 2
        handle = IOHandle(callback, args, self, fd << 2 | direction)
        watch = self._watches.get(fd)
        # (The same object again cannot be a closed one: fd_of() refused that.)
        if watch is not None and watch.fileobj is not fileobj and _is_closed_socket(watch.fileobj):
            # Left by a socket that was closed before its registration was
            # removed (sock_recv removes its own an iteration late), and the
            # number is now another socket's.  The kernel dropped the old
            # registration with the old socket: start afresh.
            self._forget(fd, watch)
            watch = None
        if watch is None:
            # Registered first, entered in the table after: a finalizer or a
            # signal handler that runs inside register() and unwatches this
            # descriptor must not find a watch the selector does not know.
            watch = Watch(fileobj, event)
            self._selector.register(fileobj, event, watch)
            self._watches[fd] = watch
        elif not watch.events & event:
            self._selector.modify(watch.fileobj, watch.events | event, watch)
            watch.events |= event
        # Already watched in this direction: only the handle changes, and the
        # selector need not hear of it (sock_recv in a loop lands here).
        if event == selectors.EVENT_READ:
            old, watch.reader = watch.reader, handle
        else:
            old, watch.writer = watch.writer, handle
        if old is not None:
            old.cancel()
        return handle

    def _unwatch(self, fileobj: FileDescriptorLike, event: int) -> bool:
        if self._closed:
            return False
        fd = self._watched_fd(fileobj)
        watch = self._watches.get(fd)
        if watch is None or not watch.events & event:
            return False
        if event == selectors.EVENT_READ:
            old, watch.reader = watch.reader, None
        else:
            old, watch.writer = watch.writer, None
        remaining = watch.events & ~event
        if remaining:
            self._selector.modify(watch.fileobj, remaining, watch)
            watch.events = remaining
        else:
            self._forget(fd, watch)
        # A handle already queued for this iteration must not run any more.
        assert old is not None
        old.cancel()
        return True

    def _watched_fd(self, fileobj: FileDescriptorLike) -> int:
        """``fd_of(fileobj)``; for a socket closed while watched, the number it had then."""
        try:
            return fd_of(fileobj)
        except ValueError:
            for fd, watch in self._watches.items():
                if watch.fileobj is fileobj:
                    return fd
            raise

    def _forget(self, fd: int, watch: Watch) -> None:
        """Stop watching ``fd`` in both directions."""
        del self._watches[fd]
        # (The selector finds a closed socket, whose fileno() is -1, by identity.)
        self._selector.unregister(watch.fileobj)
        for handle in (watch.reader, watch.writer):
            if handle is not None:
                handle.cancel()

    # ------------------------------------------------------------------
    # Futures and tasks
    # ------------------------------------------------------------------

    def create_future(self) -> asyncio.Future[Any]:
        """A new future bound to this loop, of the class the task mode picks."""
        # A load, then a call: ``self._future_class(...)`` would look the
        # attribute up as a method, which CPython cannot specialize for an
        # instance attribute (10 ns of the 170 this costs).
        future_class: Callable[..., asyncio.Future[Any]] = self._future_class
        return future_class(loop=self)

    def create_task(
        self,
        coro: Coroutine[Any, Any, _T] | Generator[Any, None, _T],
        *,
        name: str | None = None,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[_T]:
        """Wrap ``coro`` in a task; its first step runs in the next iteration."""
        self._check_closed()
        if self._task_factory is None:
            task: asyncio.Task[_T] = self._task_class(coro, loop=self, name=name, context=context)
            origin = getattr(task, "_source_traceback", None)
            if origin and self.task_mode == "asyncio":
                # Debug mode: asyncio's Task recorded this very line last;
                # the user's call to create_task is where it was made.
                # (loopy's Task skips loopy's frames itself.)
                del origin[-1]
        else:
            if context is None:
                task = self._task_factory(self, coro)
            else:
                task = self._task_factory(self, coro, context=context)
            if name is not None:
                task.set_name(name)
        if self._hooks is not None:
            self._hooks.call("task_created", self, task, asyncio.current_task(self))
            task.add_done_callback(self._report_task_finished)
        if self._flight is not None:
            self._flight.task_created(task, asyncio.current_task(self))
        return task

    def _report_task_finished(self, task: asyncio.Task[Any]) -> None:
        if self._hooks is not None:
            self._hooks.call("task_finished", self, task)

    def set_task_factory(self, factory: Any) -> None:
        """Use ``factory(loop, coro, context=...)`` to make tasks (None: the default)."""
        if factory is not None and not callable(factory):
            raise TypeError("task factory must be a callable or None")
        self._task_factory = factory

    def get_task_factory(self) -> Any:
        """The factory given to :meth:`set_task_factory`, or None (the task mode's Task)."""
        return self._task_factory

    # ------------------------------------------------------------------
    # Errors
    # ------------------------------------------------------------------

    def get_exception_handler(self) -> Callable[[Any, dict[str, Any]], object] | None:
        """The handler given to :meth:`set_exception_handler`, or None (errors are logged)."""
        return self._exception_handler

    def set_exception_handler(
        self, handler: Callable[[Any, dict[str, Any]], object] | None
    ) -> None:
        """Route errors to ``handler(loop, context)`` instead of the log (None: the log)."""
        if handler is not None and not callable(handler):
            raise TypeError(f"A callable object or None is expected, got {handler!r}")
        self._exception_handler = handler

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        """Log an error the loop caught, with everything known about it, as asyncio does.

        ``context`` holds ``message`` and, when known, ``exception`` and the
        objects involved (``handle``, ``future``, ``task``, ``socket``...),
        each logged as its repr.  In debug mode it may hold
        ``source_traceback``, where the object was made; failing that, the
        report says where the callback running now was scheduled
        (``handle_traceback``).  Both are printed as stacks.
        """
        message = context.get("message") or "Unhandled exception in event loop"
        exception = context.get("exception")
        exc_info: Any = (
            (type(exception), exception, exception.__traceback__)
            if exception is not None
            else False
        )
        current = self._current_handle
        if "source_traceback" not in context and current is not None and current._source_traceback:
            context["handle_traceback"] = current._source_traceback
        lines = [message]
        for key in sorted(context):
            if key in ("message", "exception"):
                continue
            value = context[key]
            if key == "source_traceback":
                text = "Object created at (most recent call last):\n" + _format_stack(value)
            elif key == "handle_traceback":
                text = "Handle created at (most recent call last):\n" + _format_stack(value)
            else:
                text = repr(value)
            lines.append(f"{key}: {text}")
        logger.error("\n".join(lines), exc_info=exc_info)

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        """Report an error caught by the loop.  Never raises: the loop must carry on.

        From Python 3.12 a handler set with :meth:`set_exception_handler`
        runs in the context of the task or handle that failed, as asyncio's
        does, so it sees the context variables set there.
        """
        if self._hooks is not None:
            self._hooks.call("exception_reported", self, context)
        handler = self._exception_handler
        if handler is None:
            try:
                self.default_exception_handler(context)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                # A default handler overridden in a subclass, or a broken log.
                logger.error("Exception in default exception handler", exc_info=True)
            return
        try:
            run_in = _context_of(context) if versions.EXCEPTION_HANDLER_IN_CONTEXT else None
            if run_in is not None:
                run_in.run(handler, self, context)
            else:
                handler(self, context)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            try:
                self.default_exception_handler(
                    {
                        "message": "Unhandled error in exception handler",
                        "exception": exc,
                        "context": context,
                    }
                )
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                logger.error(
                    "Exception in default exception handler while handling an "
                    "unexpected error in custom exception handler",
                    exc_info=True,
                )

    # ------------------------------------------------------------------
    # Debug mode
    # ------------------------------------------------------------------

    def get_debug(self) -> bool:
        """Whether debug mode is on (see :meth:`set_debug`)."""
        return self._debug

    def set_debug(self, enabled: bool) -> None:
        """In debug mode the loop checks callbacks, logs slow ones and records origins.

        Every handle then remembers where it was scheduled, and every
        coroutine where it was created, so error reports can say so.
        """
        self._debug = enabled = bool(enabled)
        # asyncio's C Future and Task call loop.get_debug() each time one is
        # made.  The bool's own __bool__, bound to it, answers the same
        # without a Python frame: about 30 ns less per future and task.
        self.get_debug = enabled.__bool__  # type: ignore[method-assign]
        if self.is_running():
            self._track_coroutine_origins(enabled)

    @staticmethod
    def _track_coroutine_origins(enabled: bool) -> None:
        sys.set_coroutine_origin_tracking_depth(DEBUG_STACK_DEPTH if enabled else 0)

    # ------------------------------------------------------------------
    # Instruments
    # ------------------------------------------------------------------

    def add_instrument(self, instrument: object) -> None:
        """Attach an instrument: an object with some of the hooks listed in ``instruments.py``."""
        if self._hooks is None:
            self._hooks = Hooks()
        self._hooks.add(instrument)

    def remove_instrument(self, instrument: object) -> None:
        """Detach an instrument; ValueError if it is not attached."""
        if self._hooks is None:
            raise ValueError(f"{instrument!r} is not attached")
        self._hooks.remove(instrument)
        if not self._hooks.instruments:
            self._hooks = None  # back to the path with no hooks at all

    @property
    def instruments(self) -> tuple[object, ...]:
        """The instruments attached, in the order they were added."""
        return tuple(self._hooks.instruments) if self._hooks is not None else ()

    # ------------------------------------------------------------------
    # The flight recorder
    # ------------------------------------------------------------------

    def start_flight_recorder(
        self,
        seconds: float = 10.0,
        *,
        dump_on_stall: float | None = None,
        dump_dir: str | os.PathLike[str] | None = None,
    ) -> FlightRecorder:
        """Keep the last ``seconds`` of the loop's events in memory (see ``trace/flight.py``).

        With ``dump_on_stall``, a callback or task step that holds the loop
        longer than that many seconds writes a trace of the window into
        ``dump_dir`` (default: the current directory).  ValueError for a
        number of seconds that is not above 0 and finite; a recorder already
        running is replaced.
        """
        from .trace.flight import FlightRecorder  # noqa: PLC0415 - only if asked

        recorder = FlightRecorder(self, seconds, dump_on_stall=dump_on_stall, dump_dir=dump_dir)
        self.stop_flight_recorder()
        self._flight = recorder
        return recorder

    def stop_flight_recorder(self) -> None:
        """Stop recording (and stall dumps); what was recorded is dropped."""
        flight, self._flight = self._flight, None
        if flight is not None:
            flight.stop()

    @property
    def flight_recorder(self) -> FlightRecorder | None:
        """The flight recorder running on this loop, or None."""
        return self._flight

    # ------------------------------------------------------------------
    # Async generators
    # ------------------------------------------------------------------
    #
    # Python calls firstiter when an async generator first runs and finalizer
    # when one is garbage-collected unfinished.  The loop remembers them so
    # that shutdown_asyncgens() can close those still open, and schedules
    # the finalization of the collected ones (``aclose()`` needs a loop).

    def _asyncgen_firstiter(self, agen: AsyncGenerator[Any, Any]) -> None:
        if self._asyncgens_shutdown_called:
            warnings.warn(
                f"asynchronous generator {agen!r} was scheduled after "
                "loop.shutdown_asyncgens() call",
                ResourceWarning,
                source=self,
                stacklevel=2,
            )
        self._asyncgens.add(agen)

    def _asyncgen_finalize(self, agen: AsyncGenerator[Any, Any]) -> None:
        self._asyncgens.discard(agen)
        if not self._closed:
            self.call_soon_threadsafe(self.create_task, agen.aclose())

    async def shutdown_asyncgens(self) -> None:
        """Close every async generator still open on this loop."""
        self._asyncgens_shutdown_called = True
        if not self._asyncgens:
            return
        open_generators = list(self._asyncgens)
        self._asyncgens.clear()
        results = await asyncio.gather(
            *[agen.aclose() for agen in open_generators], return_exceptions=True
        )
        for result, agen in zip(results, open_generators, strict=True):
            if isinstance(result, Exception):
                self.call_exception_handler(
                    {
                        "message": f"an error occurred during closing of "
                        f"asynchronous generator {agen!r}",
                        "exception": result,
                        "asyncgen": agen,
                    }
                )


def _describe_handle(handle: Handle) -> str:
    """A handle for the slow-callback warning: the task it steps, if any, as asyncio shows it."""
    owner = getattr(handle._callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        return repr(owner)
    return str(handle)


def _format_stack(stack: list[traceback.FrameSummary]) -> str:
    return "".join(traceback.format_list(stack)).rstrip()


def _context_of(context: dict[str, Any]) -> contextvars.Context | None:
    """The contextvars context of the task, future or handle an error report is about."""
    about = context.get("task")
    if about is None:
        about = context.get("future")  # (a task, sometimes; a plain future has no context)
    if about is None:
        about = context.get("handle")
    get_context = getattr(about, "get_context", None)
    run_in = get_context() if get_context is not None else None
    return run_in if hasattr(run_in, "run") else None


class Watch:
    """What the loop waits for on one file descriptor: its selector data.

    ``reader`` is queued each iteration the descriptor is readable, ``writer``
    each iteration it is writable; ``events`` says which of the two the
    selector was asked to watch (a handle is set for each of them).  The
    object is mutable on purpose: replacing a handle (``sock_recv`` in a
    loop does it for every message) costs two attribute stores, not a
    selector call.
    """

    __slots__ = ("events", "fileobj", "reader", "writer")

    def __init__(self, fileobj: FileDescriptorLike, events: int) -> None:
        self.fileobj = fileobj  # as registered, to unregister it the same way
        self.events = events
        self.reader: Handle | None = None
        self.writer: Handle | None = None


def fd_of(fileobj: FileDescriptorLike) -> int:
    """The descriptor number of ``fileobj`` (an int, or an object with ``fileno()``)."""
    if isinstance(fileobj, int):
        fd = fileobj
    else:
        try:
            fd = int(fileobj.fileno())
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"Invalid file object: {fileobj!r}") from None
    if fd < 0:
        raise ValueError(f"Invalid file descriptor: {fd}")
    return fd


def _is_closed_socket(fileobj: object) -> bool:
    return isinstance(fileobj, socket.socket) and fileobj.fileno() == -1


def _stop_loop_when_done(future: asyncio.Future[Any]) -> None:
    """Done callback of run_until_complete's future: stop its loop.

    ``SystemExit`` and ``KeyboardInterrupt`` already escaped from the task
    step that raised them and are unwinding ``run_forever``; nothing to stop.
    """
    if not future.cancelled() and isinstance(future.exception(), (SystemExit, KeyboardInterrupt)):
        return
    future.get_loop().stop()


#: The environment variable naming a file to trace every new loop into.
TRACE_ENV = "LOOPY_TRACE"
#: The flight recorder's variables (see ``trace/flight.py``): seconds to keep,
#: and a stall threshold in seconds (which starts the recorder too).
FLIGHT_ENV = "LOOPY_FLIGHT_RECORDER"
STALL_ENV = "LOOPY_DUMP_ON_STALL"


def new_event_loop(*, tasks: str | None = None) -> Loop:
    """A new loopy event loop.

    ``tasks`` picks the task mode: ``"asyncio"`` (asyncio's C Future and
    Task, the default) or ``"loopy"`` (loopy's own pure-Python ones).  When it
    is not given, the ``LOOPY_TASKS`` environment variable decides.

    With ``LOOPY_TRACE=FILE`` in the environment, the loop is traced from
    birth and the trace written to FILE when it closes; ``ValueError`` if
    FILE cannot be written (see ``trace/environment.py``).  With
    ``LOOPY_FLIGHT_RECORDER=SECONDS`` or ``LOOPY_DUMP_ON_STALL=SECONDS`` it
    starts with its flight recorder on (see ``trace/flight.py``), and is
    watchable as with ``LOOPY_MONITOR=1``: ``loopy top`` can watch it and
    ``loopy trace dump`` fetch the recorder's window (see ``monitor/``).
    """
    loop = Loop(tasks=tasks)
    if os.environ.get(TRACE_ENV):
        from .trace.environment import trace_from_environment  # noqa: PLC0415 - only if asked

        trace_from_environment(loop)
    if os.environ.get(FLIGHT_ENV) or os.environ.get(STALL_ENV):
        from .trace.flight import flight_from_environment  # noqa: PLC0415 - only if asked

        if flight_from_environment(loop) is not None:
            # The recorder implies the monitor: `loopy trace dump PID` and
            # `loopy top PID` are how its figures leave the process.
            from .monitor import watch  # noqa: PLC0415 - imported only when asked for

            watch(loop)
    if os.environ.get("LOOPY_MONITOR"):  # monitor/: LOOPY_MONITOR=1 makes it watchable
        from .monitor import watch_if_requested  # noqa: PLC0415 - imported only when asked for

        watch_if_requested(loop)
    return loop
