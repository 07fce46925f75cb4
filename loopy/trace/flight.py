"""The flight recorder: the loop's last seconds, kept in memory, cheap enough to leave on.

A trace (``recorder.py``) records everything through the instrument hooks
and costs several times the loop's own work; you turn it on to look at a
problem you can reproduce.  The flight recorder is for the problem you
cannot: it keeps recording, in bounded memory, and a dump written when
something goes wrong (a stall, or ``loopy trace dump PID``) shows the
seconds that led to it, in the same trace format as ``--trace``.

What it records: every iteration, every wait in ``select()`` and the
descriptors it found ready, every callback and task step (with what it
runs), how late each timer fired, and when tasks were created, first seen
and finished.  How, cheaply:

* **Inline, not through hooks.**  ``Loop._run_once`` checks ``self._flight``
  three times per iteration; when it is set, step 4 (running the ready
  callbacks) is :meth:`FlightRecorder.run_ready`, the same loop with the
  recording written into it.  One clock read per callback: a callback
  starts when the one before it ended (the loop's few instructions in
  between count as the callback's).
* **Numbers only.**  The ring is one preallocated ``array('d')`` of
  four-number slots ``(code, end, start, extra)``: ``code`` is
  ``name * 16 + kind``, where ``name`` indexes :attr:`FlightRecorder.names`
  (interned once per function: the key is its code object) or, for a task
  step, ``extra`` is the task's number.  No handle, callback or task is
  referenced from the ring: a task dies when the program drops it, and
  "Task exception was never retrieved" or a ResourceWarning comes when it
  would without the recorder.  Tasks are numbered by ``id()`` with a weak
  reference that forgets the number when the task dies.
* **Names at dump time.**  Turning numbers into names and trace events
  happens in :meth:`FlightSnapshot.write`, which the loop's thread never
  runs: :meth:`FlightRecorder.snapshot` only copies the used part of the
  ring (a ``memcpy``) and a few fields.

Bounds: the ring starts small and doubles when it wraps while its oldest
event is still inside the window, up to ``max_bytes`` (64 MiB by default,
two million events).  A dump covers the last ``seconds`` or what the cap
holds, whichever is shorter, and says which (``otherData.flight_recorder``).

Dump on stall: with a threshold, a watchdog thread (:class:`_Watchdog`)
looks at the step running now (``running``, the start time the loop
publishes before each callback) every quarter threshold; while one runs
over the threshold it samples the loop thread's Python stack from
``sys._current_frames()``.  When the step ends, the loop's thread takes a
snapshot and the watchdog writes it, with the stalled step, its task and the
stack (:attr:`otherData.stall`).  A step still running after ten times the
threshold is dumped by the watchdog itself, marked unfinished.  At most one
file per 10 s and 20 per process (:class:`DumpLimiter`).
"""

from __future__ import annotations

import datetime
import functools
import logging
import math
import os
import queue
import sys
import threading
import time
import traceback
import types
import weakref
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from ..handles import TimerHandle, callback_name
from ..loop import FLIGHT_ENV, STALL_ENV
from .describe import callback_task, is_task, task_label
from .export import write_trace
from .recorder import TraceRecorder, outcome

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_SECONDS",
    "DUMP_DIR_ENV",
    "FLIGHT_ENV",
    "STALL_ENV",
    "DumpLimiter",
    "FlightRecorder",
    "FlightSnapshot",
    "flight_from_environment",
]

logger = logging.getLogger("loopy")

#: The environment variables (names fixed: checks outside this repository use them).
DUMP_DIR_ENV = "LOOPY_DUMP_DIR"

#: The window when none is given (``LOOPY_DUMP_ON_STALL`` alone uses it).
DEFAULT_SECONDS = 10.0
#: The most memory the ring may take.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024

# A slot is four doubles: (code, end, start, extra).  Integers up to 2**53
# are exact in a double, far more than any count here reaches.
SLOT = 4
_SLOT_BYTES = SLOT * 8
# The ring's first size, in events (512 KiB); it doubles as needed.
_INITIAL_EVENTS = 16_384
# At most this many distinct callback names; later ones are "<other>".
MAX_NAMES = 20_000

# Kinds: the low four bits of a slot's code.
K_CALLBACK, K_TASK_STEP, K_IO, K_TIMER = 0, 1, 2, 3
K_WAIT, K_READY, K_ITERATION = 4, 5, 6
K_TASK_CREATED, K_TASK_SEEN, K_TASK_DONE = 7, 8, 9
_STEP_KIND_NAMES = {K_CALLBACK: "callback", K_TASK_STEP: "task-step", K_IO: "io", K_TIMER: "timer"}
_OUTCOMES = ("result", "exception", "cancelled")

# The types a callback usually is, for the cheap key of its name.
_METHOD = types.MethodType
_FUNCTION = types.FunctionType
_BUILTIN = types.BuiltinMethodType
_PARTIAL = functools.partial

#: The stall dumps: one file per this many seconds at most, and at most
#: ``MAX_DUMPS`` per process (a program that stalls all day must not fill a disk).
DUMP_INTERVAL = 10.0
MAX_DUMPS = 20


class DumpLimiter:
    """At most one dump per ``interval`` seconds and ``limit`` per process (thread-safe)."""

    def __init__(
        self,
        interval: float = DUMP_INTERVAL,
        limit: int = MAX_DUMPS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.limit = limit
        self.clock = clock
        self.written = 0
        self._last: float | None = None
        self._lock = threading.Lock()

    def allow(self) -> bool:
        """True, and count one dump, if a dump may be written now."""
        with self._lock:
            now = self.clock()
            if self.written >= self.limit:
                return False
            if self._last is not None and now - self._last < self.interval:
                return False
            self._last = now
            self.written += 1
            return True


#: The process's limiter: every loop's stall dumps count against it.
limiter = DumpLimiter()


class FlightRecorder:
    """The ring of one loop's recent events; see the module docstring.

    Start it with ``loop.start_flight_recorder(seconds)``; the loop calls
    :meth:`wait_started`, :meth:`waited` and :meth:`run_ready` from
    ``_run_once`` and :meth:`task_created` from ``create_task``.

    Invariants: ``buf`` holds ``capacity`` slots; ``i`` is the index of the
    next one to write (a multiple of :data:`SLOT`), and once ``wrapped`` the
    slots from ``i`` on are older than those before it.  ``running`` is the
    start time of the callback running now, -1.0 between callbacks;
    ``step_code``/``step_extra`` describe it.
    """

    def __init__(
        self,
        loop: Any,
        seconds: float = DEFAULT_SECONDS,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        dump_on_stall: float | None = None,
        dump_dir: str | PathLike[str] | None = None,
    ) -> None:
        self.seconds = _positive("seconds", seconds)
        if max_bytes < 64 * _SLOT_BYTES:
            raise ValueError(f"max_bytes must be at least {64 * _SLOT_BYTES}, not {max_bytes}")
        self.max_events = max_bytes // _SLOT_BYTES
        self.capacity = min(_INITIAL_EVENTS, self.max_events)
        self.buf = array("d", bytes(self.capacity * _SLOT_BYTES))
        self.end = self.capacity * SLOT
        self.i = 0
        self.wrapped = False
        self._loop = weakref.ref(loop)
        self.clock: Callable[[], float] = loop._clock
        self.pid = os.getpid()
        self.started = self.clock()  # nothing is older: a dump begins here at the earliest
        self.task_mode: str | None = getattr(loop, "task_mode", None)
        self.iterations = 0
        self.wait_start = 0.0
        # The io handles step 2 queued this iteration: their position in the
        # ready queue starts at io_from, and io_fds has each one's descriptor.
        self.io_from = 0
        self.io_fds: list[int] = []
        self.running = -1.0
        self.step_code = 0
        self.step_extra = 0.0
        # Names: key (a code object, a type, a builtin's name) -> index in
        # ``names``, or -1 for a task's step or wake-up (named by its task).
        self.names: list[str] = ["<other>"]
        self._name_index: dict[Any, int] = {}
        # Tasks: id(task) -> number while the task lives (a weak reference
        # with a callback forgets it); number -> label, kept until the task
        # has been dead longer than the window (see _forget_old_tasks).
        self._task_numbers: dict[int, int] = {}
        self._task_refs: dict[int, weakref.ref[Any]] = {}
        self.task_labels: dict[int, str] = {}
        self._dead_tasks: deque[tuple[float, int]] = deque()
        self._next_task = 1
        # Dump on stall (None: off).
        self.stall_after = math.inf
        self.dump_dir = Path(dump_dir) if dump_dir is not None else Path.cwd()
        self._watchdog: _Watchdog | None = None
        if dump_on_stall is not None:
            self.stall_after = _positive("dump_on_stall", dump_on_stall)
            self._watchdog = _Watchdog(self, loop)

    # ------------------------------------------------------------------
    # Writing (the loop's thread)
    # ------------------------------------------------------------------

    def wrap(self) -> int:
        """The ring is full: grow it if its oldest event is still wanted, else start over."""
        buf, capacity = self.buf, self.capacity
        oldest = buf[self.i + 1] if self.wrapped else buf[1]  # (its end: every event has one)
        if capacity < self.max_events and oldest >= self.clock() - self.seconds:
            grown = min(capacity * 2, self.max_events)
            if self.wrapped:  # put the slots in order first: oldest at 0
                buf = buf[self.i :] + buf[: self.i]
            buf.frombytes(bytes((grown - capacity) * _SLOT_BYTES))
            self.buf, self.capacity, self.end = buf, grown, grown * SLOT
            self.wrapped = False
            self.i = capacity * SLOT
            return self.i
        self.wrapped = True
        self.i = 0
        return 0

    def add(self, code: float, end: float, start: float, extra: float) -> None:
        """Write one event (the slow path; run_ready writes its own inline)."""
        i = self.i
        if i >= self.end:
            i = self.wrap()
        buf = self.buf
        buf[i] = code
        buf[i + 1] = end
        buf[i + 2] = start
        buf[i + 3] = extra
        self.i = i + SLOT

    def wait_started(self) -> None:
        """Step 2 is about to wait in ``select()``."""
        self.wait_start = self.clock()

    def waited(self, loop: Any, timeout: float | None, polled: list[tuple[int, int]]) -> None:
        """``select()`` returned ``polled``: record the wait, and which descriptors were ready.

        Called before step 2 queues their handles, so that :meth:`run_ready`
        knows which handles of the ready queue are I/O, and for which
        descriptor: it replays step 2's rule here.
        """
        now = self.clock()
        ready = loop._ready
        watches = loop._watches
        counts = min(len(ready), 0xFFFFFF) * 16 + len(watches) * (1 << 28)
        self.add(K_WAIT + counts, now, self.wait_start, -1.0 if timeout is None else timeout)
        self.io_from = len(ready)
        fds = self.io_fds = []
        if polled:
            _, readable, writable = loop._readiness
            for fd, events in polled:
                watch = watches[fd]
                mask = 0
                if events & readable and watch.reader is not None:
                    fds.append(fd)
                    mask = 1
                if events & writable and watch.writer is not None:
                    fds.append(fd)
                    mask |= 2
                if mask:
                    self.add(K_READY + mask * 16, now, now, fd)

    def run_ready(self, loop: Any, hooks: Any) -> None:
        """Step 4 of ``_run_once``, recorded: run exactly the callbacks that are ready now.

        The same loop as the unrecorded one in ``Loop._run_once`` (keep the
        two alike), with each callback's end time, name and task or
        descriptor written into the ring.  See the module docstring.
        """
        ready = loop._ready
        popleft = ready.popleft
        clock = self.clock
        names_get = self._name_index.get
        tasks_get = self._task_numbers.get
        io_from = self.io_from
        io_fds = self.io_fds
        io_end = io_from + len(io_fds)
        stall_after = self.stall_after
        observed = loop._debug or (hooks is not None and hooks.watches_callbacks)
        buf = self.buf
        count = 0
        t_prev = clock()
        try:
            for k in range(len(ready)):
                handle = popleft()
                if handle._cancelled:
                    continue
                callback = handle._callback
                # The key of its name: cheap to find, and never the callback
                # itself (that would keep a closure, and what it holds, alive).
                kind = type(callback)
                if kind is _METHOD:
                    key = callback.__func__.__code__
                elif kind is _FUNCTION:
                    key = callback.__code__
                elif kind is _BUILTIN:
                    key = callback.__name__
                elif kind is _PARTIAL:
                    key = _partial_key(callback)
                else:
                    key = kind
                code = names_get(key)
                if code is None:
                    code = self._intern(key, callback)
                task = None
                if code < 0:
                    task = callback.__self__
                    extra: float = tasks_get(id(task)) or self._first_sight(task)
                    code = K_TASK_STEP
                elif k < io_from:
                    code = code * 16
                    extra = 0.0
                elif k < io_end:
                    code = code * 16 + K_IO
                    extra = io_fds[k - io_from]
                elif type(handle) is TimerHandle:
                    code = code * 16 + K_TIMER
                    extra = handle._when
                else:
                    code = code * 16
                    extra = 0.0
                self.step_code = code
                self.step_extra = extra
                self.running = t_prev
                if observed:
                    started = loop._callback_starting(handle)
                try:
                    if handle._args:
                        handle._context.run(callback, *handle._args)
                    else:
                        handle._context.run(callback)
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    loop._callback_failed(handle, exc)
                if observed:
                    loop._callback_finished(handle, started)
                t = clock()
                self.running = -1.0
                i = self.i
                if i >= self.end:
                    i = self.wrap()
                    buf = self.buf
                buf[i] = code
                buf[i + 1] = t
                buf[i + 2] = t_prev
                buf[i + 3] = extra
                self.i = i + SLOT
                count += 1
                if task is not None and task.done():
                    self._task_done(task, extra)
                if t - t_prev > stall_after:
                    self._stalled(code, t_prev, t, extra)
                t_prev = t
        finally:
            self.running = -1.0
            # (As in _run_once: a traceback through a callback keeps this
            # frame, and these would make reference cycles.)
            handle = callback = task = None  # type: ignore[assignment]
        self.iterations += 1
        self.add(K_ITERATION + self.iterations * 16, t_prev, self.wait_start, count)

    # ------------------------------------------------------------------
    # Names and tasks (slow paths: once per function, once per task)
    # ------------------------------------------------------------------

    def _intern(self, key: Any, callback: Any) -> int:
        """The index of ``callback``'s name (-1 for a task step), remembered under ``key``."""
        if callback_task(callback) is not None:
            self._name_index[key] = -1
            return -1
        if len(self.names) >= MAX_NAMES:
            return 0
        index = len(self.names)
        self.names.append(callback_name(callback))
        self._name_index[key] = index
        return index

    def _number(self, task: Any, kind: int, parent: int) -> int:
        number = self._next_task
        self._next_task += 1
        task_id = id(task)
        self._task_numbers[task_id] = number

        def forget(_: Any, task_id: int = task_id, number: int = number) -> None:
            # (Any thread, at any moment the task is collected.)
            self._task_numbers.pop(task_id, None)
            self._task_refs.pop(number, None)
            self._dead_tasks.append((self.clock(), number))

        try:
            self._task_refs[number] = weakref.ref(task, forget)
        except TypeError:  # pragma: no cover - every Task loopy meets takes weak references
            pass
        self.task_labels[number] = task_label(task)
        self.add(K_TASK_CREATED if kind else K_TASK_SEEN, self.clock(), parent, number)
        self._forget_old_tasks()
        return number

    def _first_sight(self, task: Any) -> int:
        """A task the recorder had not seen (built directly, or before it started)."""
        return self._number(task, 0, 0)

    def task_created(self, task: Any, parent: Any) -> None:
        """``create_task`` made ``task``, from ``parent`` (a task, or None)."""
        if id(task) in self._task_numbers or task.done():
            return  # seen already (an eager first step), or done before we could look
        parent_number = self._task_numbers.get(id(parent), 0) if is_task(parent) else 0
        self._number(task, 1, parent_number)

    def _task_done(self, task: Any, number: float) -> None:
        result, error = outcome(task)
        name = 0
        if error is not None:  # named by its type: reprs are too many to keep
            kind = type(task._exception)
            name = self._name_index.get(kind, 0)
            if not name and len(self.names) < MAX_NAMES:
                name = self._name_index[kind] = len(self.names)
                self.names.append(kind.__qualname__)
        code = name * 16 + K_TASK_DONE
        self.add(code, self.clock(), _OUTCOMES.index(result), number)

    def _forget_old_tasks(self) -> None:
        """Drop the labels of tasks dead for longer than the window: no dump can name them."""
        dead = self._dead_tasks
        horizon = self.clock() - self.seconds - 1.0
        while dead and dead[0][0] < horizon:
            self.task_labels.pop(dead.popleft()[1], None)

    # ------------------------------------------------------------------
    # Snapshots and stalls
    # ------------------------------------------------------------------

    def snapshot(self) -> FlightSnapshot:
        """A copy of the recording, quick enough to take on the loop's thread.

        Copies the used slots of the ring, in order (one ``memcpy`` or
        two); the names and task labels are shared, not copied (the loop
        only ever adds to ``names``; a task label it drops meanwhile is
        that of a task dead for longer than the window).  Everything else
        happens in :meth:`FlightSnapshot.write`, on any thread.
        """
        i = self.i
        slots = self.buf[i:] + self.buf[:i] if self.wrapped else self.buf[:i]
        running = None
        start = self.running
        if start >= 0:
            running = (self.step_code, start, self.step_extra)
        return FlightSnapshot(
            slots=slots,
            names=self.names,
            task_labels=self.task_labels,
            now=self.clock(),
            wall=time.time(),
            seconds=self.seconds,
            started=self.started,
            full=self.wrapped,
            pid=self.pid,
            task_mode=self.task_mode,
            running=running,
        )

    def _stalled(self, code: float, start: float, end: float, extra: float) -> None:
        """A step held the loop longer than the threshold: dump, unless dumped or limited."""
        watchdog = self._watchdog
        if watchdog is None or watchdog.dumped == start or not limiter.allow():
            return
        snap = self.snapshot()
        snap.stall = watchdog.stall_info(code, start, end, extra, unfinished=False)
        watchdog.jobs.put(snap)

    def stop(self) -> None:
        """Stop the watchdog thread, if any (the loop forgets the recorder itself)."""
        if self._watchdog is not None:
            self._watchdog.jobs.put(None)
            self._watchdog = None

    def step_name(self, code: float, extra: float) -> tuple[str, str | None]:
        """The name of a step from its code and extra, and its task's label (or None)."""
        kind, name = int(code) & 15, int(code) >> 4
        if kind == K_TASK_STEP:
            label = self.task_labels.get(int(extra), f"Task #{int(extra)}")
            return label, label
        return self.names[name] if name < len(self.names) else "<other>", None


def _partial_key(callback: Any) -> Any:
    """The key of a ``functools.partial``'s name: that of the function it wraps."""
    while isinstance(callback, functools.partial):
        callback = callback.func
    code = getattr(getattr(callback, "__func__", callback), "__code__", None)
    return ("partial", code if code is not None else type(callback))


def _positive(what: str, value: float) -> float:
    """``value`` as a number of seconds, or ValueError: finite and above zero."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number of seconds, not {value!r}") from None
    if not (0 < seconds < math.inf):
        raise ValueError(f"{what} must be more than 0 seconds and finite, not {value!r}")
    return seconds


# ----------------------------------------------------------------------
# Snapshots: from numbers to a trace (off the loop's thread)
# ----------------------------------------------------------------------


@dataclass
class FlightSnapshot:
    """A copy of a recorder's ring at one moment: :meth:`write` makes it a trace file."""

    slots: array[float]
    names: list[str]
    task_labels: dict[int, str]
    now: float  # loop time of the snapshot
    wall: float  # time.time() at the same moment
    seconds: float  # the window asked for
    started: float  # loop time the recorder started
    full: bool  # the ring had wrapped: older events were overwritten
    pid: int
    task_mode: str | None
    running: tuple[float, float, float] | None  # (code, start, extra) of a step in progress
    stall: dict[str, Any] | None = field(default=None)

    @property
    def start(self) -> float:
        """Loop time where the dump begins: the window's start, or the oldest event kept."""
        begin = max(self.now - self.seconds, self.started)
        if self.full and len(self.slots) >= SLOT:
            begin = max(begin, self.slots[1])
        return begin

    def records(self) -> Iterator[tuple[Any, ...]]:
        """The events of the window as the trace recorder's records (times from :attr:`start`)."""
        slots, begin = self.slots, self.start
        pending_wait: list[Any] | None = None
        wait_seconds = 0.0
        for i in range(0, len(slots), SLOT):
            code, end, start, extra = int(slots[i]), slots[i + 1], slots[i + 2], slots[i + 3]
            kind, name = code & 15, code >> 4
            if kind == K_READY:
                if pending_wait is not None:
                    mask = "read+write" if name == 3 else "read" if name == 1 else "write"
                    pending_wait[-1].append((int(extra), mask))
                continue
            if pending_wait is not None:
                yield (*pending_wait[:-1], tuple(pending_wait[-1]))
                pending_wait = None
            if kind in (K_TASK_CREATED, K_TASK_SEEN, K_TASK_DONE):
                if end < begin:
                    continue
            elif start < begin:
                continue
            t0 = start - begin
            if kind <= K_TIMER:
                yield self._step(kind, name, t0, end - start, extra, start)
            elif kind == K_WAIT:
                ready, fds = name & 0xFFFFFF, name >> 24
                yield ("counters", t0, None, "counters", "ready", ready, "fds", fds)
                timeout = None if extra < 0 else extra
                wait_seconds = end - start
                pending_wait = ["wait", t0, end - start, "wait", "timeout", timeout, "ready", []]
            elif kind == K_ITERATION:
                yield (
                    "iteration", t0, end - start, f"iteration {name}",
                    "n", name, "wait", wait_seconds, "callbacks", int(extra),
                )  # fmt: skip
                wait_seconds = 0.0
            elif kind in (K_TASK_CREATED, K_TASK_SEEN):
                number = int(extra)
                parent = int(start) or None
                yield (
                    "task-created", end - begin, None, self._task(number),
                    "task", number, "parent", parent, "first_sight", kind == K_TASK_SEEN,
                )  # fmt: skip
            elif kind == K_TASK_DONE:
                number = int(extra)
                error = self.names[name] if name else None
                yield (
                    "task-finished", end - begin, None, self._task(number),
                    "task", number, "outcome", _OUTCOMES[int(start)], "exception", error,
                )  # fmt: skip
        if pending_wait is not None:
            yield (*pending_wait[:-1], tuple(pending_wait[-1]))
        if self.running is not None:
            code_f, start, extra = self.running
            kind, name = int(code_f) & 15, int(code_f) >> 4
            step = self._step(kind, name, start - begin, self.now - start, extra, start)
            yield (*step, "partial", True)
        if self.stall is not None:
            stall = self.stall
            yield (
                "stall", stall["started"] - begin, None, stall["step"],
                "duration_ms", stall["duration_ms"], "unfinished", stall["unfinished"],
                "task", stall["task"],
            )  # fmt: skip

    def _task(self, number: int) -> str:
        return self.task_labels.get(number, f"Task #{number}")

    def _step(
        self, kind: int, name: int, t0: float, duration: float, extra: float, start: float
    ) -> tuple[Any, ...]:
        if kind == K_TASK_STEP:
            number = int(extra)
            return ("task-step", t0, duration, self._task(number), "task", number)
        label = self.names[name] if name < len(self.names) else "<other>"
        if kind == K_IO:
            return ("io", t0, duration, label, "fd", int(extra))
        if kind == K_TIMER:
            return ("timer", t0, duration, label, "lateness", start - extra)
        return ("callback", t0, duration, label)

    def recorder(self) -> TraceRecorder:
        """The snapshot as a detached :class:`TraceRecorder`, for the exporter and the summary."""
        records: list[tuple[Any, ...]] = []
        for record in self.records():
            if record[0] == "timer":  # the firing, then the callback, as the recorder has them
                records.append(("timer-fired", record[1], None, record[3], *record[4:]))
                records.append(record[:4])
            else:
                records.append(record)
        recorder = TraceRecorder(max(1, len(records)))
        recorder._buffer.extend(records)
        recorder.pid = self.pid
        recorder.task_mode = self.task_mode
        recorder.start_time = 0.0
        span = self.now - self.start
        recorder.start_wall_time = self.wall - span
        recorder.end_time = span
        return recorder

    def other_data(self) -> dict[str, Any]:
        """What the dump says about itself: the span it covers, and the stall if any."""
        span = self.now - self.start
        info: dict[str, Any] = {
            "window_s": self.seconds,
            "span_s": span,
            "limited_by": "memory" if span < self.seconds - 1e-9 and self.full else "seconds",
            "recording_since_s": self.now - self.started,
            "events": len(self.slots) // SLOT,
            "dumped_at_iso": datetime.datetime.fromtimestamp(self.wall, datetime.UTC).isoformat(),
        }
        other: dict[str, Any] = {"flight_recorder": info}
        if self.stall is not None:
            stall = dict(self.stall)
            stall["started_ms"] = round((stall.pop("started") - self.start) * 1e6) / 1e3
            other["stall"] = stall
        return other

    def write(self, path: str | PathLike[str]) -> Path:
        """Write the snapshot as a trace file (the format of ``--trace``); return the path."""
        return write_trace(self.recorder(), path, extra=self.other_data())


# ----------------------------------------------------------------------
# The watchdog: stall dumps
# ----------------------------------------------------------------------


class _Watchdog:
    """A thread that watches the running step and writes the stall dumps.

    It holds the recorder and the loop weakly, and ends when either is
    gone or the loop is closed, or when :meth:`FlightRecorder.stop` says so.
    """

    def __init__(self, flight: FlightRecorder, loop: Any) -> None:
        self.flight = weakref.ref(flight)
        self.loop = weakref.ref(loop)
        self.threshold = flight.stall_after
        self.period = min(max(self.threshold / 4, 0.005), 0.25)
        self.jobs: queue.SimpleQueue[FlightSnapshot | None] = queue.SimpleQueue()
        # The start time of the step being watched, its latest stack sample,
        # and the start of the step the watchdog dumped itself (never twice).
        self.sampled: tuple[float, list[str]] | None = None
        self.dumped = -1.0
        self.thread = threading.Thread(target=self.run, name="loopy-flight-watchdog", daemon=True)
        self.thread.start()

    def run(self) -> None:
        while True:
            try:
                job = self.jobs.get(timeout=self.period)
            except queue.Empty:
                job = None
                if not self.watch():
                    return
            else:
                if job is None:
                    return
                self.write(job)

    def watch(self) -> bool:
        """Look at the step running now; False when there is nothing left to watch."""
        flight, loop = self.flight(), self.loop()
        if flight is None or loop is None or loop.is_closed() or flight._watchdog is not self:
            return False
        start = flight.running
        if start < 0:
            return True
        took = flight.clock() - start
        if took <= self.threshold:
            return True
        thread_id = loop._thread_id
        frame = sys._current_frames().get(thread_id) if thread_id is not None else None
        if frame is not None and flight.running == start:
            stack = [
                f"{entry.filename}:{entry.lineno} in {entry.name}"
                for entry in traceback.extract_stack(frame, limit=40)
            ]
            self.sampled = (start, stack)
        del frame
        if took > 10 * self.threshold and self.dumped != start and flight.running == start:
            self.dumped = start
            if limiter.allow():
                snap = flight.snapshot()
                if snap.running is not None:
                    code, start, extra = snap.running
                    snap.stall = self.stall_info(code, start, snap.now, extra, unfinished=True)
                    self.write(snap)
        return True

    def stall_info(
        self, code: float, start: float, end: float, extra: float, *, unfinished: bool
    ) -> dict[str, Any]:
        """The stall, for ``otherData.stall`` and the stall's mark in the trace."""
        flight = self.flight()
        name, task = flight.step_name(code, extra) if flight is not None else ("?", None)
        sampled = self.sampled
        stack = sampled[1] if sampled is not None and sampled[0] == start else []
        return {
            "step": name,
            "task": task,
            "started": start,
            "duration_ms": round((end - start) * 1e6) / 1e3,
            "threshold_ms": round(self.threshold * 1e6) / 1e3,
            "unfinished": unfinished,
            "stack": stack,
        }

    def write(self, snap: FlightSnapshot) -> None:
        flight = self.flight()
        directory = flight.dump_dir if flight is not None else Path.cwd()
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(snap.wall))
        path = directory / f"loopy-stall-{snap.pid}-{stamp}-{limiter.written}.json"
        stall = snap.stall or {}
        try:
            snap.write(path)
        except OSError as exc:
            logger.warning("loopy: could not write the stall dump %s: %s", path, exc)
            return
        what = "still blocked after" if stall.get("unfinished") else "blocked for"
        logger.warning(
            "loopy: the loop was %s %.3f s by %s; the last %.1f s are in %s",
            what,
            stall.get("duration_ms", 0) / 1e3,
            stall.get("step"),
            snap.now - snap.start,
            path,
        )


# ----------------------------------------------------------------------
# The environment
# ----------------------------------------------------------------------


def _seconds_from(variable: str) -> float | None:
    """``$variable`` as seconds; None if unset, or bad (with one warning naming it)."""
    text = os.environ.get(variable)
    if not text:
        return None
    try:
        return _positive(variable, text)
    except ValueError:
        logger.warning(
            "loopy: ignoring $%s=%s: expected a number of seconds above 0 (it stays off)",
            variable,
            text,
        )
        return None


def flight_from_environment(loop: Any) -> FlightRecorder | None:
    """Start ``loop``'s recorder as ``LOOPY_FLIGHT_RECORDER``/``LOOPY_DUMP_ON_STALL`` say.

    A bad value is one warning on the ``loopy`` logger naming the variable,
    and that feature stays off; so is a ``LOOPY_DUMP_DIR`` that is not a
    writable directory (the stall dumps stay off).
    """
    seconds = _seconds_from(FLIGHT_ENV)
    stall = _seconds_from(STALL_ENV)
    directory = os.environ.get(DUMP_DIR_ENV) or None
    if stall is not None and directory is not None and not _writable_dir(directory):
        logger.warning(
            "loopy: ignoring $%s: $%s=%s is not a writable directory",
            STALL_ENV,
            DUMP_DIR_ENV,
            directory,
        )
        stall = None
    if seconds is None and stall is None:
        return None
    recorder: FlightRecorder = loop.start_flight_recorder(
        seconds if seconds is not None else DEFAULT_SECONDS,
        dump_on_stall=stall,
        dump_dir=directory,
    )
    return recorder


def _writable_dir(path: str) -> bool:
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)
