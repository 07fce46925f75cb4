"""The tour's exercise solutions (``docs/solutions/``) do what their exercises ask.

Each solution file is imported by path and checked deterministically: on a
virtual clock where time matters, and by counting (callbacks, iterations,
``select()`` calls) rather than by timing.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import math
import os
import re
import signal
import socket
import ssl
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import trustme

import loopy
from loopy.futures import Future
from loopy.tasks import Task
from tests.helpers import VirtualClock, iterations, make_loop, pending_timers, run

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "docs" / "solutions"


@functools.cache
def solution(name: str) -> ModuleType:
    """Import ``docs/solutions/<name>.py`` (once) as module ``tour_solutions.<name>``."""
    path = SOLUTIONS / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"tour_solutions.{name}", path)
    assert spec is not None, path
    assert spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_every_solution_file_is_tested_here() -> None:
    files = {path.stem for path in SOLUTIONS.glob("*.py")}
    tested = set(re.findall(r'solution\("(\w+)"\)', Path(__file__).read_text()))
    assert files, "no solution files"
    assert sorted(files - tested) == []
    assert sorted(tested - files) == []


# -- chapter 1: why a selector -------------------------------------------------


def test_ready_sockets_reports_only_those_with_data() -> None:
    ready_sockets = solution("ch01_selector").ready_sockets
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        ends = [a for a, _ in pairs]
        assert ready_sockets(ends) == []
        pairs[2][1].send(b"x")
        pairs[0][1].send(b"y")
        assert ready_sockets(ends) == [ends[0], ends[2]]
        assert ends[2].recv(1) == b"x"  # nothing was read by ready_sockets
        assert ready_sockets(ends) == [ends[0]]
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_echo_rounds_serves_several_sockets_without_threads() -> None:
    echo_rounds = solution("ch01_selector").echo_rounds
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        servers = [a for a, _ in pairs]
        for sock in servers:
            sock.setblocking(False)
        pairs[0][1].send(b"one")
        pairs[2][1].send(b"three")
        assert echo_rounds(servers, rounds=1) == len(b"one") + len(b"three")
        assert pairs[0][1].recv(10) == b"one"
        assert pairs[2][1].recv(10) == b"three"
        for _, client in pairs:
            client.close()
        # Every peer is gone: each socket reads EOF once and is forgotten.
        assert echo_rounds(servers, rounds=5) == 0
    finally:
        for a, b in pairs:
            a.close()
            b.close()


# -- chapter 2: one iteration --------------------------------------------------


def test_call_every_keeps_its_cadence_however_long_the_callback_takes(vloop: Any) -> None:
    call_every = solution("ch02_iteration").call_every
    clock = vloop.virtual_clock
    start = clock.now
    times: list[float] = []

    def slow() -> None:
        times.append(clock.now - start)
        clock.advance(0.3)  # the callback "works" for 0.3 s
        if len(times) == 4:
            repeater.cancel()
            vloop.stop()

    repeater = call_every(vloop, 1.0, slow)
    vloop.run_forever()
    # call_later(1.0) after each run would have given 1, 2.3, 3.6, 4.9.
    assert times == [1.0, 2.0, 3.0, 4.0]


def test_call_every_skips_the_deadlines_it_missed(vloop: Any) -> None:
    call_every = solution("ch02_iteration").call_every
    clock = vloop.virtual_clock
    start = clock.now
    times: list[float] = []

    def callback() -> None:
        times.append(clock.now - start)
        if len(times) == 1:
            clock.advance(2.5)  # blocked past the deadlines 2 and 3
        if len(times) == 3:
            repeater.cancel()
            vloop.stop()

    repeater = call_every(vloop, 1.0, callback)
    vloop.run_forever()
    assert times == [1.0, 4.0, 5.0]
    assert all(handle.cancelled() for handle in pending_timers(vloop))


def test_a_busy_callback_chain_polls_the_selector_on_asyncio_not_on_loopy() -> None:
    module = solution("ch02_iteration")
    chain = 200
    for make in (
        lambda selector: loopy.Loop(selector=selector),
        lambda selector: loopy.Loop(selector=selector, tasks="loopy"),
    ):
        selector = module.CountingSelector()
        loop = make(selector)
        try:
            assert module.polls_during_chain(loop, selector, chain) < 5
            # One more watched descriptor, and loopy polls every iteration.
            a, b = socket.socketpair()
            loop.add_reader(a, lambda: None)
            assert module.polls_during_chain(loop, selector, chain) >= chain
            loop.remove_reader(a)
            a.close()
            b.close()
        finally:
            loop.close()
    selector = module.CountingSelector()
    loop = asyncio.SelectorEventLoop(selector)
    try:
        assert module.polls_during_chain(loop, selector, chain) >= chain
    finally:
        loop.close()


def test_skipping_selector_spares_asyncio_the_polls_but_not_the_io() -> None:
    module = solution("ch02_iteration")
    counting = module.CountingSelector()
    skipping = module.SkippingSelector(counting)
    loop = asyncio.SelectorEventLoop(skipping)
    a, b = socket.socketpair()
    try:
        assert module.polls_during_chain(loop, counting, 200) < 5
        assert skipping.skipped >= 200
        # With a socket registered, every poll is real, and data arrives.
        received: list[bytes] = []
        a.setblocking(False)
        loop.add_reader(a, lambda: received.append(a.recv(10)))
        b.send(b"ping")
        assert module.polls_during_chain(loop, counting, 50) >= 50
        assert received == [b"ping"]
        loop.remove_reader(a)
    finally:
        a.close()
        b.close()
        loop.close()


# -- chapter 3: handles --------------------------------------------------------


def test_debouncer_runs_once_after_the_last_call(vloop: Any) -> None:
    Debouncer = solution("ch03_handles").Debouncer
    clock = vloop.virtual_clock
    start = clock.now
    calls: list[tuple[float, str]] = []
    debounced = Debouncer(vloop, 0.5, lambda word: calls.append((clock.now - start, word)))
    replaced: list[asyncio.TimerHandle] = []

    def trigger(word: str) -> None:
        if debounced.timer is not None:
            replaced.append(debounced.timer)
        debounced(word)

    for when, word in ((0.0, "a"), (0.3, "b"), (0.6, "c")):
        vloop.call_at(start + when, trigger, word)
    vloop.call_at(start + 5, vloop.stop)
    vloop.run_forever()
    assert calls == [(pytest.approx(1.1), "c")]
    assert len(replaced) == 2
    assert all(handle.cancelled() for handle in replaced)


def test_debouncer_cancel_drops_the_pending_call(vloop: Any) -> None:
    Debouncer = solution("ch03_handles").Debouncer
    calls: list[str] = []
    debounced = Debouncer(vloop, 0.5, calls.append)
    debounced("x")
    debounced.cancel()
    vloop.call_later(2, vloop.stop)
    vloop.run_forever()
    assert calls == []


def test_a_cancelled_handle_never_runs_even_when_already_queued(any_loop: Any) -> None:
    cancel_a_queued_sibling = solution("ch03_handles").cancel_a_queued_sibling
    assert cancel_a_queued_sibling(any_loop) == ["a"]


# -- chapter 4: futures and await ----------------------------------------------


def test_done_callbacks_run_after_set_result_returns(loop: Any) -> None:
    when_callbacks_run = solution("ch04_futures").when_callbacks_run
    assert when_callbacks_run(loop) == ["set_result returned", "callback sees 42"]


def test_drive_sends_answers_and_throws_errors_into_a_coroutine() -> None:
    module = solution("ch04_futures")
    Box, drive = module.Box, module.drive
    seen: list[str] = []

    async def inner() -> int:
        value: int = await Box("b")
        return value * 10

    async def program() -> int:
        a: int = await Box("a")
        b = await inner()  # the box travels up through this await too
        try:
            await Box("missing")
        except KeyError:
            seen.append("caught")
        return a + b

    answers = {"a": 1, "b": 2}

    def answer(box: Any) -> int:
        seen.append(box.name)
        return answers[box.name]

    assert drive(program(), answer) == 21
    assert seen == ["a", "b", "missing", "caught"]


# -- chapter 5: tasks ----------------------------------------------------------


def test_step_counter_counts_one_step_per_suspension() -> None:
    StepCounter = solution("ch05_tasks").StepCounter
    loop = make_loop("loopy-own", virtual=True)
    try:

        async def three_yields() -> None:
            for _ in range(3):
                await asyncio.sleep(0)

        async def one_future() -> None:
            await asyncio.sleep(5)

        for coro, steps in ((three_yields(), 4), (one_future(), 2)):
            task = loop.create_task(coro)
            counter = StepCounter(task)
            loop.add_instrument(counter)
            loop.run_until_complete(task)
            loop.remove_instrument(counter)
            assert counter.steps == steps
    finally:
        loop.close()


def test_mini_task_drives_coroutines_through_futures_yields_and_errors(any_vloop: Any) -> None:
    MiniTask = solution("ch05_tasks").MiniTask
    clock = any_vloop.virtual_clock
    start = clock.now

    async def work() -> tuple[float, str]:
        await asyncio.sleep(0)
        await asyncio.sleep(2)
        future = any_vloop.create_future()
        any_vloop.call_later(1, future.set_result, "from a timer")
        value = await future
        failing = any_vloop.create_future()
        any_vloop.call_soon(failing.set_exception, KeyError("thrown in"))
        try:
            await failing
        except KeyError:
            pass
        return clock.now - start, value

    mini = MiniTask(any_vloop, work())
    assert any_vloop.run_until_complete(mini.result) == (3.0, "from a timer")
    assert mini.steps == 5

    async def broken() -> None:
        await asyncio.sleep(0)
        raise ValueError("inside")

    mini = MiniTask(any_vloop, broken())
    with pytest.raises(ValueError, match="inside"):
        any_vloop.run_until_complete(mini.result)

    # A bare yield goes back through the loop: other callbacks run in between.
    log: list[str] = []

    async def yielding() -> None:
        for i in range(3):
            log.append(f"step {i}")
            await asyncio.sleep(0)

    def tick(n: int) -> None:
        log.append("tick")
        if n:
            any_vloop.call_soon(tick, n - 1)

    mini = MiniTask(any_vloop, yielding())
    any_vloop.call_soon(tick, 2)
    any_vloop.run_until_complete(mini.result)
    assert log == ["step 0", "tick", "step 1", "tick", "step 2", "tick"]


# -- chapter 6: cancellation ---------------------------------------------------


def test_guard_keeps_the_work_running_when_the_waiter_is_cancelled(any_vloop: Any) -> None:
    guard = solution("ch06_cancellation").guard
    loop = any_vloop

    async def work() -> str:
        await asyncio.sleep(3)
        return "finished"

    async def main() -> None:
        inner = loop.create_task(work())
        waiter = loop.create_task(_await(guard(inner)))
        loop.call_later(1, waiter.cancel)
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert not inner.done()
        assert await inner == "finished"
        # Without cancellation the outcome is copied, errors included.
        assert await guard(work()) == "finished"
        with pytest.raises(ZeroDivisionError):
            await guard(_divide_by_zero())
        # Cancelling the work itself cancels the guard.
        inner = loop.create_task(work())
        outer = guard(inner)
        loop.call_later(1, inner.cancel)
        with pytest.raises(asyncio.CancelledError):
            await outer

    run(loop, main(), timeout=100)  # virtual seconds


async def _await(awaitable: Any) -> Any:
    return await awaitable


async def _divide_by_zero() -> None:
    await asyncio.sleep(0)
    raise ZeroDivisionError("on purpose")


def test_deadline_turns_its_own_cancellation_into_timeout_error(any_vloop: Any) -> None:
    Deadline = solution("ch06_cancellation").Deadline
    loop = any_vloop
    clock = loop.virtual_clock

    async def main() -> None:
        start = clock.now
        with pytest.raises(TimeoutError):
            async with Deadline(1):
                await asyncio.sleep(10)
        assert clock.now - start == 1
        task = asyncio.current_task()
        assert task is not None
        assert task.cancelling() == 0
        async with Deadline(10) as deadline:
            await asyncio.sleep(1)
        assert not deadline.expired
        assert clock.now - start == 2

    run(loop, main())


def test_deadline_lets_someone_elses_cancellation_through(any_vloop: Any) -> None:
    Deadline = solution("ch06_cancellation").Deadline
    loop = any_vloop

    async def body() -> None:
        async with Deadline(10):
            await asyncio.sleep(100)

    async def body_with_deadline_at_one() -> None:
        async with Deadline(1):
            await asyncio.sleep(100)

    async def main() -> None:
        task = loop.create_task(body())
        loop.call_later(1, task.cancel)
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()
        # Someone cancels at the very moment the deadline expires: two
        # requests, ours is taken back, theirs stands.  A cancellation.
        task = loop.create_task(body_with_deadline_at_one())
        loop.call_later(1, task.cancel)
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()

    run(loop, main())


# -- chapter 7: the debugger ---------------------------------------------------


def test_a_breakpoint_in_task_step_is_hit_once_per_step_in_the_loopy_mode() -> None:
    step_calls = solution("ch07_debugger").step_calls
    assert step_calls("loopy") == 4
    assert step_calls("asyncio") == 0


def test_the_classes_each_task_mode_hands_out() -> None:
    classes_handed_out = solution("ch07_debugger").classes_handed_out
    own = classes_handed_out("loopy")
    assert own["future type"] is Future
    assert own["future __class__"] is asyncio.Future
    assert own["isinstance(future, asyncio.Future)"]
    assert own["task type"] is Task
    assert own["isinstance(task, asyncio.Task)"]
    default = classes_handed_out("asyncio")
    assert default["future type"] is asyncio.Future
    assert default["task type"] is asyncio.Task


# -- chapter 8: sockets --------------------------------------------------------


def test_recv_exactly_reassembles_a_message_sent_in_pieces(
    vloop: Any, pair: tuple[socket.socket, socket.socket]
) -> None:
    recv_exactly = solution("ch08_sockets").recv_exactly
    a, b = pair

    async def main() -> None:
        for i, piece in enumerate((b"hel", b"lo wo", b"rld!!")):
            vloop.call_later(i + 1, b.send, piece)
        assert await recv_exactly(vloop, a, 11) == b"hello world"
        assert await recv_exactly(vloop, a, 2) == b"!!"
        b.send(b"short")
        vloop.call_later(1, b.close)
        with pytest.raises(asyncio.IncompleteReadError) as caught:
            await recv_exactly(vloop, a, 10)
        assert caught.value.partial == b"short"

    run(vloop, main())


def test_recv_or_none_leaves_no_registration_behind(
    vloop: Any, pair: tuple[socket.socket, socket.socket]
) -> None:
    recv_or_none = solution("ch08_sockets").recv_or_none
    a, b = pair

    async def main() -> None:
        start = vloop.time()
        assert await recv_or_none(vloop, a, 10, timeout=2) is None
        assert vloop.time() - start == 2
        await iterations(3)
        assert a.fileno() not in vloop._selector.get_map()
        vloop.call_later(1, b.send, b"late")
        assert await recv_or_none(vloop, a, 10, timeout=2) == b"late"

    run(vloop, main())


# -- chapter 9: transports and protocols ---------------------------------------


def test_byte_counter_counts_everything_the_peer_sent(
    loop: Any, pair: tuple[socket.socket, socket.socket]
) -> None:
    ByteCounter = solution("ch09_transports").ByteCounter
    a, b = pair
    size = 300_000

    async def main() -> None:
        _transport, counter = await loop.create_connection(lambda: ByteCounter(loop), sock=a)
        await loop.sock_sendall(b, b"x" * size)
        b.close()
        received, calls = await counter.totals
        assert received == size
        assert calls >= math.ceil(size / 65536)  # one recv takes at most 64 KiB

    run(loop, main())


def test_water_marks_pause_then_resume_the_writer(
    loop: Any, pair: tuple[socket.socket, socket.socket]
) -> None:
    fill_then_drain = solution("ch09_transports").fill_then_drain
    a, b = pair
    size = 8 * 1024 * 1024  # far more than the kernel's socket buffers hold
    after_write, at_end, received = run(loop, fill_then_drain(loop, a, b, size))
    assert received == size
    assert len(after_write) == 1
    assert after_write[0][0] == "pause"
    assert after_write[0][1] > 64 * 1024  # above the default high-water mark
    assert [event for event, _ in at_end] == ["pause", "resume"]
    assert at_end[1][1] <= 16 * 1024  # at or below the low-water mark


# -- chapter 10: streams -------------------------------------------------------


def test_a_stream_reader_fed_by_hand_reassembles_lines(loop: Any) -> None:
    lines_from_chunks = solution("ch10_streams").lines_from_chunks
    chunks = [b"he", b"llo\nwor", b"ld\n", b"!"]
    assert run(loop, lines_from_chunks(chunks)) == [b"hello\n", b"world\n", b"!"]


def test_drain_stops_a_writer_whose_peer_does_not_read(
    loop: Any, pair: tuple[socket.socket, socket.socket]
) -> None:
    drain_stalls = solution("ch10_streams").drain_stalls
    a, b = pair
    chunk, total = 64 * 1024, 128  # 8 MiB
    stalled_at, still, buffered, received = run(loop, drain_stalls(a, b, chunk, total))
    assert 0 < stalled_at < total
    assert still == stalled_at
    assert buffered > 64 * 1024
    assert received == chunk * total


@pytest.mark.parametrize(("chunk", "high"), [(64 * 1024, 64 * 1024), (300 * 1024, 16 * 1024)])
def test_the_write_buffer_passes_the_high_water_mark_by_less_than_one_write(
    any_loop: Any, chunk: int, high: int
) -> None:
    peak_buffer = solution("ch10_streams").peak_buffer
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    try:
        peak, received = run(any_loop, peak_buffer(a, b, chunk, high))
    finally:
        a.close()
        b.close()
    assert high < peak <= high + chunk
    assert received > peak


# -- chapter 11: the path of a byte --------------------------------------------


def test_one_byte_round_trip_is_four_callbacks(loop: Any) -> None:
    trace_one_byte = solution("ch11_byte").trace_one_byte
    steps = run(loop, trace_one_byte())
    assert len(steps) == 4, steps
    assert steps[0] == "io SocketTransport._read_data"
    assert steps[1].startswith("task-step Task echo")
    assert steps[2] == "io SocketTransport._read_data"
    assert steps[3].startswith("task-step Task")


def test_a_streams_round_trip_takes_one_more_iteration_than_protocols(loop: Any) -> None:
    round_trip_iterations = solution("ch11_byte").round_trip_iterations
    assert run(loop, round_trip_iterations()) == {"streams": 4, "protocols": 3}


# -- chapter 12: servers -------------------------------------------------------


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


def test_limiter_refuses_connections_beyond_its_limit(loop: Any) -> None:
    module = solution("ch12_servers")
    limiter = module.Limiter(_Echo, 2)

    async def client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", port)

    async def echoes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"ping\n")
        return await reader.readline() == b"ping\n"

    async def main() -> None:
        server = await loop.create_server(limiter, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        first, second, third = [await client(port) for _ in range(3)]
        assert await echoes(*first)
        assert await echoes(*second)
        assert await third[0].read() == module.BUSY  # then EOF
        assert limiter.refused == 1
        assert limiter.active == 2
        first[1].close()
        await first[1].wait_closed()
        while limiter.active == 2:  # the server sees the EOF an iteration or two later
            await asyncio.sleep(0)
        fourth = await client(port)
        assert await echoes(*fourth)
        for _, writer in (second, third, fourth):
            writer.close()
            await writer.wait_closed()
        server.close()
        await server.wait_closed()
        assert limiter.active == 0

    run(loop, main())


async def _hold_until_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()
    writer.close()


def test_wait_closed_waits_for_the_connections(any_loop: Any) -> None:
    close_then_wait = solution("ch12_servers").close_then_wait

    async def main() -> list[str]:
        server = await asyncio.start_server(_hold_until_eof, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await iterations()  # the server accepts
        events: list[str] = await close_then_wait(server, writer)
        await iterations()  # asyncio: the server's side of the connection closes too
        return events

    events = run(any_loop, main())
    if isinstance(any_loop, loopy.Loop) or sys.version_info >= (3, 12, 1):
        assert events == ["close() returned", "client closed", "wait_closed() returned"]
    else:  # asyncio 3.11: the listening socket is closed, that is enough
        assert events == ["close() returned", "wait_closed() returned", "client closed"]


# -- chapter 13: TLS -----------------------------------------------------------


@pytest.fixture(scope="module")
def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context) for "localhost", from a throwaway CA."""
    authority = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost", "127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    authority.configure_trust(client)
    return server, client


def test_the_layers_under_a_tls_protocol(
    loop: Any, tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    layers = solution("ch13_tls").layers
    server_context, client_context = tls_contexts

    async def main() -> None:
        server = await loop.create_server(_Echo, "127.0.0.1", 0, ssl=server_context)
        port = server.sockets[0].getsockname()[1]
        transport, _ = await loop.create_connection(
            asyncio.Protocol, "127.0.0.1", port, ssl=client_context, server_hostname="localhost"
        )
        assert layers(transport) == ["_SSLProtocolTransport", "SSLProtocol", "SocketTransport"]
        raw = transport._ssl_protocol._transport
        assert isinstance(raw.get_protocol(), asyncio.BufferedProtocol)
        transport.close()
        server.close()
        await server.wait_closed()
        # Without TLS, the protocol is handed loopy's transport directly.
        a, b = socket.socketpair()
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=a)
        assert layers(transport) == ["SocketTransport"]
        transport.close()
        b.close()
        await asyncio.sleep(0)

    run(loop, main())


def test_starttls_upgrades_a_plain_connection(
    loop: Any, tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    module = solution("ch13_tls")
    server_context, client_context = tls_contexts

    async def main() -> None:
        server = await asyncio.start_server(
            functools.partial(module.starttls_server, context=server_context), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        echo, version = await module.starttls_client(
            "127.0.0.1", port, client_context, "localhost", b"secret\n"
        )
        assert echo == b"secret\n"
        assert version.startswith("TLS")
        server.close()
        await server.wait_closed()

    run(loop, main())


# -- chapter 14: threads and signals -------------------------------------------


def test_a_signal_handler_runs_between_callbacks_never_inside_one(loop: Any) -> None:
    signal_between_callbacks = solution("ch14_wakeup").signal_between_callbacks
    before = signal.getsignal(signal.SIGUSR1)
    events = signal_between_callbacks(loop)
    assert [name for name, _ in events] == ["before kill", "after kill", "handler"]
    assert events[0][1] == events[1][1]  # the same callback, uninterrupted
    assert events[2][1] == events[1][1] + 2
    assert signal.getsignal(signal.SIGUSR1) == before


def test_run_in_thread_hands_results_and_errors_back_to_the_loop(loop: Any) -> None:
    run_in_thread = solution("ch14_wakeup").run_in_thread

    async def main() -> None:
        name = await run_in_thread(lambda: threading.current_thread().name)
        assert name == "run_in_thread"
        assert await run_in_thread(sum, [1, 2, 3]) == 6
        with pytest.raises(ZeroDivisionError):
            await run_in_thread(lambda: 1 / 0)

    run(loop, main())


# -- chapter 15: subprocesses --------------------------------------------------


CHILD = "import sys; print('out'); sys.stderr.write('err'); sys.exit(3)"


def test_collector_gets_output_errors_and_status_in_order(loop: Any) -> None:
    run_collecting = solution("ch15_subprocesses").run_collecting
    (out, err, status), events = run(loop, run_collecting(sys.executable, "-c", CHILD))
    assert (out, err, status) == (b"out\n", b"err", 3)
    assert events[0] == "connection_made"
    assert events[-1] == "connection_lost"
    assert sorted(events[1:-1]) == ["pipe 1 closed", "pipe 2 closed", "process_exited"]


@pytest.mark.parametrize("pidfd", [True, False], ids=["pidfd", "thread"])
def test_exit_is_watched_by_a_pidfd_or_by_a_thread(
    loop: Any, pidfd: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = solution("ch15_subprocesses")
    if pidfd and not hasattr(os, "pidfd_open"):
        pytest.skip("no pidfd_open on this system")
    if not pidfd:
        monkeypatch.setattr(loopy.subprocesses, "_open_pidfd", lambda pid: None)

    async def main() -> None:
        # The child waits for its stdin to close: it is running while we look.
        transport, protocol = await loop.subprocess_exec(
            lambda: module.Collector(loop), sys.executable, "-c", "import sys; sys.stdin.read()"
        )
        assert module.exit_watcher(transport) == ("pidfd" if pidfd else "thread")
        transport.get_pipe_transport(0).close()
        _out, _err, status = await protocol.finished
        assert status == 0
        for thread in threading.enumerate():  # a waiting thread ends right after reporting
            if thread.name.startswith("loopy-waitpid-"):
                thread.join(timeout=5)
        assert module.exit_watcher(transport) == "exited"
        transport.close()

    run(loop, main())


# -- chapter 16: watching it work ----------------------------------------------


def _callback_chain(loop: Any, n: int) -> None:
    """Run n callbacks, each scheduled by the one before."""
    finished = loop.create_future()

    def link(i: int) -> None:
        if i == n:
            finished.set_result(None)
        else:
            loop.call_soon(link, i + 1)

    loop.call_soon(link, 0)
    loop.run_until_complete(finished)


def test_poll_counter_sees_the_skipped_polls(loop: Any) -> None:
    PollCounter = solution("ch16_watching").PollCounter
    counter = PollCounter()
    loop.add_instrument(counter)
    _callback_chain(loop, 100)
    assert counter.iterations >= 100
    assert counter.polls < 5
    a, b = socket.socketpair()
    loop.add_reader(a, lambda: None)
    counter.iterations = counter.polls = 0
    _callback_chain(loop, 100)
    assert counter.polls == counter.iterations >= 100
    loop.remove_reader(a)
    a.close()
    b.close()


def test_slow_callbacks_are_named_with_their_duration(vloop: Any) -> None:
    SlowCallbacks = solution("ch16_watching").SlowCallbacks
    watcher = SlowCallbacks(threshold=0.1)
    vloop.add_instrument(watcher)
    clock = vloop.virtual_clock

    def quick() -> None:
        clock.advance(0.01)

    def sluggish() -> None:
        clock.advance(0.5)

    vloop.call_soon(quick)
    vloop.call_soon(sluggish)
    vloop.call_soon(vloop.stop)
    vloop.run_forever()
    assert [(name.rpartition(".")[2], took) for name, took in watcher.slow] == [("sluggish", 0.5)]


# -- chapter 17: asyncio's own code ----------------------------------------------


def test_sleep_fires_its_timer_in_one_iteration_and_resumes_in_the_next(any_vloop: Any) -> None:
    watch_sleep = solution("ch17_asyncio_code").watch_sleep
    start = any_vloop.time()
    seen = watch_sleep(any_vloop, 1)
    assert seen["events"] == [
        (1, "sleep starts"),
        (1, "call_later(1, _set_result_unless_cancelled)"),
        (2, "timer runs _set_result_unless_cancelled"),
        (3, "sleep returned"),
    ]
    assert seen["timer"].when() == start + 1
    assert not seen["cancelled"]


def test_a_cancelled_sleep_leaves_a_cancelled_timer_behind(any_vloop: Any) -> None:
    watch_sleep = solution("ch17_asyncio_code").watch_sleep
    start = any_vloop.time()
    seen = watch_sleep(any_vloop, 10, cancel_after=3)
    assert seen["events"] == [
        (1, "sleep starts"),
        (1, "call_later(10, _set_result_unless_cancelled)"),
        (4, "sleep cancelled"),
    ]
    assert seen["cancelled"]
    assert seen["timer"].cancelled()  # sleep's finally cancelled it; it never ran
    assert any_vloop.time() == start  # nobody waited for it


def test_gather_leaves_the_siblings_running_and_taskgroup_cancels_them(any_vloop: Any) -> None:
    first_failure = solution("ch17_asyncio_code").first_failure
    assert run(any_vloop, first_failure(use_taskgroup=False)) == [
        "1 a fails",
        "1 awaiter sees ValueError",
        "2 b done",
        "3 c done",
    ]
    log = run(any_vloop, first_failure(use_taskgroup=True))
    # (TaskGroup keeps its tasks in a set: the cancellation order is not fixed.)
    assert log[0] == "1 a fails"
    assert sorted(log[1:3]) == ["1 b cancelled", "1 c cancelled"]
    assert log[3:] == ["1 awaiter sees ExceptionGroup"]


def test_a_staggered_race_starts_attempts_delay_apart_and_cancels_the_losers(
    any_vloop: Any,
) -> None:
    staggered = solution("ch17_asyncio_code").staggered
    result, index, log = run(any_vloop, staggered([5, 1, 1], 2))
    assert (result, index) == ("attempt 1", 1)
    assert log == ["0 start 0", "2 start 1", "3 done 1", "3 cancel 0"]
    # The first attempt wins if it ends before the next one's turn.
    result, index, log = run(any_vloop, staggered([1, 1], 2))
    assert (result, index) == ("attempt 0", 0)
    assert log == ["0 start 0", "1 done 0"]


# -- chapter 18: Ctrl-C ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["asyncio", "loopy", "loopy-own"])
def test_ctrl_c_under_a_runner_cancels_main_then_raises_keyboard_interrupt(kind: str) -> None:
    interrupt_under_runner = solution("ch18_ctrl_c").interrupt_under_runner
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert interrupt_under_runner(functools.partial(make_loop, kind)) == [
        "main task cancelled",
        "Runner.run raised KeyboardInterrupt",
        "handler restored: True",
    ]


def test_ctrl_c_with_a_loop_handler_is_a_callback(any_loop: Any) -> None:
    interrupt_with_handler = solution("ch18_ctrl_c").interrupt_with_handler
    assert interrupt_with_handler(any_loop) == [
        "raise_signal returned",
        "handler runs as a callback",
    ]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_without_a_handler_leaves_the_loop_with_tasks_pending(any_loop: Any) -> None:
    interrupt_without_handler = solution("ch18_ctrl_c").interrupt_without_handler
    assert interrupt_without_handler(any_loop) == [
        "KeyboardInterrupt out of run_until_complete",
        "sleeper pending: True",
        "sleeper finished later: True",
    ]


# -- chapter 19: the three routes of an exception ---------------------------------


def test_the_three_routes_of_an_exception(any_loop: Any) -> None:
    three_routes = solution("ch19_exceptions").three_routes
    assert three_routes(any_loop) == [
        "handler: Exception in callback ['handle']",
        "next callback runs",
        "task done: True",
        "handler: Task exception was ['future']",
        "after gc.collect()",
        "handler: Fatal error: protocol.data_received() ['protocol', 'transport']",
        "connection_lost(ValueError)",
    ]


# -- chapter 20: tasks nobody holds, threads, stopping ----------------------------


def test_a_task_nobody_holds_is_collected_while_it_waits(any_loop: Any) -> None:
    forgotten_task = solution("ch20_ordering").forgotten_task
    assert forgotten_task(any_loop, keep=False) == [
        "coroutine closed by the collector",
        "Task was destroyed but it is pending!",
        "tasks left: 0",
    ]
    assert forgotten_task(any_loop, keep=True) == ["tasks left: 1"]


def _loop_on(kind: str, selector: Any, clock: Any) -> Any:
    """A loop of ``kind`` (see tests/helpers.py) on ``selector`` and the virtual ``clock``."""
    if kind == "asyncio":
        loop = asyncio.SelectorEventLoop(selector)
        loop.time = clock  # type: ignore[method-assign]
        return loop
    return loopy.Loop(
        selector=selector, clock=clock, tasks="asyncio" if kind == "loopy" else "loopy"
    )


@pytest.mark.parametrize("kind", ["asyncio", "loopy", "loopy-own"])
def test_call_soon_from_a_thread_waits_for_the_next_wake_up(kind: str) -> None:
    module = solution("ch20_ordering")
    for threadsafe, expected in ((False, 10.0), (True, 0.0)):
        clock = VirtualClock()
        selector = module.ThreadWhileWaiting(clock)
        loop = _loop_on(kind, selector, clock)
        try:
            assert module.when_thread_callback_runs(loop, selector, threadsafe) == expected
        finally:
            loop.close()


def test_stop_finishes_the_iteration_and_stop_before_run_gives_one(any_vloop: Any) -> None:
    stop_then_run = solution("ch20_ordering").stop_then_run
    start = any_vloop.time()
    assert stop_then_run(any_vloop) == [
        "a calls stop()",
        "c, queued after a",
        "run_forever returned",
        "b, scheduled by a",
        "run_forever returned",
    ]
    assert any_vloop.time() == start  # the 5 s timer was not waited for


# -- chapter 21: cancellation races and timers ------------------------------------

#: Python 3.12 rewrote wait_for on top of asyncio.timeout (local flag; the
#: coordinator may move it to loopy/compat.py).
WAIT_FOR_IS_TIMEOUT = sys.version_info >= (3, 12)


def test_wait_for_on_3_11_can_swallow_a_cancellation(any_loop: Any) -> None:
    cancel_while_wait_for_finishes = solution("ch21_races").cancel_while_wait_for_finishes
    log = run(any_loop, cancel_while_wait_for_finishes())
    if WAIT_FOR_IS_TIMEOUT:
        assert log == ["wait_for raised CancelledError", "outer cancelled"]
    else:
        assert log == [
            'wait_for returned "inner\'s result"',
            "outer goes on; cancelling() = 1",
            "outer finished normally",
        ]


def test_a_swallowed_cancellation_hides_the_timeout(any_vloop: Any) -> None:
    swallowed_inside_timeout = solution("ch21_races").swallowed_inside_timeout
    assert run(any_vloop, swallowed_inside_timeout(swallow=True)) == [
        "1 block sees CancelledError",
        "2 block ran to its end",
        "cancelling() = 0",
    ]
    assert run(any_vloop, swallowed_inside_timeout(swallow=False)) == [
        "1 block sees CancelledError",
        "1 TimeoutError",
        "cancelling() = 0",
    ]


@pytest.mark.parametrize("kind", ["asyncio", "loopy", "loopy-own"])
def test_timers_run_up_to_a_clock_resolution_early(kind: str) -> None:
    module = solution("ch21_races")
    clock = VirtualClock()
    selector = module.EarlyWaker(clock, early=0.0)
    loop = _loop_on(kind, selector, clock)
    try:
        # The resolution both loops allow for (asyncio's _run_once, loopy's timer store).
        resolution = time.get_clock_info("monotonic").resolution

        async def overslept(sleep: Any, delay: float) -> float:
            before = loop.time()
            await sleep(delay)
            return float(loop.time() - before - delay)

        selector.early = resolution / 2
        assert run(loop, overslept(asyncio.sleep, 1)) < 0  # within the resolution: run
        assert run(loop, overslept(module.sleep_at_least, 1)) >= 0
        selector.early = resolution * 2
        assert run(loop, overslept(asyncio.sleep, 1)) >= 0  # too early: sleep again
    finally:
        loop.close()


# -- chapter 22: blocking calls, threads and child processes ----------------------


def test_a_blocking_step_delays_every_timer(any_vloop: Any) -> None:
    ticks_around_a_blocking_step = solution("ch22_blocking").ticks_around_a_blocking_step
    ticks = run(any_vloop, ticks_around_a_blocking_step(any_vloop.virtual_clock))
    assert ticks == [0.1, 0.65, 0.75, 0.85]


def test_cancelling_run_in_executor_leaves_the_thread_running(any_loop: Any) -> None:
    cancel_a_thread_job = solution("ch22_blocking").cancel_a_thread_job
    assert run(any_loop, cancel_a_thread_job()) == [
        "awaiting task cancelled",
        "job still running: True",
        "job finished in its thread",
        "shutdown_default_executor returned",
    ]


def test_wait_with_an_unread_pipe_stalls_and_communicate_does_not(any_loop: Any) -> None:
    wait_without_reading = solution("ch22_blocking").wait_without_reading
    size, limit = 1 << 20, 1 << 14
    outcome = run(any_loop, wait_without_reading(size, limit))
    assert outcome["reading paused"]
    assert 2 * limit < outcome["buffered"] < size
    assert outcome["child running"]
    assert outcome["returncode after kill"] == -signal.SIGKILL
    assert outcome["communicate read"] == size


# -- chapter 23: closing a TLS connection -----------------------------------------


def test_closing_tls_waits_for_a_silent_peer_until_the_shutdown_timeout(
    any_loop: Any, tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    close_against_a_silent_peer = solution("ch23_tls_close").close_against_a_silent_peer
    server_context, client_context = tls_contexts
    timeout = 0.2
    closed = run(
        any_loop, close_against_a_silent_peer(server_context, client_context, "close", timeout)
    )
    assert closed["connection_lost"] == "TimeoutError"
    assert closed["took"] >= timeout - time.get_clock_info("monotonic").resolution
    # abort() does not wait: with an hour's shutdown timeout, run()'s 10 s bound would catch it.
    aborted = run(
        any_loop, close_against_a_silent_peer(server_context, client_context, "abort", 3600)
    )
    assert aborted["connection_lost"] is None
