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

* **Called by the loop, not through hooks.**  ``Loop._run_once`` reads
  ``self._flight`` once per iteration; when it is set, its step 4 calls
  :meth:`FlightRecorder.waited` once, and :meth:`~FlightRecorder.starting`
  and :meth:`~FlightRecorder.finished` around each callback: three plain
  method calls, where an instrument hook costs a dispatch through
  ``Hooks`` per callback.
* **A descriptor's step is named once.**  An I/O handle
  (``handles.IOHandle``) serves its descriptor until it is removed; the
  recorder keeps the step's whole code in it the first time it runs.
* **Two numbers per callback.**  The ring is one preallocated
  ``array('d')`` of two-number slots ``(code, time)``, written through a
  ``memoryview`` (an array's own item assignment costs twice as much).
  ``code`` packs what happened into an integer below 2**53 (exact in a
  double): its kind in the low 4 bits, the index of its name in the
  process's :class:`NameTable` in the next 16, and a number that belongs
  to it above them (a task's number, a descriptor and direction, a timer's
  lateness in microseconds).  ``time`` is when it ended; a callback began
  when the step before it in its iteration ended (the loop's few
  instructions in between count as the callback's): one clock read per
  callback.
* **No references.**  Names are interned once per function (the key is the
  id of its code object, which is kept alive so that the id stays unique).
  No handle, callback or task is referenced from the ring: a task dies
  when the program drops it, and "Task exception was never retrieved" or
  a ResourceWarning comes when it would without the recorder.  Tasks are
  numbered by ``id()`` with a weak reference that forgets the number when
  the task dies.
* **Names and events at dump time.**  A snapshot only copies the window's
  part of the ring (:func:`copy_recent`: a chunk at a time, from any
  thread, the loop running between two chunks); turning numbers into
  names and trace events happens in :meth:`FlightSnapshot.write`, on any
  thread, or in another process (``loopy trace dump`` encodes in the
  client, from :meth:`FlightRecorder.wire_snapshot`).

Bounds: the ring's memory, ``max_bytes`` (64 MiB by default, four million
events), is reserved at once but given pages by the kernel only as they
are first written.  The ring uses its first 256 KiB, and doubles that (by
moving its end: nothing is copied, the loop is not held) when it fills
while its oldest event is still inside the window.  A dump covers the last ``seconds`` or what
the ring holds, whichever is shorter, and says which
(``otherData.flight_recorder``).

Stalls: a step longer than ``stall_after`` (100 ms, or the dump threshold)
is counted, and the newest five are kept, for ``loopy top``.

Dump on stall: with a threshold, a watchdog thread (:class:`_Watchdog`)
looks at the step running now (:meth:`FlightRecorder.running`: the code
:meth:`~FlightRecorder.starting` publishes, since the last step's end)
every quarter threshold; while one runs over the threshold it samples the
loop thread's Python stack from ``sys._current_frames()``.  When the step
ends, the loop's thread takes a
snapshot and the watchdog writes it, with the stalled step, its task and
the stack (``otherData.stall``).  A step still running after ten times the
threshold is dumped by the watchdog itself, marked unfinished.  At most one
file per 10 s and 20 per process (:class:`DumpLimiter`).
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
import math
import mmap
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
from typing import TYPE_CHECKING, Any

from ..handles import Handle, IOHandle, TimerHandle, callback_name
from ..loop import FLIGHT_ENV, STALL_ENV
from .describe import callback_task, is_task, task_label
from .export import write_trace
from .recorder import TraceRecorder, outcome

if TYPE_CHECKING:
    from ..contract import LoopContract

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_SECONDS",
    "DUMP_DIR_ENV",
    "DumpLimiter",
    "FlightRecorder",
    "FlightSnapshot",
    "NameTable",
    "copy_recent",
    "flight_from_environment",
    "recent_activity",
]

logger = logging.getLogger("loopy")

#: Where stall dumps go (default: the current directory).
DUMP_DIR_ENV = "LOOPY_DUMP_DIR"

#: The window when none is given (``LOOPY_DUMP_ON_STALL`` alone uses it).
DEFAULT_SECONDS = 10.0
#: The most memory the ring may take.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024

# A slot is two doubles, (code, time); see the module docstring.
SLOT = 2
_SLOT_BYTES = SLOT * 8
# The ring's first size, in events; it doubles as needed.
_INITIAL_EVENTS = 16_384
# At most this many distinct names (16 bits); later ones are "<other>".
MAX_NAMES = 50_000
# code = kind | name << 4 | number << 20; the number has 33 bits.
_NAME_SHIFT = 4
_NUMBER_SHIFT = 20
_NUMBER = 1 << _NUMBER_SHIFT
_MAX_NUMBER = (1 << 33) - 1

# Kinds: the low four bits of a slot's code.  The first four are steps.
K_CALLBACK, K_TASK_STEP, K_IO, K_TIMER = 0, 1, 2, 3
# An iteration begins with its wait: two slots, (K_WAIT, start) and
# (K_WAITED, end) whose number is the timeout in microseconds plus one (0:
# none; at most _MAX_TIMEOUT).  It ends with the last step before the next
# wait.  (Every slot says what it is: a copy that begins with a wait's
# second half is read correctly.)
K_WAIT, K_WAITED = 4, 5
_MAX_TIMEOUT = (_MAX_NUMBER - 1) / 1e6  # 2.4 hours
K_TASK_CREATED, K_TASK_SEEN, K_TASK_DONE = 7, 8, 9  # number: the task's
# More about the event before: a parent task's number, an outcome...
K_ARG = 10
K_PAD = 11  # nothing: a slot left at the end of the ring
_OUTCOMES = ("result", "exception", "cancelled")
# (An I/O step's number is its handle's ``_io``: descriptor * 4 + 1 (read) or 2 (write).)

# The types a callback usually is, for the cheap key of its name.
_METHOD = types.MethodType
_FUNCTION = types.FunctionType
_BUILTIN = types.BuiltinMethodType
_PARTIAL = functools.partial

#: A step longer than this is a stall (the recorder lists the newest
#: ``STALLS_KEPT``), unless ``dump_on_stall`` sets another threshold.
STALL_AFTER = 0.1
STALLS_KEPT = 5

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


class NameTable:
    """The names of the steps, by index, shared by every recorder in the process.

    Shared, because an I/O handle keeps its code (its name's index in it)
    for as long as it lives (``IOHandle._flight_code``), across recorders.
    ``index`` maps a callback's key (see :meth:`FlightRecorder.starting`) to
    its index shifted into place, or to -1 for a task's step (named by its
    task).  Only grows, under ``lock``, so a snapshot may share ``names``.
    """

    def __init__(self, limit: int = MAX_NAMES) -> None:
        self.limit = limit
        self.names: list[str] = ["<other>"]
        self.index: dict[Any, int] = {}
        self.codes: list[Any] = []  # the code objects whose ids are keys, kept alive
        self.lock = threading.Lock()

    def intern(self, key: Any, callback: Any) -> int:
        """The code of ``callback``'s name (-1 for a task step), remembered under ``key``."""
        with self.lock:
            known = self.index.get(key)
            if known is not None:
                return known
            if callback_task(callback) is not None:
                self.index[key] = -1
                return -1
            if len(self.names) >= self.limit:
                return 0
            code = getattr(getattr(callback, "__func__", callback), "__code__", None)
            if code is not None:
                self.codes.append(code)  # alive, so that its id (the key) is never reused
            return self._add(key, callback_name(callback))

    def error_code(self, kind: type[BaseException]) -> int:
        """The code of an exception type's name (for a task's outcome), 0 past the limit."""
        with self.lock:
            known = self.index.get(kind)
            if known is not None:
                return known
            return self._add(kind, kind.__qualname__) if len(self.names) < self.limit else 0

    def _add(self, key: Any, name: str) -> int:
        code = len(self.names) << _NAME_SHIFT
        self.names.append(name)
        self.index[key] = code
        return code


#: The process's names (tests put a small one in its place).
NAMES = NameTable()


class FlightRecorder:
    """The ring of one loop's recent events; see the module docstring.

    Start it with ``loop.start_flight_recorder(seconds)``; ``_run_once``
    calls :meth:`waited` once step 4 begins, :meth:`starting` and
    :meth:`finished` around each step, and ``create_task`` calls
    :meth:`task_created`.

    Invariants: ``ring`` (numbers) and ``raw`` (bytes) view the same
    ``max_events`` slots, of which the first ``capacity`` are in use, up to
    ``end`` (``capacity * SLOT``, in numbers); ``i`` is the index of the
    next number to write (a multiple of :data:`SLOT`), and once ``wrapped``
    the slots from ``i`` to ``end`` are older than those before it.
    ``last`` is when the last step (or wait) ended, which is when the step
    running now began; ``step`` is the code of that step, -1 when none runs
    (read from other threads through :meth:`running`).
    """

    # Slots: attribute access on the hot path is then a fixed offset
    # (CPython stops sharing the keys of an instance dict this large).
    __slots__ = (
        "__weakref__", "_dead_tasks", "_loop", "_memory", "_names_get", "_next_task",
        "_task_numbers", "_task_refs", "_watchdog", "capacity", "clock", "dump_dir", "end", "i",
        "laps", "last", "max_events", "name_table", "pid", "raw", "ring", "seconds",
        "stall_after", "stall_count", "stalls", "started", "step", "task_labels", "task_mode",
        "wrapped",
    )  # fmt: skip

    def __init__(
        self,
        loop: LoopContract,
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
        # All the memory the ring may ever use, reserved at once: anonymous
        # memory, of which the kernel gives a page only when it is first
        # written, so growing is moving `end`, never copying (private: a
        # forked child writes its own).
        self._memory = mmap.mmap(-1, self.max_events * _SLOT_BYTES, flags=mmap.MAP_PRIVATE)
        self.raw = memoryview(self._memory)  # bytes, for copying out
        # (Typed Any: typeshed's memoryview takes only ints, a 'd' view floats too.)
        self.ring: Any = self.raw.cast("d")
        self.end = self.capacity * SLOT
        self.i = 0
        self.wrapped = False
        self.laps = 0  # times i went back to 0 or the ring grew (copy_recent checks it)
        self._loop = weakref.ref(loop)
        self.clock: Callable[[], float] = loop._clock
        self.pid = os.getpid()
        self.started = self.clock()  # nothing is older: a dump begins here at the earliest
        self.task_mode: str | None = getattr(loop, "task_mode", None)
        self.last = self.started  # where the next step (or wait) begins
        self.step = -1
        self.name_table = NAMES
        self._names_get = NAMES.index.get
        # Tasks: id(task) -> number while the task lives (a weak reference
        # with a callback forgets it); number -> label, kept until the task
        # has been dead longer than the window (see _forget_old_tasks).
        self._task_numbers: dict[int, int] = {}
        self._task_refs: dict[int, weakref.ref[Any]] = {}
        self.task_labels: dict[int, str] = {}
        self._dead_tasks: deque[tuple[float, int]] = deque()
        self._next_task = 1
        # Stalls: how many since the recorder started, and the newest few
        # (start, end, code); each one dumped when dump_on_stall is set.
        self.stall_after = STALL_AFTER
        self.stall_count = 0
        self.stalls: deque[tuple[float, float, int]] = deque(maxlen=STALLS_KEPT)
        self.dump_dir = Path(dump_dir) if dump_dir is not None else Path.cwd()
        self._watchdog: _Watchdog | None = None
        if dump_on_stall is not None:
            self.stall_after = _positive("dump_on_stall", dump_on_stall)
            self._watchdog = _Watchdog(self, loop)

    @property
    def names(self) -> list[str]:
        """The step names, by index (the process's, shared by its recorders)."""
        return self.name_table.names

    # ------------------------------------------------------------------
    # Writing (the loop's thread)
    # ------------------------------------------------------------------

    def wrap(self) -> int:
        """The ring is full: grow it if its oldest event is still wanted, else start over.

        Slots left unwritten at the end (a two-slot write did not fit) are
        marked as padding.  Growing moves ``end`` (the memory is reserved):
        the slots from 0 to ``end`` are then in order, oldest first (those
        written since ``i`` was last 0), and writing goes on after them.
        """
        self.laps += 1  # (first: a copy running meanwhile must know the slots are changing)
        ring, i, end = self.ring, self.i, self.end
        # The oldest slot: the next to overwrite, once wrapped (0 if the ring was full).
        oldest = ring[i + 1 if self.wrapped and i < end else 1]
        for pad in range(i, end, SLOT):
            ring[pad] = K_PAD
        if self.capacity < self.max_events and oldest >= self.clock() - self.seconds:
            self.capacity = min(self.capacity * 2, self.max_events)
            self.end = self.capacity * SLOT
            self.wrapped = False
            self.i = end
            return end
        self.wrapped = True
        self.i = 0
        return 0

    def add(self, code: int, t: float) -> None:
        """Write one slot: ``code`` (see the module docstring) and a time."""
        i = self.i
        if i >= self.end:
            i = self.wrap()
        ring = self.ring
        ring[i] = code
        ring[i + 1] = t
        self.i = i + SLOT

    # The three calls of _run_once's step 4, in the order it makes them.
    # Two clock reads are saved per iteration: the wait is taken to begin
    # where the last iteration's last step ended (step 1, and between two
    # runs of the loop the time it was not running, count as waiting), and
    # to end when step 4 begins (after step 2 queued the ready descriptors'
    # handles and step 3 the due timers).  A step begins where the one
    # before it (or the wait) ended: one clock read per step.

    def waited(self, timeout: float | None) -> None:
        """Step 4 begins: write the iteration's wait, two slots (K_WAIT, start), (K_WAITED, end)."""
        t = self.clock()
        i = self.i
        if i > self.end - 2 * SLOT:
            i = self.wrap()
        ring = self.ring
        ring[i] = K_WAIT
        ring[i + 1] = self.last
        if timeout is None:
            ring[i + 2] = K_WAITED
        else:
            waited = int((timeout if timeout < _MAX_TIMEOUT else _MAX_TIMEOUT) * 1e6) + 1
            ring[i + 2] = waited << _NUMBER_SHIFT | K_WAITED
        ring[i + 3] = t
        self.i = i + 2 * SLOT
        self.last = t
        self.step = -1  # (none runs: a KeyboardInterrupt may have left one)

    def starting(self, handle: Handle) -> int:
        """``handle``'s step begins: its code, which :meth:`finished` writes when it ends.

        The code's name part is found by a key that is cheap to compute and
        never the callback itself (that would keep a closure, and what it
        holds, alive): the id of its code object, which :class:`NameTable`
        keeps alive.  An I/O handle keeps its whole code: it is the same
        each time its descriptor is ready.
        """
        if type(handle) is IOHandle:
            code = handle._flight_code
            if not code:
                code = self._name_code(handle._callback)
                code = handle._flight_code = max(code, 0) | handle._io << _NUMBER_SHIFT | K_IO
        else:
            callback = handle._callback
            code = self._name_code(callback)
            if code < 0:  # a task's step, by the task's number
                task = callback.__self__  # type: ignore[union-attr]
                number = self._task_numbers.get(id(task)) or self._first_sight(task, self.last)
                code = number << _NUMBER_SHIFT | K_TASK_STEP
            elif type(handle) is TimerHandle:  # a timer, and how late it fires (microseconds)
                late = int((self.last - handle._when) * 1e6)
                code |= (late if 0 < late < _MAX_NUMBER else 0) << _NUMBER_SHIFT | K_TIMER
        self.step = code
        return code

    def _name_code(self, callback: Any) -> int:
        kind = type(callback)
        key: Any
        if kind is _METHOD:
            key = id(callback.__func__.__code__)
        elif kind is _FUNCTION:
            key = id(callback.__code__)
        elif kind is _BUILTIN:
            key = callback.__name__
        elif kind is _PARTIAL:
            key = _partial_key(callback)
        else:
            key = kind
        code = self._names_get(key)
        return code if code is not None else self.name_table.intern(key, callback)

    def finished(self, code: int) -> None:
        """The step that :meth:`starting` gave ``code`` ended: write it (code, end)."""
        t = self.clock()
        self.add(code, t)
        start, self.last, self.step = self.last, t, -1
        if code & 15 == K_TASK_STEP:
            self._task_stepped(code >> _NUMBER_SHIFT)
        if t - start > self.stall_after:
            self._stalled(code, start, t)

    def running(self) -> tuple[int, float] | None:
        """``(code, start)`` of the step running now, or None (any thread may ask)."""
        step, start = self.step, self.last
        loop = self._loop()
        if step < 0 or loop is None or loop._thread_id is None:
            return None  # (a step a KeyboardInterrupt ended never finished: not running)
        return step, start

    # ------------------------------------------------------------------
    # Names and tasks (slow paths: once per function, once per task)
    # ------------------------------------------------------------------

    def _number(self, task: Any, kind: int, parent: int, now: float) -> int:
        number = self._next_task
        self._next_task += 1
        task_id = id(task)
        self._task_numbers[task_id] = number

        def forget(_: Any, task_id: int = task_id, number: int = number) -> None:
            # (Any thread, at any moment the task is collected.)
            self._task_numbers.pop(task_id, None)
            self._task_refs.pop(number, None)
            self._dead_tasks.append((self.clock(), number))

        self._task_refs[number] = weakref.ref(task, forget)
        self.task_labels[number] = task_label(task)
        self.add(kind | (number & _MAX_NUMBER) << _NUMBER_SHIFT, now)
        if parent:
            self.add(K_ARG | (parent & _MAX_NUMBER) << _NUMBER_SHIFT, now)
        self._forget_old_tasks()
        return number

    def _first_sight(self, task: Any, now: float) -> int:
        """A task the recorder had not seen (built directly, or before it started).

        Seen ``now``: when the step about to run begins.
        """
        return self._number(task, K_TASK_SEEN, 0, now)

    def task_created(self, task: Any, parent: Any) -> None:
        """``create_task`` made ``task``, from ``parent`` (a task, or None)."""
        if id(task) in self._task_numbers or task.done():
            return  # seen already (an eager first step), or done before we could look
        parent_number = self._task_numbers.get(id(parent), 0) if is_task(parent) else 0
        self._number(task, K_TASK_CREATED, parent_number, self.clock())

    def _task(self, number: int) -> Any:
        """Task ``number`` if it is alive, else None."""
        ref = self._task_refs.get(number)
        return ref() if ref is not None else None

    def _task_stepped(self, number: int) -> None:
        """Task ``number`` took a step: if that was its last, write how it ended."""
        task = self._task(number)
        if task is None or not task.done():
            return
        self.task_labels[number] = task_label(task)  # its last name (TaskGroup names tasks late)
        result, error = outcome(task)
        # (An error is named by its type: reprs are too many to keep.)
        name = self.name_table.error_code(type(task._exception)) if error is not None else 0
        now = self.clock()
        self.add(K_TASK_DONE | name | (number & _MAX_NUMBER) << _NUMBER_SHIFT, now)
        self.add(K_ARG | _OUTCOMES.index(result) << _NUMBER_SHIFT, now)

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
        """A copy of the recording's window: :meth:`FlightSnapshot.write` makes it a trace.

        The names and task labels are shared, not copied (the table of names
        only grows; a task label the recorder drops meanwhile is that of a
        task dead for longer than the window).  Any thread may call it.
        """
        parts, facts = self.copy_window()
        labels = _Labels(self.task_labels, self._task_refs)
        slots = _joined(parts)
        return FlightSnapshot(slots=slots, names=self.names, task_labels=labels, **facts)

    def copy_window(self, holds: list[float] | None = None) -> tuple[list[Any], dict[str, Any]]:
        """The ring's slots back to the window's start, and the facts a snapshot needs.

        The slots as :func:`copy_recent` gives them (a few arrays, oldest
        first; ``holds`` gets how long each copy held the loop); the facts
        are the keyword arguments of :class:`FlightSnapshot` but its slots,
        names and task labels.
        """
        parts, _ = copy_recent(self, self.clock() - self.seconds, holds=holds)
        return parts, {
            "now": self.clock(),
            "wall": time.time(),
            "seconds": self.seconds,
            "started": self.started,
            "full": self.wrapped,
            "pid": self.pid,
            "task_mode": self.task_mode,
            "running": self.running(),
        }

    def wire_snapshot(self, holds: list[float] | None = None) -> tuple[bytes, list[Any]]:
        """The window for another process: a JSON header, then the slots' bytes (native order).

        What ``loopy trace dump`` receives, and turns into a trace itself
        (:meth:`FlightSnapshot.from_wire`): the target only copies, and
        names the tasks of the window (their labels now, or as kept).
        """
        parts, facts = self.copy_window(holds)
        labels = _Labels(self.task_labels, self._task_refs)
        numbers = set(self.task_labels) | set(self._task_refs)
        facts["names"] = list(self.names)
        facts["task_labels"] = {number: labels.get(number) for number in numbers}
        facts["slot_bytes"] = sum(len(part) for part in parts) * 8
        return json.dumps(facts, separators=(",", ":")).encode(), parts

    def _stalled(self, code: int, start: float, end: float) -> None:
        """A step held the loop longer than the threshold: count it, and dump it if asked."""
        self.stall_count += 1
        self.stalls.append((start, end, code))
        watchdog = self._watchdog
        if watchdog is None or watchdog.dumped == start or not limiter.allow():
            return
        snap = self.snapshot()
        task = self._task(code >> _NUMBER_SHIFT) if code & 15 == K_TASK_STEP else None
        if task is not None:  # (its name now: a program may rename a task after creating it)
            self.task_labels[code >> _NUMBER_SHIFT] = task_label(task)
        snap.stall = watchdog.stall_info(code, start, end, unfinished=False)
        watchdog.jobs.put(snap)

    def stop(self) -> None:
        """Stop the watchdog thread, if any, once it wrote the dumps it was given.

        (The loop forgets the recorder itself.)  Waits at most 10 s: a dump
        taken on the loop's thread at a stall's end must not be lost
        because the program exits right after the stall.
        """
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.jobs.put(None)
            if watchdog.thread is not threading.current_thread():
                watchdog.thread.join(10.0)

    def step_name(self, code: int) -> tuple[str, str | None]:
        """The name of a step from its code, and its task's label (or None)."""
        return _step_name(code, self.names, _Labels(self.task_labels, self._task_refs))


class _Labels:
    """Task labels by number, at dump time: a live task's as it is now, else the one kept.

    A task's name can change after it was first seen (``TaskGroup`` names
    its tasks after creating them; ``set_name``), so a live task is asked
    again, through the weak reference the recorder keeps (a read, safe from
    any thread).  Each label is looked up once per dump.
    """

    def __init__(self, kept: dict[int, str], refs: dict[int, weakref.ref[Any]]) -> None:
        self.kept, self.refs = kept, refs
        self.cache: dict[int, str] = {}

    def get(self, number: int) -> str:
        label = self.cache.get(number)
        if label is None:
            ref = self.refs.get(number)
            task = ref() if ref is not None else None
            label = task_label(task) if task is not None else None
            if label is None:
                label = self.kept.get(number, f"Task #{number}")
            self.cache[number] = label
        return label


def _step_name(code: int, names: list[str], labels: _Labels) -> tuple[str, str | None]:
    """A step's name and its task's label (None for a callback), from its code."""
    kind, name = code & 15, (code >> _NAME_SHIFT) & 0xFFFF
    if kind == K_TASK_STEP:
        label = labels.get(code >> _NUMBER_SHIFT)
        return label, label
    return names[name] if name < len(names) else "<other>", None


def _partial_key(callback: Any) -> Any:
    """The key of a ``functools.partial``'s name: that of the function it wraps."""
    while isinstance(callback, functools.partial):
        callback = callback.func
    code = getattr(getattr(callback, "__func__", callback), "__code__", None)
    return ("partial", id(code) if code is not None else type(callback))


def _positive(what: str, value: Any) -> float:
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

    slots: Any  # array("d"): the used slots of the ring, oldest first
    names: list[str]
    task_labels: _Labels
    now: float  # loop time of the snapshot
    wall: float  # time.time() at the same moment
    seconds: float  # the window asked for
    started: float  # loop time the recorder started
    full: bool  # the ring had wrapped: older events were overwritten
    pid: int
    task_mode: str | None
    running: tuple[int, float] | None  # (code, start) of a step in progress
    stall: dict[str, Any] | None = field(default=None)

    @property
    def start(self) -> float:
        """Loop time where the dump begins: the window's start, or the oldest event kept."""
        begin = max(self.now - self.seconds, self.started)
        if self.full and len(self.slots) >= SLOT:
            begin = max(begin, self.slots[1])
        return begin

    def records(self) -> Iterator[tuple[Any, ...]]:
        """The events of the window as the trace recorder's records (times from :attr:`start`).

        One iteration at a time, from its wait's start to its end: a step
        begins where the step (or the wait) before it ended, and the wait's
        list of ready descriptors is made from the I/O steps that followed it.
        """
        slots, begin = self.slots, self.start
        names, labels = self.names, self.task_labels
        group: list[Any] = []
        wait: list[Any] | None = None  # the wait of the iteration being read
        last = -math.inf  # where the next step begins: the end of the step or wait before
        steps = iterations = 0
        previous: list[Any] | None = None  # a task event waiting for its K_ARG
        j, end = 0, len(slots)
        while j < end:
            code, t = int(slots[j]), slots[j + 1]
            j += SLOT
            kind, number = code & 15, code >> _NUMBER_SHIFT
            if kind == K_ARG:
                if previous is not None:
                    if previous[0] == "task-created":
                        previous[7] = number  # the parent
                    else:
                        previous[7] = _OUTCOMES[min(number, 2)]
                continue
            previous = None
            if kind <= K_TIMER:
                start, last = last, t
                if start < begin:
                    continue
                steps += 1
                group.append(self._step(code, start - begin, t - start))
                if kind == K_IO and wait is not None:
                    way = number & 3
                    wait[-1].append((number >> 2, "read" if way == 1 else "write"))
            elif kind == K_WAIT and j < end and int(slots[j]) & 15 == K_WAITED:
                if wait is not None:
                    iterations += 1
                    group.append(self._iteration(iterations, wait, last - begin, steps))
                yield from _finish_group(group)
                group, wait, steps = [], None, 0
                waited, last = int(slots[j]) >> _NUMBER_SHIFT, slots[j + 1]
                j += SLOT
                if t < begin:
                    continue
                timeout = (waited - 1) / 1e6 if waited else None
                wait = ["wait", t - begin, last - t, "wait",
                        "timeout", timeout, "ready", []]  # fmt: skip
                group.append(wait)
            elif kind in (K_TASK_CREATED, K_TASK_SEEN, K_TASK_DONE):
                if t < begin:
                    continue
                label = labels.get(number)
                if kind == K_TASK_DONE:
                    name = (code >> _NAME_SHIFT) & 0xFFFF
                    error = names[name] if name else None
                    previous = ["task-finished", t - begin, None, label, "task", number,
                                "outcome", "result", "exception", error]  # fmt: skip
                else:
                    previous = ["task-created", t - begin, None, label, "task", number,
                                "parent", None, "first_sight", kind == K_TASK_SEEN]  # fmt: skip
                group.append(previous)
            elif kind == K_WAITED:  # a wait's second half, its first not copied:
                last = t  # the step after it begins at the wait's end
            # (K_PAD: nothing.)
        if self.running is not None:  # a step in progress: it and its iteration end now
            last, steps = self.now, steps + 1
        if wait is not None:  # the iteration in progress, up to its last step (or now)
            iterations += 1
            group.append(self._iteration(iterations, wait, last - begin, steps))
        if self.running is not None:
            code, start = self.running
            step = self._step(code, start - begin, self.now - start)
            group.append((*step, "partial", True))
        if self.stall is not None:
            stall = self.stall
            group.append(
                ("stall", stall["started"] - begin, None, stall["step"],
                 "duration_ms", stall["duration_ms"], "unfinished", stall["unfinished"],
                 "task_name", stall["task"])
            )  # fmt: skip
        yield from _finish_group(group)

    @staticmethod
    def _iteration(n: int, wait: list[Any], end: float, steps: int) -> tuple[Any, ...]:
        start = wait[1]
        return (
            "iteration", start, max(end - start, wait[2]), f"iteration {n}",
            "n", n, "wait", wait[2], "callbacks", steps,
        )  # fmt: skip

    def _step(self, code: int, t0: float, duration: float) -> tuple[Any, ...]:
        kind, number = code & 15, code >> _NUMBER_SHIFT
        label, _ = _step_name(code, self.names, self.task_labels)
        if kind == K_TASK_STEP:
            return ("task-step", t0, duration, label, "task", number)
        if kind == K_IO:
            return ("io", t0, duration, label, "fd", number >> 2)
        if kind == K_TIMER:
            return ("timer", t0, duration, label, "lateness", number / 1e6)
        return ("callback", t0, duration, label)

    def recorder(self) -> TraceRecorder:
        """The snapshot as a detached :class:`TraceRecorder`, for the exporter and the summary."""
        records: list[tuple[Any, ...]] = []
        for record in self.records():
            if record[0] == "timer":  # the firing, then the callback, as the recorder has them
                records.append(("timer-fired", record[1], None, record[3], *record[4:6]))
                records.append((*record[:4], *record[6:]))
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

    @classmethod
    def from_wire(cls, header: dict[str, Any], slots: Any) -> FlightSnapshot:
        """The snapshot :meth:`FlightRecorder.wire_snapshot` sent: its header, and its slots.

        ``slots`` is an ``array("d")`` of the bytes that followed the header.
        """
        running = header["running"]
        labels = {int(number): label for number, label in header["task_labels"].items()}
        return cls(
            slots=slots,
            names=header["names"],
            task_labels=_Labels(labels, {}),
            now=header["now"],
            wall=header["wall"],
            seconds=header["seconds"],
            started=header["started"],
            full=header["full"],
            pid=header["pid"],
            task_mode=header["task_mode"],
            running=(running[0], running[1]) if running else None,
        )


#: Numbers (half as many slots) :func:`copy_recent` copies in one C call,
#: the loop held meanwhile: 1 MiB, measured here 0.05-0.1 ms.
COPY_CHUNK = 65536 * SLOT
#: At most this many numbers are read for ``top``'s figures.
_ACTIVITY_MAX = 65536 * SLOT


def copy_recent(
    flight: FlightRecorder,
    since: float,
    most: int | None = None,
    holds: list[float] | None = None,
) -> tuple[list[Any], bool]:
    """The ring's newest slots, back to the first older than ``since``; oldest first.

    Returns the copy as a list of arrays (in order: join them, or send them
    one after the other) and whether it reaches back past ``since`` or holds
    all the ring has (False: ``most`` numbers stopped it first).  ``holds``,
    if given, gets the seconds each chunk's copy took (the loop held).

    Any thread may call it, while the loop keeps writing: it copies
    :data:`COPY_CHUNK` numbers at a time, newest first, and offers the GIL
    to the loop between two (``time.sleep(0)``), so the loop is held one
    chunk's copy at a time, not the whole ring's (a full 64 MiB ring took 35
    to 115 ms in one piece).  Meanwhile the loop writes at ``i`` and on:
    over the *oldest* slots, which this copies last.  So the copy reads
    ``i`` when it begins and again when it ends, and drops what it took
    from the slots written in between (and the two being written now).
    If the ring grew or went round to 0 meanwhile (``laps`` says so), the
    copy starts again; from the third time on, without pauses.
    """
    loop = flight._loop()
    writer = loop._thread_id if loop is not None else None
    # Slots the loop may be writing as this reads (another thread's copy only).
    margin = 2 * SLOT if writer not in (None, threading.get_ident()) else 0
    attempt = -1
    while True:
        attempt += 1
        laps = flight.laps
        raw, i, size, wrapped = flight.raw, flight.i, flight.end, flight.wrapped
        if flight.laps != laps:
            continue  # (the loop wrapped between two of the reads above)
        held = size if wrapped else i
        want = held if most is None else min(held, most)
        newest_first: list[Any] = []
        taken, position, reached = 0, i, False
        while taken < want:
            if position == 0:
                position = size  # (wrapped: on from the end of the array)
            n = min(COPY_CHUNK if attempt < 2 else want, want - taken, position)
            began = time.perf_counter()
            part = array("d")
            part.frombytes(raw[(position - n) * 8 : position * 8])
            if holds is not None:
                holds.append(time.perf_counter() - began)
            newest_first.append(part)
            taken += n
            position -= n
            if part[1] < since:
                reached = True
                break
            if attempt < 2:
                time.sleep(0)  # (the loop's turn)
        if flight.laps != laps:
            continue
        # Taken past the end of the array, back down to `position`: the
        # slots from `i` to where the loop writes now (and the next two,
        # perhaps half written) were changed while this copied.
        overwritten = min(flight.i + margin, size) - position if taken > i else 0
        if overwritten > 0:
            while newest_first and len(newest_first[-1]) <= overwritten:
                overwritten -= len(newest_first.pop())
            if newest_first:
                newest_first[-1] = newest_first[-1][overwritten:]
            reached = bool(newest_first) and newest_first[-1][1] < since
            taken = 0  # (not all the ring holds, any more)
        return newest_first[::-1], reached or taken >= held


def _joined(parts: list[Any]) -> Any:
    """The arrays :func:`copy_recent` gives, as one ``array("d")``."""
    slots = array("d")
    for part in parts:
        slots.extend(part)
    return slots


def recent_activity(loop: LoopContract, seconds: float = 1.0) -> dict[str, Any] | None:
    """What ``loop`` did in the last ``seconds``, from its recorder (None without one).

    The busy share (steps' time over ``seconds``, the step running now
    included), callbacks per second, the slowest steps, the busiest tasks
    (their steps' time), and the stalls the recorder kept.  A loop too
    busy for :data:`_ACTIVITY_MAX` numbers a second is measured over the
    shorter span they cover (``seconds`` in the answer says which).  Called
    by the monitor's thread: the loop is held only for :func:`copy_recent`'s
    copy (0.02 ms for 65,536 events); the reading and naming happen here,
    on the caller's thread.
    """
    flight: FlightRecorder | None = getattr(loop, "_flight", None)
    if flight is None:
        return None
    now = flight.clock()
    since = now - seconds
    parts, whole = copy_recent(flight, since, _ACTIVITY_MAX)
    slots = _joined(parts)
    if not whole:  # (the first slot copied is the oldest time known)
        since = slots[1]
        seconds = now - since
    running = flight.running()
    steps: list[tuple[float, float, int]] = []  # (duration, end, code)
    busy = 0.0
    last = -math.inf  # where the next step begins (see FlightSnapshot.records)
    j, size = 0, len(slots)
    while j < size:
        code, t = int(slots[j]), slots[j + 1]
        j += SLOT
        kind = code & 15
        if kind <= K_TIMER:
            start, last = last, t
            if t > since and start > -math.inf:
                busy += t - max(start, since)
                steps.append((t - start, t, code))
        elif kind == K_WAITED:  # (a wait's second half)
            last = t  # the wait ended: the next step begins here
    finished = len(steps)
    if running is not None:  # a step in progress counts up to now
        running_code, running_start = running
        busy += now - max(running_start, since)
        steps.append((now - running_start, now, running_code))
    steps.sort(reverse=True)
    labels = _Labels(flight.task_labels, flight._task_refs)
    slowest = []
    for duration, end, code in steps[:5]:
        name, _ = _step_name(code, flight.names, labels)
        slowest.append({"step": name, "ms": duration * 1e3, "ended_s_ago": now - end})
    # The tasks whose steps took the most of the interval (a step begun
    # before it counts from its start).
    by_task: dict[int, list[float]] = {}
    for duration, end, code in steps:
        if code & 15 == K_TASK_STEP:
            spent = by_task.setdefault(code >> _NUMBER_SHIFT, [0.0, 0])
            spent[0] += min(duration, end - since)
            spent[1] += 1
    busiest = [
        {"task": labels.get(number), "ms": spent * 1e3, "steps": count}
        for number, (spent, count) in sorted(by_task.items(), key=lambda item: -item[1][0])[:3]
    ]
    wall = time.time()
    stalls = []
    for start, end, code in list(flight.stalls):
        name, _ = _step_name(code, flight.names, labels)
        stalls.append({"step": name, "ms": (end - start) * 1e3, "at": wall - (now - end)})
    return {
        "seconds": seconds,
        "utilisation": min(1.0, busy / seconds),
        "callbacks_per_s": finished / seconds,
        "slowest": slowest,
        "busiest_tasks": busiest,
        "window_s": flight.seconds,
        "stall_threshold": flight.stall_after,
        "stall_count": flight.stall_count,
        "stalls": stalls,
        "dumps": limiter.written if flight._watchdog is not None else None,
    }


def _finish_group(group: list[Any]) -> list[tuple[Any, ...]]:
    """An iteration's records, those built as lists made tuples like the others."""
    return [tuple(record) if isinstance(record, list) else record for record in group]


# ----------------------------------------------------------------------
# The watchdog: stall dumps
# ----------------------------------------------------------------------


class _Watchdog:
    """A thread that watches the running step and writes the stall dumps.

    It holds the recorder and the loop weakly, and ends when either is
    gone or the loop is closed, or when :meth:`FlightRecorder.stop` says so.
    """

    def __init__(self, flight: FlightRecorder, loop: LoopContract) -> None:
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
        running = flight.running()
        if running is None:
            return True
        start = running[1]
        took = flight.clock() - start
        if took <= self.threshold:
            return True
        thread_id = loop._thread_id
        frame = sys._current_frames().get(thread_id) if thread_id is not None else None
        if frame is not None and flight.last == start:
            stack = [
                f"{entry.filename}:{entry.lineno} in {entry.name}"
                for entry in traceback.extract_stack(frame, limit=40)
            ]
            self.sampled = (start, stack)
        del frame
        if took > 10 * self.threshold and self.dumped != start and flight.last == start:
            self.dumped = start
            if limiter.allow():
                snap = flight.snapshot()
                if snap.running is not None:
                    code, start = snap.running
                    snap.stall = self.stall_info(code, start, snap.now, unfinished=True)
                    self.write(snap)
        return True

    def stall_info(
        self, code: int, start: float, end: float, *, unfinished: bool
    ) -> dict[str, Any]:
        """The stall, for ``otherData.stall`` and the stall's mark in the trace."""
        flight = self.flight()
        name, task = flight.step_name(code) if flight is not None else ("?", None)
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


def flight_from_environment(loop: LoopContract) -> FlightRecorder | None:
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
