"""The flight recorder: the last seconds in bounded memory, no references kept, stall dumps.

In-process tests use the ``loop`` and ``vloop`` fixtures (both task modes;
on the virtual clock a 30-second program takes no time).  The stall dumps
are tested in real processes, as a user meets them: ``LOOPY_DUMP_ON_STALL``
in the environment, a step that blocks with ``time.sleep``, and the files
and the log line that come out.  No timing is asserted beyond generous
lower bounds: a step that sleeps 300 ms holds the loop at least that long.
"""

from __future__ import annotations

import array
import asyncio
import functools
import gc
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import loopy
from loopy.cli import main as cli_main
from loopy.trace import TraceRecorder, load_trace, summarize
from loopy.trace import flight as flight_module
from loopy.trace.flight import (
    DumpLimiter,
    FlightRecorder,
    FlightSnapshot,
    NameTable,
    recent_activity,
)
from tests.helpers import make_loop
from tests.test_trace_format import check_trace, strict_json_loads

# ----------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------


def dump(snap: FlightSnapshot, path: Path) -> dict[str, Any]:
    """Write ``snap``, check it as strict JSON against the format, and read it with loopy."""
    snap.write(path)
    trace = strict_json_loads(path.read_bytes())
    check_trace(trace)
    assert load_trace(path) == trace
    return trace  # type: ignore[no-any-return]


def events(trace: dict[str, Any], cat: str, ph: str = "X") -> list[dict[str, Any]]:
    return [e for e in trace["traceEvents"] if e.get("cat") == cat and e["ph"] == ph]


async def tick_for(seconds: int, name: str = "ticker") -> None:
    async def ticker() -> None:
        for _ in range(seconds):
            await asyncio.sleep(1)

    await asyncio.get_running_loop().create_task(ticker(), name=name)


# ----------------------------------------------------------------------
# The window and the ring
# ----------------------------------------------------------------------


def test_a_dump_holds_the_last_seconds_and_nothing_older(vloop: Any, tmp_path: Path) -> None:
    flight = vloop.start_flight_recorder(5)
    vloop.run_until_complete(tick_for(20))
    snap = flight.snapshot()
    trace = dump(snap, tmp_path / "window.json")
    other = trace["otherData"]["flight_recorder"]
    assert other["window_s"] == 5
    assert other["span_s"] == pytest.approx(5.0)
    assert other["recording_since_s"] >= 20
    assert other["limited_by"] == "seconds"
    assert trace["otherData"]["duration_us"] == pytest.approx(5e6)
    stamps = [e["ts"] for e in trace["traceEvents"] if e["ph"] != "M"]
    assert min(stamps) >= 0
    assert max(stamps) <= 5e6
    # One wake-up a second: about five of the twenty in the window.
    steps = [e for e in events(trace, "task-step") if "ticker" in e["name"]]
    assert 4 <= len(steps) <= 6
    assert len(events(trace, "timer")) >= 4
    # The ticker began 20 s ago: it enters the dump without its creation.
    origins = {e["args"]["origin"] for e in events(trace, "task", "b")}
    assert "unrecorded" in origins


def test_a_dump_begins_when_recording_began(vloop: Any, tmp_path: Path) -> None:
    vloop.run_until_complete(asyncio.sleep(30))
    flight = vloop.start_flight_recorder(10)
    vloop.run_until_complete(tick_for(3))
    trace = dump(flight.snapshot(), tmp_path / "young.json")
    assert trace["otherData"]["flight_recorder"]["span_s"] == pytest.approx(3.0, abs=0.01)
    origins = {e["args"]["origin"] for e in events(trace, "task", "b")}
    assert "create_task" in origins


def test_a_full_ring_keeps_the_newest_events_and_says_so(vloop: Any, tmp_path: Path) -> None:
    flight = FlightRecorder(vloop, 1000, max_bytes=1024)  # 64 slots: the ring wraps
    vloop._flight = flight
    vloop.run_until_complete(tick_for(100))
    snap = flight.snapshot()
    assert snap.full
    assert len(snap.slots) == 128
    trace = dump(snap, tmp_path / "full.json")
    other = trace["otherData"]["flight_recorder"]
    assert other["limited_by"] == "memory"
    assert 0 < other["span_s"] < 100
    # The newest wake-ups are there; the earliest are long gone.
    steps = events(trace, "task-step")
    assert steps
    assert max(e["ts"] for e in steps) >= other["span_s"] * 1e6 - 1.5e6


def test_the_ring_grows_while_the_window_needs_it(vloop: Any) -> None:
    flight = vloop.start_flight_recorder(1000)
    first = flight.capacity

    async def busy() -> None:
        for _ in range(3 * first):
            await asyncio.sleep(0)

    vloop.run_until_complete(busy())
    assert flight.capacity > first
    assert not flight.wrapped


def test_bad_arguments_are_refused(loop: Any) -> None:
    for seconds in (0, -1, float("inf"), float("nan"), "abc"):
        with pytest.raises(ValueError, match="seconds"):
            loop.start_flight_recorder(seconds)
    with pytest.raises(ValueError, match="dump_on_stall"):
        loop.start_flight_recorder(1, dump_on_stall=0)
    with pytest.raises(ValueError, match="max_bytes"):
        FlightRecorder(loop, 1, max_bytes=10)
    assert loop.flight_recorder is None


def test_stop_and_restart(loop: Any) -> None:
    first = loop.start_flight_recorder(1)
    second = loop.start_flight_recorder(2)
    assert loop.flight_recorder is second is not first
    loop.stop_flight_recorder()
    assert loop.flight_recorder is None
    loop.run_until_complete(asyncio.sleep(0))  # the plain path again


# ----------------------------------------------------------------------
# No references: tasks and callbacks die when the program drops them
# ----------------------------------------------------------------------


class Payload:
    """Something a callback or a task holds, to watch when it dies."""


def test_no_reference_to_tasks_callbacks_or_what_they_hold(loop: Any) -> None:
    loop.start_flight_recorder(10)
    payload = Payload()
    dead = weakref.ref(payload)

    async def holder(payload: Payload) -> None:
        await asyncio.sleep(0)

    task = loop.create_task(holder(payload))
    task_ref = weakref.ref(task)
    handle = loop.call_soon(lambda p=payload: None)  # a closure holding it
    partial = loop.call_soon(functools.partial(Payload.__init__, payload))
    loop.run_until_complete(task)
    del task, handle, partial, payload
    gc.disable()  # dead at once, by reference counting: no cycle through the recorder
    try:
        loop.run_until_complete(asyncio.sleep(0))
        assert dead() is None
        assert task_ref() is None
    finally:
        gc.enable()
    assert len(loop.flight_recorder._task_numbers) == 0


def test_an_unretrieved_exception_is_reported_as_soon_as_without_the_recorder(
    loop: Any,
) -> None:
    def run(record: bool) -> list[str]:
        reports: list[str] = []
        loop.set_exception_handler(lambda _, context: reports.append(context["message"]))
        if record:
            loop.start_flight_recorder(10)

        async def fails() -> None:
            raise ValueError("nobody looks")

        async def main() -> list[str]:
            asyncio.get_running_loop().create_task(fails())  # dropped at once
            for _ in range(3):
                await asyncio.sleep(0)
            return list(reports)  # what was reported while the loop still runs

        gc.disable()
        try:
            return loop.run_until_complete(main())
        finally:
            gc.enable()
            loop.stop_flight_recorder()

    without = run(False)
    assert run(True) == without
    assert without == ["Task exception was never retrieved"]


def test_a_resource_warning_comes_when_the_socket_is_dropped(loop: Any) -> None:
    loop.start_flight_recorder(10)

    def drop_it() -> None:
        sock = socket.socket()
        loop.call_soon(lambda s=sock: None)

    def run_twice() -> None:
        loop.call_soon(drop_it)
        loop.run_until_complete(asyncio.sleep(0))
        loop.run_until_complete(asyncio.sleep(0))

    gc.disable()  # by reference counting, while the loop runs: not at some later collection
    try:
        with pytest.warns(ResourceWarning, match="unclosed"):
            run_twice()
    finally:
        gc.enable()


# ----------------------------------------------------------------------
# The dump: every kind of event, read by loopy's tools
# ----------------------------------------------------------------------


def record_a_bit_of_everything(loop: Any) -> FlightSnapshot:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    loop.set_exception_handler(lambda loop, context: None)

    async def child() -> None:
        await asyncio.sleep(0.001)

    async def failing() -> None:
        raise ValueError("on purpose")

    async def main() -> FlightSnapshot:
        running = asyncio.get_running_loop()
        readable = running.create_future()
        running.add_reader(a, lambda: readable.done() or readable.set_result(a.recv(10)))
        b.send(b"ping")
        await readable
        running.remove_reader(a)
        running.call_soon(functools.partial(print, end=""))
        direct = asyncio.Task(child(), loop=running)  # first sight
        await asyncio.gather(
            running.create_task(child()), direct, running.create_task(failing()),
            return_exceptions=True,
        )  # fmt: skip
        cancelled = running.create_task(asyncio.sleep(10))
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.gather(cancelled, return_exceptions=True)
        return running.flight_recorder.snapshot()  # from inside a step: a partial one

    try:
        return loop.run_until_complete(main())  # type: ignore[no-any-return]
    finally:
        a.close()
        b.close()


def test_a_dump_reads_with_the_summary_and_passes_the_format_checker(
    loop: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    loop.start_flight_recorder(10)
    path = tmp_path / "dump.json"
    trace = dump(record_a_bit_of_everything(loop), path)
    kinds = {(e["ph"], e.get("cat")) for e in trace["traceEvents"]}
    for kind in [("X", c) for c in ("iteration", "wait", "callback", "task-step", "io", "timer")]:
        assert kind in kinds
    assert {("i", "io"), ("i", "timer"), ("b", "task"), ("e", "task")} <= kinds
    outcomes = {e["args"]["outcome"] for e in events(trace, "task", "e")}
    assert {"result", "exception", "cancelled", "unfinished"} <= outcomes
    failed = [e for e in events(trace, "task", "e") if e["args"]["outcome"] == "exception"]
    assert failed[0]["args"]["exception"] == "ValueError"
    origins = {e["args"]["origin"] for e in events(trace, "task", "b")}
    assert {"create_task", "first_sight"} <= origins
    # The step that took the snapshot, still running: up to the dump's end.
    last = max(events(trace, "task-step"), key=lambda e: e["ts"])
    assert "main" in last["name"]
    assert last["ts"] + last["dur"] == pytest.approx(trace["otherData"]["duration_us"], abs=1)
    names = {e["name"] for e in events(trace, "callback")}
    assert "print" in names  # a partial, by the function it wraps
    reads = list(events(trace, "io", "i"))
    assert reads
    assert reads[0]["args"]["events"] == "read"
    summary = summarize(load_trace(path))
    assert summary.tasks_seen >= 4
    assert cli_main(["trace", "summary", str(path)]) == 0
    assert "loopy trace summary" in capsys.readouterr().out


def test_a_step_still_running_counts_as_busy_in_its_iteration(vloop: Any, tmp_path: Path) -> None:
    # A dump taken while a step holds the loop (from top, trace dump or the
    # stall watchdog) must not say the loop was idle: the step's iteration
    # runs up to the dump, and the summary counts it as busy.
    flight = vloop.start_flight_recorder(10)
    taken: list[FlightSnapshot] = []

    def blocking_step() -> None:
        vloop.virtual_clock.advance(0.8)  # the step holds the loop 0.8 s
        taken.append(flight.snapshot())

    vloop.run_until_complete(asyncio.sleep(0.2))
    vloop.call_soon(blocking_step)
    vloop.run_until_complete(asyncio.sleep(0))
    path = tmp_path / "during.json"
    trace = dump(taken[0], path)
    last_iteration = max(events(trace, "iteration"), key=lambda e: e["args"]["n"])
    end = trace["otherData"]["duration_us"]
    assert last_iteration["ts"] + last_iteration["dur"] == pytest.approx(end, abs=1)
    summary = summarize(load_trace(path))
    assert summary.busy_time == pytest.approx(0.8, abs=0.01)
    assert summary.utilisation > 0.7


def test_with_a_trace_recorder_at_the_same_time_both_see_every_step(loop: Any) -> None:
    recorder = TraceRecorder()
    recorder.attach(loop)
    flight = loop.start_flight_recorder(10)

    async def many() -> None:
        await asyncio.gather(*(asyncio.sleep(0) for _ in range(5)))

    loop.run_until_complete(many())
    snap = flight.snapshot()
    recorder.detach()
    flight_steps = [r for r in snap.records() if r[0] == "task-step"]
    traced_steps = [e for e in recorder.events if e.type == "task-step"]
    assert len(flight_steps) == len(traced_steps) > 0


# ----------------------------------------------------------------------
# Configuration: the environment, loopy.run, the seed program
# ----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["abc", "0", "-1", "inf"])
@pytest.mark.parametrize("variable", ["LOOPY_FLIGHT_RECORDER", "LOOPY_DUMP_ON_STALL"])
def test_a_bad_value_is_one_warning_and_leaves_it_off(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(variable, value)
    with caplog.at_level(logging.WARNING, logger="loopy"):
        loop = loopy.new_event_loop()
    loop.close()
    assert loop.flight_recorder is None
    assert len(caplog.records) == 1
    assert variable in caplog.records[0].getMessage()
    assert value in caplog.records[0].getMessage()


@pytest.fixture
def monitor_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The recorder's variables imply the monitor: its socket in a fresh directory, then gone."""
    from loopy.monitor import server  # noqa: PLC0415

    path = Path(tempfile.mkdtemp(prefix="lf-"))  # (short: a socket path has 108 bytes at most)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(path))
    yield path
    if server._server is not None:
        server._server.stop()
        server._server = None
    shutil.rmtree(path, ignore_errors=True)


def test_the_variables_start_the_recorder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, monitor_dir: Path
) -> None:
    from loopy.monitor import server  # noqa: PLC0415

    monkeypatch.setenv("LOOPY_FLIGHT_RECORDER", "3")
    loop = loopy.new_event_loop()
    assert loop.flight_recorder.seconds == 3
    assert loop.flight_recorder.stall_after == 0.1  # (stalls counted, none dumped)
    assert loop.flight_recorder._watchdog is None
    # ... and make the loop watchable, as LOOPY_MONITOR=1 does.
    assert server._server is not None
    assert server._server.open_loops() == [loop]
    assert (monitor_dir / "loopy" / f"{os.getpid()}.sock").exists()
    loop.close()
    monkeypatch.delenv("LOOPY_FLIGHT_RECORDER")
    monkeypatch.setenv("LOOPY_DUMP_ON_STALL", "0.5")
    monkeypatch.setenv("LOOPY_DUMP_DIR", str(tmp_path))
    loop = loopy.new_event_loop()
    flight = loop.flight_recorder
    assert (flight.seconds, flight.stall_after, flight.dump_dir) == (10, 0.5, tmp_path)
    loop.close()


def test_a_dump_dir_that_is_not_a_directory_leaves_stall_dumps_off(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setenv("LOOPY_DUMP_ON_STALL", "0.5")
    monkeypatch.setenv("LOOPY_DUMP_DIR", str(tmp_path / "missing"))
    with caplog.at_level(logging.WARNING, logger="loopy"):
        loop = loopy.new_event_loop()
    loop.close()
    assert loop.flight_recorder is None
    assert len(caplog.records) == 1
    assert "LOOPY_DUMP_DIR" in caplog.records[0].getMessage()


@pytest.mark.parametrize("tasks", ["asyncio", "loopy"])
def test_loopy_run_takes_the_recorder(tasks: str) -> None:
    async def main() -> tuple[float, float, bool]:
        flight = asyncio.get_running_loop().flight_recorder
        return flight.seconds, flight.stall_after, flight._watchdog is not None

    assert loopy.run(main(), tasks=tasks, flight_recorder=2) == (2, 0.1, False)
    assert loopy.run(main(), tasks=tasks, dump_on_stall=0.5) == (10, 0.5, True)


@pytest.mark.parametrize("value", ["abc", "0", "-1", "inf"])
@pytest.mark.parametrize("option", ["--flight-recorder", "--dump-on-stall"])
def test_the_seed_program_refuses_a_bad_value(
    option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main([option, value]) == 2
    assert option in capsys.readouterr().err


def test_the_limiter_allows_one_dump_per_interval_and_a_number_per_process() -> None:
    now = [0.0]
    limiter = DumpLimiter(10.0, 3, clock=lambda: now[0])
    assert limiter.allow()
    now[0] = 9.9
    assert not limiter.allow()
    for _ in range(2):
        now[0] += 10.0
        assert limiter.allow()
    now[0] += 100.0
    assert not limiter.allow()  # three in this process: no more
    assert limiter.written == 3


# ----------------------------------------------------------------------
# Dumps on stall, in real processes
# ----------------------------------------------------------------------

STALLS = """
import asyncio, sys, time
import loopy

async def blocker(seconds):
    time.sleep(seconds)  # THE BLOCKING LINE

async def main():
    for seconds in map(float, sys.argv[1:]):
        await asyncio.get_running_loop().create_task(blocker(seconds), name="blocker")
        await asyncio.sleep(0.02)

loopy.run(main())
"""


def run_stalls(
    tmp_path: Path, *steps: float, tasks: str = "asyncio", **more: str
) -> tuple[list[Path], str]:
    """Run STALLS with ``LOOPY_DUMP_ON_STALL=0.1`` (and ``more``); its dumps, and its stderr."""
    program = tmp_path / "stalls.py"
    program.write_text(textwrap.dedent(STALLS))
    dumps = tmp_path / "dumps"
    dumps.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "LOOPY_DUMP_ON_STALL": "0.1",
        "LOOPY_DUMP_DIR": str(dumps),
        "LOOPY_TASKS": tasks,
        **more,
    }
    done = subprocess.run(
        [sys.executable, str(program), *map(str, steps)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return sorted(dumps.glob("loopy-stall-*.json")), done.stderr


def blocking_line(tmp_path: Path) -> str:
    lines = (tmp_path / "stalls.py").read_text().splitlines()
    number = next(i for i, line in enumerate(lines, 1) if "THE BLOCKING LINE" in line)
    return f"{tmp_path / 'stalls.py'}:{number} in blocker"


@pytest.mark.parametrize("tasks", ["asyncio", "loopy"])
def test_a_300_ms_step_writes_a_dump_with_the_step_its_task_and_the_stack(
    tasks: str, tmp_path: Path
) -> None:
    files, stderr = run_stalls(tmp_path, 0.3, tasks=tasks)
    assert len(files) == 1
    logged = [line for line in stderr.splitlines() if "loopy: the loop was blocked" in line]
    assert len(logged) == 1
    assert str(files[0]) in logged[0]
    trace = json.loads(files[0].read_text())
    check_trace(trace)
    load_trace(files[0])
    stall = trace["otherData"]["stall"]
    assert stall["duration_ms"] >= 300
    assert stall["unfinished"] is False
    assert "Task blocker (coro: blocker)" == stall["step"] == stall["task"]
    assert blocking_line(tmp_path) in stall["stack"]
    marks = events(trace, "stall", "i")
    assert len(marks) == 1
    slow = [e for e in events(trace, "task-step") if e["dur"] >= 300_000]
    assert [e["name"] for e in slow] == ["Task blocker (coro: blocker)"]


@pytest.mark.parametrize("tasks", ["asyncio", "loopy"])
def test_the_recorder_and_a_full_trace_together_each_tell_the_same_stall(
    tasks: str, tmp_path: Path
) -> None:
    """LOOPY_TRACE (every event, through the hooks) and the recorder (inline) at once."""
    traced = tmp_path / "everything.json"
    files, _ = run_stalls(tmp_path, 0.3, tasks=tasks, LOOPY_TRACE=str(traced))
    assert len(files) == 1
    dumped, whole = strict_json_loads(files[0].read_bytes()), strict_json_loads(traced.read_bytes())
    for trace in (dumped, whole):
        check_trace(trace)
        slow = [e["name"] for e in events(trace, "task-step") if e["dur"] >= 300_000]
        assert slow == ["Task blocker (coro: blocker)"]
    # The full trace holds at least every step of the dump's window.
    assert len(events(whole, "task-step")) >= len(events(dumped, "task-step"))


def test_50_ms_steps_write_nothing(tmp_path: Path) -> None:
    files, stderr = run_stalls(tmp_path, 0.05, 0.05, 0.05)
    assert files == []
    assert "loopy:" not in stderr


def test_a_step_still_running_after_ten_thresholds_is_dumped_unfinished(tmp_path: Path) -> None:
    # 1.5 s: the watchdog dumps it after 1 s; its end writes no second file,
    # and neither does the next stall, within 10 s of the first (the limit).
    files, stderr = run_stalls(tmp_path, 1.5, 0.3)
    assert len(files) == 1
    trace = json.loads(files[0].read_text())
    check_trace(trace)
    stall = trace["otherData"]["stall"]
    assert stall["unfinished"] is True
    assert stall["duration_ms"] >= 1000
    assert blocking_line(tmp_path) in stall["stack"]
    # The step still running, up to the dump's end.
    last = max(events(trace, "task-step"), key=lambda e: e["ts"])
    assert last["name"] == "Task blocker (coro: blocker)"
    assert last["dur"] >= 1e6
    logged = [line for line in stderr.splitlines() if "loopy: the loop was" in line]
    assert len(logged) == 1
    assert "still blocked" in logged[0]


def test_two_stalls_in_ten_seconds_write_one_file(tmp_path: Path) -> None:
    files, _ = run_stalls(tmp_path, 0.3, 0.3)
    assert len(files) == 1


def test_a_task_is_named_as_it_is_called_at_dump_time(loop: Any, tmp_path: Path) -> None:
    flight = loop.start_flight_recorder(10)

    async def work() -> None:
        await asyncio.sleep(0)

    async def main() -> None:
        finished = asyncio.get_running_loop().create_task(work())
        finished.set_name("renamed-then-finished")  # as TaskGroup names its tasks
        await finished
        running = asyncio.get_running_loop().create_task(asyncio.sleep(10))
        await asyncio.sleep(0)
        running.set_name("renamed-while-running")
        trace = dump(flight.snapshot(), tmp_path / "names.json")
        names = {e["name"] for e in events(trace, "task", "b")}
        assert "Task renamed-then-finished (coro: work)" in names
        assert "Task renamed-while-running (coro: sleep)" in names
        running.cancel()

    loop.run_until_complete(main())


def test_labels_of_tasks_dead_longer_than_the_window_are_forgotten(vloop: Any) -> None:
    flight = vloop.start_flight_recorder(2)

    async def short() -> None:
        await asyncio.sleep(0)

    async def main() -> None:
        await asyncio.get_running_loop().create_task(short())
        await asyncio.sleep(5)  # the first task is long dead: no dump can name it
        await asyncio.get_running_loop().create_task(short())

    vloop.run_until_complete(main())
    assert sorted(flight.task_labels) == [1, 3]  # main, and the newest


def test_past_the_most_names_a_callback_is_other(
    loop: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The process's names, a fresh table holding "<other>" and one more.
    monkeypatch.setattr("loopy.trace.flight.NAMES", NameTable(limit=2))
    flight = loop.start_flight_recorder(10)

    def first() -> None:
        pass

    def second() -> None:
        pass

    loop.call_soon(first)
    loop.call_soon(second)
    loop.run_until_complete(asyncio.sleep(0))
    trace = dump(flight.snapshot(), tmp_path / "names.json")
    names = [e["name"] for e in events(trace, "callback")]
    assert names[:2] == ["test_past_the_most_names_a_callback_is_other.<locals>.first", "<other>"]


def test_a_dump_that_cannot_be_written_is_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("loopy.trace.flight.limiter", DumpLimiter())  # this test's own count
    loop = loopy.new_event_loop()
    flight = loop.start_flight_recorder(10, dump_on_stall=0.01, dump_dir=tmp_path / "gone")

    async def main() -> None:
        import time  # noqa: PLC0415

        time.sleep(0.05)

    with caplog.at_level(logging.WARNING, logger="loopy"):
        loop.run_until_complete(main())
        loop.close()  # waits for the watchdog to have tried
    assert flight._watchdog is None
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1
    assert "could not write the stall dump" in messages[0]


def test_another_thread_copies_the_window_for_another_process_to_encode(
    loop: Any, tmp_path: Path
) -> None:
    """What `loopy trace dump` gets: the monitor's thread copies, the client encodes."""
    flight = loop.start_flight_recorder(10)
    sent: list[tuple[bytes, list[Any]]] = []
    holds: list[float] = []

    async def main() -> None:
        thread = threading.Thread(target=lambda: sent.append(flight.wire_snapshot(holds)))
        thread.start()
        while thread.is_alive():
            await asyncio.sleep(0.001)  # the loop runs while the other thread copies
        thread.join()

    loop.run_until_complete(tick_for(0))
    loop.run_until_complete(main())
    facts, parts = sent[0]
    assert holds  # (how long each chunk's copy held the loop)
    header = json.loads(facts)  # plain JSON: names, labels, facts; the slots follow
    assert header["slot_bytes"] == sum(len(part) for part in parts) * 8
    received = array.array("d", b"".join(part.tobytes() for part in parts))
    snap = FlightSnapshot.from_wire(header, received)
    trace = dump(snap, tmp_path / "sent.json")
    assert any("ticker" in e["name"] for e in events(trace, "task", "b"))
    # What a snapshot taken here holds (which has main's last steps too).
    here = dump(flight.snapshot(), tmp_path / "here.json")
    names = {e["name"] for e in events(trace, "task-step")}
    assert names < {e["name"] for e in events(here, "task-step")}


# ----------------------------------------------------------------------
# recent_activity: what `loopy top` reads of the ring
# ----------------------------------------------------------------------


def run_callbacks(loop: Any, count: int, hold: float) -> None:
    """Run ``count`` chained callbacks, then one that holds the loop ``hold`` seconds."""

    def hold_the_loop() -> None:
        time.sleep(hold)

    async def main() -> None:
        running = asyncio.get_running_loop()
        done = running.create_future()

        def again(left: int) -> None:
            if left:
                running.call_soon(again, left - 1)
            else:
                running.call_soon(hold_the_loop)
                running.call_soon(done.set_result, None)

        running.call_soon(again, count)
        await done

    loop.run_until_complete(main())


def test_recent_activity_reads_a_wrapped_ring(loop: Any) -> None:
    assert flight_module.recent_activity(loop) is None  # no recorder
    flight = FlightRecorder(loop, 1000, max_bytes=4096)  # 256 slots: the ring wraps
    loop._flight = flight
    run_callbacks(loop, 1000, 0.02)
    assert flight.wrapped
    activity = flight_module.recent_activity(loop, 1.0)
    assert activity is not None
    assert activity["seconds"] == 1.0
    slowest = activity["slowest"][0]
    assert slowest["step"].endswith("hold_the_loop")
    assert slowest["ms"] >= 20
    assert activity["utilisation"] >= 0.02
    # At most the ring's 256 slots were there to count (a wait is two).
    assert 10 <= activity["callbacks_per_s"] <= 256


def test_recent_activity_of_a_very_busy_loop_covers_what_it_copied(
    loop: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flight_module, "COPY_CHUNK", 8 * flight_module.SLOT)
    monkeypatch.setattr(flight_module, "_ACTIVITY_MAX", 32 * flight_module.SLOT)
    loop.start_flight_recorder(10)
    run_callbacks(loop, 1000, 0)
    activity = flight_module.recent_activity(loop, 1.0)
    assert activity is not None
    assert 0 < activity["seconds"] < 1.0  # the span of the last 32 slots
    assert activity["callbacks_per_s"] * activity["seconds"] <= 32


@pytest.mark.parametrize("kind", ["loopy", "loopy-own"])
def test_the_recorder_counts_every_stall_and_keeps_the_newest(kind: str) -> None:
    """Steps over 100 ms are counted from the start, seen or not; the newest five are named."""
    loop = make_loop(kind, virtual=True)
    try:
        flight = loop.start_flight_recorder(60)

        def hold(seconds: float) -> None:
            loop.virtual_clock.advance(seconds)  # the step takes this long, on the loop's clock

        for seconds in (0.05, 0.2, 0.09, 0.3, 0.15, 0.12, 0.11, 0.101):
            loop.call_soon(hold, seconds)
        loop.run_until_complete(asyncio.sleep(0))
        assert flight.stall_count == 6  # not 0.05 nor 0.09: under the threshold
        activity = recent_activity(loop, 1.0)
        assert activity is not None
        assert activity["stall_count"] == 6
        assert activity["dumps"] is None  # no dump_on_stall: counted, not dumped
        assert [round(stall["ms"]) for stall in activity["stalls"]] == [300, 150, 120, 110, 101]
        assert {stall["step"] for stall in activity["stalls"]} == {
            "test_the_recorder_counts_every_stall_and_keeps_the_newest.<locals>.hold"
        }
        # (The stalls were callbacks: the one task, run_until_complete's, took no time.)
        assert [task["ms"] for task in activity["busiest_tasks"]] == [0.0]
    finally:
        loop.close()


# ----------------------------------------------------------------------
# copy_recent: a copy taken a chunk at a time while the loop writes
# ----------------------------------------------------------------------


class _Writer:
    """Stands in for the loop between two chunks of a copy: writes ``per_pause`` slots each time.

    Slot n holds (K_CALLBACK, n): a correct copy is a run of consecutive numbers.
    """

    def __init__(self, flight: FlightRecorder, per_pause: int) -> None:
        self.flight, self.per_pause, self.next, self.pauses = flight, per_pause, 0, 0

    def write(self, count: int) -> None:
        for _ in range(count):
            self.flight.add(flight_module.K_CALLBACK, float(self.next))
            self.next += 1

    def sleep(self, seconds: float) -> None:  # (copy_recent's pause: the loop's turn)
        self.pauses += 1
        self.write(self.per_pause)


def _copy_while_writing(
    loop: Any, monkeypatch: pytest.MonkeyPatch, *, slots: int, before: int, per_pause: int
) -> tuple[list[float], _Writer, int]:
    """A ring of ``slots`` slots given ``before`` slots, copied while ``per_pause`` more come."""
    flight = FlightRecorder(loop, 1e9, max_bytes=slots * 16)
    flight.started = -1.0  # (the times are slot numbers, from 0)
    writer = _Writer(flight, 0)
    writer.write(before)
    newest = writer.next - 1
    writer.per_pause = per_pause
    monkeypatch.setattr(flight_module, "COPY_CHUNK", 8 * flight_module.SLOT)
    monkeypatch.setattr(flight_module.time, "sleep", writer.sleep)
    parts, _ = flight_module.copy_recent(flight, -1.0)
    times = [t for part in parts for t in part[1::2]]
    return times, writer, newest


def test_a_copy_while_the_loop_writes_drops_what_was_overwritten(
    loop: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 64 slots, wrapped (100 written), 3 more between each chunk of 8.
    times, writer, newest = _copy_while_writing(
        loop, monkeypatch, slots=64, before=100, per_pause=3
    )
    assert writer.pauses >= 4  # (copied in chunks, the loop writing between them)
    assert times == [float(n) for n in range(int(times[0]), newest + 1)]  # whole, in order
    assert times[-1] == newest  # up to the newest slot when the copy began
    # Nothing older than what the ring still held at the end: 3 slots a pause were lost.
    assert times[0] >= writer.next - 64
    assert len(times) >= 64 - 3 * writer.pauses


def test_a_copy_that_the_loop_laps_starts_again(loop: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # 40 slots between chunks: the ring (64) goes round during the copy.
    times, writer, _ = _copy_while_writing(loop, monkeypatch, slots=64, before=100, per_pause=40)
    assert times == [float(n) for n in range(int(times[0]), int(times[-1]) + 1)]
    assert len(times) == 64  # the third attempt, without pauses: the whole ring
    assert writer.pauses >= 4


def test_a_copy_of_a_ring_that_has_not_wrapped_loses_nothing(
    loop: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (The ring may still grow: 1,000 slots of room.)
    times, writer, newest = _copy_while_writing(
        loop, monkeypatch, slots=1000, before=100, per_pause=3
    )
    assert times == [float(n) for n in range(newest + 1)]
    assert writer.pauses >= 10


def test_a_dump_says_how_long_each_wait_could_last(vloop: Any, tmp_path: Path) -> None:
    flight = vloop.start_flight_recorder(100)
    vloop.call_later(0.25, lambda: None)
    vloop.run_until_complete(asyncio.sleep(0.5))
    trace = dump(flight.snapshot(), tmp_path / "waits.json")
    timeouts = [e["args"]["timeout_ms"] for e in events(trace, "wait")]
    assert timeouts[:3] == [0.0, 250.0, 250.0]  # ready at once; then the timer; then the sleep


def test_a_copy_that_begins_with_half_a_wait_reads_the_rest(vloop: Any, tmp_path: Path) -> None:
    flight = vloop.start_flight_recorder(100)
    vloop.run_until_complete(tick_for(3))
    snap = flight.snapshot()
    whole = events(dump(snap, tmp_path / "whole.json"), "task-step")
    first_wait = next(j for j in range(0, len(snap.slots), 2) if snap.slots[j] == 4)  # K_WAIT
    # Begin with that wait's second half (a timeout of 4.x s read as a code was once a K_WAIT).
    snap.slots = snap.slots[first_wait + 2 :]
    snap.started = snap.slots[1] - 1e-6
    cut = events(dump(snap, tmp_path / "cut.json"), "task-step")
    assert len(cut) == len(whole)


@pytest.mark.parametrize("kind", ["loopy", "loopy-own"])
def test_the_busiest_tasks_are_those_whose_steps_took_longest(kind: str) -> None:
    loop = make_loop(kind, virtual=True)
    try:
        loop.start_flight_recorder(60)

        async def work(per_step: float, steps: int) -> None:
            for _ in range(steps):
                loop.virtual_clock.advance(per_step)  # this step takes per_step
                await asyncio.sleep(0)

        async def main() -> None:
            await asyncio.gather(
                loop.create_task(work(0.001, 50), name="many-short"),  # 50 ms in 50+ steps
                loop.create_task(work(0.03, 3), name="few-long"),  # 90 ms in 3+ steps
                loop.create_task(work(0.0001, 5), name="idle"),
                loop.create_task(work(0.0002, 5), name="idler"),
            )

        loop.run_until_complete(main())
        activity = recent_activity(loop, 1.0)
        assert activity is not None
        busiest = activity["busiest_tasks"]
        assert [task["task"] for task in busiest] == [
            "Task few-long (coro: work)",
            "Task many-short (coro: work)",
            "Task idler (coro: work)",
        ]
        assert busiest[0]["ms"] == pytest.approx(90, abs=0.5)
        assert busiest[0]["steps"] == 4  # three that advance the clock, and the last
        assert busiest[1]["ms"] == pytest.approx(50, abs=0.5)
    finally:
        loop.close()


def test_a_ring_that_went_round_grows_in_place_and_keeps_its_order(
    vloop: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flight_module, "_INITIAL_EVENTS", 64)
    flight = FlightRecorder(vloop, 10, max_bytes=1024 * 16)  # 64 slots first, 1,024 at most
    clock = vloop.virtual_clock
    for _ in range(200):  # one a second: the ring goes round, nothing old is wanted
        clock.advance(1.0)
        flight.add(flight_module.K_CALLBACK, clock())
    assert flight.wrapped
    assert flight.capacity == 64
    dense = []
    for _ in range(500):  # one a millisecond: all of them inside the window
        clock.advance(0.001)
        flight.add(flight_module.K_CALLBACK, clock())
        dense.append(clock())
    assert flight.capacity == 512  # doubled three times, each by moving its end
    slots = flight.snapshot().slots
    pairs = zip(slots[::2], slots[1::2], strict=True)
    times = [t for code, t in pairs if code != flight_module.K_PAD]
    assert times[0] > 0  # no slot that was never written
    assert times == sorted(times)  # oldest first, no slot out of place
    assert times[-500:] == dense  # every one kept
