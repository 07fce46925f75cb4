"""The run loop: scheduling order, timers, stop/close, errors and file descriptors.

Tests taking ``any_loop``/``any_vloop`` run on asyncio's own loop too: they
pin down behaviour loopy must share with asyncio.  Tests taking
``loop``/``vloop`` check what is loopy's own (tie order of timers, the heap's
compaction, the select timeouts it asks for).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import gc
import inspect
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import loopy
from loopy.loop import resolve_task_mode
from tests.helpers import make_loop, pending_timers


def run_briefly(loop: Any) -> None:
    """Run exactly one iteration (stop() is honoured after the current one)."""
    loop.call_soon(loop.stop)
    loop.run_forever()


# -- ready queue order ------------------------------------------------------


def test_call_soon_runs_in_fifo_order(any_loop: Any) -> None:
    order: list[int] = []
    for i in range(10):
        any_loop.call_soon(order.append, i)
    run_briefly(any_loop)
    assert order == list(range(10))


def test_callbacks_scheduled_while_running_wait_for_next_iteration(any_loop: Any) -> None:
    order: list[str] = []

    def first() -> None:
        order.append("first")
        any_loop.call_soon(order.append, "scheduled-by-first")

    any_loop.call_soon(first)
    run_briefly(any_loop)
    assert order == ["first"]
    run_briefly(any_loop)
    assert order == ["first", "scheduled-by-first"]


def test_a_self_rescheduling_callback_does_not_starve_io(any_loop: Any) -> None:
    a, b = socket.socketpair()
    a.setblocking(False)
    spins = 0
    got: list[bytes] = []

    def spin() -> None:
        nonlocal spins
        spins += 1
        if spins < 1000:
            any_loop.call_soon(spin)
        else:
            any_loop.stop()

    def on_readable() -> None:
        got.append(a.recv(100))
        any_loop.remove_reader(a)
        any_loop.stop()

    try:
        any_loop.add_reader(a, on_readable)
        b.send(b"x")
        any_loop.call_soon(spin)
        any_loop.run_forever()
        assert got == [b"x"]
        assert spins < 5, "the reader should run within a couple of iterations"
    finally:
        any_loop.remove_reader(a)
        a.close()
        b.close()


def test_cancelled_handle_never_runs(any_loop: Any) -> None:
    ran: list[str] = []
    later = any_loop.call_soon(ran.append, "later")
    any_loop.call_soon(later.cancel)  # too late: "later" runs before it
    victim = any_loop.call_soon(ran.append, "victim")
    victim.cancel()
    assert victim.cancelled()
    run_briefly(any_loop)
    assert ran == ["later"]


def test_a_callback_can_cancel_one_queued_behind_it(any_loop: Any) -> None:
    ran: list[str] = []
    handles: list[Any] = []
    any_loop.call_soon(lambda: handles[0].cancel())  # noqa: PLW0108 - handles[0] is not made yet
    handles.append(any_loop.call_soon(ran.append, "victim"))
    run_briefly(any_loop)
    assert ran == []


def _some_callback(*args: object) -> None:
    pass


@pytest.mark.parametrize("debug", [False, True])
def test_handles_are_asyncio_handles_with_asyncio_s_repr(loop: Any, debug: bool) -> None:
    reference = asyncio.new_event_loop()
    try:
        seen = {}
        for kind, some_loop in (("asyncio", reference), ("loopy", loop)):
            some_loop.set_debug(debug)
            handle = some_loop.call_soon(print, "hello")  # one line: the same "created at"
            partial = some_loop.call_soon(functools.partial(_some_callback, 1, key="k"), [2])
            timer = some_loop.call_at(12.5, _some_callback)
            assert isinstance(handle, asyncio.Handle)
            assert isinstance(timer, asyncio.TimerHandle)
            assert timer.when() == 12.5
            reprs = [repr(handle), repr(partial), repr(timer)]
            for each in (handle, partial, timer):
                each.cancel()
                each.cancel()
                reprs.append(repr(each))
            seen[kind] = reprs
        # e.g. <Handle print('hello')>, and from Python 3.12 <Handle print()>
        # unless in debug mode; <TimerHandle when=12.5 _some_callback() at
        # test_loop.py:112>; in debug mode "created at test_loop.py:125" too.
        assert seen["loopy"] == seen["asyncio"]
    finally:
        reference.close()


@pytest.mark.parametrize("debug", [False, True])
def test_a_reader_handle_looks_like_asyncios(loop: Any, debug: bool) -> None:
    """asyncio calls the handle add_reader keeps a Handle; loopy's IOHandle says the same."""
    reference = asyncio.SelectorEventLoop()
    a, b = socket.socketpair()
    try:
        seen = {}
        for kind, some_loop in (("asyncio", reference), ("loopy", loop)):
            some_loop.set_debug(debug)
            handle = some_loop._add_reader(a.fileno(), _some_callback, 1)
            seen[kind] = [repr(handle)]
            some_loop.remove_reader(a.fileno())
            seen[kind].append(repr(handle))  # cancelled
        # (In debug mode, "created at": asyncio names its own line in
        # selector_events.py, loopy the caller's, as for every handle it makes.)
        cut = [[text.split(" created at ")[0] for text in seen[kind]] for kind in seen]
        assert cut[0] == cut[1]
        assert seen["loopy"][0].startswith("<Handle _some_callback(")
    finally:
        reference.close()
        a.close()
        b.close()


def test_callbacks_run_in_their_context(any_loop: Any) -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    seen: list[str] = []
    ctx = contextvars.copy_context()
    ctx.run(var.set, "in-ctx")
    any_loop.call_soon(lambda: seen.append(var.get()), context=ctx)
    any_loop.call_soon(lambda: seen.append(var.get()))
    run_briefly(any_loop)
    assert seen == ["in-ctx", "unset"]


# -- timers ---------------------------------------------------------------------


def test_timers_run_in_deadline_order_at_their_deadline(any_vloop: Any) -> None:
    loop = any_vloop
    start = loop.time()
    fired: list[tuple[str, float]] = []
    for name, delay in [("c", 3.0), ("a", 1.0), ("b", 2.0)]:
        loop.call_later(delay, lambda n=name: fired.append((n, loop.time() - start)))
    loop.call_later(3.5, loop.stop)
    loop.run_forever()
    assert fired == [("a", 1.0), ("b", 2.0), ("c", 3.0)]


def test_timers_with_equal_deadlines_run_in_scheduling_order(vloop: Any) -> None:
    # asyncio's heap does not promise this; loopy does.
    when = vloop.time() + 1.0
    fired: list[int] = []
    for i in range(50):
        vloop.call_at(when, fired.append, i)
    vloop.call_at(when + 1, vloop.stop)
    vloop.run_forever()
    assert fired == list(range(50))


def test_select_timeout_is_the_distance_to_the_nearest_timer(vloop: Any) -> None:
    selector = vloop._selector
    vloop.call_later(5.0, lambda: None)
    vloop.call_later(2.0, vloop.stop)
    vloop.run_forever()
    assert selector.timeouts == [2.0]


def test_ready_callbacks_mean_polling_without_waiting(vloop: Any) -> None:
    a, b = socket.socketpair()
    try:
        vloop.add_reader(a, lambda: None)
        vloop.call_soon(vloop.stop)
        vloop.run_forever()
        assert vloop._selector.timeouts == [0]  # something was ready: no waiting
    finally:
        vloop.remove_reader(a)
        a.close()
        b.close()


def test_no_poll_at_all_when_only_the_wakeup_socket_is_watched(vloop: Any) -> None:
    ran: list[int] = []
    for i in range(3):
        vloop.call_soon(ran.append, i)
    vloop.call_soon(vloop.stop)
    vloop.run_forever()
    assert ran == [0, 1, 2]
    assert vloop._selector.timeouts == []  # nothing could have been missed


def test_signal_handlers_keep_the_poll(vloop: Any) -> None:

    vloop.add_signal_handler(signal.SIGUSR1, lambda: None)
    try:
        vloop.call_soon(vloop.stop)
        vloop.run_forever()
    finally:
        vloop.remove_signal_handler(signal.SIGUSR1)
    assert vloop._selector.timeouts == [0]  # a signal's byte must be read


def test_select_timeout_is_capped(vloop: Any) -> None:
    vloop.call_later(10 * 24 * 3600, lambda: None)
    vloop.call_later(30 * 24 * 3600, vloop.stop)
    vloop.run_forever()
    assert vloop._selector.timeouts[0] == loopy.loop.MAXIMUM_SELECT_TIMEOUT


def test_cancelled_timers_are_skipped_and_do_not_shorten_the_wait(vloop: Any) -> None:
    fired: list[str] = []
    early = vloop.call_later(1.0, fired.append, "early")
    vloop.call_later(2.0, fired.append, "kept")
    vloop.call_later(2.0, vloop.stop)
    early.cancel()
    vloop.run_forever()
    assert fired == ["kept"]
    assert vloop._selector.timeouts == [2.0]
    assert vloop._timers.cancelled == 0


def test_cancelled_timer_due_in_the_same_iteration_is_dropped(vloop: Any) -> None:
    fired: list[str] = []
    vloop.call_later(1.0, lambda: victim.cancel())  # noqa: PLW0108 - victim is not made yet
    victim = vloop.call_later(1.0, fired.append, "victim")
    other = vloop.call_later(1.0, fired.append, "other")
    other.cancel()  # cancelled while in the heap, behind a live head
    vloop.call_later(1.0, vloop.stop)
    vloop.run_forever()
    assert fired == []
    assert vloop._timers.cancelled == 0


def one_iteration(loop: Any) -> None:
    """Run the loop for one iteration (on a virtual clock, without waiting)."""
    loop.call_soon(loop.stop)
    loop.run_forever()


def test_heap_is_compacted_when_most_timers_are_cancelled(vloop: Any) -> None:
    handles = [vloop.call_later(10.0 + i, lambda: None) for i in range(300)]
    one_iteration(vloop)  # (the timers are filed)
    for handle in handles[:250]:
        handle.cancel()
    # Cancelling only marks and counts: the store is tidied by the loop.
    assert vloop._timers.cancelled == 250
    assert len(pending_timers(vloop)) == 300
    one_iteration(vloop)
    # Rebuilt, since more than half of it was cancelled: the 50 live timers are left.
    assert vloop._timers.cancelled == 0
    assert pending_timers(vloop) == handles[250:]
    # The survivors still fire, in order.
    fired: list[float] = []
    for handle in handles[250:]:
        handle.cancel()
    vloop.call_later(1.0, fired.append, 1.0)
    vloop.call_later(2.0, vloop.stop)
    vloop.run_forever()
    assert fired == [1.0]


def test_timers_sharing_a_deadline_keep_scheduling_order_through_cancels_and_compaction(
    vloop: Any,
) -> None:
    fired: list[int] = []
    start = vloop.time()
    same = [vloop.call_at(start + 5.0, fired.append, i) for i in range(6)]
    # A lone timer at its own deadline, and many cancelled ones to force a rebuild.
    lone = vloop.call_at(start + 4.0, fired.append, -1)
    spare = [vloop.call_at(start + 6.0 + i, fired.append, 100 + i) for i in range(200)]
    same[1].cancel()
    same[4].cancel()
    for handle in spare:
        handle.cancel()  # more than half cancelled: the timers are rebuilt...
    one_iteration(vloop)  # ...at the start of the next iteration
    assert vloop._timers.cancelled == 0
    assert [h for h in pending_timers(vloop) if not h.cancelled()] == [
        lone,
        same[0],
        same[2],
        same[3],
        same[5],
    ]
    vloop.call_at(start + 7.0, vloop.stop)
    vloop.run_forever()
    assert fired == [-1, 0, 2, 3, 5]
    assert all(handle.cancelled() for handle in pending_timers(vloop))  # later ones, lazily kept


def test_a_deadline_whose_timers_are_all_cancelled_does_not_shorten_the_wait(vloop: Any) -> None:
    start = vloop.time()
    early = [vloop.call_at(start + 1.0, print) for _ in range(3)]
    vloop.call_at(start + 3.0, vloop.stop)
    for handle in early:
        handle.cancel()
    vloop.run_forever()
    assert vloop._selector.timeouts == [3.0]
    assert pending_timers(vloop) == []


def test_call_later_and_call_at_refuse_none(loop: Any) -> None:
    with pytest.raises(TypeError):
        loop.call_later(None, print)
    with pytest.raises(TypeError):
        loop.call_at(None, print)


def test_time_is_monotonic_seconds(loop: Any) -> None:
    assert abs(loop.time() - time.monotonic()) < 1.0


# -- running, stopping, closing -------------------------------------------------


def test_stop_lets_ready_callbacks_finish_and_defers_new_ones(any_loop: Any) -> None:
    ran: list[str] = []

    def stopper() -> None:
        any_loop.stop()
        any_loop.call_soon(ran.append, "next-run")

    any_loop.call_soon(stopper)
    any_loop.call_soon(ran.append, "same-iteration")
    any_loop.run_forever()
    assert ran == ["same-iteration"]
    run_briefly(any_loop)
    assert ran == ["same-iteration", "next-run"]


def test_stop_before_run_forever_runs_one_iteration(any_loop: Any) -> None:
    ran: list[int] = []
    any_loop.call_soon(ran.append, 1)
    any_loop.stop()
    any_loop.run_forever()
    assert ran == [1]
    assert not any_loop.is_running()


def test_run_until_complete_returns_the_result(any_loop: Any) -> None:
    async def answer() -> int:
        await asyncio.sleep(0)
        assert asyncio.get_running_loop() is any_loop
        assert any_loop.is_running()
        return 42

    assert any_loop.run_until_complete(answer()) == 42
    assert not any_loop.is_running()


def test_run_until_complete_raises_the_exception(any_loop: Any) -> None:
    async def fail() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        any_loop.run_until_complete(fail())


def test_run_until_complete_on_a_future_stopped_early(any_loop: Any) -> None:
    future = any_loop.create_future()
    any_loop.call_soon(any_loop.stop)
    with pytest.raises(RuntimeError, match="stopped before Future completed"):
        any_loop.run_until_complete(future)
    future.cancel()


def test_system_exit_from_a_task_stops_the_loop(any_loop: Any) -> None:
    async def leave() -> None:
        raise SystemExit(3)

    with pytest.raises(SystemExit):
        any_loop.run_until_complete(leave())


def test_keyboard_interrupt_from_a_callback_propagates(any_loop: Any) -> None:
    def interrupt() -> None:
        raise KeyboardInterrupt

    any_loop.call_soon(interrupt)
    with pytest.raises(KeyboardInterrupt):
        any_loop.run_forever()
    assert not any_loop.is_running()


def _run_forever_again(loop: Any) -> None:
    loop.run_forever()


def _run_until_complete_inside(loop: Any) -> None:
    future = loop.create_future()
    try:
        loop.run_until_complete(future)
    finally:
        future.cancel()


def _run_another_loop(loop: Any) -> None:
    other = make_loop("loopy")
    try:
        other.run_forever()
    finally:
        other.close()


# (One refusal per run: asyncio 3.13.0's refused run_forever() still resets
# the loop's "running" state, so a second refusal would test its bug.)
@pytest.mark.parametrize(
    ("attempt", "message"),
    [
        (_run_forever_again, "This event loop is already running"),
        (_run_until_complete_inside, "This event loop is already running"),
        (_run_another_loop, "Cannot run the event loop while another loop is running"),
        (lambda loop: loop.close(), "Cannot close a running event loop"),
    ],
)
def test_cannot_run_twice_or_inside_another_loop(
    any_loop: Any, attempt: Callable[[Any], None], message: str
) -> None:
    errors: list[str] = []

    def nested() -> None:
        try:
            attempt(any_loop)
        except RuntimeError as exc:
            errors.append(str(exc))

    any_loop.call_soon(nested)
    run_briefly(any_loop)
    assert errors == [message]


def test_closed_loop_refuses_work(any_loop: Any) -> None:
    any_loop.close()
    any_loop.close()  # twice is fine
    assert any_loop.is_closed()
    with pytest.raises(RuntimeError, match="is closed"):
        any_loop.call_soon(print)
    with pytest.raises(RuntimeError, match="is closed"):
        any_loop.call_later(1, print)
    with pytest.raises(RuntimeError, match="is closed"):
        any_loop.run_forever()
    assert any_loop.remove_reader(0) is False


def test_unclosed_loop_warns(recwarn: pytest.WarningsRecorder) -> None:
    loop = make_loop("loopy")
    loop_repr = repr(loop)
    loop._waker.close()  # release the fds ourselves; only the warning is under test
    loop._selector.close()
    del loop
    gc.collect()
    messages = [str(w.message) for w in recwarn if issubclass(w.category, ResourceWarning)]
    assert messages == [f"unclosed event loop {loop_repr}"]


def test_repr_shows_state(loop: Any) -> None:
    assert repr(loop) == f"<Loop running=False closed=False tasks={loop.task_mode}>"


# -- errors ---------------------------------------------------------------------


def test_exception_in_callback_goes_to_the_handler_and_the_loop_carries_on(
    any_loop: Any,
) -> None:
    contexts: list[dict[str, Any]] = []
    any_loop.set_exception_handler(lambda loop, ctx: contexts.append(ctx))
    ran: list[str] = []

    def broken() -> None:
        raise ValueError("broken callback")

    any_loop.call_soon(broken)
    any_loop.call_soon(ran.append, "after")
    run_briefly(any_loop)
    assert ran == ["after"]
    assert len(contexts) == 1
    assert isinstance(contexts[0]["exception"], ValueError)
    assert contexts[0]["message"].startswith("Exception in callback")
    assert any_loop.get_exception_handler() is not None


def test_default_handler_logs_with_details(loop: Any, caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> None:
        raise ValueError("logged")

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_soon(broken)
        run_briefly(loop)
        loop.call_exception_handler({"message": "plain message", "extra": 1})
    first, second = caplog.records
    assert first.getMessage().startswith("Exception in callback test_default_handler_logs")
    assert "handle: <Handle" in first.getMessage()
    assert first.exc_info is not None
    assert first.exc_info[0] is ValueError
    assert second.getMessage() == "plain message\nextra: 1"
    assert not second.exc_info


def test_a_failing_exception_handler_is_logged_not_raised(
    loop: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def bad_handler(loop: Any, context: dict[str, Any]) -> None:
        raise RuntimeError("handler broke")

    loop.set_exception_handler(bad_handler)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_exception_handler({"message": "original"})
    assert caplog.records[0].getMessage().startswith("Unhandled error in exception handler")


def test_a_failing_default_handler_does_not_break_the_loop(
    any_loop: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(context: dict[str, Any]) -> None:
        raise RuntimeError("log broke")

    monkeypatch.setattr(any_loop, "default_exception_handler", explode)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        any_loop.call_exception_handler({"message": "x"})
        any_loop.set_exception_handler(lambda loop, ctx: 1 / 0)
        any_loop.call_exception_handler({"message": "y"})
    assert [(r.name, r.getMessage()) for r in caplog.records] == [
        ("asyncio", "Exception in default exception handler"),
        (
            "asyncio",
            "Exception in default exception handler while handling an "
            "unexpected error in custom exception handler",
        ),
    ]
    assert all(r.exc_info and r.exc_info[0] is RuntimeError for r in caplog.records)


def test_exception_handler_must_be_callable(loop: Any) -> None:
    with pytest.raises(TypeError):
        loop.set_exception_handler(42)
    loop.set_exception_handler(None)
    assert loop.get_exception_handler() is None


# -- debug mode -------------------------------------------------------------------


def test_debug_mode_logs_slow_callbacks(vloop: Any, caplog: pytest.LogCaptureFixture) -> None:
    vloop.set_debug(True)
    assert vloop.get_debug()

    def slow() -> None:
        vloop.virtual_clock.advance(0.25)

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        vloop.call_soon(slow)
        vloop.call_soon(lambda: None)
        run_briefly(vloop)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1
    assert messages[0].startswith("Executing <Handle test_debug_mode_logs_slow_callbacks.")
    assert messages[0].endswith("took 0.250 seconds")


def test_debug_mode_checks_callbacks(loop: Any) -> None:
    loop.set_debug(True)

    async def coro() -> None:
        pass

    with pytest.raises(TypeError, match="coroutines cannot be used with call_soon"):
        loop.call_soon(coro)
    with pytest.raises(TypeError, match="a callable object was expected by call_at"):
        loop.call_at(1.0, 42)
    errors: list[str] = []

    def from_thread() -> None:
        try:
            loop.call_soon(print)
        except RuntimeError as exc:
            errors.append(str(exc))

    def start_thread() -> None:
        thread = threading.Thread(target=from_thread)
        thread.start()
        thread.join()

    loop.call_soon(start_thread)
    run_briefly(loop)
    assert len(errors) == 1
    assert "Non-thread-safe operation" in errors[0]


# -- file descriptors ---------------------------------------------------------------


def test_reader_runs_while_readable_until_removed(any_loop: Any, pair: Any) -> None:
    a, b = pair
    calls: list[bytes] = []

    def on_readable(tag: str) -> None:
        calls.append(a.recv(1))
        if len(calls) == 3:
            assert any_loop.remove_reader(a) is True
            any_loop.stop()

    any_loop.add_reader(a.fileno(), on_readable, "tag")
    b.send(b"xyz!")
    any_loop.run_forever()
    assert calls == [b"x", b"y", b"z"]
    assert any_loop.remove_reader(a) is False


def test_reader_and_writer_on_one_fd_are_independent(any_loop: Any, pair: Any) -> None:
    a, b = pair
    events: list[str] = []

    def on_writable() -> None:
        events.append("w")
        assert any_loop.remove_writer(a) is True
        b.send(b"ping")

    def on_readable() -> None:
        events.append("r:" + a.recv(10).decode())
        any_loop.stop()

    any_loop.add_reader(a, on_readable)
    any_loop.add_writer(a, on_writable)
    any_loop.run_forever()
    assert events == ["w", "r:ping"]
    assert any_loop.remove_writer(a) is False
    assert any_loop.remove_reader(a) is True


def test_removing_the_reader_keeps_the_writer(loop: Any, pair: Any) -> None:
    a, b = pair
    b.send(b"data")  # a is readable and writable
    writes: list[int] = []
    loop.add_reader(a, lambda: None)
    loop.add_writer(a, lambda: writes.append(1))
    assert loop.remove_reader(a) is True
    run_briefly(loop)
    assert writes == [1]
    assert loop.remove_writer(a) is True
    assert loop._selector.get_map().get(a.fileno()) is None


def test_adding_a_reader_again_replaces_the_first(any_loop: Any, pair: Any) -> None:
    a, b = pair
    seen: list[str] = []
    any_loop.add_reader(a, seen.append, "first")
    any_loop.add_reader(a, seen.append, "second")
    any_loop.add_writer(a, seen.append, "writer-1")
    any_loop.add_writer(a, seen.append, "writer-2")
    b.send(b"x")
    run_briefly(any_loop)
    assert sorted(seen) == ["second", "writer-2"]
    any_loop.remove_reader(a)
    any_loop.remove_writer(a)


def test_reader_removed_by_an_earlier_callback_does_not_run(loop: Any, pair: Any) -> None:
    a, b = pair
    seen: list[str] = []
    loop.add_writer(a, lambda: loop.remove_reader(a))
    loop.add_reader(a, seen.append, "reader")
    b.send(b"x")
    run_briefly(loop)
    # Whichever order select() reported them in, a removed reader never runs
    # once removed; both orders are legal, so only check the final state.
    loop.remove_writer(a)
    b.send(b"y")
    run_briefly(loop)
    assert seen in ([], ["reader"])
    assert loop._selector.get_map().get(a.fileno()) is None


def test_exception_in_reader_is_reported(any_loop: Any, pair: Any) -> None:
    a, b = pair
    contexts: list[dict[str, Any]] = []
    any_loop.set_exception_handler(lambda loop, ctx: contexts.append(ctx))

    def broken() -> None:
        any_loop.remove_reader(a)
        any_loop.stop()
        raise OSError("reader broke")

    any_loop.add_reader(a, broken)
    b.send(b"x")
    any_loop.run_forever()
    assert isinstance(contexts[0]["exception"], OSError)


# -- futures, tasks and factories -------------------------------------------------------


def test_create_future_and_task_follow_the_task_mode() -> None:
    for mode, future_type, task_type in [
        ("asyncio", asyncio.Future, asyncio.Task),
        ("loopy", loopy.Future, loopy.Task),
    ]:
        loop = loopy.new_event_loop(tasks=mode)
        try:
            assert loop.task_mode == mode
            future = loop.create_future()
            assert type(future) is future_type
            future.cancel()

            async def noop() -> None:
                pass

            task = loop.create_task(noop(), name="the-name")
            assert type(task) is task_type
            assert task.get_name() == "the-name"
            loop.run_until_complete(task)
        finally:
            loop.close()


def test_task_mode_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOPY_TASKS", "loopy")
    assert resolve_task_mode(None) == "loopy"
    monkeypatch.setenv("LOOPY_TASKS", "")
    assert resolve_task_mode(None) == "asyncio"
    assert resolve_task_mode("asyncio") == "asyncio"
    with pytest.raises(ValueError, match="unknown task mode 'uvloop'"):
        resolve_task_mode("uvloop")


def test_task_factory(any_loop: Any) -> None:
    made: list[Any] = []

    def factory(loop: Any, coro: Any, **kwargs: Any) -> Any:
        task = asyncio.Task(coro, loop=loop, **kwargs)
        made.append(kwargs)
        return task

    async def noop() -> str:
        return "done"

    any_loop.set_task_factory(factory)
    assert any_loop.get_task_factory() is factory
    task = any_loop.create_task(noop(), name="named")
    assert task.get_name() == "named"
    ctx = contextvars.copy_context()
    task2 = any_loop.create_task(noop(), context=ctx)
    assert any_loop.run_until_complete(asyncio.gather(task, task2)) == ["done", "done"]
    assert made == [{}, {"context": ctx}]
    with pytest.raises(TypeError):
        any_loop.set_task_factory(42)
    any_loop.set_task_factory(None)
    assert any_loop.get_task_factory() is None


def test_asyncio_helpers_work_on_the_loop(any_vloop: Any) -> None:
    loop = any_vloop

    async def main() -> list[Any]:
        start = loop.time()
        results = await asyncio.gather(asyncio.sleep(1, "a"), asyncio.sleep(2, "b"))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.sleep(10), 0.5)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.25):
                await asyncio.sleep(10)
        return [results, loop.time() - start]

    assert loop.run_until_complete(main()) == [["a", "b"], 2.75]


# -- threads -------------------------------------------------------------------------


def test_call_soon_threadsafe_wakes_a_sleeping_loop(any_loop: Any) -> None:
    def from_thread() -> None:
        any_loop.call_soon_threadsafe(any_loop.stop)

    thread = threading.Thread(target=from_thread)
    any_loop.call_soon(thread.start)
    started = time.monotonic()
    any_loop.run_forever()  # nothing else scheduled: only the wake-up ends this
    thread.join()
    assert time.monotonic() - started < 5


def test_call_soon_threadsafe_wakes_the_selector(loop: Any) -> None:
    loop.call_soon_threadsafe(print)
    assert loop._waker.drain() == b"\0"


def test_run_in_executor_and_to_thread(any_loop: Any) -> None:
    async def main() -> list[Any]:
        first = await any_loop.run_in_executor(None, threading.current_thread)
        second = await asyncio.to_thread(sum, [1, 2, 3])
        return [first is not threading.current_thread(), second]

    assert any_loop.run_until_complete(main()) == [True, 6]
    any_loop.run_until_complete(any_loop.shutdown_default_executor())
    with pytest.raises(RuntimeError, match="shutdown"):
        any_loop.run_in_executor(None, print)


def test_set_default_executor(loop: Any) -> None:

    with pytest.raises(TypeError):
        loop.set_default_executor(object())
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="custom")

    async def main() -> str:
        return await loop.run_in_executor(None, lambda: threading.current_thread().name)

    loop.set_default_executor(executor)
    assert loop.run_until_complete(main()).startswith("custom")
    loop.run_until_complete(loop.shutdown_default_executor())


def test_shutdown_default_executor_timeout_warns(loop: Any) -> None:
    release = threading.Event()

    async def main() -> None:
        loop.run_in_executor(None, release.wait)
        with pytest.warns(RuntimeWarning, match="did not finish joining"):
            await loop.shutdown_default_executor(timeout=0.05)
        release.set()

    loop.run_until_complete(main())


# -- async generators ---------------------------------------------------------------------


def test_shutdown_asyncgens_closes_open_generators(any_loop: Any) -> None:
    closed: list[str] = []

    async def gen() -> Any:
        try:
            yield 1
            yield 2
        finally:
            closed.append("closed")

    async def main() -> Any:
        agen = gen()
        await agen.__anext__()
        return agen

    agen = any_loop.run_until_complete(main())
    any_loop.run_until_complete(any_loop.shutdown_asyncgens())
    assert closed == ["closed"]
    del agen


def test_shutdown_asyncgens_reports_errors(loop: Any) -> None:
    contexts: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda loop, ctx: contexts.append(ctx))

    async def gen() -> Any:
        try:
            yield 1
        finally:
            raise ValueError("cannot close")

    async def main() -> Any:
        agen = gen()
        await agen.__anext__()
        return agen

    agen = loop.run_until_complete(main())
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert isinstance(contexts[0]["exception"], ValueError)
    assert contexts[0]["asyncgen"] is agen


def test_garbage_collected_asyncgen_is_finalized_on_the_loop(any_loop: Any) -> None:
    closed: list[str] = []

    async def gen() -> Any:
        try:
            yield 1
            yield 2
        finally:
            closed.append("finalized")

    async def main() -> None:
        agen = gen()
        await agen.__anext__()
        del agen
        gc.collect()
        for _ in range(3):
            await asyncio.sleep(0)

    any_loop.run_until_complete(main())
    assert closed == ["finalized"]


def test_debug_mode_records_where_each_handle_was_made(any_loop: Any) -> None:

    any_loop.set_debug(True)

    def origin(handle: Any) -> tuple[str, int, str]:
        return tuple(handle._source_traceback[-1][:3])  # type: ignore[return-value]

    here = sys._getframe().f_code.co_name
    line = sys._getframe().f_lineno
    handles = [
        any_loop.call_soon(print),
        any_loop.call_soon_threadsafe(print),
        any_loop.call_later(1, print),
        any_loop.call_at(1, print),
    ]
    for offset, handle in enumerate(handles, start=2):
        assert origin(handle) == (__file__, line + offset, here)
        handle.cancel()
    any_loop.set_debug(False)
    assert any_loop.call_soon(print)._source_traceback is None


def test_debug_mode_records_where_a_loopy_future_was_made() -> None:

    loop = make_loop("loopy-own")
    try:
        loop.set_debug(True)
        line = sys._getframe().f_lineno + 1
        future = loop.create_future()
        assert tuple(future._source_traceback[-1][:2]) == (__file__, line)
        future.cancel()
    finally:
        loop.close()


def test_debug_mode_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONASYNCIODEBUG", "1")
    loop = make_loop("loopy")
    try:
        assert loop.get_debug()
    finally:
        loop.close()
    monkeypatch.delenv("PYTHONASYNCIODEBUG")
    loop = make_loop("loopy")
    try:
        assert not loop.get_debug()
    finally:
        loop.close()


def test_debug_mode_tracks_coroutine_origins_while_running(loop: Any) -> None:
    # (asyncio's own loop applies a change made while running one iteration later.)

    any_loop = loop
    depths: list[int] = []

    async def probe() -> None:
        depths.append(sys.get_coroutine_origin_tracking_depth())
        any_loop.set_debug(False)
        depths.append(sys.get_coroutine_origin_tracking_depth())

    any_loop.set_debug(True)
    any_loop.run_until_complete(probe())
    assert depths == [10, 0]
    assert sys.get_coroutine_origin_tracking_depth() == 0


def test_error_report_says_where_the_handle_was_made(
    any_loop: Any, caplog: pytest.LogCaptureFixture
) -> None:
    any_loop.set_debug(True)

    def broken() -> None:
        raise ValueError("x")

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        any_loop.call_soon(broken)
        run_briefly(any_loop)
    message = caplog.records[0].getMessage()
    assert "source_traceback: Object created at (most recent call last):" in message
    assert "test_error_report_says_where_the_handle_was_made" in message


def test_a_socket_closed_while_watched_can_still_be_unwatched(any_loop: Any) -> None:
    a, b = socket.socketpair()
    try:
        any_loop.add_reader(a, print)
        a.close()  # fileno() is now -1: the loop must find it by the object
        assert any_loop.remove_reader(a) is True
        with pytest.raises(ValueError):  # now it is neither watched nor a descriptor
            any_loop.remove_reader(a)
    finally:
        b.close()


def test_one_iteration_reads_top_to_bottom_in_at_most_90_lines() -> None:
    # _run_once is the file to read first: its four numbered steps, in order,
    # on one screen or two (docstring and comments included).  83 lines
    # without the flight recorder's calls; with them, 90.
    lines, _ = inspect.getsourcelines(loopy.loop.Loop._run_once)
    assert len(lines) <= 90
    steps = [
        line.strip()[:5]
        for line in lines
        if line.strip()[:5] in ("# 1. ", "# 2. ", "# 3. ", "# 4. ")
    ]
    assert steps == ["# 1. ", "# 2. ", "# 3. ", "# 4. "]


def test_no_two_mixins_of_the_loop_define_the_same_name() -> None:
    # Loop calls each mixin's set-up and tear-down by its own name
    # (_setup_signals, _close_threads...): a name two mixins shared would
    # silently hide one of them behind the other in the MRO.
    owners: dict[str, list[str]] = {}
    for cls in loopy.loop.Loop.__mro__[1:]:
        if cls.__module__.startswith("loopy."):
            for name in vars(cls):
                if not name.startswith("__"):
                    owners.setdefault(name, []).append(cls.__name__)
    assert {name: classes for name, classes in owners.items() if len(classes) > 1} == {}
