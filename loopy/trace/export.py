"""Export a recording as a Chrome trace: JSON that Perfetto and chrome://tracing open.

The Trace Event Format is a JSON object ``{"traceEvents": [...]}`` where each
event has a ``name``, a category ``cat``, a phase ``ph``, a timestamp ``ts``
in microseconds, a process ``pid`` and a thread ``tid``.  A loopy trace uses:

* ``X`` (a span, with ``dur``), on the loop track: a wait in ``select()``
  (cat ``wait``) and every callback (cat = its kind: ``callback``,
  ``task-step``, ``io``, ``timer``)
* ``X`` on the iterations track: each iteration (cat ``iteration``), so you
  see where one ends and the next begins, and how much of it was waiting
* ``i`` (an instant), on the loop track: I/O readiness (``io``), timer
  firings (``timer``), timers scheduled, signals, errors
* ``C`` (counters), on the loop track: sampled as each iteration starts, the
  ready queue's length and the registered file descriptors
* ``b``/``e``, on the loop track: a task's life in the trace (cat ``task``,
  paired by ``id``).  ``args.origin`` says where it begins: ``create_task``
  (its creation, with its ``parent``), ``first_sight`` (the first step or
  wake-up the loop ran for a task built directly or before the trace began;
  parent unknown) or ``unrecorded`` (its first event left in the buffer:
  its creation was dropped).  It ends when the task is done, or with
  outcome ``unfinished`` when the trace does.
* ``s``/``f``, on the loop track: an arrow from the step that created a task
  to the task's first step
* ``M``: the names of the process and of the two tracks

``otherData`` carries the format's number (``trace_format``, see
``fileformat.py``), the wall-clock time the trace started (so trace times
line up with log times), how many events the ring buffer dropped, and the
loopy version.

Streaming: :func:`chrome_events` turns the recorder's buffer into these
events one at a time, and :func:`write_trace` writes each as it comes, so
exporting a full buffer costs little more memory than the buffer itself.
The order is by time: spans are recorded when they end, so the events of
one iteration are sorted among themselves (as references to the records,
not as converted events) before they go out; no event of a later iteration
can start before an earlier iteration ended.
"""

from __future__ import annotations

import asyncio
import atexit
import datetime
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from operator import itemgetter
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .fileformat import (
    TRACE_FORMAT,
    check_writable,
    encode_line,
    json_safe,
    json_string,
    load_trace,
    replacing,
    write_json_lines,
)
from .recorder import DEFAULT_MAX_EVENTS, STEP_KINDS, TraceRecorder

if TYPE_CHECKING:
    from ..contract import LoopContract

__all__ = [
    "ITERATION_TID",
    "LOOP_TID",
    "FileRecorder",
    "chrome_events",
    "load_trace",
    "to_chrome_trace",
    "trace_to_file",
    "tracing",
    "write_trace",
]

#: The two tracks (Chrome "threads") of a loopy trace.
LOOP_TID = 1
ITERATION_TID = 2

logger = logging.getLogger("loopy")

# Instants that are not about a callback, by recorder event type: (category, scope).
# Scope "t" draws the mark on the loop's track, "p" across the whole process.
_INSTANTS = {
    "timer-fired": ("timer", "t"),
    "timer-scheduled": ("timer-scheduled", "t"),
    "signal": ("signal", "p"),
    "exception": ("exception", "t"),
    "stall": ("stall", "t"),  # a flight recorder's stall dump: where the stalled step began
}

# A record of the recorder's buffer: (type, start, duration, name, key1, value1, ...).
Record = tuple[Any, ...]


def _us(seconds: float) -> float:
    """Seconds to the format's microseconds, rounded to the nanosecond.

    (An integer count of nanoseconds divided by 1000 is the double nearest
    the decimal, which prints short; ``round(x, 3)`` is several times slower.)
    A time that is not finite comes back as it is: the writer leaves out an
    event it cannot place.
    """
    try:
        return round(seconds * 1e9) / 1e3
    except (OverflowError, ValueError):  # infinite, NaN
        return seconds


def _span(start: float, duration: float) -> tuple[float, float]:
    """A span's ``ts`` and ``dur`` in microseconds, both from whole nanoseconds.

    ``dur`` is the rounded end minus the rounded start, not the rounded
    duration: rounded separately, a span could end a nanosecond after the
    next one on its track begins, and the format (Perfetto strictly) wants
    the spans of a track nested or apart, never overlapping.
    """
    try:
        begin = round(start * 1e9)
        return begin / 1e3, (round((start + duration) * 1e9) - begin) / 1e3
    except (OverflowError, ValueError):  # infinite, NaN
        return start, duration


def _ms(seconds: float | None) -> float | None:
    """Durations in ``args`` are in milliseconds: what a person reads best.

    None (JSON ``null``) for no value, and for a value JSON cannot carry:
    the infinite delay of ``asyncio.sleep(math.inf)``, a NaN, a deadline so
    far away that its milliseconds overflow.
    """
    if seconds is None:
        return None
    try:
        return round(seconds * 1e9) / 1e6
    except (OverflowError, ValueError):  # infinite, NaN
        return None


def to_chrome_trace(recorder: TraceRecorder) -> dict[str, Any]:
    """The recording as a Trace Event Format dict (see the module docstring).

    The whole trace in memory, for tests and small recordings; a file is
    better written with :func:`write_trace`, which streams.
    """
    return {
        "traceEvents": list(chrome_events(recorder)),
        "displayTimeUnit": "ms",
        "otherData": _other_data(recorder, _end(recorder)),
    }


def _end(recorder: TraceRecorder) -> float:
    return recorder.end_time if recorder.end_time is not None else recorder.now()


def chrome_events(
    recorder: TraceRecorder, records: Iterable[Record] | None = None
) -> Iterator[dict[str, Any]]:
    """The Trace Event Format events of ``records`` (default: the recorder's buffer), in order.

    Metadata first, then every event by time, then the ends of the tasks
    still unfinished.  (One exception to the order: the start of a creation
    arrow, ``s``, goes out with its end, ``f``, at the child's first step,
    so that no arrow is ever left without its head; the format does not
    ask for order, and viewers sort.)  One record is converted at a time; what is held
    meanwhile is one iteration's records and a little per live task.  Do
    not let the loop run while iterating over the recorder's own buffer: a
    deque cannot be read while it changes.
    """
    converter = _Converter(recorder.pid)
    yield from _metadata(recorder.pid)
    convert = converter.convert
    for record in _in_order(recorder._buffer if records is None else records):
        yield from convert(record)
    yield from converter.unfinished(_end(recorder))


def _in_order(records: Iterable[Record]) -> Iterator[Record]:
    """``records`` (in the order they were recorded) by start time.

    Spans are recorded when they end, so an iteration comes after the
    callbacks inside it.  Every record after an iteration's starts after
    that iteration ended, so sorting the records of one iteration at a time
    (references, not copies) puts the whole stream in order.
    """
    group: list[Record] = []
    by_start = itemgetter(1)
    for record in records:
        group.append(record)
        if record[0] == "iteration":
            group.sort(key=by_start)
            yield from group
            group.clear()
    group.sort(key=by_start)
    yield from group


def _lines(recorder: TraceRecorder) -> Iterator[str | None]:
    """:func:`chrome_events` as encoded JSON lines, for :func:`write_trace` (None: unwritable).

    The same events, and the same text ``encode_line`` gives each
    one (a test holds the two to it), but a task step that needs nothing
    else (the common case: most of a trace) is written straight from its
    record, without building the event: it halves the time of an export.
    """
    converter = _Converter(recorder.pid)
    for event in _metadata(recorder.pid):
        yield encode_line(event)
    step_line, convert = converter.step_line, converter.convert
    for record in _in_order(recorder._buffer):
        line = step_line(record)
        if line is not None:
            yield line
        else:
            for event in convert(record):
                yield encode_line(event)
    for event in converter.unfinished(_end(recorder)):
        yield encode_line(event)


def _metadata(pid: int) -> list[dict[str, Any]]:
    def meta(name: str, tid: int, args: dict[str, Any]) -> dict[str, Any]:
        return {"name": name, "ph": "M", "ts": 0, "pid": pid, "tid": tid, "args": args}

    return [
        meta("process_name", LOOP_TID, {"name": "loopy event loop"}),
        meta("thread_name", LOOP_TID, {"name": "loop: waits and callbacks"}),
        meta("thread_sort_index", LOOP_TID, {"sort_index": 1}),
        meta("thread_name", ITERATION_TID, {"name": "iterations"}),
        meta("thread_sort_index", ITERATION_TID, {"sort_index": 0}),
    ]


def _other_data(recorder: TraceRecorder, end: float) -> dict[str, Any]:
    # Looked up now rather than imported at the top: loopy/__init__.py may
    # import this package before it defines __version__.
    version = getattr(sys.modules.get("loopy"), "__version__", "unknown")
    started = datetime.datetime.fromtimestamp(recorder.start_wall_time, datetime.UTC)
    return {
        "trace_format": TRACE_FORMAT,
        "loopy_version": version,
        "start_wall_time": recorder.start_wall_time,
        "start_wall_time_iso": started.isoformat(),
        "duration_us": _us(end),
        "dropped_events": recorder.dropped,
        "max_events": recorder.max_events,
        "task_mode": recorder.task_mode,
        "clock": "loop.time(), relative to the start of the trace",
    }


class _Converter:
    """Turns records of the buffer into trace events, remembering only the live tasks.

    Tasks are drawn as async spans (``b``/``e``) and creation as flow
    arrows (``s``/``f``).  Invariant: ``open`` holds, for each task whose
    ``b`` event went out and whose ``e`` has not, the name the ``b``
    carried (the ``e`` repeats it: viewers pair the two by id and name);
    ``arrows`` holds the tasks created with a parent whose first step has
    not come yet, with the time of their creation.  Every ``b`` gets its
    ``e``, if only from :meth:`unfinished`.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.open: dict[int, str] = {}
        self.arrows: dict[int, float] = {}

    def step_line(self, record: Record) -> str | None:
        """The JSON line of a task step that is only that, straight from its record; else None.

        Exactly what ``encode_line`` gives the event ``convert`` makes: keys
        in the same order, strings by the same function, numbers by repr.
        """
        if record[0] != "task-step":
            return None
        number = record[5]
        if number not in self.open or number in self.arrows:
            return None  # its b (or its arrow) goes out first: the general way
        try:
            begin = round(record[1] * 1e9)
            ts, dur = begin / 1e3, (round((record[1] + record[2]) * 1e9) - begin) / 1e3
        except (OverflowError, ValueError):  # a time that is not finite: the careful way
            return None
        return (
            f'{{"name":{json_string(record[3])},"cat":"task-step","ph":"X","ts":{ts!r},'
            f'"dur":{dur!r},"pid":{self.pid},"tid":{LOOP_TID},"args":{{"task":{number}}}}}'
        )

    def convert(self, record: Record) -> list[dict[str, Any]]:
        """One record as zero or more trace events."""
        kind, start, duration, name = record[0], record[1], record[2], record[3]
        if kind == "task-step":  # by far the most common: a fast path, written out
            number = record[5]
            ts, dur = _span(start, duration)
            step = {
                "name": name,
                "cat": "task-step",
                "ph": "X",
                "ts": ts,
                "dur": dur,
                "pid": self.pid,
                "tid": LOOP_TID,
                "args": {"task": number},
            }
            if number in self.open and number not in self.arrows:
                return [step]
            return [*self._step(number, name, start), step]
        args = dict(zip(record[4::2], record[5::2], strict=True))
        if kind in STEP_KINDS:
            return [self._complete(name, kind, start, duration, LOOP_TID, args)]
        if kind == "counters":
            ts, pid = _us(start), self.pid
            ready, fds = args["ready"], args["fds"]
            return [
                {"name": "ready queue", "ph": "C", "ts": ts, "pid": pid, "tid": LOOP_TID,
                 "args": {"callbacks": ready}},
                {"name": "registered fds", "ph": "C", "ts": ts, "pid": pid, "tid": LOOP_TID,
                 "args": {"fds": fds}},
            ]  # fmt: skip
        if kind == "iteration":
            details = {**args, "wait": _ms(args["wait"]), "busy": _ms(duration - args["wait"])}
            return [self._complete(name, "iteration", start, duration, ITERATION_TID, details)]
        if kind == "wait":
            return self._wait(name, start, duration, args)
        if kind == "task-created":
            return self._created(name, start, args)
        if kind == "task-finished":
            return self._finished(name, start, args)
        if kind in _INSTANTS:
            cat, scope = _INSTANTS[kind]
            for seconds_key in ("lateness", "delay"):
                if seconds_key in args:
                    args[f"{seconds_key}_ms"] = _ms(args.pop(seconds_key))
            return [self._instant(f"{kind}: {name}", cat, _us(start), scope, args)]
        return []  # a kind this exporter does not know: nothing to draw

    def _complete(
        self, name: str, cat: str, start: float, duration: float, tid: int, args: dict[str, Any]
    ) -> dict[str, Any]:
        ts, dur = _span(start, duration)
        return {
            "name": name,
            "cat": cat,
            "ph": "X",
            "ts": ts,
            "dur": dur,
            "pid": self.pid,
            "tid": tid,
            "args": args,
        }

    def _instant(
        self, name: str, cat: str, ts: float, scope: str, args: dict[str, Any]
    ) -> dict[str, Any]:
        return {
            "name": name,
            "cat": cat,
            "ph": "i",
            "s": scope,
            "ts": ts,
            "pid": self.pid,
            "tid": LOOP_TID,
            "args": args,
        }

    def _wait(
        self, name: str, start: float, duration: float, args: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """The wait, then one instant per descriptor it found ready."""
        ready = args["ready"]
        details = {"timeout_ms": _ms(args["timeout"]), "ready": [[fd, what] for fd, what in ready]}
        out = [self._complete(name, "wait", start, duration, LOOP_TID, details)]
        end = _us(start + duration)
        for fd, what in ready:
            state = "readable" if what == "read" else "writable" if what == "write" else what
            mark = {"fd": fd, "events": what}
            out.append(self._instant(f"fd {fd} {state}", "io", end, "t", mark))
        return out

    # Tasks

    def _created(self, name: str, start: float, args: dict[str, Any]) -> list[dict[str, Any]]:
        number = args["task"]
        if number in self.open:
            return []
        origin = "first_sight" if args.get("first_sight") else "create_task"
        parent = args.get("parent")
        if parent is not None:
            self.arrows[number] = start
        return [self._begin(number, name, start, origin, parent)]

    def _begin(
        self, number: int, name: str, start: float, origin: str, parent: int | None
    ) -> dict[str, Any]:
        self.open[number] = name
        return {
            "name": name,
            "cat": "task",
            "id": f"task-{number}",
            "ph": "b",
            "ts": _us(start),
            "pid": self.pid,
            "tid": LOOP_TID,
            "args": {"task": number, "origin": origin, "parent": parent},
        }

    def _step(self, number: int, name: str, start: float) -> list[dict[str, Any]]:
        """What a task's step adds: its ``b`` if its creation was dropped; the arrow."""
        out = []
        if number not in self.open:
            out.append(self._begin(number, name, start, "unrecorded", None))
        created_at = self.arrows.pop(number, None)
        if created_at is not None:
            flow = {"name": "create_task", "cat": "task", "id": number, "pid": self.pid}
            flow["tid"] = LOOP_TID
            out.append({**flow, "ph": "s", "ts": _us(created_at), "args": {"child": number}})
            # bp "e": bind to the slice that encloses this time (the first step).
            out.append({**flow, "ph": "f", "bp": "e", "ts": _us(start), "args": {"child": number}})
        return out

    def _finished(self, name: str, start: float, args: dict[str, Any]) -> list[dict[str, Any]]:
        number = args["task"]
        out = []
        if number not in self.open:
            out.append(self._begin(number, name, start, "unrecorded", None))
        self.arrows.pop(number, None)
        label = self.open.pop(number)
        end_args = {"outcome": args["outcome"], "exception": args["exception"]}
        out.append(self._end(number, label, start, end_args))
        return out

    def unfinished(self, end: float) -> list[dict[str, Any]]:
        """The ends of the tasks still open when the trace ends."""
        out = [
            self._end(number, label, end, {"outcome": "unfinished"})
            for number, label in self.open.items()
        ]
        self.open.clear()
        return out

    def _end(self, number: int, label: str, ts: float, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": label,
            "cat": "task",
            "id": f"task-{number}",
            "ph": "e",
            "ts": _us(ts),
            "pid": self.pid,
            "tid": LOOP_TID,
            "args": args,
        }


# ----------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------


def write_trace(
    recorder: TraceRecorder, path: str | PathLike[str], *, extra: dict[str, Any] | None = None
) -> Path:
    """Write the recording to ``path`` as strict JSON, one event per line; return the path.

    Streamed from :func:`chrome_events`, and written under a temporary name
    that replaces ``path`` only once complete (see ``fileformat.py``).
    ``extra`` goes into ``otherData`` beside the usual keys (the flight
    recorder says there what span its dump covers).
    """
    path = Path(path)
    end = _end(recorder)

    def tail(unwritable: int) -> dict[str, Any]:
        other = _other_data(recorder, end)
        if extra:
            other.update(json_safe(extra))
        if unwritable:
            other["unwritable_events"] = unwritable
        return {"displayTimeUnit": "ms", "otherData": other}

    with replacing(path) as file:
        write_json_lines(file, _lines(recorder), tail)
    return path


@contextmanager
def tracing(
    path: str | PathLike[str],
    loop: Any = None,
    *,
    max_events: int = DEFAULT_MAX_EVENTS,
) -> Iterator[TraceRecorder]:
    """Record ``loop`` (default: the running loop) for the ``with`` block, then write ``path``.

    The file is written on the way out whatever happens, exception included:
    a trace of a crash is the one you want most.  ``with loopy.tracing("t.json")``
    inside a coroutine traces from there on; around
    ``loop.run_until_complete(...)`` pass ``loop=``.  A path the trace could
    not be written to raises :class:`OSError` on the way in, before anything
    is recorded.
    """
    if loop is None:
        loop = asyncio.get_running_loop()
    if not hasattr(loop, "add_instrument"):
        raise TypeError(f"tracing needs a loopy loop (with instruments), not {loop!r}")
    check_writable(path)
    recorder = TraceRecorder(max_events)
    recorder.attach(loop)
    try:
        yield recorder
    finally:
        recorder.detach()
        write_trace(recorder, path)


class FileRecorder(TraceRecorder):
    """A recorder that writes its trace to a file when its loop closes (or the process exits).

    :meth:`save` writes it, once: from the loop's ``close()``, from the
    interpreter's exit for a loop never closed (``atexit``), or from a
    signal handler (see ``environment.py``), whichever comes first.
    """

    def __init__(self, path: str | PathLike[str], max_events: int) -> None:
        super().__init__(max_events)
        self.path = Path(path)
        self.saved = False

    def loop_closed(self, loop: LoopContract) -> None:
        """The loop is closing: write the trace now."""
        self.save()

    def save(self) -> None:
        """Stop recording and write the file, unless done already.

        A write that fails (the disk filled up, the directory went away)
        is logged as one error line on the ``loopy`` logger: there is no
        caller left to raise to, and a traceback would hide the reason.
        """
        if self.saved or os.getpid() != self.pid:
            return  # written already; or a forked child's copy, not ours to write
        self.saved = True
        _unsaved.discard(self)
        self.detach()
        try:
            write_trace(self, self.path)
        except OSError as exc:
            logger.error("loopy: could not write the trace to %s: %s", self.path, exc)


# File recorders whose trace is not written yet: atexit writes them.  Strong
# references: a loop dropped without close() must still leave its trace.
_unsaved: set[FileRecorder] = set()


@atexit.register
def save_all() -> None:
    """Write every file recorder's trace not written yet (at exit: of loops never closed)."""
    for recorder in list(_unsaved):
        recorder.save()


def trace_to_file(
    loop: LoopContract, path: str | PathLike[str], *, max_events: int = DEFAULT_MAX_EVENTS
) -> FileRecorder:
    """Record ``loop`` from now until it closes, then write the trace to ``path``.

    The loop's ``close()`` writes the file (``asyncio.run``,
    ``asyncio.Runner`` and the ``loopy`` command always close theirs, after
    an exception or Ctrl-C too); for a loop never closed, the interpreter's
    exit does.  A path the trace could not be written to raises
    :class:`OSError` now, before anything is recorded.
    """
    check_writable(path)
    recorder = FileRecorder(path, max_events)
    recorder.attach(loop)
    _unsaved.add(recorder)
    return recorder
