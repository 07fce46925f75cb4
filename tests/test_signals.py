"""Signal handlers: delivered as loop callbacks through the wake-up socket."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from typing import Any

import pytest

import loopy
from tests.helpers import make_loop


def test_signal_runs_its_callback_in_the_loop(any_loop: Any) -> None:
    received: list[tuple[str, bool]] = []

    def on_usr1(tag: str) -> None:
        received.append((tag, any_loop.is_running()))
        any_loop.stop()

    any_loop.add_signal_handler(signal.SIGUSR1, on_usr1, "usr1")
    try:
        any_loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
        any_loop.run_forever()  # only the signal's callback stops it
    finally:
        assert any_loop.remove_signal_handler(signal.SIGUSR1) is True
    assert received == [("usr1", True)]
    assert any_loop.remove_signal_handler(signal.SIGUSR1) is False
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL


def test_removing_sigint_restores_keyboard_interrupt(any_loop: Any) -> None:
    any_loop.add_signal_handler(signal.SIGINT, lambda: None)
    assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    any_loop.remove_signal_handler(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_wakeup_fd_is_claimed_and_given_back(loop: Any) -> None:
    before = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(before)
    loop.add_signal_handler(signal.SIGUSR1, lambda: None)
    current = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(current)
    assert current == loop._waker.write_fileno()
    loop.remove_signal_handler(signal.SIGUSR1)
    restored = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(restored)
    assert restored == before


def test_closing_one_loop_leaves_another_loops_wakeup_fd(loop: Any) -> None:
    other = make_loop("loopy")
    try:
        loop.add_signal_handler(signal.SIGUSR1, lambda: None)
        other.add_signal_handler(signal.SIGUSR2, lambda: None)  # claims the fd after us
        loop.close()
        current = signal.set_wakeup_fd(-1)
        signal.set_wakeup_fd(current)
        assert current == other._waker.write_fileno()
    finally:
        other.close()
    current = signal.set_wakeup_fd(-1)
    assert current == -1 or current != other._waker.write_fileno()


def test_close_removes_the_handlers(loop: Any) -> None:
    loop.add_signal_handler(signal.SIGUSR1, lambda: None)
    loop.close()
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL


def test_wakeup_bytes_without_a_handler_are_ignored(loop: Any) -> None:
    ran: list[int] = []
    loop.add_signal_handler(signal.SIGUSR1, ran.append, 1)
    try:
        loop._deliver_signals(bytes([0, signal.SIGUSR2, signal.SIGUSR1]))
        loop.call_soon(loop.stop)
        loop.run_forever()
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
    assert ran == [1]


def test_a_raising_signal_callback_goes_to_the_exception_handler(any_loop: Any) -> None:
    errors: list[BaseException] = []
    any_loop.set_exception_handler(lambda loop, ctx: errors.append(ctx["exception"]))

    def broken() -> None:
        any_loop.stop()
        raise RuntimeError("signal callback broke")

    any_loop.add_signal_handler(signal.SIGUSR2, broken)
    try:
        any_loop.call_soon(os.kill, os.getpid(), signal.SIGUSR2)
        any_loop.run_forever()
    finally:
        any_loop.remove_signal_handler(signal.SIGUSR2)
    assert [str(e) for e in errors] == ["signal callback broke"]


def test_bad_signals_are_refused(any_loop: Any) -> None:
    with pytest.raises(TypeError):
        any_loop.add_signal_handler("SIGINT", lambda: None)
    with pytest.raises(ValueError):
        any_loop.add_signal_handler(10_000, lambda: None)
    with pytest.raises(RuntimeError):
        any_loop.add_signal_handler(signal.SIGKILL, lambda: None)
    # A refused handler leaves no claim on the wake-up fd behind.
    current = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(current)
    assert current == -1


def test_only_the_main_thread_may_add_or_remove(loop: Any) -> None:
    outcomes: list[str] = []
    loop.add_signal_handler(signal.SIGUSR2, print)

    def from_thread() -> None:
        for call in (
            lambda: loop.add_signal_handler(signal.SIGUSR1, print),
            lambda: loop.remove_signal_handler(signal.SIGUSR2),
        ):
            try:
                call()
            except RuntimeError as exc:
                outcomes.append(str(exc))
        outcomes.append(str(loop.remove_signal_handler(signal.SIGUSR1)))

    thread = threading.Thread(target=from_thread)
    thread.start()
    thread.join()
    assert outcomes == [
        "add_signal_handler() can only be called from the main thread",
        "remove_signal_handler() can only be called from the main thread",
        "False",  # nothing to remove is not an error, from any thread
    ]
    assert loop.remove_signal_handler(signal.SIGUSR2) is True


def test_loop_closed_in_another_thread_forgets_its_handlers(loop: Any) -> None:
    loop.add_signal_handler(signal.SIGUSR1, lambda: None)
    thread = threading.Thread(target=loop.close)
    thread.start()
    thread.join()
    assert loop.is_closed()
    assert loop._signal_handlers == {}
    # The process-wide state could not be touched from that thread: undo it here.
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)


def test_signal_interrupts_a_waiting_select(any_loop: Any) -> None:
    """With nothing scheduled, only the wake-up socket can end the wait."""
    got: list[int] = []
    any_loop.add_signal_handler(signal.SIGUSR1, lambda: (got.append(1), any_loop.stop()))
    timer = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGUSR1))
    try:
        timer.start()
        any_loop.run_forever()
    finally:
        timer.join()
        any_loop.remove_signal_handler(signal.SIGUSR1)
    assert got == [1]


def test_asyncio_runner_ctrl_c_cancels_the_main_task() -> None:
    """asyncio.Runner's own SIGINT handling works on loopy unchanged."""

    seen: list[str] = []

    async def main() -> None:
        os.kill(os.getpid(), signal.SIGINT)
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    with (
        pytest.raises(KeyboardInterrupt),
        asyncio.Runner(loop_factory=loopy.new_event_loop) as runner,
    ):
        runner.run(main())
    assert seen == ["cancelled"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
