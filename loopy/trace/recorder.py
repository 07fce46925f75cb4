"""The trace recorder: an instrument that writes down everything the loop does.

Attach a :class:`TraceRecorder` to a loop and it turns the loop's hooks (see
``instruments.py``) into a list of :class:`TraceEvent` records: every
iteration, every wait in ``select()``, every callback with how long it held
the loop, timers scheduled and fired, tasks created and finished, signals
and errors.  ``export.py`` turns that list into a Chrome trace that Perfetto
and ``loopy trace view`` can show; ``summary.py`` boils it down to figures.

Time: every timestamp is ``loop.time()`` minus its value when the recorder
was attached, in seconds.  The loop's own clock, not ``time.perf_counter``:
on a virtual clock the trace is exact, and in a real run it is the clock
timers are scheduled on.  The wall-clock time of the attach
(``start_wall_time``) goes with it, so a trace lines up with log lines.

Memory: events go into a ring buffer (``collections.deque(maxlen=...)``).
When it is full the oldest event falls out and ``dropped`` counts it; a
long run keeps its most recent ``max_events`` events, never more.  An event
costs about 200 bytes, so the default of 200,000 stays around 40 MB; pass
a smaller ``max_events`` to keep less.  The exporter reports what was
dropped and computes every figure over what was kept.

Tasks: a task enters the trace once, with a ``task-created`` event: at
``create_task`` if it was made there (any task factory, eager or not), with
its parent; otherwise at the first step or wake-up the loop runs for it
("first sight": built directly, or before the recorder was attached).  A
task that finishes inside an eager first step it ran outside the loop is
never seen at all.  Tasks are never asked for their coroutine directly:
see ``describe.task_coroutine``.

Spans (iterations, waits, callbacks) are recorded when they *end*, with
their start and duration, so they sit in the buffer in order of their end.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import selectors
import signal
import time
import weakref
from typing import TYPE_CHECKING, Any, NamedTuple

from ..handles import callback_name
from ..instruments import Instrument
from .describe import callback_task, handle_label, is_task, task_label

if TYPE_CHECKING:
    from ..contract import LoopContract

__all__ = ["DEFAULT_MAX_EVENTS", "STEP_KINDS", "TraceEvent", "TraceRecorder"]

#: How many events a recorder keeps by default (the most recent ones).
DEFAULT_MAX_EVENTS = 200_000

#: The kinds of callback, i.e. the ``type`` of a callback's event:
#: ``timer`` (a TimerHandle from call_later/call_at), ``io`` (the reader or
#: writer callback of a descriptor that select() reported ready),
#: ``task-step`` (a task's step or wake-up) and ``callback`` (anything else
#: from call_soon, including futures' done callbacks).
STEP_KINDS = ("callback", "task-step", "io", "timer")


class TraceEvent(NamedTuple):
    """One thing the loop did.

    ``type`` is one of:

    * ``iteration``: one pass of ``_run_once`` (a span); args ``n``, ``wait``,
      ``callbacks``
    * ``wait``: ``select(timeout)`` (a span); args ``timeout``, ``ready``:
      ``((fd, "read"), ...)``
    * one of ``STEP_KINDS``: a callback run (a span); args ``task`` (task
      number) or ``fd``, or nothing
    * ``counters``: queue sizes as an iteration starts; args ``ready``, ``fds``
    * ``timer-fired``: a due timer moved to the ready queue; args ``lateness`` (s)
    * ``timer-scheduled``: ``call_later``/``call_at``; args ``delay`` (s)
    * ``task-created``: a task enters the trace; args ``task``, ``parent``
      and ``first_sight``.  False: ``create_task`` made it, now, and
      ``parent`` is the task that called it (or None).  True: the loop is
      about to run a step or wake-up of a task the recorder had never seen
      (one built directly with ``asyncio.Task(...)``, or created before the
      recorder was attached): its creation time is unknown, so this is the
      time of first sight, and ``parent`` is None (unknown).
    * ``task-finished``: a task is done; args ``task``, ``outcome``, ``exception``
    * ``signal``: a handled signal arrived; args ``signum``
    * ``exception``: the loop reported an error; args ``exception``

    ``duration`` is None for instants.  A span still open when the recorder
    is detached is closed then, with ``partial: True`` in its args.
    """

    type: str
    start: float
    duration: float | None
    name: str
    args: dict[str, Any]


def _mask_name(mask: int) -> str:
    read, write = mask & selectors.EVENT_READ, mask & selectors.EVENT_WRITE
    return "read+write" if read and write else "read" if read else "write"


def outcome(task: Any) -> tuple[str, str | None]:
    """``("result" | "exception" | "cancelled", repr of the exception or None)``.

    Reads ``_exception`` rather than calling ``task.exception()``: that call
    marks the exception as retrieved, and a recorder must not silence the
    "exception was never retrieved" report of the program it watches.
    """
    if task.cancelled():
        return "cancelled", None
    error = getattr(task, "_exception", None)
    if error is not None:
        return "exception", repr(error)
    return "result", None


class TraceRecorder(Instrument):
    """Records the loop's work into a bounded ring buffer of :class:`TraceEvent`.

    ``recorder.attach(loop)`` starts recording, ``recorder.detach()`` stops.
    ``events`` holds the most recent ``max_events`` events; ``dropped``
    counts the older ones that fell out.
    """

    def __init__(self, max_events: int = DEFAULT_MAX_EVENTS) -> None:
        if max_events < 1:
            raise ValueError("max_events must be at least 1")
        self.max_events = max_events
        # Each event is stored flat, as (type, start, duration, name, key1,
        # value1, key2, value2, ...), and turned into a TraceEvent only when
        # read.  Why: the garbage collector stops tracking a plain tuple of
        # numbers and strings at its first look, but never a tuple subclass
        # nor a dict, and a buffer of 200,000 tracked objects made every full
        # collection pause the loop for tens of milliseconds: the recorder
        # would have caused the very stalls it is there to show.
        self._buffer: collections.deque[tuple[Any, ...]] = collections.deque(maxlen=max_events)
        self.dropped = 0
        self.loop: Any = None
        self.start_time = 0.0  # loop.time() at attach
        self.start_wall_time = 0.0  # time.time() at attach
        # Seconds since the start when recording stopped; None while attached.
        self.end_time: float | None = 0.0
        self.pid = os.getpid()
        self.task_mode: str | None = None
        # Tasks get small numbers in order of first mention; weak keys, so a
        # finished task is not kept alive by the trace.  Invariant: a task is
        # in _task_numbers exactly when a task-created event was recorded for
        # it (by create_task or at first sight); a task mentioned before that
        # (the parent of a task created during the parent's eager first step)
        # waits in _unannounced with its number.
        self._task_numbers: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self._unannounced: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self._next_task_number = 1
        # Tasks whose finish a step already recorded (see task_finished).
        self._finished: weakref.WeakSet[Any] = weakref.WeakSet()
        self._iterations = 0
        self._reset_open_spans()

    def _reset_open_spans(self) -> None:
        # What is in progress: at most one iteration, one wait, one callback.
        self._iteration_start: float | None = None
        self._iteration_wait = 0.0
        self._iteration_callbacks = 0
        self._wait_start: float | None = None
        self._wait_timeout: float | None = None
        # (handle, start, kind, name, args, task or None) of the running callback.
        self._step: tuple[Any, float, str, str, dict[str, Any], Any] | None = None
        # id(handle) -> fd, for the reader/writer handles select() just queued.
        self._io_handles: dict[int, int] = {}

    # ------------------------------------------------------------------
    # Attaching
    # ------------------------------------------------------------------

    def attach(self, loop: LoopContract) -> None:
        """Start recording ``loop``; times count from now."""
        if self.loop is not None:
            raise RuntimeError("this recorder is already attached to a loop")
        self.loop = loop
        self._clock = loop.time
        self.start_time = loop.time()
        self.start_wall_time = time.time()
        self.end_time = None
        self.task_mode = getattr(loop, "task_mode", None)
        self._reset_open_spans()
        loop.add_instrument(self)

    def detach(self) -> None:
        """Stop recording; spans still open are closed now and marked partial."""
        loop = self.loop
        if loop is None:
            return
        self._close_open_spans()
        if self in loop.instruments:  # a raising hook may have detached us already
            loop.remove_instrument(self)
        self.end_time = self.now()
        self.loop = None

    def now(self) -> float:
        """Seconds since the recorder was attached, on the loop's clock."""
        return float(self._clock() - self.start_time)

    @property
    def attached(self) -> bool:
        """True while the recorder is attached to a loop."""
        return self.loop is not None

    @property
    def events(self) -> list[TraceEvent]:
        """The events recorded, oldest first (a new list at each access)."""
        return [
            TraceEvent(e[0], e[1], e[2], e[3], dict(zip(e[4::2], e[5::2], strict=True)))
            for e in self._buffer
        ]

    def _add(
        self, kind: str, start: float, duration: float | None, name: str, args: dict[str, Any]
    ) -> None:
        """Record an event (the fields of :class:`TraceEvent`)."""
        if len(self._buffer) == self.max_events:
            self.dropped += 1  # the deque is about to push out its oldest event
        self._buffer.append((kind, start, duration, name, *itertools.chain(*args.items())))

    def _close_open_spans(self) -> None:
        now = self.now()
        if self._step is not None:
            _, start, kind, name, args, _ = self._step
            self._add(kind, start, now - start, name, {**args, "partial": True})
        if self._iteration_start is not None:
            self._finish_iteration(now, partial=True)
        self._reset_open_spans()

    def task_number(self, task: Any) -> int:
        """The small number this trace gives ``task`` (assigned at its first mention)."""
        number = self._task_numbers.get(task)
        if number is None:
            number = self._unannounced.get(task)
            if number is None:
                number = self._unannounced[task] = self._next_task_number
                self._next_task_number += 1
        return number

    def _announce(self, task: Any, parent: Any, *, first_sight: bool) -> int:
        """Record the task-created event of ``task``; its number."""
        number = self._unannounced.pop(task, None)
        if number is None:
            number = self._next_task_number
            self._next_task_number += 1
        self._task_numbers[task] = number
        args = {
            "task": number,
            "parent": self.task_number(parent) if is_task(parent) else None,
            "first_sight": first_sight,
        }
        self._add("task-created", self.now(), None, task_label(task), args)
        return number

    # ------------------------------------------------------------------
    # The iteration: its span, its wait, its callbacks
    # ------------------------------------------------------------------

    def iteration_started(self, loop: LoopContract) -> None:
        """Open the iteration's span; record the ready queue's and the selector's sizes."""
        now = self.now()
        self._iteration_start = now
        self._iteration_wait = 0.0
        self._iteration_callbacks = 0
        self._io_handles.clear()
        sizes = {"ready": len(loop._ready), "fds": len(loop._watches)}
        self._add("counters", now, None, "counters", sizes)

    def wait_started(self, loop: LoopContract, timeout: float | None) -> None:
        """Open the span of the wait in ``select()``."""
        self._wait_start = self.now()
        self._wait_timeout = timeout

    def wait_finished(self, loop: LoopContract, events: list[tuple[int, int]]) -> None:
        """Record the wait and the descriptors it reported ready."""
        start = self._wait_start
        if start is None:  # attached between the two hooks
            return
        self._wait_start = None
        now = self.now()
        self._iteration_wait += now - start
        ready = tuple((fd, _mask_name(mask)) for fd, mask in events)
        args = {"timeout": self._wait_timeout, "ready": ready}
        self._add("wait", start, now - start, "wait", args)
        if events:
            self._remember_io_handles(loop, events)

    def _remember_io_handles(self, loop: LoopContract, events: list[tuple[int, int]]) -> None:
        """Note which handles select() queued, so their callbacks count as ``io``."""
        for fd, mask in events:
            # The selector returned this fd a moment ago: it is watched.
            watch = loop._watches[fd]
            if mask & selectors.EVENT_READ and watch.reader is not None:
                self._io_handles[id(watch.reader)] = fd
            if mask & selectors.EVENT_WRITE and watch.writer is not None:
                self._io_handles[id(watch.writer)] = fd

    def timer_fired(self, loop: LoopContract, handle: Any, lateness: float) -> None:
        """Record a due timer and how late it fired."""
        self._add("timer-fired", self.now(), None, handle_label(handle), {"lateness": lateness})

    def callback_started(self, loop: LoopContract, handle: Any) -> None:
        """Open the callback's span, and name it: a task step, I/O, a timer or a plain callback."""
        # Named now: a callback may cancel its own handle (remove_reader in a
        # reader callback), which drops the handle's reference to it.
        callback = handle._callback
        task = callback_task(callback)
        if task is None:
            kind, args = self._classify(handle)
            name = callback_name(callback)
        else:
            # First sight: a task no create_task reported (built directly, as
            # aiohttp does, or made before we were attached) enters the trace
            # at its first step or wake-up.
            number = self._task_numbers.get(task)
            if number is None:
                number = self._announce(task, None, first_sight=True)
            kind, args = "task-step", {"task": number}
            name = task_label(task)
        self._step = (handle, self.now(), kind, name, args, task)

    def _classify(self, handle: Any) -> tuple[str, dict[str, Any]]:
        """The kind of a callback that is no task's step (see STEP_KINDS), and its fd."""
        if isinstance(handle, asyncio.TimerHandle):
            return "timer", {}
        fd = self._io_handles.get(id(handle))
        if fd is not None:
            return "io", {"fd": fd}
        return "callback", {}

    def callback_finished(self, loop: LoopContract, handle: Any) -> None:
        """Record the callback's span (and the task's finish, if this step ended it)."""
        step = self._step
        if step is None or step[0] is not handle:  # attached while it ran
            return
        self._step = None
        _, start, kind, name, args, task = step
        self._add(kind, start, self.now() - start, name, args)
        self._iteration_callbacks += 1
        if task is not None and task.done():
            # Now, rather than an iteration later; and for a task built
            # directly, the only time: no done callback reports it.
            self._record_finish(task)

    def iteration_finished(self, loop: LoopContract) -> None:
        """Record the iteration's span, with its wait time and its callback count."""
        if self._iteration_start is not None:
            self._finish_iteration(self.now(), partial=False)

    def _finish_iteration(self, now: float, *, partial: bool) -> None:
        start = self._iteration_start
        assert start is not None
        self._iteration_start = None
        self._iterations += 1
        args: dict[str, Any] = {
            "n": self._iterations,
            "wait": self._iteration_wait,
            "callbacks": self._iteration_callbacks,
        }
        if partial:
            args["partial"] = True
        self._add("iteration", start, now - start, f"iteration {self._iterations}", args)

    # ------------------------------------------------------------------
    # Everything else: instants
    # ------------------------------------------------------------------

    def timer_scheduled(self, loop: LoopContract, handle: Any) -> None:
        """Record a new timer and its delay."""
        delay = handle.when() - loop.time()
        self._add("timer-scheduled", self.now(), None, handle_label(handle), {"delay": delay})

    def task_created(self, loop: LoopContract, task: Any, parent: Any) -> None:
        """Record a new task and the task that created it.

        With an eager task factory the task has already run its first step,
        and may even be done: its label then comes without reading its
        coroutine (see ``describe.task_coroutine``).
        """
        if task not in self._task_numbers:
            self._announce(task, parent, first_sight=False)

    def task_finished(self, loop: LoopContract, task: Any) -> None:
        """Record how a task ended, unless its last step did already."""
        # The loop reports this from a done callback, an iteration after the
        # step that finished the task; that step usually recorded it already.
        if task in self._finished:
            self._finished.discard(task)
            return
        self._record_finish(task)

    def _record_finish(self, task: Any) -> None:
        self._finished.add(task)
        result, error = outcome(task)
        args = {"task": self.task_number(task), "outcome": result, "exception": error}
        self._add("task-finished", self.now(), None, task_label(task), args)

    def signal_received(self, loop: LoopContract, signum: int) -> None:
        """Record a handled signal, by name."""
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        self._add("signal", self.now(), None, name, {"signum": signum})

    def exception_reported(self, loop: LoopContract, context: dict[str, Any]) -> None:
        """Record an error the loop reported: its message and exception."""
        message = str(context.get("message") or "Unhandled exception in event loop")
        error = context.get("exception")
        args = {"exception": repr(error) if error is not None else None}
        self._add("exception", self.now(), None, message, args)
