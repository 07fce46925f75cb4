"""Summaries: figures from a saved trace, exact on a virtual clock."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from loopy.trace import (
    Percentiles,
    TraceRecorder,
    format_summary,
    load_trace,
    summarize,
    to_chrome_trace,
    write_trace,
)
from loopy.trace.summary import _nearest_rank


def record(vloop: Any, program: Any) -> dict[str, Any]:
    """Run ``program(vloop)`` (it schedules things and stop) under a recorder; the trace."""
    recorder = TraceRecorder()
    recorder.attach(vloop)
    program(vloop)
    vloop.run_forever()
    recorder.detach()
    return to_chrome_trace(recorder)


def a_quarter_busy(vloop: Any) -> None:
    """A callback holds the loop 0.25 s of a 1 s window; then a timer stops the loop."""

    def block() -> None:
        vloop.virtual_clock.advance(0.25)

    vloop.call_soon(block)
    vloop.call_later(1.0, vloop.stop)


def test_utilisation_is_exactly_as_constructed(vloop: Any) -> None:
    summary = summarize(record(vloop, a_quarter_busy))
    assert summary.duration == 1.0
    assert summary.iterations == 2
    assert summary.iterations_per_second == 2.0
    assert summary.loop_time == 1.0
    assert summary.wait_time == 0.75
    assert summary.busy_time == 0.25
    assert summary.utilisation == 0.25
    assert summary.callbacks == 2
    assert summary.callbacks_by_kind == {"callback": 1, "timer": 1}
    assert [(s.name, s.kind, s.duration, s.start) for s in summary.slowest] == [
        ("a_quarter_busy.<locals>.block", "callback", 0.25, 0.0),
        ("Loop.stop", "timer", 0.0, 1.0),
    ]
    assert summary.dropped_events == 0
    assert summary.start_wall_time is not None


def test_timer_lateness_percentiles(vloop: Any) -> None:
    def program(vloop: Any) -> None:
        # Ten timers due at 0.1, 0.2, ... 1.0 s; a callback holds the loop
        # until 0.5 s, so the first five fire at 0.5: 0.4, 0.3, 0.2, 0.1, 0 late.
        def block() -> None:
            vloop.virtual_clock.advance(0.5)

        vloop.call_soon(block)
        for i in range(1, 11):
            vloop.call_later(i / 10, lambda: None)
        vloop.call_later(1.0, vloop.stop)

    lateness = summarize(record(vloop, program)).timer_lateness
    assert lateness.count == 11
    assert lateness.p50 == 0.0
    assert lateness.p90 == pytest.approx(0.3)
    assert lateness.p99 == pytest.approx(0.4)
    assert lateness.max == pytest.approx(0.4)


def test_nearest_rank_percentiles() -> None:
    values = [float(v) for v in range(1, 101)]
    assert [_nearest_rank(values, p) for p in (50, 90, 99, 100)] == [50, 90, 99, 100]
    assert _nearest_rank([7.0], 50) == 7.0
    assert _nearest_rank([1.0, 2.0], 0) == 1.0


def test_busiest_fds_and_task_counts(vloop: Any) -> None:
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    busy_fd, quiet_fd = a.fileno(), c.fileno()
    try:

        def program(vloop: Any) -> None:
            vloop.add_reader(a, a.recv, 100)
            vloop.add_reader(c, c.recv, 100)
            for i in range(3):
                vloop.call_later(0.1 * (i + 1), b.send, b"x")
            vloop.call_later(0.15, d.send, b"y")

            async def fails() -> None:
                raise ValueError

            async def waits() -> None:
                await asyncio.sleep(5)

            async def main() -> None:
                failing = asyncio.ensure_future(fails())
                waiting = asyncio.ensure_future(waits())
                await asyncio.sleep(0.5)
                waiting.cancel()
                await asyncio.gather(failing, waiting, return_exceptions=True)
                vloop.stop()

            vloop.create_task(main())

        summary = summarize(record(vloop, program))
    finally:
        for s in (a, b, c, d):
            s.close()
    assert summary.busiest_fds == ((busy_fd, 3), (quiet_fd, 1))
    assert summary.tasks_created == 3
    assert summary.tasks_finished == 3
    assert summary.tasks_cancelled == 1
    assert summary.tasks_failed == 1


def test_the_summary_of_a_file_is_the_summary_of_the_dict(vloop: Any, tmp_path: Path) -> None:
    recorder = TraceRecorder()
    recorder.attach(vloop)
    a_quarter_busy(vloop)
    vloop.run_forever()
    recorder.detach()
    path = write_trace(recorder, tmp_path / "trace.json")
    assert summarize(load_trace(path)) == summarize(to_chrome_trace(recorder))


def test_format_summary_is_a_readable_table(vloop: Any) -> None:
    text = format_summary(summarize(record(vloop, a_quarter_busy)))
    lines = text.splitlines()
    assert lines[0] == "loopy trace summary"
    assert "  duration              1000.000 ms" in lines
    assert "  iterations            2  (2.0 per second)" in lines
    assert "  loop time             1000.000 ms = busy 250.000 ms + waiting 750.000 ms" in lines
    assert "  utilisation           25.0 %  (busy share of loop time)" in lines
    assert "  callbacks run         2  (callback 1, timer 1)" in lines
    tasks = "0 seen: created 0; finished 0 (cancelled 0, failed 0), unfinished 0"
    assert f"  tasks                 {tasks}" in lines
    assert "  dropped events        0" in lines
    assert any(line.endswith(" UTC") and "started (wall clock)" in line for line in lines)
    slowest = lines.index("slowest callbacks and task steps")
    assert lines[slowest + 2].split() == [
        "250.000",
        "0.000",
        "callback",
        "a_quarter_busy.<locals>.block",
    ]
    assert "timer lateness (1 timers fired)" in lines
    assert "  p50 0.000 ms   p90 0.000 ms   p99 0.000 ms   max 0.000 ms" in lines
    assert lines[lines.index("busiest file descriptors") + 1] == "  (none)"


def test_an_empty_trace_summarizes_to_zeros() -> None:
    summary = summarize({"traceEvents": []})
    assert summary.duration == 0.0
    assert summary.iterations == 0
    assert summary.iterations_per_second == 0.0
    assert summary.utilisation == 0.0
    assert summary.timer_lateness == Percentiles()
    assert summary.start_wall_time is None
    text = format_summary(summary)
    assert "started (wall clock)  unknown" in text
    assert "  callbacks run         0\n" in text
    assert text.count("(none)") == 3
