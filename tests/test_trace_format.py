"""Perfetto-valid by construction: every event kind the recorder writes, checked against the spec.

The Trace Event Format has no official JSON schema.  :func:`check_event`
is written from its specification ("Trace Event Format", the Google doc
that chrome://tracing and Perfetto implement): the fields every event has,
and per phase (``ph``) the keys it requires and their types.  It is
deliberately independent of loopy's own loader (``fileformat.py``), which
checks what loopy's tools need rather than what the format demands.

:func:`strict_json_loads` is the strict parser: UTF-8 only, no ``NaN`` or
``Infinity`` (JSON has neither; Python writes them by default), no unpaired
surrogates, no duplicate keys.  ``conftest.py`` runs it on every trace file
any test leaves in its temporary directory.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import socket
from pathlib import Path
from typing import Any

import pytest

from loopy.trace import TraceRecorder, to_chrome_trace, write_trace

# ----------------------------------------------------------------------
# The strict parser
# ----------------------------------------------------------------------


class StrictJSONError(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise StrictJSONError(f"{name} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise StrictJSONError(f"duplicate keys in an object: {keys}")
    return dict(pairs)


def _check_strings(value: Any) -> None:
    if isinstance(value, str):
        value.encode("utf-8")  # an unpaired surrogate (from a \\udXXX escape) raises
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_strings(key)
            _check_strings(item)
    elif isinstance(value, list):
        for item in value:
            _check_strings(item)


def strict_json_loads(data: bytes) -> Any:
    """Parse ``data`` as RFC 8259 JSON, and nothing more lenient."""
    text = data.decode("utf-8")  # strict: bad UTF-8 raises
    value = json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_no_duplicates)
    _check_strings(value)
    return value


def test_the_strict_parser_refuses_what_json_does_not_allow() -> None:
    for bad in (b'{"a": NaN}', b"[Infinity]", b"[-Infinity]", b'{"a": 1, "a": 2}'):
        with pytest.raises(StrictJSONError):
            strict_json_loads(bad)
    with pytest.raises(UnicodeError):
        strict_json_loads(b'["\\udc80"]')
    with pytest.raises(UnicodeError):
        strict_json_loads(b'["\xff"]')
    assert strict_json_loads(b'{"a": [1, 2.5e300, "\\u00e9\\ud83d\\ude00"]}') == {
        "a": [1, 2.5e300, "\u00e9\U0001f600"]
    }


# ----------------------------------------------------------------------
# The format checker, from the specification
# ----------------------------------------------------------------------


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _string(value: Any) -> bool:
    return isinstance(value, str)


def _object(value: Any) -> bool:
    return isinstance(value, dict)


def _id(value: Any) -> bool:
    """Async and flow ids: a string or a number (the spec allows both)."""
    return _string(value) or _integer(value)


#: Metadata event names and the argument each one carries.
METADATA_ARGS = {
    "process_name": ("name", _string),
    "process_labels": ("labels", _string),
    "process_sort_index": ("sort_index", _integer),
    "thread_name": ("name", _string),
    "thread_sort_index": ("sort_index", _integer),
}

#: Per phase: the keys the specification requires, with their types
#: (beyond ``ph``; ``name``, ``pid``, ``tid`` and ``ts`` are common).
REQUIRED: dict[str, dict[str, Any]] = {
    "B": {},  # duration begin
    "E": {},  # duration end
    "X": {"dur": _number},  # complete event
    "i": {},  # instant (scope "s" optional)
    "I": {},  # instant, deprecated spelling
    "C": {"args": _object},  # counter: each arg a series
    "b": {"cat": _string, "id": _id},  # nestable async begin
    "n": {"cat": _string, "id": _id},  # nestable async instant
    "e": {"cat": _string, "id": _id},  # nestable async end
    "s": {"cat": _string, "id": _id},  # flow start
    "t": {"cat": _string, "id": _id},  # flow step
    "f": {"cat": _string, "id": _id},  # flow end
    "M": {"args": _object},  # metadata
}


def check_event(event: Any) -> list[str]:
    """The ways ``event`` breaks the Trace Event Format; empty if it does not."""
    if not isinstance(event, dict):
        return ["an event must be a JSON object"]
    problems = []
    ph = event.get("ph")
    if not _string(ph) or ph not in REQUIRED:
        return [f"unknown or missing ph {ph!r}"]
    if not _string(event.get("name")):
        problems.append("name must be a string")
    if "cat" in event and not _string(event["cat"]):
        problems.append("cat must be a string")
    if not _integer(event.get("pid")):
        problems.append("pid must be an integer")
    if not _integer(event.get("tid")):
        problems.append("tid must be an integer")
    if ph != "M" and not _number(event.get("ts")):
        problems.append("ts must be a finite number (microseconds)")
    if "ts" in event and not _number(event["ts"]):
        problems.append("ts must be a finite number (microseconds)")
    if "args" in event and not _object(event["args"]):
        problems.append("args must be an object")
    for key, valid in REQUIRED[ph].items():
        if key not in event:
            problems.append(f"ph {ph} requires {key}")
        elif not valid(event[key]):
            problems.append(f"ph {ph}: bad {key} {event[key]!r}")
    if ph == "X" and _number(event.get("dur")) and event["dur"] < 0:
        problems.append("dur must not be negative")
    if ph in ("i", "I") and event.get("s", "t") not in ("g", "p", "t"):
        problems.append(f"instant scope must be g, p or t, not {event.get('s')!r}")
    if ph != "X" and "dur" in event:
        problems.append(f"ph {ph} has no dur")
    if ph == "C" and _object(event.get("args")):
        if not event["args"]:
            problems.append("a counter needs at least one series")
        problems += [
            f"counter series {key!r} must be a number"
            for key, value in event["args"].items()
            if not _number(value)
        ]
    if ph == "f" and "bp" in event and event["bp"] != "e":
        problems.append(f"flow binding point bp must be 'e', not {event['bp']!r}")
    if ph == "M":
        name = event.get("name")
        if name not in METADATA_ARGS:
            problems.append(f"unknown metadata event {name!r}")
        elif _object(event.get("args")):
            key, valid = METADATA_ARGS[name]
            if not valid(event["args"].get(key)):
                problems.append(f"metadata {name} needs args.{key}")
    return problems


def check_trace(trace: Any) -> None:
    """Assert ``trace`` is a valid JSON Object Format trace whose events all pass."""
    assert isinstance(trace, dict), "the JSON Object Format is an object"
    assert isinstance(trace.get("traceEvents"), list)
    assert trace.get("displayTimeUnit", "ms") in ("ms", "ns")
    assert isinstance(trace.get("otherData", {}), dict)
    bad = [
        (i, problems) for i, e in enumerate(trace["traceEvents"]) if (problems := check_event(e))
    ]
    assert not bad, bad[:10]
    # Complete events on one track nest or stand apart, never overlap (the
    # format's rule, which Perfetto enforces), in whole nanoseconds.
    tracks: dict[tuple[Any, Any], list[tuple[int, int]]] = {}
    for event in trace["traceEvents"]:
        if event["ph"] == "X":
            span = (round(event["ts"] * 1000), round((event["ts"] + event["dur"]) * 1000))
            tracks.setdefault((event["pid"], event["tid"]), []).append(span)
    for track, spans in tracks.items():
        spans.sort(key=lambda span: (span[0], -span[1]))
        open_ends: list[int] = []
        for begin, end in spans:
            while open_ends and open_ends[-1] <= begin:
                open_ends.pop()
            assert not open_ends or end <= open_ends[-1], f"overlapping spans on {track}"
            open_ends.append(end)
    # Async spans pair up: every b has its e, in order, per id.
    depth: dict[Any, int] = {}
    for event in trace["traceEvents"]:
        if event["ph"] in ("b", "e"):
            key = (event["cat"], event["id"])
            depth[key] = depth.get(key, 0) + (1 if event["ph"] == "b" else -1)
            assert depth[key] >= 0, f"an e before its b: {event}"
    assert all(d == 0 for d in depth.values()), "async spans without an end"


@pytest.mark.parametrize(
    ("event", "problem"),
    [
        ({"name": "x", "ph": "X", "ts": 0, "pid": 1, "tid": 1}, "ph X requires dur"),
        ({"name": "x", "ph": "X", "ts": 0, "dur": -1, "pid": 1, "tid": 1}, "dur must not"),
        ({"name": "x", "ph": "Q", "ts": 0, "pid": 1, "tid": 1}, "unknown or missing ph"),
        ({"name": 3, "ph": "i", "ts": 0, "pid": 1, "tid": 1}, "name must be a string"),
        ({"name": "x", "ph": "i", "ts": "0", "pid": 1, "tid": 1}, "ts must be"),
        ({"name": "x", "ph": "i", "ts": 0, "pid": 1, "tid": 1, "s": "x"}, "instant scope"),
        ({"name": "x", "ph": "b", "ts": 0, "pid": 1, "tid": 1, "cat": "c"}, "ph b requires id"),
        ({"name": "x", "ph": "C", "ts": 0, "pid": 1, "tid": 1, "args": {"a": "1"}}, "series"),
        ({"name": "thread_name", "ph": "M", "pid": 1, "tid": 1, "args": {}}, "needs args.name"),
        ({"name": "x", "ph": "i", "ts": 0, "pid": True, "tid": 1}, "pid must be an integer"),
        (
            {"name": "x", "ph": "f", "ts": 0, "pid": 1, "tid": 1, "cat": "c", "id": 1, "bp": "s"},
            "bp",
        ),
    ],
)
def test_the_checker_finds_each_kind_of_mistake(event: dict[str, Any], problem: str) -> None:
    problems = check_event(event)
    assert any(problem in p for p in problems), problems


def test_the_checker_finds_overlapping_spans() -> None:
    def span(ts: float, dur: float) -> dict[str, Any]:
        return {"name": "x", "ph": "X", "ts": ts, "dur": dur, "pid": 1, "tid": 1}

    check_trace({"traceEvents": [span(0, 10), span(2, 3), span(10, 1)]})  # nested, then apart
    with pytest.raises(AssertionError, match="overlapping spans"):
        check_trace({"traceEvents": [span(0, 10), span(9.999, 1)]})


# ----------------------------------------------------------------------
# Every event kind the recorder writes
# ----------------------------------------------------------------------

#: (ph, cat) of every kind of event a loopy trace holds; a new kind must be added here.
EVERY_KIND = {
    ("M", None),
    ("X", "iteration"),
    ("X", "wait"),
    ("X", "callback"),
    ("X", "task-step"),
    ("X", "io"),
    ("X", "timer"),
    ("C", None),
    ("i", "io"),
    ("i", "timer"),
    ("i", "timer-scheduled"),
    ("i", "signal"),
    ("i", "exception"),
    ("b", "task"),
    ("e", "task"),
    ("s", "task"),
    ("f", "task"),
}


def record_every_kind(loop: Any, *, max_events: int = 100_000) -> TraceRecorder:
    """A program that makes the recorder write every kind of event it has."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    recorder = TraceRecorder(max_events)
    loop.set_exception_handler(lambda loop, context: None)  # the error is expected
    recorder.attach(loop)

    async def child() -> None:
        await asyncio.sleep(0.001)

    async def failing() -> None:
        raise ValueError("on purpose")

    async def forever() -> None:
        await asyncio.sleep(math.inf)  # "wait forever": an infinite delay

    def broken() -> None:
        raise RuntimeError("a callback that fails")

    async def main() -> None:
        running = asyncio.get_running_loop()
        received = running.create_future()
        running.add_signal_handler(signal.SIGUSR1, received.set_result, None)
        try:
            os.kill(os.getpid(), signal.SIGUSR1)
            await received
        finally:
            running.remove_signal_handler(signal.SIGUSR1)
        readable = running.create_future()
        running.add_reader(a, lambda: readable.done() or readable.set_result(a.recv(10)))
        b.send(b"ping")
        await readable
        running.remove_reader(a)
        running.call_soon(broken)
        direct = asyncio.Task(child(), loop=running)  # first sight
        await asyncio.gather(
            running.create_task(child()),
            direct,
            running.create_task(failing()),
            return_exceptions=True,
        )
        cancelled = running.create_task(forever())
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.gather(cancelled, return_exceptions=True)
        unfinished = running.create_task(forever(), name="unfinished")
        await asyncio.sleep(0.002)
        assert not unfinished.done()

    try:
        loop.run_until_complete(main())
    finally:
        recorder.detach()
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.run_until_complete(asyncio.sleep(0))
        a.close()
        b.close()
    return recorder


def kinds(trace: dict[str, Any]) -> set[tuple[str, str | None]]:
    return {(e["ph"], e.get("cat")) for e in trace["traceEvents"]}


def test_every_event_kind_is_valid_in_the_file(loop: Any, tmp_path: Path) -> None:
    recorder = record_every_kind(loop)
    path = write_trace(recorder, tmp_path / "every.json")
    trace = strict_json_loads(path.read_bytes())
    check_trace(trace)
    assert kinds(trace) == EVERY_KIND
    origins = {e["args"]["origin"] for e in trace["traceEvents"] if e["ph"] == "b"}
    assert origins == {"create_task", "first_sight"}
    outcomes = {e["args"]["outcome"] for e in trace["traceEvents"] if e["ph"] == "e"}
    assert outcomes == {"result", "exception", "cancelled", "unfinished"}
    # The infinite delay of sleep(inf), as the documented null.
    delays = [
        e["args"]["delay_ms"] for e in trace["traceEvents"] if e.get("cat") == "timer-scheduled"
    ]
    assert None in delays
    assert strict_json_loads(json.dumps(to_chrome_trace(recorder), allow_nan=False).encode())


def test_a_trace_whose_creations_were_dropped_is_valid_too(loop: Any, tmp_path: Path) -> None:
    recorder = record_every_kind(loop, max_events=60)
    assert recorder.dropped > 0
    trace = strict_json_loads(write_trace(recorder, tmp_path / "dropped.json").read_bytes())
    check_trace(trace)
    origins = {e["args"]["origin"] for e in trace["traceEvents"] if e["ph"] == "b"}
    assert "unrecorded" in origins


def test_partial_spans_at_detach_are_valid(loop: Any, tmp_path: Path) -> None:
    recorder = TraceRecorder()

    def detach_midway() -> None:
        recorder.detach()

    recorder.attach(loop)
    loop.call_soon(detach_midway)
    loop.call_soon(loop.stop)
    loop.run_forever()
    trace = strict_json_loads(write_trace(recorder, tmp_path / "partial.json").read_bytes())
    check_trace(trace)
    assert any(e.get("args", {}).get("partial") for e in trace["traceEvents"])
