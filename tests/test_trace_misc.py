"""Stall detection, load figures and describe(): exact on a virtual clock."""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from pathlib import Path
from typing import Any

import pytest

from loopy.handles import Handle
from loopy.trace import Load, LoadMonitor, LoopSnapshot, StallDetector, describe, snapshot
from loopy.trace.describe import (
    FdInfo,
    Location,
    TaskInfo,
    TimerInfo,
    coroutine_stack,
    handle_label,
    task_stack,
)
from loopy.trace.stalls import Stall, _defined_at

HERE = str(Path(__file__))


def line_of(marker: str) -> int:
    """The line number in this file of the line ending with ``# <marker>``."""
    lines = Path(__file__).read_text().splitlines()
    matches = [i + 1 for i, line in enumerate(lines) if line.rstrip().endswith(f"# {marker}")]
    assert len(matches) == 1, marker
    return matches[0]


# ----------------------------------------------------------------------
# StallDetector
# ----------------------------------------------------------------------


async def crunch(loop: Any) -> None:
    loop.virtual_clock.advance(0.25)  # as if computing for a quarter second


async def worker(loop: Any) -> None:
    await asyncio.sleep(0)  # worker resumes here
    await crunch(loop)
    await asyncio.sleep(1)  # worker suspends here


def test_a_blocking_task_step_is_named_with_its_stack(
    vloop: Any, caplog: pytest.LogCaptureFixture
) -> None:
    detector = StallDetector()
    assert detector.threshold == 0.1
    detector.attach(vloop)
    with caplog.at_level(logging.WARNING, logger="loopy"):
        vloop.run_until_complete(vloop.create_task(worker(vloop), name="worker"))
    detector.detach()

    [stall] = detector.stalls
    assert stall.name == stall.task == "Task worker (coro: worker)"
    assert stall.duration == 0.25
    assert stall.started == vloop.time() - 1.25
    assert not stall.task_done
    assert stall.resumed_at[0] == Location(HERE, line_of("worker resumes here"), "worker")
    assert stall.stack[0] == Location(HERE, line_of("worker suspends here"), "worker")
    assert stall.stack[1].function == "sleep"  # asyncio.sleep, awaited by worker

    [record] = caplog.records
    message = record.getMessage()
    assert record.levelno == logging.WARNING
    assert message.startswith(
        "Loop blocked for 0.250 s (threshold 0.100 s) by Task worker (coro: worker)"
    )
    assert f"{HERE}:{line_of('worker resumes here')} in worker" in message
    assert (
        f"  then suspended at:\n    {HERE}:{line_of('worker suspends here')} in worker" in message
    )


def block(loop: Any, seconds: float) -> None:  # block is defined here
    loop.virtual_clock.advance(seconds)


def test_a_blocking_callback_is_named_with_where_it_is_defined(vloop: Any) -> None:
    detector = StallDetector(threshold=0.25, log=False)
    detector.attach(vloop)
    vloop.call_soon(block, vloop, 0.25)  # at the threshold: not a stall
    vloop.call_soon(functools.partial(block, vloop, 0.5))
    vloop.call_soon(vloop.stop)
    vloop.run_forever()
    detector.detach()
    [stall] = detector.stalls
    assert stall.name == "block"
    assert stall.task is None
    assert stall.duration == 0.5
    assert stall.stack == (Location(HERE, line_of("block is defined here"), "block"),)
    assert str(stall).splitlines() == [
        "Loop blocked for 0.500 s by block",
        "  defined at:",
        f"    {HERE}:{line_of('block is defined here')} in block",
    ]


def test_a_task_that_finishes_or_fails_in_the_blocking_step(vloop: Any) -> None:
    async def finishes() -> None:
        vloop.virtual_clock.advance(0.5)

    async def fails() -> None:
        vloop.virtual_clock.advance(0.5)
        raise ValueError("after blocking")  # fails raises here

    detector = StallDetector(log=False)
    detector.attach(vloop)
    vloop.run_until_complete(vloop.create_task(finishes(), name="finishes"))
    failing = vloop.create_task(fails(), name="fails")
    vloop.run_until_complete(asyncio.wait([failing]))
    failing.exception()
    detector.detach()
    done, failed = detector.stalls
    assert done.task_done
    assert done.stack == ()
    assert str(done).endswith("  then finished")
    assert failed.task_done
    assert failed.stack[-1] == Location(HERE, line_of("fails raises here"), "fails")
    assert "  then failed, raising at:" in str(failed)


def test_stall_details_when_nothing_is_known() -> None:
    stall = Stall("cb", 1.0, 0.0, None, (), ())
    assert str(stall) == "Loop blocked for 1.000 s by cb\n  defined at:\n    (unknown)"
    assert _defined_at(len) == ()


def test_the_detector_keeps_a_bounded_list_and_ignores_halves(vloop: Any) -> None:
    detector = StallDetector(threshold=0.0, log=False, max_stalls=2)
    first, second = Handle(print, (), vloop), Handle(print, (), vloop)
    detector.callback_finished(vloop, first)  # never started: ignored
    detector.callback_started(vloop, first)
    detector.callback_finished(vloop, second)  # not the one running: ignored
    assert list(detector.stalls) == []
    detector.attach(vloop)
    with pytest.raises(RuntimeError):
        detector.attach(vloop)
    for _ in range(3):
        vloop.call_soon(block, vloop, 0.01)
    vloop.call_soon(vloop.stop)
    vloop.run_forever()
    assert len(detector.stalls) == 2  # the most recent two of four
    vloop.remove_instrument(detector)  # as the loop does to a broken instrument
    detector.detach()
    detector.detach()
    assert detector.loop is None


# ----------------------------------------------------------------------
# LoadMonitor
# ----------------------------------------------------------------------


def test_load_over_the_whole_run_and_the_last_window(vloop: Any) -> None:
    monitor = LoadMonitor(window=0.5)
    assert monitor.overall() == Load(0.0, 0, 0.0, 0.0, 0.0)  # not attached yet
    monitor.attach(vloop)
    assert monitor.busy_fraction == 0.0  # no iteration yet
    vloop.call_soon(block, vloop, 0.25)
    vloop.call_later(1.0, vloop.stop)
    vloop.run_forever()
    # Iteration 1 ran the block (0.25 s busy); iteration 2 waited 0.75 s.
    assert monitor.busy_fraction == 0.25
    assert monitor.idle_fraction == 0.75
    assert monitor.iterations_per_second == 2.0
    assert monitor.overall() == Load(1.0, 2, 0.25, 0.75, 2.0)
    # The last half second was all waiting, and one iteration ended in it.
    assert monitor.recent() == Load(0.5, 1, 0.0, 1.0, 2.0)
    monitor.detach()


def test_load_read_from_inside_a_callback_counts_the_running_iteration(vloop: Any) -> None:
    monitor = LoadMonitor(window=1.0)
    monitor.attach(vloop)
    seen: list[Load] = []

    def look() -> None:
        block(vloop, 0.5)
        seen.extend([monitor.overall(), monitor.recent()])
        vloop.stop()

    vloop.call_later(1.5, look)
    vloop.run_forever()
    overall, recent = seen
    # So far: 1.5 s waiting, then 0.5 s in this callback; no iteration ended.
    assert overall == Load(2.0, 0, 0.25, 0.75, 0.0)
    # The last second: 0.5 s of the wait, 0.5 s of this callback.
    assert recent == Load(1.0, 0, 0.5, 0.5, 0.0)
    monitor.detach()


def test_load_windows_forget_old_iterations(vloop: Any) -> None:
    monitor = LoadMonitor(window=1.0, max_samples=1000)
    monitor.attach(vloop)
    for i in range(5):
        vloop.call_later(i + 1.0, block, vloop, 0.5)
    vloop.call_later(6.0, vloop.stop)
    vloop.run_forever()
    # Six iterations: five wait for a timer and block 0.5 s, the last stops.
    assert monitor.overall() == Load(6.0, 6, 2.5 / 6, 3.5 / 6, 1.0)
    # The last second: the end of the fifth block, and the last wait.
    assert len(monitor._samples) == 2
    assert monitor.recent() == Load(1.0, 2, 0.5, 0.5, 2.0)
    monitor.detach()


def test_load_hooks_tolerate_a_midway_attach(vloop: Any) -> None:
    monitor = LoadMonitor()
    monitor._clock = vloop.time
    monitor.iteration_finished(vloop)  # no start seen: ignored
    assert monitor.overall().iterations == 0
    monitor.iteration_started(vloop)
    vloop.virtual_clock.advance(0.1)
    assert monitor.overall().busy_fraction == 1.0  # no wait yet: all busy so far
    monitor.wait_started(vloop, None)
    vloop.virtual_clock.advance(0.1)
    assert monitor.overall().idle_fraction == 0.5  # in the wait right now


# ----------------------------------------------------------------------
# describe()
# ----------------------------------------------------------------------


async def helper() -> None:
    await asyncio.sleep(5)  # helper waits here


async def sleeper() -> None:
    await helper()  # sleeper waits here


def test_describe_shows_the_loops_to_do_list(vloop: Any) -> None:
    a, b = socket.socketpair()
    seen: list[str] = []

    def on_readable() -> None: ...

    def on_writable() -> None: ...

    def tick() -> None: ...

    def look() -> None:
        vloop.add_writer(b, on_writable)
        vloop.call_soon(tick)
        vloop.call_soon(tick).cancel()
        seen.append(describe(vloop))
        vloop.remove_writer(b)
        vloop.stop()

    try:
        vloop.add_reader(a, on_readable)
        vloop.call_later(2.5, tick)
        vloop.create_task(sleeper(), name="sleeper")
        vloop.call_later(1.0, look)
        vloop.run_forever()
        fds = sorted([vloop._waker.fileno(), a.fileno(), b.fileno()])
    finally:
        a.close()
        b.close()
    text = seen[0]
    lines = text.splitlines()
    assert lines[0] == "loop at time 1001.000 (running)"
    assert lines[1:3] == [
        "ready queue (1):",
        "  test_describe_shows_the_loops_to_do_list.<locals>.tick",
    ]
    assert lines[3] == "timers (2):"
    assert lines[4] == "  in 1.500 s  test_describe_shows_the_loops_to_do_list.<locals>.tick"
    assert lines[5].startswith("  in 4.000 s  ")
    assert lines[6] == "file descriptors (3):"
    by_fd = {int(line.split()[1]): line for line in lines[7:10]}
    assert sorted(by_fd) == fds
    assert by_fd[fds[0]].endswith("reader: Loop._on_wakeup  writer: -")
    reader = "reader: test_describe_shows_the_loops_to_do_list.<locals>.on_readable  writer: -"
    assert reader in text
    assert (
        "reader: -  writer: test_describe_shows_the_loops_to_do_list.<locals>.on_writable" in text
    )
    assert lines[10:13] == [
        "tasks (1):",
        "  Task sleeper (coro: sleeper), at:",
        f"    {HERE}:{line_of('sleeper waits here')} in sleeper",
    ]
    assert lines[13] == f"    {HERE}:{line_of('helper waits here')} in helper"
    assert lines[14].endswith(" in sleep")  # asyncio's


def test_a_snapshot_between_runs_and_of_a_closed_loop(vloop: Any) -> None:
    vloop.call_later(1.0, print)
    vloop.virtual_clock.advance(3.0)
    state = snapshot(vloop)
    assert not state.running
    assert state.timers == (TimerInfo(-2.0, "print"),)
    assert "  overdue by 2.000 s  print" in str(state)
    assert state.tasks == ()
    vloop.close()
    assert snapshot(vloop).fds == ()


def test_snapshot_formatting_of_unusual_entries() -> None:
    state = LoopSnapshot(
        time=0.0,
        running=False,
        ready=(),
        timers=(),
        fds=(FdInfo(9, None, None),),
        tasks=(TaskInfo("Task t (coro: c)", ()),),
    )
    assert str(state).splitlines() == [
        "loop at time 0.000 (not running)",
        "ready queue (0):",
        "timers (0):",
        "file descriptors (1):",
        "  fd 9  reader: -  writer: -",
        "tasks (1):",
        "  Task t (coro: c), no stack",
    ]


def test_names_and_stacks(vloop: Any) -> None:
    handle = vloop.call_soon(print)
    assert handle_label(handle) == "print"
    handle.cancel()
    assert handle_label(handle) == "<cancelled>"

    async def nested() -> None:
        await sleeper()

    coro = nested()
    assert coroutine_stack(coro) == [Location(HERE, coro.cr_frame.f_lineno, "nested")]
    coro.close()
    assert coroutine_stack(coro) == []

    async def fails() -> None:
        raise KeyError  # the failing line

    task = vloop.create_task(fails())
    vloop.run_until_complete(asyncio.wait([task]))
    assert task_stack(task)[-1] == Location(HERE, line_of("the failing line"), "fails")
    task.exception()
