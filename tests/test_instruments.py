"""Instruments: the hooks are called at the right points, in the right order."""

from __future__ import annotations

import asyncio
import logging
import os
import selectors
import signal
import socket
from typing import Any

import pytest

from loopy.handles import callback_name
from loopy.instruments import HOOK_NAMES, Instrument
from tests.helpers import make_loop


class Recorder(Instrument):
    """Records every hook call as a short tuple (a test double, not loopy's trace recorder)."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def iteration_started(self, loop: Any) -> None:
        self.events.append(("iteration",))

    def wait_started(self, loop: Any, timeout: float | None) -> None:
        self.events.append(("wait", timeout))

    def wait_finished(self, loop: Any, events: list[tuple[int, int]]) -> None:
        self.events.append(("woke", events))

    def timer_fired(self, loop: Any, handle: Any, lateness: float) -> None:
        self.events.append(("fired", callback_name(handle._callback), lateness))

    def callback_started(self, loop: Any, handle: Any) -> None:
        self.events.append(("run", callback_name(handle._callback)))

    def callback_finished(self, loop: Any, handle: Any) -> None:
        self.events.append(("ran",))

    def iteration_finished(self, loop: Any) -> None:
        self.events.append(("end",))

    def timer_scheduled(self, loop: Any, handle: Any) -> None:
        self.events.append(("scheduled", handle.when() - loop.time()))

    def task_created(self, loop: Any, task: Any, parent: Any) -> None:
        self.events.append(("task", task.get_name(), parent.get_name() if parent else None))

    def task_finished(self, loop: Any, task: Any) -> None:
        self.events.append(("task-done", task.get_name()))

    def signal_received(self, loop: Any, signum: int) -> None:
        self.events.append(("signal", signum))

    def exception_reported(self, loop: Any, context: dict[str, Any]) -> None:
        self.events.append(("error", context["message"]))


def compact(events: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Drop the bookkeeping pairs, keeping what a reader of the sequence cares about."""
    return [e for e in events if e[0] not in ("ran", "end", "iteration")]


def test_a_timer_and_a_callback(vloop: Any) -> None:
    recorder = Recorder()
    vloop.add_instrument(recorder)

    def tick() -> None:
        vloop.stop()

    seen: list[int] = []
    vloop.call_later(2.0, tick)
    vloop.call_soon(seen.append, 1)
    vloop.run_forever()
    assert recorder.events == [
        ("scheduled", 2.0),
        ("iteration",),
        # No wait: a callback was ready and only the wake-up socket is
        # watched, so the loop skipped select() altogether.
        ("run", "list.append"),
        ("ran",),
        ("end",),
        ("iteration",),
        ("wait", 2.0),
        ("woke", []),
        ("fired", "test_a_timer_and_a_callback.<locals>.tick", 0.0),
        ("run", "test_a_timer_and_a_callback.<locals>.tick"),
        ("ran",),
        ("end",),
    ]


def test_io_readiness_and_a_task_awaiting_a_future(vloop: Any) -> None:
    a, b = socket.socketpair()
    a.setblocking(False)
    fd = a.fileno()
    recorder = Recorder()
    vloop.add_instrument(recorder)
    try:

        async def child(future: asyncio.Future[bytes]) -> bytes:
            return await future

        async def main() -> bytes:
            future = vloop.create_future()
            task = vloop.create_task(child(future), name="child")
            vloop.add_reader(a, lambda: future.set_result(a.recv(10)))
            b.send(b"ping")
            result = await task
            vloop.remove_reader(a)
            return result

        assert vloop.run_until_complete(vloop.create_task(main(), name="main")) == b"ping"
    finally:
        a.close()
        b.close()
    events = compact(recorder.events)
    assert events[0] == ("task", "main", None)
    assert ("task", "child", "main") in events
    woke = [e for e in events if e[0] == "woke" and e[1]]
    assert woke[0] == ("woke", [(fd, selectors.EVENT_READ)])
    reader_ran = events.index(
        ("run", "test_io_readiness_and_a_task_awaiting_a_future.<locals>.main.<locals>.<lambda>")
    )
    assert events.index(woke[0]) < reader_ran
    assert events.index(("task-done", "child")) < events.index(("task-done", "main"))


def test_signals_and_errors_are_reported(loop: Any) -> None:
    recorder = Recorder()
    loop.add_instrument(recorder)
    loop.set_exception_handler(lambda loop, ctx: None)
    loop.add_signal_handler(signal.SIGUSR1, loop.stop)
    try:
        loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
        loop.run_forever()
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
    loop.call_exception_handler({"message": "something broke"})
    assert ("signal", signal.SIGUSR1) in recorder.events
    assert recorder.events[-1] == ("error", "something broke")


def test_only_defined_hooks_are_called_and_any_object_works(vloop: Any) -> None:
    class OnlyWaits:
        def __init__(self) -> None:
            self.timeouts: list[float | None] = []

        def wait_started(self, loop: Any, timeout: float | None) -> None:
            self.timeouts.append(timeout)

    watcher = OnlyWaits()
    vloop.add_instrument(watcher)
    vloop.add_instrument(watcher)  # twice is once
    assert vloop.instruments == (watcher,)
    hooks = vloop._hooks
    assert [name for name in HOOK_NAMES if getattr(hooks, name)] == ["wait_started"]
    vloop.call_later(1.5, vloop.stop)
    vloop.run_forever()
    assert watcher.timeouts == [1.5]


def test_removing_the_last_instrument_restores_the_plain_path(loop: Any) -> None:
    recorder = Recorder()
    loop.add_instrument(recorder)
    loop.remove_instrument(recorder)
    assert loop._hooks is None
    assert loop.instruments == ()
    with pytest.raises(ValueError):
        loop.remove_instrument(recorder)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert recorder.events == []


def test_a_raising_instrument_is_detached_and_logged(
    loop: Any, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(Instrument):
        def callback_started(self, loop: Any, handle: Any) -> None:
            raise RuntimeError("instrument broke")

    broken, recorder = Broken(), Recorder()
    loop.add_instrument(broken)
    loop.add_instrument(recorder)
    with caplog.at_level(logging.ERROR, logger="loopy"):
        for _ in range(2):
            loop.call_soon(loop.stop)
            loop.run_forever()
    assert loop.instruments == (recorder,)
    assert len(caplog.records) == 1
    assert "raised in callback_started(); detaching it" in caplog.records[0].getMessage()
    assert recorder.events.count(("run", "Loop.stop")) == 2  # the others kept working


def test_late_timer_reports_its_lateness(vloop: Any) -> None:
    recorder = Recorder()
    vloop.add_instrument(recorder)

    def block() -> None:
        vloop.virtual_clock.advance(1.5)  # as if this callback ran for 1.5 s

    vloop.call_later(1.0, vloop.stop)
    vloop.call_soon(block)
    vloop.run_forever()
    fired = [e for e in recorder.events if e[0] == "fired"]
    assert fired == [("fired", "Loop.stop", 0.5)]


def test_loop_closed_is_called_once_before_the_loop_lets_go() -> None:
    seen: list[bool] = []

    class Closing(Instrument):
        def loop_closed(self, loop: Any) -> None:
            seen.append(loop.is_closed())

    loop = make_loop("loopy")
    loop.add_instrument(Closing())
    loop.close()
    loop.close()
    assert seen == [False]  # called once, while the loop was still usable


def test_callbacks_take_the_plain_path_unless_an_instrument_watches_them(
    loop: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    observed: list[Any] = []
    starting = loop._callback_starting

    def callback_starting(handle: Any) -> float:
        observed.append(handle)
        started: float = starting(handle)
        return started

    monkeypatch.setattr(loop, "_callback_starting", callback_starting)

    class WaitsOnly(Instrument):
        def wait_started(self, loop: Any, timeout: float | None) -> None:
            pass

    class Callbacks(Instrument):
        def callback_finished(self, loop: Any, handle: Any) -> None:
            pass

    ran: list[int] = []
    loop.add_instrument(WaitsOnly())
    loop.call_soon(ran.append, 1)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert (ran, observed) == ([1], [])  # ran directly, unobserved
    watcher = Callbacks()
    loop.add_instrument(watcher)
    loop.call_soon(ran.append, 2)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert len(observed) == 2  # both callbacks went through the observed path
    loop.remove_instrument(watcher)
    assert not loop._hooks.watches_callbacks
