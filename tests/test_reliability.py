"""Reliability, part 1: nothing is lost, and the helpers the other parts share.

The reliability suite checks that loopy stays trustworthy under load, faults
and bad input.  It is split by theme:

* ``test_reliability.py`` (this file): byte-exact round trips through every
  I/O path, with the receiver pausing and resuming at random; what ``close()``
  and ``abort()`` still send;
* ``test_reliability_flood.py``: 2,000 concurrent connections to one server;
* ``test_reliability_peers.py``: slow and hostile peers (never reading,
  flooding, half-closing, resetting mid-write);
* ``test_reliability_shutdown.py``: signals during heavy I/O, and
  ``loop.close()`` giving back every file descriptor;
* ``test_reliability_fuzz.py``: random bytes, chunks and disconnects against
  the ``loopy`` program.

Every test runs on loopy in both task modes, talks to 127.0.0.1 only, and
waits for conditions with deadlines, never for a guessed duration.  The
tolerances are stated where they are asserted, chosen to hold on a loaded
two-core machine.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
KiB = 1024
MiB = 1024 * KiB
TIMEOUT = 20.0  # seconds: a safety net for one scenario; every wait ends on an event

#: For the tests that read /proc (descriptors, memory): Linux only.
needs_proc = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux /proc")
pytestmark = needs_proc


# ======================================================================
# Shared helpers
# ======================================================================


def run(loop: Any, coro: Any, timeout: float = TIMEOUT) -> Any:
    """Run ``coro`` on ``loop``, failing if it takes longer than ``timeout`` seconds."""
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


def catch_errors(loop: Any) -> list[dict[str, Any]]:
    """Route the loop's exception handler into a list, and return the list."""
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    return errors


def open_fds(pid: int | str = "self") -> set[int]:
    """The file descriptors process ``pid`` has open (the listing's own one included)."""
    return {int(name) for name in os.listdir(f"/proc/{pid}/fd")}


def rss(pid: int | str = "self", field: str = "VmRSS") -> int:
    """Resident set size of process ``pid`` in bytes (``VmRSS``; ``VmHWM``: its peak so far)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * KiB
    raise RuntimeError(f"no {field} for process {pid}")


def reset(sock: socket.socket) -> None:
    """Close ``sock`` with a RST instead of a FIN (SO_LINGER on, zero timeout)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def same(received: bytes | bytearray, sent: bytes | bytearray) -> bool:
    """Equality without pytest's diff of two multi-megabyte values."""
    return received == sent


def difference(received: bytes | bytearray, sent: bytes | bytearray) -> str:
    """Where ``received`` first departs from ``sent``, for an assertion message."""
    for index, (a, b) in enumerate(zip(received, sent, strict=False)):
        if a != b:
            return f"first difference at byte {index} of {len(sent)} ({len(received)} received)"
    return f"{len(received)} bytes received, {len(sent)} sent"


def log_size(rng: random.Random, largest: int) -> int:
    """A size from 1 to ``largest``, uniform in its logarithm: small and large both common."""
    return min(largest, int(2 ** rng.uniform(0, math.log2(largest + 1))))


def pieces(data: bytes, rng: random.Random, largest: int = 256 * KiB) -> Iterator[memoryview]:
    """``data`` cut into consecutive pieces of random sizes."""
    view = memoryview(data)
    offset = 0
    while offset < len(view):
        size = log_size(rng, largest)
        yield view[offset : offset + size]
        offset += size


class Child:
    """A Python child process whose stdout a thread reads line by line.

    ``expect(prefix)`` waits, with a deadline, for the next line starting
    with ``prefix``; other lines are kept in ``lines`` (and shown when an
    expectation fails).
    """

    def __init__(self, *argv: str, stdin: int | None = subprocess.PIPE) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, *argv],
            cwd=ROOT,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._seen = 0  # lines already returned by expect()
        self._changed = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def expect(self, prefix: str, timeout: float = TIMEOUT) -> str:
        """The next line starting with ``prefix`` (its rest), within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for index in range(self._seen, len(self.lines)):
                    if self.lines[index].startswith(prefix):
                        self._seen = index + 1
                        return self.lines[index][len(prefix) :].strip()
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    tail = "\n".join(self.lines[-30:])
                    raise AssertionError(f"no line starting {prefix!r}; output:\n{tail}")
                self._changed.wait(left)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        """Kill the process if it still runs; reap it and close its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(TIMEOUT)
        self._reader.join(TIMEOUT)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


# ======================================================================
# Nothing lost: byte-exact round trips
# ======================================================================

#: The sizes of the round trips: the extremes, and four in between drawn from
#: a seeded generator (uniform in their logarithm).  Printed by pytest in the ids.
_sizes_rng = random.Random(20_24)
SIZES = sorted({1, 8 * MiB, *(log_size(_sizes_rng, 8 * MiB) for _ in range(4))})
READ_SIZE = 64 * KiB


class Gate:
    """Pauses a transport's reading at random and for flow control; resumes it after.

    Reading is paused while any *hold* is on: ``"flow"`` (the transport's own
    write buffer is over its high-water mark: a proper echo must stop
    reading then) or ``"jitter"`` (a random pause, released one loop
    iteration or a millisecond later).
    """

    def __init__(self, transport: Any, rng: random.Random, stats: Counter[str]) -> None:
        self.transport = transport
        self.rng = rng
        self.stats = stats
        self.holds: set[str] = set()

    def jitter(self) -> None:
        if "jitter" not in self.holds and self.rng.random() < 0.2:
            self.hold("jitter")
            self.stats["random pauses"] += 1
            delay = self.rng.choice((0, 0, 0.001))
            asyncio.get_running_loop().call_later(delay, self.release, "jitter")

    def hold(self, reason: str) -> None:
        self.holds.add(reason)
        self.transport.pause_reading()

    def release(self, reason: str) -> None:
        self.holds.discard(reason)
        if not self.holds:
            self.transport.resume_reading()  # ignored once the transport is closing


class EchoProtocol(asyncio.Protocol):
    """Echoes everything; stops reading while its write buffer is full; random pauses."""

    def __init__(self, rng: random.Random, stats: Counter[str]) -> None:
        self.rng = rng
        self.stats = stats

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.gate = Gate(transport, self.rng, self.stats)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)
        self.gate.jitter()

    def pause_writing(self) -> None:
        self.stats["flow pauses"] += 1
        self.gate.hold("flow")

    def resume_writing(self) -> None:
        self.gate.release("flow")

    def eof_received(self) -> bool:
        return False  # close: once the echo is flushed


class BufferedEcho(asyncio.BufferedProtocol):
    """The same echo as a BufferedProtocol lending buffers of random sizes."""

    def __init__(self, rng: random.Random, stats: Counter[str]) -> None:
        self.rng = rng
        self.stats = stats
        self.buffer = bytearray(READ_SIZE)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.gate = Gate(transport, self.rng, self.stats)

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.buffer)[: log_size(self.rng, READ_SIZE)]

    def buffer_updated(self, nbytes: int) -> None:
        self.transport.write(bytes(self.buffer[:nbytes]))
        self.gate.jitter()

    def pause_writing(self) -> None:
        self.stats["flow pauses"] += 1
        self.gate.hold("flow")

    def resume_writing(self) -> None:
        self.gate.release("flow")

    def eof_received(self) -> bool:
        return False


class Client(asyncio.Protocol):
    """A client's end: collects what arrives (pausing at random), waits while paused for writing."""

    def __init__(self, rng: random.Random, stats: Counter[str]) -> None:
        loop = asyncio.get_running_loop()
        self.rng = rng
        self.stats = stats
        self.received = bytearray()
        self.writable = asyncio.Event()
        self.writable.set()
        self.lost: asyncio.Future[BaseException | None] = loop.create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.gate = Gate(transport, self.rng, self.stats)

    def data_received(self, data: bytes) -> None:
        self.received += data
        self.gate.jitter()

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.set_result(exc)


class BufferedClient(Client, asyncio.BufferedProtocol):
    """The client's end as a BufferedProtocol, with buffers of random sizes."""

    def __init__(self, rng: random.Random, stats: Counter[str]) -> None:
        super().__init__(rng, stats)
        self.buffer = bytearray(READ_SIZE)

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.buffer)[: log_size(self.rng, READ_SIZE)]

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self.buffer[:nbytes]))


async def _send_with_transport(client: Client, payload: bytes, rng: random.Random) -> None:
    for piece in pieces(payload, rng):
        client.transport.write(piece)
        await client.writable.wait()
        if rng.random() < 0.1:
            await asyncio.sleep(0)
    client.transport.write_eof()


async def _round_trip_transport(
    port: int, payload: bytes, rng: random.Random, stats: Counter[str], buffered: bool
) -> bytes:
    loop = asyncio.get_running_loop()
    kind = BufferedClient if buffered else Client
    _, client = await loop.create_connection(lambda: kind(rng, stats), "127.0.0.1", port)
    await _send_with_transport(client, payload, rng)
    assert await client.lost is None  # the server closed after echoing everything
    return bytes(client.received)


async def _round_trip_streams(
    port: int, payload: bytes, rng: random.Random, stats: Counter[str]
) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=4 * KiB)

    async def send() -> None:
        for piece in pieces(payload, rng):
            writer.write(piece)
            await writer.drain()
        writer.write_eof()

    async def receive() -> bytes:
        transport: Any = writer.transport
        received = bytearray()
        while data := await reader.read(log_size(rng, READ_SIZE)):
            received += data
            if rng.random() < 0.1:
                # The receiver stops reading for a moment (its StreamReader
                # pauses the transport too, whenever 8 KiB are waiting).
                stats["random pauses"] += 1
                transport.pause_reading()
                await asyncio.sleep(0)
                transport.resume_reading()
        return bytes(received)

    try:
        _, received = await asyncio.gather(send(), receive())
    finally:
        writer.close()
        await writer.wait_closed()
    return received


async def _round_trip_sock(port: int, payload: bytes, rng: random.Random) -> bytes:
    loop = asyncio.get_running_loop()
    with socket.socket() as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))

        async def send() -> None:
            for piece in pieces(payload, rng):
                await loop.sock_sendall(sock, piece)
            sock.shutdown(socket.SHUT_WR)

        async def receive() -> bytes:
            received = bytearray()
            while data := await loop.sock_recv(sock, log_size(rng, READ_SIZE)):
                received += data
            return bytes(received)

        _, received = await asyncio.gather(send(), receive())
    return received


async def _echo_streams(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rng: random.Random
) -> None:
    try:
        while data := await reader.read(log_size(rng, READ_SIZE)):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()  # flushes the echo, then closes
        await writer.wait_closed()


async def _echo_sock(conn: socket.socket, rng: random.Random) -> None:
    loop = asyncio.get_running_loop()
    buffer = bytearray(READ_SIZE)
    with conn:
        while True:
            if rng.random() < 0.5:
                nbytes = await loop.sock_recv_into(
                    conn, memoryview(buffer)[: log_size(rng, READ_SIZE)]
                )
                data = bytes(buffer[:nbytes])
            else:
                data = await loop.sock_recv(conn, log_size(rng, READ_SIZE))
            if not data:
                break
            await loop.sock_sendall(conn, data)
        conn.shutdown(socket.SHUT_WR)


class SockServer:
    """An echo server made of ``sock_accept``, ``sock_recv(_into)`` and ``sock_sendall`` only."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.listener.setblocking(False)
        self.port: int = self.listener.getsockname()[1]
        self.tasks: set[asyncio.Task[None]] = set()
        self.acceptor = asyncio.get_running_loop().create_task(self._accept())

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self.listener)
            task = loop.create_task(_echo_sock(conn, self.rng))
            self.tasks.add(task)

    async def close(self) -> None:
        self.acceptor.cancel()
        await asyncio.gather(self.acceptor, return_exceptions=True)
        for task in self.tasks:
            await task  # each ended at its client's EOF; an error surfaces here
        self.listener.close()


@pytest.mark.parametrize("path", ["protocol", "buffered", "streams", "sock"])
def test_round_trips_of_every_size_are_byte_exact(loop: Any, path: str) -> None:
    """All SIZES at once, each on its own connection, echoed through one server.

    Both ends pause and resume reading at random (and the echo stops reading
    whenever its write buffer is full), and every write and read has a random
    size: whatever the interleaving, every byte comes back, in order, once.
    """
    rng = random.Random(f"round trips {path}")
    payloads = [rng.randbytes(size) for size in SIZES]
    stats: Counter[str] = Counter()
    errors = catch_errors(loop)

    async def main() -> list[bytes]:
        server: Any
        if path == "protocol":
            server = await loop.create_server(lambda: EchoProtocol(rng, stats), "127.0.0.1", 0)
        elif path == "buffered":
            server = await loop.create_server(lambda: BufferedEcho(rng, stats), "127.0.0.1", 0)
        elif path == "streams":
            server = await asyncio.start_server(
                lambda r, w: _echo_streams(r, w, rng), "127.0.0.1", 0, limit=4 * KiB
            )
        else:
            server = SockServer(rng)
        port = server.port if path == "sock" else server.sockets[0].getsockname()[1]
        clients = []
        for number, payload in enumerate(payloads):
            client_rng = random.Random(f"client {number} {path}")
            if path in ("protocol", "buffered"):
                client = _round_trip_transport(port, payload, client_rng, stats, path == "buffered")
            elif path == "streams":
                client = _round_trip_streams(port, payload, client_rng, stats)
            else:
                client = _round_trip_sock(port, payload, client_rng)
            clients.append(client)
        try:
            return await asyncio.gather(*clients)
        finally:
            if path == "sock":
                await server.close()
            else:
                server.close()
                await server.wait_closed()

    received = run(loop, main())
    for payload, echoed in zip(payloads, received, strict=True):
        assert same(echoed, payload), difference(echoed, payload)
    assert errors == []
    if path != "sock":  # sock_* has no reading to pause
        assert stats["random pauses"] > 10


# ======================================================================
# Nothing lost at the end: close() flushes, abort() stops
# ======================================================================


def _small_buffers_client() -> socket.socket:
    """A client socket whose receive window is small, so a server's writes back up."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB)
    sock.setblocking(False)
    return sock


def _small_buffers_listener() -> socket.socket:
    """A listening socket whose connections have a small send buffer (they inherit it).

    Without it, Linux grows a loopback connection's send buffer to 4 MiB,
    and the kernel, not the transport, would hold much of what is written.
    """
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * KiB)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    return sock


async def _read_slowly(sock: socket.socket, rng: random.Random, until: int = -1) -> bytes:
    """Read until EOF or a reset (or until ``until`` bytes), in random sizes, yielding often."""
    loop = asyncio.get_running_loop()
    received = bytearray()
    while until < 0 or len(received) < until:
        try:
            data = await loop.sock_recv(sock, log_size(rng, READ_SIZE))
        except ConnectionResetError:
            break
        if not data:
            break
        received += data
        if rng.random() < 0.3:
            await asyncio.sleep(0)
    return bytes(received)


@pytest.mark.parametrize("api", ["transport", "streams"])
def test_close_delivers_every_buffered_byte(loop: Any, api: str) -> None:
    """8 MiB written and closed at once: the peer, reading slowly, still gets all of it."""
    payload = random.Random(7).randbytes(8 * MiB)
    errors = catch_errors(loop)
    seen: dict[str, Any] = {}

    class WriteAndClose(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            transport.write(payload)
            seen["buffered"] = transport.get_write_buffer_size()
            transport.close()
            seen["lost"] = asyncio.get_running_loop().create_future()

        def connection_lost(self, exc: BaseException | None) -> None:
            seen["lost"].set_result(exc)

    async def write_and_close(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(payload)
        seen["buffered"] = writer.transport.get_write_buffer_size()
        writer.close()
        await writer.wait_closed()
        seen["lost"] = asyncio.get_running_loop().create_future()
        seen["lost"].set_result(None)

    async def main() -> bytes:
        if api == "transport":
            server = await loop.create_server(WriteAndClose, sock=_small_buffers_listener())
        else:
            server = await asyncio.start_server(write_and_close, sock=_small_buffers_listener())
        with _small_buffers_client() as sock:
            await loop.sock_connect(sock, server.sockets[0].getsockname())
            received = await _read_slowly(sock, random.Random(8))
        server.close()
        await server.wait_closed()
        assert await seen["lost"] is None
        return received

    received = run(loop, main())
    # close() had nearly all of the 8 MiB still to send when it was called.
    assert seen["buffered"] > 7 * MiB
    assert same(received, payload), difference(received, payload)
    assert errors == []


def test_abort_sends_nothing_more(loop: Any) -> None:
    """After abort(), the peer gets exactly what the kernel had taken, and then the end."""
    payload = random.Random(9).randbytes(8 * MiB)
    errors = catch_errors(loop)
    events: list[Any] = []

    class WriteThenAbort(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            transport.write(payload)

        def connection_lost(self, exc: BaseException | None) -> None:
            events.append(("lost", exc))

    protocols: list[WriteThenAbort] = []

    def factory() -> WriteThenAbort:
        protocols.append(WriteThenAbort())
        return protocols[-1]

    async def main() -> tuple[bytes, int]:
        rng = random.Random(10)
        server = await loop.create_server(factory, sock=_small_buffers_listener())
        with _small_buffers_client() as sock:
            await loop.sock_connect(sock, server.sockets[0].getsockname())
            first = await _read_slowly(sock, rng, until=1 * MiB)
            transport = protocols[0].transport
            buffered = transport.get_write_buffer_size()
            assert buffered > 0  # there is something left for abort() to drop
            taken_by_kernel = len(payload) - buffered
            transport.abort()
            assert transport.get_write_buffer_size() == 0
            transport.write(b"after the end")  # dropped
            rest = await _read_slowly(sock, rng)
        server.close()
        await server.wait_closed()
        return first + rest, taken_by_kernel

    received, taken_by_kernel = run(loop, main())
    assert taken_by_kernel < len(payload)
    # The kernel's queue still drains (a FIN follows it); nothing from
    # loopy's buffer does.
    assert len(received) == taken_by_kernel
    assert same(received, payload[:taken_by_kernel]), difference(received, payload)
    assert events == [("lost", None)]
    assert errors == []
