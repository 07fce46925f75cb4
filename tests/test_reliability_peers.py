"""Reliability, part 3: slow and hostile peers.

* a client that never reads: the echo server's write buffer stops at the
  high-water mark (plus at most one read), the server stops reading, the
  client's own sends stall; once it reads, every byte still comes back;
* a client flooding the ``loopy`` program with 100 MiB: its memory stays
  bounded, another client is still served, the ticks keep coming;
* a client that half-closes: what it sent before is delivered in full, then
  ``eof_received``, once, and the server may still answer;
* a client that resets the connection while the server has megabytes
  buffered for it: ``connection_lost`` once, with a ``ConnectionError``,
  nothing reported as unhandled, the descriptor closed.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import fcntl
import itertools
import random
import re
import socket
import struct
import termios
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.test_cli import Loopy, log_time
from tests.test_reliability import (
    KiB,
    MiB,
    catch_errors,
    difference,
    needs_proc,
    open_fds,
    pieces,
    reset,
    rss,
    run,
    same,
)

pytestmark = needs_proc

READ_SIZE = 64 * KiB  # what loopy's transports read at most at a time (MAX_READ_SIZE)
SMALL_BUFFER = 64 * KiB  # kernel socket buffers, so that the transport's buffer fills quickly


def small_buffers(sock: socket.socket) -> socket.socket:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
    sock.setblocking(False)
    return sock


def listener() -> socket.socket:
    """A listening socket whose connections get small kernel buffers."""
    sock = small_buffers(socket.socket())
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Let the loop run until ``condition()`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def wait_until_still(value: Callable[[], int], quiet: float = 0.2, polls: int = 20) -> int:
    """Wait until ``value()`` has not changed for ``quiet`` seconds and ``polls`` looks.

    Both, so that a process frozen for a while by a busy machine (no loop
    iteration, so no change either) does not pass for a settled value.
    Fails after 10 s; returns the value.
    """
    deadline = time.monotonic() + 10.0
    last, since, unchanged = value(), time.monotonic(), 0
    while time.monotonic() - since < quiet or unchanged < polls:
        assert time.monotonic() < deadline, "the value never settled"
        await asyncio.sleep(0.01)
        unchanged += 1
        if value() != last:
            last, since, unchanged = value(), time.monotonic(), 0
    return last


# ======================================================================
# A client that never reads
# ======================================================================


class BackpressureEcho(asyncio.Protocol):
    """An echo that stops reading while its writes back up (as a proper echo must)."""

    def __init__(self, seen: dict[str, Any]) -> None:
        self.seen = seen

    def connection_made(self, transport: Any) -> None:
        self.seen["transport"] = transport
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)
        self.seen["most_buffered"] = max(
            self.seen["most_buffered"], self.transport.get_write_buffer_size()
        )

    def pause_writing(self) -> None:
        self.seen["pauses"] += 1
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()

    def eof_received(self) -> bool:
        return False


@pytest.mark.parametrize("api", ["protocol", "streams"])
def test_a_client_that_never_reads_is_held_at_the_high_water_mark(loop: Any, api: str) -> None:
    payload = random.Random(11).randbytes(16 * MiB)
    errors = catch_errors(loop)
    seen: dict[str, Any] = {"most_buffered": 0, "pauses": 0, "in_drain": False}

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen["transport"] = transport = writer.transport
        try:
            while data := await reader.read(READ_SIZE):
                writer.write(data)
                buffered = transport.get_write_buffer_size()
                seen["most_buffered"] = max(seen["most_buffered"], buffered)
                seen["in_drain"] = True
                await writer.drain()
                seen["in_drain"] = False
        finally:
            writer.close()
            await writer.wait_closed()

    async def main() -> bytes:
        listening = listener()
        if api == "protocol":
            server = await loop.create_server(lambda: BackpressureEcho(seen), sock=listening)
        else:
            server = await asyncio.start_server(echo, sock=listening)
        with small_buffers(socket.socket()) as sock:
            await loop.sock_connect(sock, listening.getsockname())
            sent = [0]

            async def send() -> None:
                for piece in pieces(payload, random.Random(12)):
                    await loop.sock_sendall(sock, piece)
                    sent[0] += len(piece)
                sock.shutdown(socket.SHUT_WR)

            sender = loop.create_task(send())
            # The client writes and never reads: everything backs up, the
            # server stops reading, and the client's own sends stall.
            await wait_until(lambda: "transport" in seen and not seen["transport"].is_reading())
            stalled_at = await wait_until_still(lambda: sent[0])
            transport = seen["transport"]
            low, high = transport.get_write_buffer_limits()
            buffered = transport.get_write_buffer_size()
            assert stalled_at < len(payload)
            assert not sender.done()
            # Paused for writing: above the low-water mark (it would have
            # resumed below it), and never more than one read over the high one.
            assert low < buffered <= high + READ_SIZE
            assert seen["most_buffered"] <= high + READ_SIZE
            assert not transport.is_reading()  # the server stopped reading: memory bounded
            if api == "streams":
                assert seen["in_drain"]  # drain() is waiting
            else:
                assert seen["pauses"] >= 1
            # The client reads at last: everything comes back.
            received = bytearray()
            while data := await loop.sock_recv(sock, 1 * MiB):
                received += data
            await sender
        server.close()
        await server.wait_closed()
        return bytes(received)

    received = run(loop, main())
    assert same(received, payload), difference(received, payload)
    assert errors == []


# ======================================================================
# A client that floods the program
# ======================================================================


@pytest.fixture
def program() -> Iterator[Callable[..., Loopy]]:
    """``program(*args)``: the ``loopy`` program running; killed and reaped after the test."""
    started: list[Loopy] = []

    def start(*args: str) -> Loopy:
        started.append(Loopy(*args))
        return started[-1]

    yield start
    for process in started:
        process.close()


def connect(port: int) -> tuple[socket.socket, str]:
    """A blocking client of the program, and its address as the program logs it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    return sock, str(sock.getsockname())


def count_gaps(lines: list[str]) -> list[float]:
    """Seconds between consecutive ``Count:`` log lines."""
    times = [log_time(line) for line in lines if " Count: " in line]
    return [b - a for a, b in itertools.pairwise(times)]


FLOOD = 100 * MiB
#: Tolerances of the flood test, for a loaded two-core machine.
MAX_RSS_GROWTH = 100 * MiB  # the program reads 64 KiB at a time: it should grow by ~nothing
MAX_OTHER_LATENCY = 5.0  # seconds until the other client's bytes are logged
MAX_TICK_GAP = 1.0  # seconds between two Count lines (the interval is 0.1 s)


@pytest.mark.parametrize("tasks", ["asyncio", "loopy"])
def test_a_100_mib_flood_leaves_memory_bounded_others_served_and_ticks_going(
    program: Callable[..., Loopy], tasks: str, record_property: Any
) -> None:
    loopy = program("--interval", "0.1", "--max-log-bytes", "16", "--tasks", tasks)
    pid = loopy.proc.pid
    loopy.wait_for_ticks(1)
    baseline = rss(pid)
    flood, flood_addr = connect(loopy.port)
    other, other_addr = connect(loopy.port)
    flooding = threading.Event()  # the flood is under way
    asked = threading.Event()  # the other client has sent its bytes
    with flood, other:
        loopy.wait_for(re.escape(f"Accept from {other_addr}"))

        def send_flood() -> None:
            block = random.Random(13).randbytes(1 * MiB)
            with contextlib.suppress(OSError):  # the test failed and closed the socket
                for number in range(FLOOD // len(block)):
                    flood.sendall(block)
                    if number == 7:
                        # 8 MiB on their way; hold on until the other client
                        # has sent its bytes, so that they meet 92 MiB (some
                        # 1,500 reads) still to come, however busy the machine.
                        flooding.set()
                        asked.wait(30)
            flooding.set()

        started = time.monotonic()
        sender = threading.Thread(target=send_flood)
        sender.start()
        try:
            assert flooding.wait(30)
            loopy.wait_for(re.escape(f"Recvd (from {flood_addr}): ") + ".*")
            sent_other = time.monotonic()
            other.sendall(b"me too\n")
            asked.set()
            loopy.wait_for(
                re.escape(f"Recvd (from {other_addr}): b'me too\\n'"), timeout=MAX_OTHER_LATENCY
            )
            other_latency = time.monotonic() - sent_other
        finally:
            asked.set()
            sender.join(60)
        assert not sender.is_alive(), "the flood did not get through in 60 s"
        flood_seconds = time.monotonic() - started
        flood.shutdown(socket.SHUT_WR)
        loopy.wait_for(re.escape(f"Closed {flood_addr}"), timeout=30)
        loopy.wait_for_ticks(1)
    # VmHWM is the peak of the resident set: the worst moment of the flood.
    peak = rss(pid, "VmHWM")
    assert loopy.stop() == 0

    messages = loopy.messages()
    flood_reads = [
        index
        for index, message in enumerate(messages)
        if message.startswith(f"Recvd (from {flood_addr}): ")
    ]
    other_read = messages.index(f"Recvd (from {other_addr}): b'me too\\n'")
    sizes = []
    for index in flood_reads:
        text = messages[index].partition(": ")[2]
        cut = re.fullmatch(r"(b.*) \.\.\. \((\d+) bytes\)", text)
        if cut:
            assert len(eval_bytes(cut[1])) == 16  # --max-log-bytes 16
            sizes.append(int(cut[2]))
        else:
            sizes.append(len(eval_bytes(text)))
    gaps = count_gaps(loopy.lines)
    figures = {
        "flood_mib": FLOOD // MiB,
        "flood_s": round(flood_seconds, 2),
        "rss_growth_mib": round((peak - baseline) / MiB, 1),
        "other_latency_s": round(other_latency, 3),
        "flood_reads_after_other": sum(index > other_read for index in flood_reads),
        "max_tick_gap_s": round(max(gaps), 3),
        "reads": len(sizes),
    }
    for name, value in figures.items():
        record_property(name, value)
    print(f"\n100 MiB flood ({tasks} tasks): {figures}")
    assert sum(sizes) == FLOOD  # every byte read, and logged once
    assert max(sizes) <= READ_SIZE
    # The other client was served in the middle of the flood, not after it:
    # the program did not keep reading the flood while the other waited.
    assert flood_reads[0] < other_read < flood_reads[-1]
    assert peak - baseline < MAX_RSS_GROWTH
    assert max(gaps) < MAX_TICK_GAP
    assert "Traceback" not in "\n".join(loopy.lines)


def eval_bytes(text: str) -> bytes:
    value = ast.literal_eval(text)
    assert isinstance(value, bytes)
    return value


# ======================================================================
# A client that half-closes
# ======================================================================


def unread_bytes(transport: Any) -> int:
    """Bytes waiting in the kernel's receive queue of ``transport``'s socket."""
    fd = transport.get_extra_info("socket").fileno()
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0])


class HalfCloseRecorder(asyncio.Protocol):
    """Records what arrives and when EOF does; answers after EOF (the write side stays open)."""

    def __init__(self, start_paused: bool, rng: random.Random) -> None:
        loop = asyncio.get_running_loop()
        self.start_paused = start_paused
        self.rng = rng
        self.data = bytearray()
        self.events: list[tuple[str, int]] = []
        self.made = loop.create_future()
        self.lost = loop.create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        if self.start_paused:
            transport.pause_reading()
        self.made.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.data += data
        if self.rng.random() < 0.2:  # random pauses while the data is coming
            self.transport.pause_reading()
            asyncio.get_running_loop().call_soon(self.transport.resume_reading)

    def eof_received(self) -> bool:
        self.events.append(("eof", len(self.data)))
        self.transport.write(b"%d bytes" % len(self.data))
        self.transport.close()
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append(("lost", len(self.data)))
        self.lost.set_result(exc)


@pytest.mark.parametrize(
    ("size", "start_paused"),
    [(32 * KiB, True), (4 * MiB, False)],
    ids=["queued-before-reading", "while-reading"],
)
def test_a_half_close_delivers_the_rest_then_eof(loop: Any, size: int, start_paused: bool) -> None:
    """EOF comes after every byte sent before it, once; the answer still goes back.

    ``queued-before-reading``: the server is not reading while the client
    sends and shuts down its side, so data and EOF wait together in the
    kernel.  ``while-reading``: 4 MiB arrive while the server pauses and
    resumes at random, and the EOF comes behind them.
    """
    payload = random.Random(size).randbytes(size)
    errors = catch_errors(loop)
    protocols: list[HalfCloseRecorder] = []

    def factory() -> HalfCloseRecorder:
        protocols.append(HalfCloseRecorder(start_paused, random.Random(14)))
        return protocols[-1]

    async def main() -> bytes:
        server = await loop.create_server(factory, "127.0.0.1", 0)
        with socket.socket() as sock:
            sock.setblocking(False)
            await loop.sock_connect(sock, server.sockets[0].getsockname())
            for piece in pieces(payload, random.Random(15)):
                await loop.sock_sendall(sock, piece)
            sock.shutdown(socket.SHUT_WR)
            await wait_until(lambda: bool(protocols))
            protocol = protocols[0]
            await protocol.made
            if start_paused:
                await wait_until(lambda: unread_bytes(protocol.transport) == size)
                assert protocol.data == b""  # nothing read yet: all of it is queued
                protocol.transport.resume_reading()
            answer = bytearray()
            while data := await loop.sock_recv(sock, 1024):
                answer += data
            assert await protocol.lost is None
        server.close()
        await server.wait_closed()
        return bytes(answer)

    answer = run(loop, main())
    protocol = protocols[0]
    assert same(protocol.data, payload), difference(protocol.data, payload)
    assert protocol.events == [("eof", size), ("lost", size)]
    assert answer == b"%d bytes" % size
    assert errors == []


# ======================================================================
# A reset while the server has a big write buffered
# ======================================================================


@pytest.mark.parametrize("api", ["protocol", "streams"])
def test_a_reset_mid_write_loses_the_connection_once_quietly(loop: Any, api: str) -> None:
    payload = random.Random(16).randbytes(16 * MiB)
    errors = catch_errors(loop)
    seen: dict[str, Any] = {"lost": []}

    class BigWriter(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            seen["transport"] = transport
            transport.write(payload)

        def connection_lost(self, exc: BaseException | None) -> None:
            seen["lost"].append(exc)

    async def big_writer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen["transport"] = writer.transport
        writer.write(payload)
        try:
            await writer.drain()
        except ConnectionError as exc:
            seen["lost"].append(exc)  # drain() reports the reset
        finally:
            writer.close()

    async def main() -> None:
        listening = listener()
        if api == "protocol":
            server = await loop.create_server(BigWriter, sock=listening)
        else:
            server = await asyncio.start_server(big_writer, sock=listening)
        sock = small_buffers(socket.socket())
        try:
            await loop.sock_connect(sock, listening.getsockname())
            await loop.sock_recv(sock, 1)  # the write has begun
            await wait_until(lambda: "transport" in seen)
            seen["buffered at the reset"] = seen["transport"].get_write_buffer_size()
        finally:
            reset(sock)
        await wait_until(lambda: bool(seen["lost"]))
        for _ in range(5):  # a second connection_lost would come within a few iterations
            await asyncio.sleep(0)
        server.close()
        await server.wait_closed()  # the server let go of the connection too

    fds_before = open_fds()
    run(loop, main())
    transport = seen["transport"]
    assert seen["buffered at the reset"] > 8 * MiB  # the kernel took little of the 16 MiB
    assert len(seen["lost"]) == 1
    assert isinstance(seen["lost"][0], (ConnectionResetError, BrokenPipeError))
    assert errors == []  # a reset is the network's doing: nothing reported as unhandled
    assert transport.get_write_buffer_size() == 0
    assert transport.get_extra_info("socket").fileno() == -1
    assert open_fds() <= fds_before  # the accepted socket's descriptor is closed
