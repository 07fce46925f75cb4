"""Exporting streams: little memory beyond the buffer, the same text either way, honest numbers.

The export of a full ring buffer used to build the whole trace in memory
(several times the buffer's size) before writing it.  Now events go to the
file one at a time; what the export holds is one iteration's records and
the tasks still open.  Its time is the bench's business
(``python -m bench.trace_export``); its memory is checked here, with
tracemalloc, against the buffer's own size.
"""

from __future__ import annotations

import asyncio
import gc
import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from loopy.trace import (
    DEFAULT_MAX_EVENTS,
    TraceRecorder,
    chrome_events,
    format_summary,
    load_trace,
    summarize,
    to_chrome_trace,
    write_trace,
)
from loopy.trace.fileformat import encode_line
from tests.test_trace_format import check_trace, record_every_kind, strict_json_loads


def fill_like_a_busy_loop(recorder: TraceRecorder, events: int) -> None:
    """``events`` records shaped as a busy loop's: iterations of ten task steps and a timer.

    Written through the recorder's own ``_add`` with the fields its hooks
    give, each step's name a new string (the recorder labels every step
    afresh), quicker than running a loop under tracemalloc for a minute.
    """
    t = 0.0
    n = 0
    while len(recorder._buffer) + recorder.dropped < events:
        n += 1
        recorder._add("counters", t, None, "counters", {"ready": 10, "fds": 3})
        recorder._add("wait", t, 0.00001, "wait", {"timeout": 0.0, "ready": ((5, "read"),)})
        start = t
        for task in range(1, 11):
            t += 0.000002
            recorder._add(
                "task-step", t, 0.000002, f"Task Task-{task} (coro: spin)", {"task": task}
            )
        if n % 20 == 0:
            recorder._add("timer-fired", t, None, "tick", {"lateness": 0.0001})
            recorder._add("timer", t, 0.000003, "tick", {})
            recorder._add("timer-scheduled", t, None, "tick", {"delay": 0.001})
        t += 0.000005
        args = {"n": n, "wait": 0.00001, "callbacks": 10}
        recorder._add("iteration", start, t - start, f"iteration {n}", args)


def test_exporting_a_full_buffer_costs_at_most_half_the_buffer_again(tmp_path: Path) -> None:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        recorder = TraceRecorder(DEFAULT_MAX_EVENTS)
        for task in range(1, 11):  # the tasks enter the trace, as in a real one
            recorder._add("task-created", 0.0, None, f"Task Task-{task} (coro: spin)",
                          {"task": task, "parent": None, "first_sight": False})  # fmt: skip
        fill_like_a_busy_loop(recorder, DEFAULT_MAX_EVENTS + 5000)
        assert len(recorder._buffer) == DEFAULT_MAX_EVENTS
        assert recorder.dropped > 0
        buffer_size = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.reset_peak()
        current = tracemalloc.get_traced_memory()[0]
        path = write_trace(recorder, tmp_path / "full.json")
        extra_peak = tracemalloc.get_traced_memory()[1] - current
    finally:
        tracemalloc.stop()
    assert buffer_size > 20 * 2**20  # a full buffer: tens of MB
    assert extra_peak <= 0.5 * buffer_size, (extra_peak, buffer_size)
    # And it is all there.
    with path.open("rb") as file:
        lines = sum(1 for _ in file)
    assert lines > DEFAULT_MAX_EVENTS


def test_a_whole_trace_in_memory_would_have_failed_that_check(tmp_path: Path) -> None:
    """The check above can fail: building the trace as one dict costs more than the buffer."""
    recorder = TraceRecorder(20_000)
    fill_like_a_busy_loop(recorder, 20_000)
    gc.collect()
    tracemalloc.start()
    try:
        current = tracemalloc.get_traced_memory()[0]
        whole = to_chrome_trace(recorder)
        held = tracemalloc.get_traced_memory()[0] - current
    finally:
        tracemalloc.stop()
    assert len(whole["traceEvents"]) > 20_000
    recorder2 = TraceRecorder(20_000)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        fill_like_a_busy_loop(recorder2, 20_000)
        buffer_size = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held > 0.5 * buffer_size


@pytest.mark.parametrize("max_events", [100_000, 60], ids=["whole", "creations-dropped"])
def test_the_file_is_exactly_the_events_of_the_iterator(
    loop: Any, tmp_path: Path, max_events: int
) -> None:
    """write_trace's fast path for task steps writes what encoding chrome_events gives."""
    recorder = record_every_kind(loop, max_events=max_events)
    path = write_trace(recorder, tmp_path / "t.json")
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[0] == '{"traceEvents":['
    assert lines[-3] == "],"
    written = [line.removesuffix(",") for line in lines[1:-3]]
    assert written == [encode_line(event) for event in chrome_events(recorder)]
    assert load_trace(path)["traceEvents"] == to_chrome_trace(recorder)["traceEvents"]


def test_events_come_out_in_time_order(loop: Any) -> None:
    recorder = record_every_kind(loop)
    # All but the arrows' tails, which go out with their heads (see chrome_events).
    stamps = [e["ts"] for e in chrome_events(recorder) if e["ph"] != "s"]
    assert stamps == sorted(stamps)
    check_trace(to_chrome_trace(recorder))


# ----------------------------------------------------------------------
# Honest numbers when events were dropped
# ----------------------------------------------------------------------


def overflowing_run(vloop: Any, max_events: int) -> TraceRecorder:
    """3 s of a loop at a steady pace, recorded by a buffer that keeps about the last 0.7 s."""
    recorder = TraceRecorder(max_events)
    recorder.attach(vloop)

    async def pace() -> None:
        for _ in range(3000):
            await asyncio.sleep(0.001)  # one iteration a millisecond of virtual time

    async def main() -> None:
        await asyncio.gather(pace(), pace())

    vloop.run_until_complete(main())
    recorder.detach()
    return recorder


def test_rates_are_over_the_recorded_window(vloop: Any, tmp_path: Path) -> None:
    whole = summarize(to_chrome_trace(overflowing_run(vloop, 1_000_000)))
    assert whole.dropped_events == 0
    assert whole.recorded_from == 0.0
    recorder = overflowing_run(vloop, 5_000)
    path = write_trace(recorder, tmp_path / "dropped.json")
    summary = summarize(load_trace(path))
    assert summary.dropped_events == recorder.dropped > 0
    assert summary.duration == pytest.approx(3.0, abs=0.01)
    assert 1.0 < summary.recorded_from < 2.9
    assert summary.recorded == pytest.approx(summary.duration - summary.recorded_from)
    # The same pace, whatever the buffer kept: not diluted by the dropped span.
    assert summary.iterations_per_second == pytest.approx(whole.iterations_per_second, rel=0.05)
    assert summary.iterations < whole.iterations
    # Tasks: never more finished than seen.
    assert summary.tasks_seen == summary.tasks_finished + summary.tasks_unfinished
    assert summary.tasks_unrecorded >= 1  # pace() tasks created before the window
    text = format_summary(summary)
    dropped = f"{summary.dropped_events:,}"
    first = f"{summary.recorded_from:.1f} s"
    assert f"first {first} not recorded: {dropped} events dropped" in text
    assert "per second recorded" in text


def test_without_drops_the_window_is_the_whole_trace(vloop: Any) -> None:
    summary = summarize(to_chrome_trace(overflowing_run(vloop, 1_000_000)))
    assert summary.recorded == summary.duration
    assert "not recorded" not in format_summary(summary)
    assert "per second recorded" not in format_summary(summary)


def test_the_strict_parser_reads_a_dropped_trace(vloop: Any, tmp_path: Path) -> None:
    path = write_trace(overflowing_run(vloop, 500), tmp_path / "t.json")
    trace = strict_json_loads(path.read_bytes())
    check_trace(trace)
    assert json.loads(path.read_text())["otherData"]["dropped_events"] > 0


def test_the_bench_reports_time_rss_and_tracemalloc(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m bench.trace_export``, small: every figure is there and plausible."""
    from bench import trace_export  # noqa: PLC0415

    out = tmp_path / "figures.json"
    assert trace_export.main(["--events", "3000", "--rounds", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    for label in ("time", "RSS", "RSS peak", "tracemalloc", "file"):
        assert f"\n  {label} " in text
    figures = json.loads(out.read_text())
    assert figures["events"] == 3000
    assert 0 < figures["export_s"] < 10
    assert figures["rss_after_mib"] > 0
    assert figures["peak_after_export_mib"] >= figures["peak_before_export_mib"] > 0
    assert 0 < figures["peak_share"] < 10
