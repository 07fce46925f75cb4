"""The trace recorder and the Chrome trace export: exact events on a virtual clock."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import loopy
from loopy.instruments import Instrument
from loopy.trace import (
    DEFAULT_MAX_EVENTS,
    TraceRecorder,
    load_trace,
    to_chrome_trace,
    tracing,
    write_trace,
)
from loopy.trace.recorder import outcome
from tests.helpers import make_loop


def short(name: str) -> str:
    """``test_x.<locals>.main.<locals>.f`` -> ``f``: the part a reader cares about."""
    return name.rsplit(".<locals>.", 1)[-1]


def sequence(recorder: TraceRecorder) -> list[tuple[Any, ...]]:
    return [(e.type, e.start, e.duration, short(e.name), e.args) for e in recorder.events]


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    yield a, b
    a.close()
    b.close()


def run_small_program(vloop: Any, a: socket.socket, b: socket.socket) -> bytes:
    """A timer, a socketpair read and a task awaiting a future."""
    future: asyncio.Future[bytes] = vloop.create_future()

    def send_ping() -> None:
        vloop.virtual_clock.advance(0.25)  # as if sending took a quarter second
        b.send(b"ping")

    def on_readable() -> None:
        future.set_result(a.recv(10))
        vloop.remove_reader(a)

    async def child() -> bytes:
        return await future

    async def main() -> bytes:
        task = vloop.create_task(child(), name="child")
        vloop.call_later(0.5, send_ping)
        vloop.add_reader(a, on_readable)
        return await task

    result: bytes = vloop.run_until_complete(vloop.create_task(main(), name="main"))
    return result


def test_the_exact_events_of_a_small_program(vloop: Any, pair: Any) -> None:
    a, b = pair
    fd = a.fileno()
    recorder = TraceRecorder()
    recorder.attach(vloop)
    assert run_small_program(vloop, a, b) == b"ping"
    recorder.detach()

    main, child = "Task main (coro: main)", "Task child (coro: child)"
    zero: dict[str, Any] = {"timeout": 0.0, "ready": ()}
    assert sequence(recorder) == [
        ("task-created", 0.0, None, main, {"task": 1, "parent": None, "first_sight": False}),
        # 1: main's first step creates the child and schedules the timer.  No
        # wait: a callback is ready and only the loop's wake-up socket is
        # watched ("fds": 1), so the loop skips select() (iterations 5-7 too).
        ("counters", 0.0, None, "counters", {"ready": 1, "fds": 1}),
        ("task-created", 0.0, None, child, {"task": 2, "parent": 1, "first_sight": False}),
        ("timer-scheduled", 0.0, None, "send_ping", {"delay": 0.5}),
        ("task-step", 0.0, 0.0, main, {"task": 1}),
        ("iteration", 0.0, 0.0, "iteration 1", {"n": 1, "wait": 0.0, "callbacks": 1}),
        # 2: the child starts and awaits the future.
        ("counters", 0.0, None, "counters", {"ready": 1, "fds": 2}),
        ("wait", 0.0, 0.0, "wait", zero),
        ("task-step", 0.0, 0.0, child, {"task": 2}),
        ("iteration", 0.0, 0.0, "iteration 2", {"n": 2, "wait": 0.0, "callbacks": 1}),
        # 3: nothing ready: wait for the timer, which holds the loop 0.25 s.
        ("counters", 0.0, None, "counters", {"ready": 0, "fds": 2}),
        ("wait", 0.0, 0.5, "wait", {"timeout": 0.5, "ready": ()}),
        ("timer-fired", 0.5, None, "send_ping", {"lateness": 0.0}),
        ("timer", 0.5, 0.25, "send_ping", {}),
        ("iteration", 0.0, 0.75, "iteration 3", {"n": 3, "wait": 0.5, "callbacks": 1}),
        # 4: the socket is readable: its reader resolves the future.
        ("counters", 0.75, None, "counters", {"ready": 0, "fds": 2}),
        ("wait", 0.75, 0.0, "wait", {"timeout": None, "ready": ((fd, "read"),)}),
        ("io", 0.75, 0.0, "on_readable", {"fd": fd}),
        ("iteration", 0.75, 0.0, "iteration 4", {"n": 4, "wait": 0.0, "callbacks": 1}),
        # 5: the child wakes up and returns.
        ("counters", 0.75, None, "counters", {"ready": 1, "fds": 1}),
        ("task-step", 0.75, 0.0, child, {"task": 2}),
        ("task-finished", 0.75, None, child, {"task": 2, "outcome": "result", "exception": None}),
        ("iteration", 0.75, 0.0, "iteration 5", {"n": 5, "wait": 0.0, "callbacks": 1}),
        # 6: the loop's done callback for the child, and main wakes up and returns.
        ("counters", 0.75, None, "counters", {"ready": 2, "fds": 1}),
        ("callback", 0.75, 0.0, "Loop._report_task_finished", {}),
        ("task-step", 0.75, 0.0, main, {"task": 1}),
        ("task-finished", 0.75, None, main, {"task": 1, "outcome": "result", "exception": None}),
        ("iteration", 0.75, 0.0, "iteration 6", {"n": 6, "wait": 0.0, "callbacks": 2}),
        # 7: done callbacks of main: the loop's, then run_until_complete's stop.
        ("counters", 0.75, None, "counters", {"ready": 2, "fds": 1}),
        ("callback", 0.75, 0.0, "Loop._report_task_finished", {}),
        ("callback", 0.75, 0.0, "_stop_loop_when_done", {}),
        ("iteration", 0.75, 0.0, "iteration 7", {"n": 7, "wait": 0.0, "callbacks": 2}),
    ]
    assert recorder.dropped == 0
    assert recorder.end_time == 0.75
    assert recorder.task_mode == vloop.task_mode


def test_writers_and_descriptors_ready_both_ways(vloop: Any, pair: Any) -> None:
    a, b = pair
    b.send(b"data for a")

    def on_readable() -> None:
        vloop.remove_reader(a)

    def on_writable() -> None:
        vloop.remove_writer(a)
        vloop.stop()

    recorder = TraceRecorder()
    recorder.attach(vloop)
    vloop.add_reader(a, on_readable)
    vloop.add_writer(a, on_writable)
    vloop.run_forever()
    recorder.detach()
    fd = a.fileno()
    ran = [(e.type, short(e.name), e.args) for e in recorder.events if e.type == "io"]
    assert ran == [("io", "on_readable", {"fd": fd}), ("io", "on_writable", {"fd": fd})]
    [wait] = [e for e in recorder.events if e.type == "wait"]
    assert wait.args["ready"] == ((fd, "read+write"),)
    assert [(e["name"], e["args"]) for e in io_instants(recorder)] == [
        (f"fd {fd} read+write", {"fd": fd, "events": "read+write"})
    ]

    def on_b_writable() -> None:
        vloop.remove_writer(b)
        vloop.stop()

    recorder = TraceRecorder()
    recorder.attach(vloop)
    vloop.add_writer(b, on_b_writable)
    vloop.run_forever()
    recorder.detach()
    assert [e["name"] for e in io_instants(recorder)] == [f"fd {b.fileno()} writable"]
    assert [(e.type, short(e.name)) for e in recorder.events if e.duration is not None][1:] == [
        ("io", "on_b_writable"),
        ("iteration", "iteration 1"),
    ]


def io_instants(recorder: TraceRecorder) -> list[dict[str, Any]]:
    events = to_chrome_trace(recorder)["traceEvents"]
    return [e for e in events if e["ph"] == "i" and e["cat"] == "io"]


def test_the_ring_buffer_keeps_the_newest_events_and_counts_the_rest(vloop: Any, pair: Any) -> None:
    everything = TraceRecorder()
    bounded = TraceRecorder(max_events=10)
    everything.attach(vloop)
    bounded.attach(vloop)
    run_small_program(vloop, *pair)
    assert len(everything.events) > 10
    assert list(bounded.events) == list(everything.events)[-10:]
    assert bounded.dropped == len(everything.events) - 10
    assert everything.dropped == 0
    trace = to_chrome_trace(bounded)
    assert trace["otherData"]["dropped_events"] == bounded.dropped
    assert trace["otherData"]["max_events"] == 10
    validate(trace)  # still a valid trace, spans still paired


def test_bad_sizes_and_double_attach_are_refused(vloop: Any) -> None:
    assert DEFAULT_MAX_EVENTS == 200_000
    never_attached = to_chrome_trace(TraceRecorder())
    validate(never_attached)
    assert never_attached["otherData"]["duration_us"] == 0.0
    with pytest.raises(ValueError):
        TraceRecorder(max_events=0)
    recorder = TraceRecorder()
    recorder.attach(vloop)
    assert recorder.attached
    with pytest.raises(RuntimeError):
        recorder.attach(vloop)
    recorder.detach()
    recorder.detach()  # twice is harmless
    assert not recorder.attached
    assert vloop.instruments == ()


def test_detaching_inside_a_callback_closes_its_spans_as_partial(vloop: Any) -> None:
    recorder = TraceRecorder()

    def stop_recording() -> None:
        vloop.virtual_clock.advance(0.125)
        recorder.detach()

    recorder.attach(vloop)
    vloop.call_soon(stop_recording)
    vloop.call_soon(vloop.stop)
    vloop.run_forever()
    last_two = sequence(recorder)[-2:]
    assert last_two == [
        ("callback", 0.0, 0.125, "stop_recording", {"partial": True}),
        (
            "iteration",
            0.0,
            0.125,
            "iteration 1",
            {"n": 1, "wait": 0.0, "callbacks": 0, "partial": True},
        ),
    ]
    assert recorder.end_time == 0.125


def test_attaching_midway_ignores_the_halves_it_missed(vloop: Any) -> None:
    """Hooks whose first half came before the attach are ignored, not misrecorded."""
    recorder = TraceRecorder()

    class AttachOnWait(Instrument):
        def wait_started(self, loop: Any, timeout: float | None) -> None:
            if not recorder.attached:
                recorder.attach(loop)  # between wait_started and wait_finished

    vloop.add_instrument(AttachOnWait())
    vloop.call_later(0.5, vloop.stop)
    vloop.run_forever()
    # Attached mid-wait: the wait and the iteration are not recorded, what
    # follows them is, whole.
    recorded = [(e.type, e.name) for e in recorder.events]
    assert recorded == [("timer-fired", "Loop.stop"), ("timer", "Loop.stop")]

    late = TraceRecorder()

    def attach_late() -> None:
        late.attach(vloop)  # inside a callback: its end and its iteration's end come next

    vloop.call_soon(attach_late)
    vloop.call_soon(vloop.stop)
    vloop.run_forever()
    assert [e.type for e in late.events] == ["callback"]  # only stop(), whole
    assert late.events[0].name == "Loop.stop"


def test_a_detached_recorder_is_detached_cleanly_even_if_the_loop_dropped_it(
    vloop: Any, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(TraceRecorder):
        def callback_started(self, loop: Any, handle: Any) -> None:
            raise RuntimeError("broken")

    recorder = Broken()
    recorder.attach(vloop)
    vloop.call_soon(vloop.stop)
    with caplog.at_level(logging.ERROR, logger="loopy"):
        vloop.run_forever()
    assert vloop.instruments == ()  # the loop detached it
    recorder.detach()
    assert not recorder.attached


def test_task_outcomes_are_recorded_without_retrieving_exceptions(vloop: Any) -> None:
    recorder = TraceRecorder()
    recorder.attach(vloop)

    async def fails() -> None:
        raise ValueError("boom")

    async def sleeps() -> None:
        await asyncio.sleep(10)

    async def main() -> None:
        failing = vloop.create_task(fails(), name="fails")
        sleeping = vloop.create_task(sleeps(), name="sleeps")
        await asyncio.sleep(0)
        sleeping.cancel()
        await asyncio.wait([failing, sleeping])
        # The recorder looked, but did not mark the exception as retrieved.
        assert failing._log_traceback
        failing.exception()

    vloop.run_until_complete(vloop.create_task(main(), name="main"))
    recorder.detach()
    finished = {e.name: e.args for e in recorder.events if e.type == "task-finished"}
    assert finished["Task fails (coro: fails)"]["outcome"] == "exception"
    assert finished["Task fails (coro: fails)"]["exception"] == "ValueError('boom')"
    assert finished["Task sleeps (coro: sleeps)"]["outcome"] == "cancelled"
    assert finished["Task main (coro: main)"]["outcome"] == "result"
    assert outcome(vloop.create_future()) == ("result", None)  # pending counts as no error


def test_task_finished_hook_records_tasks_whose_last_step_it_missed(vloop: Any) -> None:
    recorder = TraceRecorder()
    recorder.attach(vloop)
    task = vloop.create_task(asyncio.sleep(0), name="quiet")
    task.cancel()
    vloop.run_until_complete(asyncio.wait([task]))
    before = [e for e in recorder.events if e.type == "task-finished"]
    recorder._finished.discard(task)  # as if the step had not been seen
    recorder.task_finished(vloop, task)
    after = [e for e in recorder.events if e.type == "task-finished"]
    assert len(after) == len(before) + 1
    assert after[-1].args["outcome"] == "cancelled"
    recorder.detach()


def test_signals_and_errors_are_recorded(loop: Any) -> None:
    recorder = TraceRecorder()
    recorder.attach(loop)
    loop.set_exception_handler(lambda loop, context: None)
    loop.add_signal_handler(signal.SIGUSR1, loop.stop)
    try:
        loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
        loop.run_forever()
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
    loop.call_exception_handler({"message": "plain"})
    loop.call_exception_handler({"message": "", "exception": KeyError("k")})
    recorder.signal_received(loop, 1000)  # not a signal Python knows
    recorder.detach()
    instants = [
        (e.type, e.name, e.args) for e in recorder.events if e.type in ("signal", "exception")
    ]
    assert instants == [
        ("signal", "SIGUSR1", {"signum": signal.SIGUSR1}),
        ("exception", "plain", {"exception": None}),
        ("exception", "Unhandled exception in event loop", {"exception": "KeyError('k')"}),
        ("signal", "signal 1000", {"signum": 1000}),
    ]


# ----------------------------------------------------------------------
# The export: the Trace Event Format
# ----------------------------------------------------------------------

PHASES = {"X", "i", "C", "M", "b", "e", "s", "f"}


def validate(trace: dict[str, Any]) -> None:
    """Check the Trace Event Format's required fields, and that pairs pair up."""
    assert trace["displayTimeUnit"] == "ms"
    json.dumps(trace)  # serialisable as it is
    opened: dict[Any, dict[str, Any]] = {}
    flows: dict[Any, list[str]] = {}
    for event in trace["traceEvents"]:
        for field in ("name", "ph", "ts", "pid", "tid"):
            assert field in event, (field, event)
        assert event["ph"] in PHASES, event
        assert isinstance(event["ts"], (int, float)), event
        assert event["ts"] >= 0, event
        assert isinstance(event["name"], str), event
        if event["ph"] == "X":
            assert isinstance(event["dur"], (int, float)), event
            assert event["dur"] >= 0, event
        if event["ph"] in ("C", "M"):
            assert isinstance(event["args"], dict), event
        if event["ph"] == "i":
            assert event["s"] in ("g", "p", "t"), event
        if event["ph"] in ("b", "e", "s", "f"):
            assert "id" in event, event
            assert "cat" in event, event
        if event["ph"] == "b":
            assert event["id"] not in opened, event
            opened[event["id"]] = event
        elif event["ph"] == "e":
            begin = opened.pop(event["id"])
            assert (begin["name"], begin["cat"]) == (event["name"], event["cat"])
            assert begin["ts"] <= event["ts"]
        elif event["ph"] in ("s", "f"):
            flows.setdefault(event["id"], []).append(event["ph"])
    assert opened == {}, "async spans without an end"
    assert all(phases == ["s", "f"] for phases in flows.values()), flows


def test_the_export_is_a_valid_chrome_trace(vloop: Any, pair: Any) -> None:
    recorder = TraceRecorder()
    recorder.attach(vloop)
    run_small_program(vloop, *pair)
    recorder.detach()
    trace = to_chrome_trace(recorder)
    validate(trace)
    events = trace["traceEvents"]
    other = trace["otherData"]
    assert other["loopy_version"] == loopy.__version__
    assert other["start_wall_time"] == recorder.start_wall_time
    assert other["duration_us"] == 750000.0
    assert other["dropped_events"] == 0

    names = {
        (e["name"], e["args"]["name"]) for e in events if e["ph"] == "M" and "name" in e["args"]
    }
    assert ("process_name", "loopy event loop") in names
    assert {e["tid"] for e in events if e["ph"] == "X" and e["cat"] == "iteration"} == {2}
    assert {e["tid"] for e in events if e["ph"] == "X" and e["cat"] != "iteration"} == {1}
    timer = next(e for e in events if e["ph"] == "X" and e["cat"] == "timer")
    assert (timer["ts"], timer["dur"]) == (500000.0, 250000.0)
    fired = next(e for e in events if e["ph"] == "i" and e["cat"] == "timer")
    assert fired["args"] == {"lateness_ms": 0.0}
    io = next(e for e in events if e["ph"] == "i" and e["cat"] == "io")
    assert io["name"] == f"fd {pair[0].fileno()} readable"
    assert io["ts"] == 750000.0
    counters = {e["name"] for e in events if e["ph"] == "C"}
    assert counters == {"ready queue", "registered fds"}
    waits = [e for e in events if e["ph"] == "X" and e["cat"] == "wait"]
    assert [w["args"]["timeout_ms"] for w in waits] == [0.0, 500.0, None]
    iteration = next(e for e in events if e["ph"] == "X" and e["name"] == "iteration 3")
    assert iteration["args"] == {"n": 3, "wait": 500.0, "callbacks": 1, "busy": 250.0}
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)


def test_task_spans_and_the_creation_arrow(vloop: Any, pair: Any) -> None:
    recorder = TraceRecorder()
    recorder.attach(vloop)
    run_small_program(vloop, *pair)
    recorder.detach()
    events = to_chrome_trace(recorder)["traceEvents"]
    spans = [
        (e["ph"], e["id"], e["name"], e["ts"])
        for e in events
        if e.get("cat") == "task" and e["ph"] in ("b", "e")
    ]
    assert sorted(spans) == [
        ("b", "task-1", "Task main (coro: main)", 0.0),
        ("b", "task-2", "Task child (coro: child)", 0.0),
        ("e", "task-1", "Task main (coro: main)", 750000.0),
        ("e", "task-2", "Task child (coro: child)", 750000.0),
    ]
    child_begin = next(e for e in events if e["ph"] == "b" and e["id"] == "task-2")
    assert child_begin["args"] == {"task": 2, "origin": "create_task", "parent": 1}
    flow = [e for e in events if e["ph"] in ("s", "f")]
    assert [(e["ph"], e["id"], e["ts"]) for e in flow] == [("s", 2, 0.0), ("f", 2, 0.0)]
    assert flow[1]["bp"] == "e"


def test_tasks_from_before_the_trace_begin_at_first_sight_and_unfinished_ones_end_with_it(
    vloop: Any,
) -> None:
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.sleep(3600)

    async def prepare() -> asyncio.Task[None]:
        task = asyncio.ensure_future(forever())
        await started.wait()
        return task

    older = vloop.run_until_complete(prepare())
    recorder = TraceRecorder()
    recorder.attach(vloop)
    older.cancel()
    vloop.run_until_complete(asyncio.wait([older]))
    unfinished = vloop.create_task(forever(), name="unfinished")
    vloop.run_until_complete(asyncio.sleep(1))
    recorder.detach()
    trace = to_chrome_trace(recorder)
    validate(trace)
    begins = {e["name"]: e for e in trace["traceEvents"] if e["ph"] == "b"}
    ends = {e["name"]: e for e in trace["traceEvents"] if e["ph"] == "e"}
    older_name = f"Task {older.get_name()} (coro: forever)"
    assert begins[older_name]["ts"] == 0.0  # its first step in the trace: the cancellation
    assert begins[older_name]["args"] == {
        "task": begins[older_name]["args"]["task"],
        "origin": "first_sight",
        "parent": None,
    }
    assert ends[older_name]["args"]["outcome"] == "cancelled"
    assert ends["Task unfinished (coro: forever)"]["args"] == {"outcome": "unfinished"}
    assert ends["Task unfinished (coro: forever)"]["ts"] == 1e6
    unfinished.cancel()
    vloop.run_until_complete(asyncio.wait([unfinished]))


def test_a_still_attached_recorder_exports_up_to_now(vloop: Any) -> None:
    recorder = TraceRecorder()
    recorder.attach(vloop)
    vloop.run_until_complete(asyncio.sleep(2))
    assert to_chrome_trace(recorder)["otherData"]["duration_us"] == 2e6
    recorder.detach()


def test_write_and_load_trace(vloop: Any, pair: Any, tmp_path: Path) -> None:
    recorder = TraceRecorder()
    recorder.attach(vloop)
    run_small_program(vloop, *pair)
    recorder.detach()
    path = write_trace(recorder, tmp_path / "trace.json")
    assert path == tmp_path / "trace.json"
    loaded = load_trace(path)
    assert loaded == json.loads(json.dumps(to_chrome_trace(recorder)))
    # One event per line: easy to grep.
    assert len(path.read_text().splitlines()) == len(loaded["traceEvents"]) + 3
    assert loaded["otherData"]["trace_format"] == 1

    # A bare array of events is a valid Chrome trace, but carries no
    # trace_format: not a loopy trace.
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(loaded["traceEvents"]))
    with pytest.raises(ValueError, match=r"^not a loopy trace: a JSON array, not an object$"):
        load_trace(bare)


# ----------------------------------------------------------------------
# tracing(): a with block
# ----------------------------------------------------------------------


def test_tracing_writes_the_file_on_exit(vloop: Any, tmp_path: Path) -> None:
    path = tmp_path / "t.json"

    async def main() -> None:
        with tracing(path) as recorder:  # the running loop
            assert recorder.attached
            await asyncio.sleep(0.5)
        assert not recorder.attached

    vloop.run_until_complete(main())
    assert vloop.instruments == ()
    trace = load_trace(path)
    validate(trace)
    assert trace["otherData"]["duration_us"] == 500000.0
    sleeps = [e for e in trace["traceEvents"] if e["ph"] == "X" and e["cat"] == "wait"]
    assert sleeps[0]["dur"] == 500000.0


def test_tracing_writes_the_file_when_the_block_raises(vloop: Any, tmp_path: Path) -> None:
    path = tmp_path / "crash.json"

    async def crash() -> None:
        await asyncio.sleep(0.25)
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError), tracing(path, loop=vloop, max_events=50) as recorder:
        vloop.run_until_complete(crash())
    assert recorder.max_events == 50
    trace = load_trace(path)
    validate(trace)
    outcomes = [e["args"]["outcome"] for e in trace["traceEvents"] if e["ph"] == "e"]
    assert outcomes == ["exception"]


def test_tracing_needs_a_loopy_loop(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), tracing(tmp_path / "x.json"):
        pass  # no running loop
    plain = make_loop("asyncio")
    try:
        with pytest.raises(TypeError, match="loopy loop"), tracing(tmp_path / "x.json", plain):
            pass
    finally:
        plain.close()
    assert not (tmp_path / "x.json").exists()
