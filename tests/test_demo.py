"""The program's logic (``loopy/demo.py``), in-process.

The ticker runs on a virtual clock, so its deadlines can be checked exactly;
the server runs on a real loopy loop with real sockets on 127.0.0.1, and its
log is read through pytest's ``caplog``.
"""

from __future__ import annotations

import ast
import asyncio
import errno
import itertools
import logging
import re
import signal
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import loopy
from loopy import demo
from tests.helpers import AutoJumpSelector, VirtualClock

START = 1000.0  # where VirtualClock starts

# -- describe: how a read is logged ---------------------------------------------


def test_describe_short_reads_are_their_repr() -> None:
    assert demo.describe(b"hello\n", 200) == "b'hello\\n'"
    assert demo.describe(b"\x00\xff", 200) == "b'\\x00\\xff'"
    assert demo.describe(b"x" * 200, 200) == repr(b"x" * 200)


def test_describe_cuts_long_reads_and_gives_their_length() -> None:
    assert demo.describe(b"abcdefghij", 4) == "b'abcd' ... (10 bytes)"
    assert demo.describe(b"\xff" * 65536, 2) == "b'\\xff\\xff' ... (65536 bytes)"


def test_describe_never_cuts_with_zero() -> None:
    assert demo.describe(b"y" * 100_000, 0) == repr(b"y" * 100_000)


# -- the ticker ------------------------------------------------------------------


class Recorder(logging.Handler):
    """Records ``(loop.time(), message)`` for each log record."""

    def __init__(self, loop: Any) -> None:
        super().__init__()
        self.loop = loop
        self.records: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((self.loop.time(), record.getMessage()))


def run_ticker(loop: Any, interval: float, until: float) -> list[tuple[float, str]]:
    """Run ``tick(interval)`` until ``loop.time()`` reaches ``until``; its ticks."""
    recorder = Recorder(loop)
    logger = logging.Logger("ticks")  # standalone: no global logging state
    logger.addHandler(recorder)
    task = loop.create_task(demo.tick(interval, logger))
    loop.call_at(until, loop.stop)
    loop.run_forever()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(task)
    return recorder.records


def test_ticks_fire_at_exact_deadlines_from_zero(vloop: Any) -> None:
    ticks = run_ticker(vloop, 1.0, START + 5.5)
    assert ticks == [(START + k, f"Count: {k}") for k in range(6)]


def test_a_fractional_interval_does_not_drift(vloop: Any) -> None:
    ticks = run_ticker(vloop, 0.1, START + 100.05)
    assert len(ticks) == 1001
    # Each deadline is start + k * interval, not a sum of 1000 rounded steps.
    assert [when for when, _ in ticks] == [START + k * 0.1 for k in range(1001)]


@pytest.mark.parametrize("blocked", [3.5, 3.0, 4.0])
def test_a_blocked_loop_gets_one_late_tick_then_the_grid(vloop: Any, blocked: float) -> None:
    # A callback at 1001.5 holds the loop for `blocked` intervals: the ticks
    # due at 1002..1004 (or 1005) are missed.
    vloop.call_at(START + 1.5, vloop.virtual_clock.advance, blocked)
    ticks = run_ticker(vloop, 1.0, START + 7.5)
    late = START + 1.5 + blocked
    times = [when for when, _ in ticks]
    assert times[:3] == [START, START + 1, late]  # one late tick, no burst
    # ... then back on the grid, at the first grid point after the late tick.
    assert times[3:] == [float(t) for t in range(int(late) + 1, int(START) + 8)]
    assert [message for _, message in ticks] == [f"Count: {k}" for k in range(len(ticks))]


def test_a_late_tick_does_not_shift_the_next_ones(vloop: Any) -> None:
    vloop.call_at(START + 1.75, vloop.virtual_clock.advance, 0.5)
    ticks = run_ticker(vloop, 1.0, START + 4.5)
    assert [when for when, _ in ticks] == [START, START + 1, START + 2.25, START + 3, START + 4]


def test_slow_logging_does_not_shift_the_ticks(vloop: Any) -> None:
    class SlowHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            vloop.virtual_clock.advance(0.3)  # every tick takes 0.3 s to log

    recorder = Recorder(vloop)
    logger = logging.Logger("ticks")
    logger.addHandler(recorder)
    logger.addHandler(SlowHandler())
    task = vloop.create_task(demo.tick(1.0, logger))
    vloop.call_at(START + 4.5, vloop.stop)
    vloop.run_forever()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        vloop.run_until_complete(task)
    assert [when for when, _ in recorder.records] == [START + k for k in range(5)]


def test_the_ticker_cancelled_right_at_a_deadline_stops_cleanly(vloop: Any) -> None:
    # Scheduled first, this cancel runs just before the tick's own timer for
    # START + 1, which then finds its waiter already cancelled.
    logger = logging.Logger("ticks")
    task = vloop.create_task(demo.tick(1.0, logger))
    vloop.call_at(START + 1, task.cancel)
    with pytest.raises(asyncio.CancelledError):
        vloop.run_until_complete(task)
    assert vloop.time() == START + 1


class EarlySelector(AutoJumpSelector):
    """Wakes a hair before the deadline, as a real clock may: the timer is still due."""

    def select(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        if timeout:
            timeout -= 1e-10
        return super().select(timeout)


@pytest.mark.parametrize("tasks", loopy.TASK_MODES)
def test_a_tick_that_fires_early_does_not_fire_twice(tasks: str) -> None:
    clock = VirtualClock(START)
    loop_class: Any = loopy.Loop
    loop = loop_class(selector=EarlySelector(clock), clock=clock, tasks=tasks)
    try:
        ticks = run_ticker(loop, 1.0, START + 3.5)
    finally:
        loop.close()
    assert [message for _, message in ticks] == ["Count: 0", "Count: 1", "Count: 2", "Count: 3"]
    assert [when for when, _ in ticks][1:] == pytest.approx([START + 1, START + 2, START + 3])


# -- the listener ------------------------------------------------------------------


def test_open_listener_is_non_blocking_and_reuses_addresses() -> None:
    with demo.open_listener("127.0.0.1", 0) as listener:
        assert listener.gettimeout() == 0
        assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        host, port = listener.getsockname()
        assert host == "127.0.0.1"
        assert port > 0


def test_open_listener_on_a_busy_port_raises_and_leaks_nothing() -> None:
    with demo.open_listener("127.0.0.1", 0) as busy:
        port = busy.getsockname()[1]
        with pytest.raises(OSError) as info:
            demo.open_listener("127.0.0.1", port)
        assert info.value.errno == errno.EADDRINUSE


# -- the program, on a real loop with real sockets ----------------------------------


class LoopTypes(logging.Handler):
    """Records the type of the running loop each time the program logs."""

    def __init__(self) -> None:
        super().__init__()
        self.types: set[type] = set()

    def emit(self, record: logging.LogRecord) -> None:
        self.types.add(type(asyncio.get_running_loop()))


@pytest.fixture
def demo_log(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    """The program's log messages so far (a function), captured at DEBUG."""
    caplog.set_level(logging.DEBUG, logger="loopy.demo")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "loopy.demo"]


def connect(port: int) -> tuple[socket.socket, str]:
    """A client connected to the program, and its address as the program logs it."""
    client = socket.create_connection(("127.0.0.1", port))
    return client, str(client.getsockname())


def reset(client: socket.socket) -> None:
    """Close ``client`` with a RST instead of a FIN."""
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Let the loop run until ``condition()`` holds; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.002)


def run_program(
    loop: Any,
    body: Callable[[demo.Program, int], Awaitable[None]],
    *,
    interval: float = 60.0,
    max_log_bytes: int = 200,
) -> demo.Program:
    """Run the program on ``loop`` while ``body(program, port)`` plays the clients.

    The body ends the program (``program.stop()`` or a signal) and returns
    once it has finished.
    """
    listener = demo.open_listener("127.0.0.1", 0)
    program = demo.Program(listener, interval=interval, max_log_bytes=max_log_bytes)
    types = LoopTypes()
    logging.getLogger("loopy.demo").addHandler(types)

    async def scenario() -> None:
        task = asyncio.get_running_loop().create_task(program.run())
        try:
            await body(program, listener.getsockname()[1])
            await asyncio.wait_for(task, 5.0)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    try:
        loop.run_until_complete(scenario())
    finally:
        logging.getLogger("loopy.demo").removeHandler(types)
        listener.close()
    # The program ran on loopy's loop, and only there.
    assert types.types == {loopy.Loop}
    assert listener.fileno() == -1, "the program closes its listener"
    return program


def test_the_program_logs_connections_and_data(loop: Any, demo_log: Any) -> None:
    async def clients(program: demo.Program, port: int) -> None:
        one, one_addr = connect(port)
        with one:
            await wait_until(lambda: f"Accept from {one_addr}" in demo_log())
            one.sendall(b"hello from one connection!\n")
            await wait_until(lambda: any(m.startswith("Recvd") for m in demo_log()))
            two, two_addr = connect(port)
            with two:
                await wait_until(lambda: f"Accept from {two_addr}" in demo_log())
                two.sendall(b"hello from another!\n")
                await wait_until(
                    lambda: f"Recvd (from {two_addr}): b'hello from another!\\n'" in demo_log()
                )
            await wait_until(lambda: f"Closed {two_addr}" in demo_log())
        await wait_until(lambda: f"Closed {one_addr}" in demo_log())
        assert not program.connections
        program.stop()
        program.stop()  # twice is harmless
        state["addrs"] = (one_addr, two_addr)

    state: dict[str, Any] = {}
    run_program(loop, clients)
    one_addr, two_addr = state["addrs"]
    log = demo_log()
    assert log[0].startswith("Event loop: loopy.loop.Loop <Loop running=True")
    assert log[1].startswith("Listening on ('127.0.0.1', ")
    assert "Count: 0" in log
    assert [m for m in log[2:] if not m.startswith("Count: ")] == [
        f"Accept from {one_addr}",
        f"Recvd (from {one_addr}): b'hello from one connection!\\n'",
        f"Accept from {two_addr}",
        f"Recvd (from {two_addr}): b'hello from another!\\n'",
        f"Closed {two_addr}",
        f"Closed {one_addr}",
        "Shutting down (stop)",
    ]


def test_the_program_ticks_while_serving(loop: Any, demo_log: Any) -> None:
    async def clients(program: demo.Program, port: int) -> None:
        client, _ = connect(port)
        with client:
            await wait_until(lambda: "Count: 3" in demo_log())
            client.sendall(b"tick tock")
            await wait_until(lambda: "Count: 6" in demo_log())
        program.stop()

    run_program(loop, clients, interval=0.01)
    counts = [m for m in demo_log() if m.startswith("Count: ")]
    assert counts == [f"Count: {k}" for k in range(len(counts))]
    assert any(m.startswith("Recvd") for m in demo_log())


def test_a_reset_is_logged_as_such(loop: Any, demo_log: Any) -> None:
    async def clients(program: demo.Program, port: int) -> None:
        client, addr = connect(port)
        client.sendall(b"half a message")
        await wait_until(lambda: f"Recvd (from {addr}): b'half a message'" in demo_log())
        reset(client)
        await wait_until(lambda: f"Reset {addr}" in demo_log())
        assert f"Closed {addr}" not in demo_log()
        program.stop()

    run_program(loop, clients)


def test_long_reads_are_cut_and_reads_are_at_most_64k(loop: Any, demo_log: Any) -> None:
    total = 1_000_000

    async def clients(program: demo.Program, port: int) -> None:
        client, addr = connect(port)
        with client:
            client.setblocking(False)
            await asyncio.get_running_loop().sock_sendall(client, b"\xaa" * total)
        await wait_until(lambda: f"Closed {addr}" in demo_log())
        program.stop()

    run_program(loop, clients, max_log_bytes=3)
    sizes = []
    for message in demo_log():
        if message.startswith("Recvd"):
            cut = re.fullmatch(r"Recvd \(from .*\): b'(.*)' \.\.\. \((\d+) bytes\)", message)
            if cut:
                assert cut[1] == "\\xaa" * 3
                sizes.append(int(cut[2]))
            else:  # a read of 3 bytes or less is not cut
                sizes.append(len(ast.literal_eval(message.partition("): ")[2])))
    assert sum(sizes) == total
    assert max(sizes) <= demo.READ_SIZE == 65536


def test_a_silent_client_blocks_nobody(loop: Any, demo_log: Any) -> None:
    async def clients(program: demo.Program, port: int) -> None:
        silent, _ = connect(port)
        with silent:
            chatty, addr = connect(port)
            with chatty:
                chatty.sendall(b"\x00binary\xff")
                await wait_until(lambda: f"Recvd (from {addr}): b'\\x00binary\\xff'" in demo_log())
        program.stop()

    run_program(loop, clients)


def test_a_signal_shuts_the_program_down_and_closes_connections(loop: Any, demo_log: Any) -> None:
    async def clients(program: demo.Program, port: int) -> None:
        one, one_addr = connect(port)
        two, two_addr = connect(port)
        with one, two:
            await wait_until(lambda: len(program.connections) == 2)
            signal.raise_signal(signal.SIGINT)
            await wait_until(lambda: f"Closed {one_addr}" in demo_log())
            await wait_until(lambda: f"Closed {two_addr}" in demo_log())
            # The program closed its side: the clients read end-of-file.
            assert one.recv(10) == b""
            assert two.recv(10) == b""
        log = demo_log()
        assert log[-3] == "Shutting down (SIGINT)"
        assert set(log[-2:]) == {f"Closed {one_addr}", f"Closed {two_addr}"}

    run_program(loop, clients)
    # The program put the default handlers back.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_sigterm_shuts_the_program_down(loop: Any, demo_log: Any) -> None:
    async def clients(program: demo.Program, port: int) -> None:
        await wait_until(lambda: "Count: 0" in demo_log())
        signal.raise_signal(signal.SIGTERM)

    run_program(loop, clients)
    assert demo_log()[-1] == "Shutting down (SIGTERM)"


def test_a_read_error_closes_only_that_connection(
    loop: Any, demo_log: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_recv = loop.sock_recv

    async def failing_recv(sock: socket.socket, nbytes: int) -> bytes:
        data: bytes = await real_recv(sock, nbytes)
        if data == b"fail":
            raise OSError(errno.EIO, "Input/output error")
        return data

    monkeypatch.setattr(loop, "sock_recv", failing_recv)

    async def clients(program: demo.Program, port: int) -> None:
        bad, bad_addr = connect(port)
        good, good_addr = connect(port)
        with bad, good:
            bad.sendall(b"fail")
            await wait_until(lambda: any(m.startswith(f"Error on {bad_addr}") for m in demo_log()))
            assert bad.recv(10) == b""  # closed by the program
            good.sendall(b"still here")
            await wait_until(lambda: f"Recvd (from {good_addr}): b'still here'" in demo_log())
        program.stop()

    run_program(loop, clients)


def test_accept_errors_pause_accepting_and_log_once(
    vloop: Any, demo_log: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Five failures (one of them a connection that vanished while queued),
    # a success, then two failures again.
    real_accept = vloop.sock_accept
    script = [errno.EMFILE, errno.ENFILE, errno.ECONNABORTED, errno.EMFILE, errno.EMFILE]
    script += [0, errno.ENOBUFS, errno.ENOBUFS]
    attempts: list[float] = []

    async def scripted_accept(sock: socket.socket) -> tuple[socket.socket, Any]:
        attempts.append(vloop.time())
        code = script.pop(0) if script else 0
        if code:
            raise OSError(code, f"error {code}")
        return await real_accept(sock)  # type: ignore[no-any-return]

    monkeypatch.setattr(vloop, "sock_accept", scripted_accept)

    async def clients(program: demo.Program, port: int) -> None:
        client, addr = connect(port)
        with client:
            await wait_until(lambda: f"Accept from {addr}" in demo_log(), timeout=60)
            await wait_until(lambda: not script, timeout=60)
        program.stop()

    run_program(vloop, clients)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # once per run of failures, not once per attempt
    assert warnings[0].startswith("Cannot accept ([Errno 24] error 24): pausing accepts")
    assert warnings[1].startswith("Cannot accept ([Errno 105] error 105)")
    # Each failure but ECONNABORTED pauses accepting for ACCEPT_PAUSE.
    gaps = [round(b - a, 9) for a, b in itertools.pairwise(attempts)]
    assert gaps[:5] == [0.5, 0.5, 0.0, 0.5, 0.5]


def test_a_failing_ticker_stops_the_program_and_raises(
    loop: Any, demo_log: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken_tick(interval: float) -> None:
        raise RuntimeError("tick failed")

    monkeypatch.setattr(demo, "tick", broken_tick)

    async def clients(program: demo.Program, port: int) -> None:
        pass  # the program stops on its own

    with pytest.raises(RuntimeError, match="tick failed"):
        run_program(loop, clients)
    assert demo_log()[-1] == "Shutting down (error)"


def test_stop_before_run_does_nothing() -> None:
    with demo.open_listener("127.0.0.1", 0) as listener:
        demo.Program(listener).stop()


def test_a_connection_cancelled_before_its_first_step_is_closed(loop: Any) -> None:
    """Shutdown right after an accept: the connection's task never ran, its socket closes."""
    listener = demo.open_listener("127.0.0.1", 0)
    client = socket.create_connection(listener.getsockname())
    program = demo.Program(listener)

    async def main() -> socket.socket:
        acceptor = asyncio.ensure_future(program._accept_forever())
        await asyncio.sleep(0)  # the acceptor's first step accepts the waiting client
        (task,) = program.connections
        conn: socket.socket = task.get_coro().cr_frame.f_locals["conn"]
        task.cancel()  # before the connection's task ever ran
        acceptor.cancel()
        await asyncio.gather(task, acceptor, return_exceptions=True)
        return conn

    try:
        conn = loop.run_until_complete(main())
        assert conn.fileno() == -1
    finally:
        client.close()
        listener.close()
