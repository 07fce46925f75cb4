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
* ``b``/``e``, on the loop track: a task's life, creation to completion (cat
  ``task``, paired by ``id``)
* ``s``/``f``, on the loop track: an arrow from the step that created a task
  to the task's first step
* ``M``: the names of the process and of the two tracks

``otherData`` carries the wall-clock time the trace started (so trace times
line up with log times), how many events the ring buffer dropped, and the
loopy version.  :func:`load_trace` reads any such file back;
:func:`tracing` records a block of code into one.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from os import PathLike
from pathlib import Path
from typing import Any

from .recorder import DEFAULT_MAX_EVENTS, STEP_KINDS, TraceEvent, TraceRecorder

__all__ = ["ITERATION_TID", "LOOP_TID", "load_trace", "to_chrome_trace", "tracing", "write_trace"]

#: The two tracks (Chrome "threads") of a loopy trace.
LOOP_TID = 1
ITERATION_TID = 2

# Instants that are not about a callback, by recorder event type: (category, scope).
# Scope "t" draws the mark on the loop's track, "p" across the whole process.
_INSTANTS = {
    "timer-fired": ("timer", "t"),
    "timer-scheduled": ("timer-scheduled", "t"),
    "signal": ("signal", "p"),
    "exception": ("exception", "t"),
}


def _us(seconds: float) -> float:
    """Seconds to the format's microseconds, rounded to the nanosecond."""
    return round(seconds * 1e6, 3)


def _ms(seconds: float) -> float:
    """Durations in ``args`` are in milliseconds: what a person reads best."""
    return round(seconds * 1e3, 6)


def to_chrome_trace(recorder: TraceRecorder) -> dict[str, Any]:
    """The recording as a Trace Event Format dict (see the module docstring)."""
    pid = recorder.pid
    end = recorder.end_time if recorder.end_time is not None else recorder.now()
    recorded = recorder.events
    events: list[dict[str, Any]] = []
    for event in recorded:
        events.extend(_convert(event))
    events.extend(_task_events(recorded, end))
    for converted in events:
        converted["pid"] = pid
        converted.setdefault("tid", LOOP_TID)
    events.sort(key=lambda e: e["ts"])  # stable: same-time events keep their order
    return {
        "traceEvents": _metadata(pid) + events,
        "displayTimeUnit": "ms",
        "otherData": _other_data(recorder, end),
    }


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
        "loopy_version": version,
        "start_wall_time": recorder.start_wall_time,
        "start_wall_time_iso": started.isoformat(),
        "duration_us": _us(end),
        "dropped_events": recorder.dropped,
        "max_events": recorder.max_events,
        "task_mode": recorder.task_mode,
        "clock": "loop.time(), relative to the start of the trace",
    }


def _convert(event: TraceEvent) -> list[dict[str, Any]]:
    """One recorder event as zero or more trace events."""
    kind, ts, args = event.type, _us(event.start), event.args
    if kind == "iteration":
        busy = event.duration - args["wait"] if event.duration is not None else 0.0
        details = {**args, "wait": _ms(args["wait"]), "busy": _ms(busy)}
        return [_complete(event, "iteration", ITERATION_TID, details)]
    if kind == "wait":
        return _wait(event)
    if kind in STEP_KINDS:
        return [_complete(event, kind, LOOP_TID, args)]
    if kind == "counters":
        return [
            {"name": "ready queue", "ph": "C", "ts": ts, "args": {"callbacks": args["ready"]}},
            {"name": "registered fds", "ph": "C", "ts": ts, "args": {"fds": args["fds"]}},
        ]
    if kind in _INSTANTS:
        cat, scope = _INSTANTS[kind]
        return [_instant(f"{kind}: {event.name}", cat, ts, scope, _instant_args(event))]
    return []  # task-created/task-finished: see _task_events


def _complete(event: TraceEvent, cat: str, tid: int, args: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": event.name,
        "cat": cat,
        "ph": "X",
        "ts": _us(event.start),
        "dur": _us(event.duration or 0.0),
        "tid": tid,
        "args": args,
    }


def _instant(name: str, cat: str, ts: float, scope: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "cat": cat, "ph": "i", "s": scope, "ts": ts, "args": args}


def _instant_args(event: TraceEvent) -> dict[str, Any]:
    args = dict(event.args)
    for seconds_key in ("lateness", "delay"):
        if seconds_key in args:
            args[f"{seconds_key}_ms"] = _ms(args.pop(seconds_key))
    return args


def _wait(event: TraceEvent) -> list[dict[str, Any]]:
    """The wait, then one instant per descriptor it found ready."""
    timeout = event.args["timeout"]
    ready = event.args["ready"]
    args = {
        "timeout_ms": None if timeout is None else _ms(timeout),
        "ready": [[fd, what] for fd, what in ready],
    }
    out = [_complete(event, "wait", LOOP_TID, args)]
    end = _us(event.start + (event.duration or 0.0))
    for fd, what in ready:
        name = (
            f"fd {fd} {'readable' if what == 'read' else 'writable' if what == 'write' else what}"
        )
        out.append(_instant(name, "io", end, "t", {"fd": fd, "events": what}))
    return out


# ----------------------------------------------------------------------
# Tasks: lifetimes as async spans, creation as flow arrows
# ----------------------------------------------------------------------


def _task_events(recorded: list[TraceEvent], end: float) -> Iterator[dict[str, Any]]:
    """A ``b``/``e`` pair per task seen, and an ``s``/``f`` pair per parent-child link.

    A task created before the trace started (or whose creation fell out of
    the ring buffer) begins at 0; one not finished when it ended ends there.
    Both ends are always emitted, so every span is paired.
    """
    created: dict[int, TraceEvent] = {}
    finished: dict[int, TraceEvent] = {}
    first_step: dict[int, TraceEvent] = {}
    labels: dict[int, str] = {}
    for event in recorded:
        number = event.args.get("task")
        if number is None:
            continue
        labels[number] = event.name  # the latest: a task may be renamed after creation
        if event.type == "task-created":
            created[number] = event
        elif event.type == "task-finished":
            finished[number] = event
        else:  # the only other events about a task are its steps
            first_step.setdefault(number, event)
    for number in sorted(labels):
        yield from _task_span(
            number, labels[number], created.get(number), finished.get(number), end
        )
        parent = created[number].args["parent"] if number in created else None
        if parent is not None and number in first_step:
            yield from _flow(number, created[number].start, first_step[number].start)


def _task_span(
    number: int,
    label: str,
    created: TraceEvent | None,
    finished: TraceEvent | None,
    end: float,
) -> Iterator[dict[str, Any]]:
    span = {"name": label, "cat": "task", "id": f"task-{number}"}
    begin_args: dict[str, Any] = {"task": number, "created": created is not None}
    if created is not None:
        begin_args["parent"] = created.args["parent"]
    yield {**span, "ph": "b", "ts": _us(created.start if created else 0.0), "args": begin_args}
    if finished is not None:
        end_args = {"outcome": finished.args["outcome"], "exception": finished.args["exception"]}
        yield {**span, "ph": "e", "ts": _us(finished.start), "args": end_args}
    else:
        yield {**span, "ph": "e", "ts": _us(end), "args": {"outcome": "unfinished"}}


def _flow(number: int, created_at: float, first_step_at: float) -> Iterator[dict[str, Any]]:
    """An arrow from the parent's step (at creation) to the child's first step."""
    flow = {"name": "create_task", "cat": "task", "id": number}
    yield {**flow, "ph": "s", "ts": _us(created_at), "args": {"child": number}}
    # bp "e": bind to the slice that encloses this time (the first step).
    yield {**flow, "ph": "f", "bp": "e", "ts": _us(first_step_at), "args": {"child": number}}


# ----------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------


def write_trace(recorder: TraceRecorder, path: str | PathLike[str]) -> Path:
    """Write the recording to ``path`` as JSON, one event per line; return the path."""
    return dump_trace(to_chrome_trace(recorder), path)


def dump_trace(trace: dict[str, Any], path: str | PathLike[str]) -> Path:
    """Write a trace dict as JSON with one event per line (easy to grep and diff)."""
    path = Path(path)
    lines = ",\n".join(json.dumps(event, separators=(",", ":")) for event in trace["traceEvents"])
    head = {key: value for key, value in trace.items() if key != "traceEvents"}
    text = '{"traceEvents":[\n' + lines + "\n],\n" + json.dumps(head)[1:] + "\n"
    path.write_text(text, encoding="utf-8")
    return path


def load_trace(path: str | PathLike[str]) -> dict[str, Any]:
    """Read a trace file back: loopy's, or any Trace Event Format file.

    The format also allows a bare JSON array of events; that comes back
    wrapped as ``{"traceEvents": [...]}``.
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if isinstance(data, list):
        data = {"traceEvents": data}
    if not isinstance(data, dict) or not isinstance(data.get("traceEvents"), list):
        raise ValueError(f"{path}: not a Chrome trace (no traceEvents list)")
    return data


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
    ``loop.run_until_complete(...)`` pass ``loop=``.
    """
    if loop is None:
        loop = asyncio.get_running_loop()
    if not hasattr(loop, "add_instrument"):
        raise TypeError(f"tracing needs a loopy loop (with instruments), not {loop!r}")
    recorder = TraceRecorder(max_events)
    recorder.attach(loop)
    try:
        yield recorder
    finally:
        recorder.detach()
        write_trace(recorder, path)


class _FileRecorder(TraceRecorder):
    """A recorder that writes its trace to a file when its loop closes."""

    def __init__(self, path: str | PathLike[str], max_events: int) -> None:
        super().__init__(max_events)
        self.path = Path(path)

    def loop_closed(self, loop: Any) -> None:
        self.detach()
        write_trace(self, self.path)


def trace_to_file(
    loop: Any, path: str | PathLike[str], *, max_events: int = DEFAULT_MAX_EVENTS
) -> TraceRecorder:
    """Record ``loop`` from now until it closes, then write the trace to ``path``.

    The loop's ``close()`` writes the file, so it is there however the
    program ends, provided the loop is closed: ``asyncio.run``,
    ``asyncio.Runner`` and the ``loopy`` command always close theirs, after
    an exception or Ctrl-C too.
    """
    recorder = _FileRecorder(path, max_events)
    recorder.attach(loop)
    return recorder
