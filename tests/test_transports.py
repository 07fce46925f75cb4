"""Socket transports: protocol callbacks, write buffering and flow control, closing.

Most cases run on asyncio's loop too (``any_loop``): asyncio's transport is the
reference, and loopy's must behave the same.  The peer of a transport is a
plain non-blocking socket driven with the loop's ``sock_*`` coroutines, so
every step is an awaited event, never a sleep.
"""

from __future__ import annotations

import array
import asyncio
import errno
import gc
import logging
import os
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest

from loopy.transports import SocketTransport
from tests.helpers import catch_errors, iterations, run, run_until_interrupted


def tcp_socketpair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of non-blocking TCP sockets on 127.0.0.1."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = tcp_socketpair()
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def unix_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected pair of Unix stream sockets, the first with a small send buffer.

    Tests that need data to pile up in the transport's buffer use these:
    over TCP a small buffer also means a receive window smaller than the
    loopback MSS, and TCP then trickles the data out on its persist timer.
    """
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    yield a, b
    a.close()
    b.close()


class Recorder(asyncio.Protocol):
    """A protocol that records its callbacks and offers futures to await them."""

    def __init__(self, *, keep_open: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self.events: list[str] = []
        self.data = bytearray()
        self.transport: Any = None
        self.keep_open = keep_open
        self.made = loop.create_future()
        self.eof = loop.create_future()
        self.lost = loop.create_future()
        self.paused = loop.create_future()
        self.resumed = loop.create_future()
        self._wanted: list[tuple[int, asyncio.Future[None]]] = []

    def connection_made(self, transport: Any) -> None:
        self.events.append("made")
        self.transport = transport
        self.made.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.events[-1] != "data":  # consecutive chunks count as one event
            self.events.append("data")
        self.data += data
        for wanted in list(self._wanted):
            if len(self.data) >= wanted[0]:
                self._wanted.remove(wanted)
                wanted[1].set_result(None)

    def eof_received(self) -> bool:
        self.events.append("eof")
        self.eof.set_result(None)
        return self.keep_open

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")
        self.lost.set_result(exc)

    def pause_writing(self) -> None:
        self.events.append("pause")
        if not self.paused.done():
            self.paused.set_result(None)

    def resume_writing(self) -> None:
        self.events.append("resume")
        if not self.resumed.done():
            self.resumed.set_result(None)

    async def received(self, nbytes: int) -> bytes:
        """Wait until at least ``nbytes`` arrived; return all received so far."""
        if len(self.data) < nbytes:
            future = asyncio.get_running_loop().create_future()
            self._wanted.append((nbytes, future))
            await future
        return bytes(self.data)


def wrap(loop: Any, sock: socket.socket, factory: Any = Recorder) -> tuple[Any, Any]:
    """Make ``sock`` a transport with a new protocol from ``factory``."""
    return run(loop, loop.connect_accepted_socket(factory, sock))


async def recv_all(loop: Any, sock: socket.socket) -> bytes:
    """Everything the peer sends until EOF (or a reset, which ends it too)."""
    chunks = []
    while True:
        try:
            chunk = await loop.sock_recv(sock, 1 << 20)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


async def recv_exactly(loop: Any, sock: socket.socket, nbytes: int) -> bytes:
    data = bytearray()
    while len(data) < nbytes:
        chunk = await loop.sock_recv(sock, nbytes - len(data))
        assert chunk, "unexpected EOF"
        data += chunk
    return bytes(data)


# -- the callbacks, over a real server and client -----------------------------


class Echo(Recorder):
    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.transport.write(data)


def test_callbacks_in_order_exactly_once(any_loop: Any) -> None:
    servers: list[Echo] = []

    def make_echo() -> Echo:
        servers.append(Echo())
        return servers[-1]

    async def main() -> None:
        server = await any_loop.create_server(make_echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport, client = await any_loop.create_connection(Recorder, "127.0.0.1", port)
        assert isinstance(transport, asyncio.Transport)
        assert client.transport is transport
        transport.write(b"hello")
        assert await client.received(5) == b"hello"
        transport.write_eof()  # the server's protocol closes on EOF, so do we then
        await client.lost
        await servers[0].lost
        server.close()
        await server.wait_closed()

        assert client.events == ["made", "data", "eof", "lost"]
        assert servers[0].events == ["made", "data", "eof", "lost"]
        assert client.lost.result() is None
        assert servers[0].lost.result() is None
        assert transport.is_closing()

        server_side = servers[0].transport
        assert transport.get_extra_info("peername") == ("127.0.0.1", port)
        assert transport.get_extra_info("sockname") == server_side.get_extra_info("peername")
        assert server_side.get_extra_info("sockname") == ("127.0.0.1", port)
        assert transport.get_extra_info("no such thing", 42) == 42

    run(any_loop, main())


def test_socket_extra_info(any_loop: Any, tcp_pair: Any) -> None:
    a, _b = tcp_pair
    transport, protocol = wrap(any_loop, a)
    sock = transport.get_extra_info("socket")
    assert sock.fileno() == a.fileno()
    assert sock.getsockname() == a.getsockname()
    assert sock.family == socket.AF_INET
    # TCP_NODELAY: small writes leave at once.
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    transport.close()
    run(any_loop, protocol.lost)


# -- streams: what most programs use -------------------------------------------


async def _echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while chunk := await reader.read(1 << 16):
        writer.write(chunk)
        await writer.drain()
    writer.close()
    await writer.wait_closed()


@pytest.mark.parametrize("size", [1, 1000, 65536 + 7, 8 * 1024 * 1024])
def test_stream_echo_is_byte_exact(any_loop: Any, size: int) -> None:
    payload = os.urandom(size)

    async def main() -> bytes:
        server = await asyncio.start_server(_echo_handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)

        async def send() -> None:
            writer.write(payload)
            await writer.drain()
            writer.write_eof()

        sender = asyncio.ensure_future(send())
        echoed = await reader.read()  # until EOF
        await sender
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return echoed

    assert run(any_loop, main()) == payload


def test_drain_waits_for_a_reader_that_does_not_read(any_loop: Any, tmp_path: Any) -> None:
    chunk = b"x" * 16384
    total = 2 * 1024 * 1024

    async def main() -> None:
        start_reading = asyncio.Event()
        received = any_loop.create_future()

        async def slow_reader(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await start_reading.wait()
            received.set_result(len(await reader.read()))
            writer.close()

        # Unix sockets: see unix_pair for why not TCP.
        path = str(tmp_path / "slow.sock")
        server = await asyncio.start_unix_server(slow_reader, path)
        _reader, writer = await asyncio.open_unix_connection(path)
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        transport = writer.transport
        assert transport.get_write_buffer_limits() == (16384, 65536)

        # Watch the stream protocol's flow control through its two callbacks.
        protocol = transport.get_protocol()
        paused, resumed = any_loop.create_future(), any_loop.create_future()
        for name, future in (("pause_writing", paused), ("resume_writing", resumed)):
            original = getattr(protocol, name)

            def spy(original: Any = original, future: Any = future) -> None:
                if not future.done():
                    future.set_result(transport.get_write_buffer_size())
                original()

            setattr(protocol, name, spy)

        async def write_all() -> None:
            for _ in range(total // len(chunk)):
                writer.write(chunk)
                await writer.drain()
            writer.write_eof()

        writing = asyncio.ensure_future(write_all())
        size_at_pause = await paused
        assert size_at_pause > 65536  # above the high-water mark...
        await iterations()
        assert not writing.done()  # ...drain() holds the writer...
        assert 0 < transport.get_write_buffer_size() <= 65536 + len(chunk)  # ...near the mark
        start_reading.set()
        assert await received == total
        await writing
        assert resumed.done()
        assert resumed.result() <= 16384  # resumed once below the low-water mark
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(any_loop, main())


def test_write_buffer_limits(any_loop: Any, tcp_pair: Any) -> None:
    a, _b = tcp_pair
    transport, protocol = wrap(any_loop, a)
    assert transport.get_write_buffer_limits() == (16384, 65536)
    transport.set_write_buffer_limits(high=100)
    assert transport.get_write_buffer_limits() == (25, 100)
    transport.set_write_buffer_limits(low=10)
    assert transport.get_write_buffer_limits() == (10, 40)
    transport.set_write_buffer_limits(high=50, low=50)
    assert transport.get_write_buffer_limits() == (50, 50)
    transport.set_write_buffer_limits()
    assert transport.get_write_buffer_limits() == (16384, 65536)
    with pytest.raises(ValueError, match="must be >="):
        transport.set_write_buffer_limits(high=1, low=2)
    with pytest.raises(ValueError, match="must be >="):
        transport.set_write_buffer_limits(low=-1)
    assert transport.get_write_buffer_limits() == (16384, 65536)
    transport.close()
    run(any_loop, protocol.lost)


def test_pause_and_resume_writing(any_loop: Any, unix_pair: Any) -> None:
    a, b = unix_pair
    transport, protocol = wrap(any_loop, a)
    payload = os.urandom(1024 * 1024)

    async def main() -> None:
        transport.write(payload)
        assert transport.get_write_buffer_size() > 0
        assert protocol.events == ["made", "pause"]  # at once, inside write()
        received = await recv_exactly(any_loop, b, len(payload))
        assert received == payload
        await protocol.resumed
        assert protocol.events == ["made", "pause", "resume"]
        assert transport.get_write_buffer_size() == 0

        # Lowering the high-water mark below what is buffered pauses at once.
        transport.set_write_buffer_limits(high=0)
        transport.write(payload)
        assert protocol.events[-1] == "pause"
        assert await recv_exactly(any_loop, b, len(payload)) == payload
        transport.close()
        await protocol.lost

    run(any_loop, main())


def test_failing_pause_writing_is_reported(any_loop: Any, unix_pair: Any) -> None:
    a, _b = unix_pair
    errors = catch_errors(any_loop)

    class Failing(Recorder):
        def pause_writing(self) -> None:
            raise ZeroDivisionError("pause")

    transport, protocol = wrap(any_loop, a, Failing)
    transport.write(b"x" * (1024 * 1024))
    assert [e["message"] for e in errors] == ["protocol.pause_writing() failed"]
    assert isinstance(errors[0]["exception"], ZeroDivisionError)
    assert errors[0]["transport"] is transport
    assert not transport.is_closing()  # the connection lives on
    transport.abort()
    run(any_loop, protocol.lost)


# -- BufferedProtocol -----------------------------------------------------------


class BufferedRecorder(asyncio.BufferedProtocol):
    def __init__(self, buffer_size: int = 1000) -> None:
        loop = asyncio.get_running_loop()
        self.buffer = bytearray(buffer_size)
        self.data = bytearray()
        self.sizes: list[int] = []
        self.eof = loop.create_future()
        self.lost = loop.create_future()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> Any:
        self.sizes.append(sizehint)
        return memoryview(self.buffer)

    def buffer_updated(self, nbytes: int) -> None:
        assert 0 < nbytes <= len(self.buffer)
        self.data += self.buffer[:nbytes]

    def eof_received(self) -> None:
        self.eof.set_result(bytes(self.data))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)


def test_buffered_protocol_receives_exact_bytes(any_loop: Any, tcp_pair: Any) -> None:
    a, b = tcp_pair
    _transport, protocol = wrap(any_loop, a, BufferedRecorder)
    payload = os.urandom(300_000)

    async def main() -> None:
        await any_loop.sock_sendall(b, payload)
        b.shutdown(socket.SHUT_WR)
        assert await protocol.eof == payload
        assert await protocol.lost is None  # eof_received returned None: closed

    run(any_loop, main())
    assert len(protocol.sizes) >= len(payload) // 1000


@pytest.mark.parametrize(
    ("method", "failure"),
    [
        ("get_buffer", "empty"),
        ("get_buffer", "raise"),
        ("buffer_updated", "raise"),
    ],
)
def test_buffered_protocol_errors_close_the_connection(
    any_loop: Any, tcp_pair: Any, method: str, failure: str
) -> None:
    a, b = tcp_pair
    errors = catch_errors(any_loop)

    class Broken(BufferedRecorder):
        def get_buffer(self, sizehint: int) -> Any:
            if method == "get_buffer":
                if failure == "empty":
                    return bytearray()
                raise ZeroDivisionError("no buffer")
            return super().get_buffer(sizehint)

        def buffer_updated(self, nbytes: int) -> None:
            raise ZeroDivisionError("not updated")

    transport, protocol = wrap(any_loop, a, Broken)

    async def main() -> None:
        await any_loop.sock_sendall(b, b"data")
        exc = await protocol.lost
        assert await recv_all(any_loop, b) == b""  # the peer sees the connection end
        assert errors[0]["exception"] is exc
        assert errors[0]["message"] == f"Fatal error: protocol.{method}() call failed."
        if failure == "empty":
            assert isinstance(exc, RuntimeError)
            assert "empty buffer" in str(exc)
        else:
            assert isinstance(exc, ZeroDivisionError)

    run(any_loop, main())
    assert len(errors) == 1
    assert transport.is_closing()


# -- reading: pause, resume, EOF ---------------------------------------------------


def test_pause_and_resume_reading(any_loop: Any, tcp_pair: Any) -> None:
    a, b = tcp_pair
    transport, protocol = wrap(any_loop, a)

    async def main() -> None:
        assert transport.is_reading()
        transport.pause_reading()
        transport.pause_reading()  # twice is fine
        assert not transport.is_reading()
        b.send(b"while paused")
        await iterations()  # the bytes are there, and nobody reads them
        assert protocol.data == b""
        transport.resume_reading()
        transport.resume_reading()
        assert transport.is_reading()
        assert await protocol.received(12) == b"while paused"
        transport.close()
        assert not transport.is_reading()
        transport.pause_reading()  # no-ops once closing
        transport.resume_reading()
        assert not transport.is_reading()
        await protocol.lost

    run(any_loop, main())


def test_write_eof(any_loop: Any, tcp_pair: Any) -> None:
    a, b = tcp_pair
    transport, protocol = wrap(any_loop, a)

    async def main() -> None:
        assert transport.can_write_eof()
        transport.write(b"last words")
        transport.write_eof()
        transport.write_eof()  # twice is fine
        with pytest.raises(RuntimeError, match="write_eof"):
            transport.write(b"more")
        assert await recv_all(any_loop, b) == b"last words"
        # Only the sending side is closed: the peer can still talk to us.
        await any_loop.sock_sendall(b, b"reply")
        assert await protocol.received(5) == b"reply"
        b.shutdown(socket.SHUT_WR)
        await protocol.lost

    run(any_loop, main())
    assert protocol.events == ["made", "data", "eof", "lost"]


def test_write_eof_after_buffered_data(any_loop: Any, unix_pair: Any) -> None:
    a, b = unix_pair
    transport, protocol = wrap(any_loop, a)
    payload = os.urandom(1024 * 1024)

    async def main() -> None:
        transport.write(payload)
        assert transport.get_write_buffer_size() > 0
        transport.write_eof()  # waits for the buffer to drain
        assert await recv_all(any_loop, b) == payload
        transport.close()
        await protocol.lost

    run(any_loop, main())


def test_half_close_keeps_the_transport_writable(any_loop: Any) -> None:
    class Answerer(Recorder):
        def eof_received(self) -> bool:
            super().eof_received()
            # The question is complete: answer it on the still open transport.
            self.transport.write(b"answer to " + bytes(self.data))
            self.transport.close()
            return True

    async def main() -> None:
        server = await any_loop.create_server(Answerer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"question")
        writer.write_eof()
        assert await reader.read() == b"answer to question"
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(any_loop, main())


def test_eof_is_reported_once_even_if_reading_resumes(loop: Any, tcp_pair: Any) -> None:
    # asyncio's transport watches the socket again on resume_reading() after
    # EOF and so calls eof_received() a second time; loopy remembers the EOF.
    a, b = tcp_pair
    transport, protocol = wrap(loop, a, lambda: Recorder(keep_open=True))

    async def main() -> None:
        b.shutdown(socket.SHUT_WR)
        await protocol.eof
        transport.pause_reading()
        transport.resume_reading()
        await iterations()
        assert protocol.events == ["made", "eof"]
        transport.write(b"still writable")
        assert await recv_exactly(loop, b, 14) == b"still writable"
        transport.close()
        await protocol.lost

    run(loop, main())


# -- closing ------------------------------------------------------------------------


def test_close_flushes_the_buffer_first(any_loop: Any, unix_pair: Any) -> None:
    a, b = unix_pair
    transport, protocol = wrap(any_loop, a)
    payload = os.urandom(2 * 1024 * 1024)

    async def main() -> None:
        transport.write(payload)
        assert transport.get_write_buffer_size() > 0
        transport.close()
        transport.close()  # twice is fine
        assert transport.is_closing()
        assert not protocol.lost.done()
        assert await recv_all(any_loop, b) == payload
        assert await protocol.lost is None

    run(any_loop, main())
    assert protocol.events == ["made", "pause", "resume", "lost"]


def test_abort_drops_the_buffer(any_loop: Any, unix_pair: Any) -> None:
    a, b = unix_pair
    transport, protocol = wrap(any_loop, a)
    payload = os.urandom(2 * 1024 * 1024)

    async def main() -> None:
        transport.write(payload)
        transport.abort()
        assert transport.get_write_buffer_size() == 0
        assert await protocol.lost is None
        assert len(await recv_all(any_loop, b)) < len(payload)
        transport.abort()  # after the end: nothing happens
        transport.close()

    run(any_loop, main())
    assert protocol.events.count("lost") == 1


def test_abort_after_close_drops_what_close_would_flush(any_loop: Any, unix_pair: Any) -> None:
    a, b = unix_pair
    transport, protocol = wrap(any_loop, a)
    payload = os.urandom(2 * 1024 * 1024)

    async def main() -> None:
        transport.write(payload)
        transport.close()
        transport.abort()
        assert transport.get_write_buffer_size() == 0
        assert await protocol.lost is None
        assert len(await recv_all(any_loop, b)) < len(payload)

    run(any_loop, main())
    assert protocol.events.count("lost") == 1


def test_socket_without_a_peer_any_more(any_loop: Any, tcp_pair: Any) -> None:
    # The peer reset the connection before the transport was made.
    a, b = tcp_pair
    b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    b.close()
    errors = catch_errors(any_loop)

    async def main() -> None:
        # Wait until the reset has arrived (a's getpeername then fails).
        with pytest.raises(ConnectionResetError):
            await any_loop.sock_recv(a, 1)

    run(any_loop, main())
    sockname = a.getsockname()
    transport, protocol = wrap(any_loop, a)
    assert transport.get_extra_info("peername") is None
    assert transport.get_extra_info("sockname") == sockname
    transport.close()
    run(any_loop, protocol.lost)
    assert errors == []


def test_close_in_connection_made(any_loop: Any, tcp_pair: Any) -> None:
    a, b = tcp_pair

    class Quitter(Recorder):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            transport.close()

    _transport, protocol = wrap(any_loop, a, Quitter)
    run(any_loop, protocol.lost)
    assert run(any_loop, recv_all(any_loop, b)) == b""
    assert protocol.events == ["made", "lost"]


def test_writes_after_the_end_are_dropped_with_a_warning(
    any_loop: Any, tcp_pair: Any, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = tcp_pair
    transport, protocol = wrap(any_loop, a)
    transport.close()
    run(any_loop, protocol.lost)
    caplog.set_level(logging.WARNING)
    for _ in range(4):
        transport.write(b"into the void")
    transport.write(b"")  # empty writes do not count
    assert "socket.send() raised exception." not in caplog.text
    transport.write(b"into the void")
    assert "socket.send() raised exception." in caplog.text
    assert run(any_loop, recv_all(any_loop, b)) == b""


def test_write_type_errors(any_loop: Any, tcp_pair: Any) -> None:
    a, b = tcp_pair
    transport, protocol = wrap(any_loop, a)
    with pytest.raises(TypeError, match="bytes-like object, not 'str'"):
        transport.write("text")
    with pytest.raises(TypeError, match="bytes-like"):
        transport.writelines(["text"])
    transport.writelines([b"a", bytearray(b"b"), memoryview(b"c")])
    assert run(any_loop, recv_exactly(any_loop, b, 3)) == b"abc"
    transport.close()
    run(any_loop, protocol.lost)


def test_reset_by_peer(any_loop: Any, tcp_pair: Any) -> None:
    a, b = tcp_pair
    errors = catch_errors(any_loop)
    transport, protocol = wrap(any_loop, a)
    # SO_LINGER with a zero timeout: close() sends RST instead of FIN.
    b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    b.close()
    exc = run(any_loop, protocol.lost)
    assert isinstance(exc, ConnectionResetError)
    assert protocol.events == ["made", "lost"]
    assert errors == []
    transport.write(b"x")  # dropped, and no second connection_lost
    transport.close()
    run(any_loop, iterations())
    assert protocol.events == ["made", "lost"]


def test_reset_while_writing(any_loop: Any, tcp_pair: Any) -> None:
    a, b = tcp_pair
    # The peer never reads, so its receive window may be as small as it likes.
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    errors = catch_errors(any_loop)
    transport, protocol = wrap(any_loop, a)
    transport.pause_reading()  # only the write side may notice
    transport.write(os.urandom(8 * 1024 * 1024))
    assert transport.get_write_buffer_size() > 0
    b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    b.close()
    exc = run(any_loop, protocol.lost)
    assert isinstance(exc, (ConnectionResetError, BrokenPipeError))
    assert errors == []
    assert transport.get_write_buffer_size() == 0


@pytest.mark.parametrize("callback", ["data_received", "eof_received"])
def test_protocol_errors_are_reported_and_close(
    any_loop: Any, tcp_pair: Any, callback: str
) -> None:
    a, b = tcp_pair
    errors = catch_errors(any_loop)

    class Broken(Recorder):
        def data_received(self, data: bytes) -> None:
            raise ZeroDivisionError(callback)

        def eof_received(self) -> bool:
            raise ZeroDivisionError(callback)

    transport, protocol = wrap(any_loop, a, Broken)

    async def main() -> None:
        if callback == "data_received":
            await any_loop.sock_sendall(b, b"boom")
        else:
            b.shutdown(socket.SHUT_WR)
        exc = await protocol.lost
        assert isinstance(exc, ZeroDivisionError)
        assert await recv_all(any_loop, b) == b""

    run(any_loop, main())
    assert len(errors) == 1
    assert errors[0]["message"] == f"Fatal error: protocol.{callback}() call failed."
    assert isinstance(errors[0]["exception"], ZeroDivisionError)
    assert errors[0]["protocol"] is protocol
    assert errors[0]["transport"] is transport


def test_unclosed_transport_warns(any_loop: Any, tcp_pair: Any) -> None:
    a, _b = tcp_pair
    transport, protocol = wrap(any_loop, a, asyncio.Protocol)
    transport.pause_reading()  # the loop no longer holds it
    with pytest.warns(ResourceWarning, match="unclosed transport"):  # noqa: PT031
        del transport, protocol
        gc.collect()
    assert a.fileno() == -1  # the finalizer closed the socket


# -- loopy's own guarantees and corners ------------------------------------------------


def test_repr_follows_the_state(loop: Any, tcp_pair: Any) -> None:
    a, _b = tcp_pair
    transport, protocol = wrap(loop, a)
    fd = a.fileno()
    assert repr(transport) == f"<SocketTransport fd={fd} open>"
    transport.close()
    assert repr(transport) == f"<SocketTransport fd={fd} closing>"
    run(loop, protocol.lost)
    assert repr(transport) == f"<SocketTransport fd={fd} closed>"


def test_memoryview_of_wide_items_is_sent_whole(loop: Any, unix_pair: Any) -> None:
    # send() counts bytes, len() of a memoryview of ints counts ints: a
    # partial send must not lose (or repeat) any of them.
    a, b = unix_pair
    transport, protocol = wrap(loop, a)
    numbers = array.array("i", range(300_000))
    transport.write(memoryview(numbers))
    assert transport.get_write_buffer_size() > 0
    received = run(loop, recv_exactly(loop, b, len(numbers) * numbers.itemsize))
    assert received == numbers.tobytes()
    transport.close()
    run(loop, protocol.lost)


def test_switching_protocols_switches_the_read_path(loop: Any, tcp_pair: Any) -> None:
    a, b = tcp_pair
    transport, first = wrap(loop, a)

    async def main() -> None:
        await loop.sock_sendall(b, b"one")
        await first.received(3)
        second = BufferedRecorder()
        transport.set_protocol(second)
        assert transport.get_protocol() is second
        await loop.sock_sendall(b, b"two")
        b.shutdown(socket.SHUT_WR)
        assert await second.eof == b"two"
        await second.lost

    run(loop, main())
    assert first.data == b"one"
    assert not first.lost.done()


def test_connection_lost_error_still_closes_the_socket(loop: Any, tcp_pair: Any) -> None:
    a, _b = tcp_pair
    errors = catch_errors(loop)

    class Broken(Recorder):
        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            raise ZeroDivisionError("lost")

    transport, protocol = wrap(loop, a, Broken)
    transport.close()
    run(loop, protocol.lost)
    run(loop, iterations())
    assert a.fileno() == -1
    assert isinstance(errors[0]["exception"], ZeroDivisionError)


class FlakySocket(socket.socket):
    """A real socket whose calls fail on demand: ``fail[name] = exception``."""

    fail: dict[str, BaseException]

    @classmethod
    def adopt(cls, sock: socket.socket) -> FlakySocket:
        flaky = cls(sock.family, sock.type, sock.proto, fileno=sock.detach())
        flaky.setblocking(False)
        flaky.fail = {}
        return flaky

    def _maybe_fail(self, name: str) -> None:
        exc = self.fail.get(name)
        if exc is not None:
            raise exc

    def recv(self, *args: Any) -> bytes:
        self._maybe_fail("recv")
        return super().recv(*args)

    def recv_into(self, *args: Any) -> int:
        self._maybe_fail("recv_into")
        return super().recv_into(*args)

    def send(self, *args: Any) -> int:
        self._maybe_fail("send")
        return super().send(*args)

    def shutdown(self, how: int) -> None:
        self._maybe_fail("shutdown")
        super().shutdown(how)


@pytest.fixture
def flaky_pair() -> Iterator[tuple[FlakySocket, socket.socket]]:
    a, b = socket.socketpair()
    b.setblocking(False)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    flaky = FlakySocket.adopt(a)
    yield flaky, b
    flaky.close()
    b.close()


def test_spurious_readiness_is_ignored(loop: Any, flaky_pair: Any) -> None:
    a, b = flaky_pair
    transport, protocol = wrap(loop, a)

    async def main() -> None:
        a.fail["recv"] = BlockingIOError()
        b.send(b"x")
        await iterations()
        assert protocol.data == b""
        del a.fail["recv"]
        assert await protocol.received(1) == b"x"
        transport.close()
        await protocol.lost

    run(loop, main())


def test_spurious_readiness_with_a_buffered_protocol(loop: Any, flaky_pair: Any) -> None:
    a, b = flaky_pair
    _transport, protocol = wrap(loop, a, BufferedRecorder)

    async def main() -> None:
        a.fail["recv_into"] = InterruptedError()
        b.send(b"x")
        await iterations()
        assert protocol.data == b""
        del a.fail["recv_into"]
        b.shutdown(socket.SHUT_WR)
        assert await protocol.eof == b"x"
        await protocol.lost

    run(loop, main())


@pytest.mark.parametrize(
    ("call", "exc", "reported"),
    [
        ("recv", OSError(errno.ETIMEDOUT, "timed out"), False),
        ("recv", ValueError("not a network error"), True),
        ("recv_into", OSError(errno.EHOSTUNREACH, "unreachable"), False),
        ("recv_into", ValueError("not a network error"), True),
    ],
)
def test_read_errors(
    loop: Any, flaky_pair: Any, call: str, exc: BaseException, reported: bool
) -> None:
    # Like asyncio: an OSError is the connection's end, told to the protocol
    # only; anything else is a bug, and reported.
    a, b = flaky_pair
    errors = catch_errors(loop)
    _transport, protocol = wrap(loop, a, Recorder if call == "recv" else BufferedRecorder)
    a.fail[call] = exc
    b.send(b"x")
    assert run(loop, protocol.lost) is exc
    assert [e["exception"] for e in errors] == ([exc] if reported else [])
    if reported:
        assert errors[0]["message"] == "Fatal read error on socket transport"


@pytest.mark.parametrize("exc", [OSError(errno.EPIPE, "gone"), ValueError("bug")])
def test_write_errors(loop: Any, flaky_pair: Any, exc: BaseException) -> None:
    a, _b = flaky_pair
    errors = catch_errors(loop)
    transport, protocol = wrap(loop, a)
    a.fail["send"] = exc
    transport.write(b"x")
    assert run(loop, protocol.lost) is exc
    assert len(errors) == (0 if isinstance(exc, OSError) else 1)


def test_write_error_while_flushing_the_buffer(loop: Any, flaky_pair: Any) -> None:
    a, b = flaky_pair
    errors = catch_errors(loop)
    transport, protocol = wrap(loop, a)
    transport.write(b"x" * (1024 * 1024))
    assert transport.get_write_buffer_size() > 0
    a.fail["send"] = ValueError("bug")
    run(loop, loop.sock_recv(b, 1 << 20))  # room again: the transport tries to send
    assert isinstance(run(loop, protocol.lost), ValueError)
    assert errors[0]["message"] == "Fatal write error on socket transport"
    assert transport.get_write_buffer_size() == 0


def test_interrupted_sends_are_retried(loop: Any, flaky_pair: Any) -> None:
    a, b = flaky_pair
    transport, protocol = wrap(loop, a)

    async def main() -> None:
        a.fail["send"] = InterruptedError()
        transport.write(b"retried")
        assert transport.get_write_buffer_size() == 7
        await iterations()  # writable, but the send is interrupted again
        assert transport.get_write_buffer_size() == 7
        del a.fail["send"]
        assert await recv_exactly(loop, b, 7) == b"retried"
        transport.close()
        await protocol.lost

    run(loop, main())


@pytest.mark.parametrize("buffered", [False, True])
def test_failing_shutdown_ends_the_connection_quietly(
    loop: Any, flaky_pair: Any, buffered: bool
) -> None:
    a, b = flaky_pair
    errors = catch_errors(loop)
    transport, protocol = wrap(loop, a)
    a.fail["shutdown"] = OSError(errno.ENOTCONN, "not connected")
    if buffered:
        transport.write(b"x" * (1024 * 1024))
        transport.write_eof()
        run(loop, recv_all(loop, b))
    else:
        transport.write_eof()
    assert run(loop, protocol.lost) is a.fail["shutdown"]
    assert errors == []


@pytest.mark.parametrize(
    "where",
    [
        "recv",
        "recv_into",
        "send",
        "data_received",
        "get_buffer",
        "buffer_updated",
        "eof",
        "pause_writing",
    ],
)
def test_keyboard_interrupt_escapes_the_loop(loop: Any, flaky_pair: Any, where: str) -> None:
    a, b = flaky_pair

    class Interrupting(Recorder):
        def data_received(self, data: bytes) -> None:
            if where == "data_received":
                raise KeyboardInterrupt
            super().data_received(data)

        def eof_received(self) -> bool:
            raise KeyboardInterrupt

        def pause_writing(self) -> None:
            raise KeyboardInterrupt

    class InterruptingBuffered(BufferedRecorder):
        def get_buffer(self, sizehint: int) -> Any:
            if where == "get_buffer":
                raise KeyboardInterrupt
            return super().get_buffer(sizehint)

        def buffer_updated(self, nbytes: int) -> None:
            raise KeyboardInterrupt

    buffered = where in ("recv_into", "get_buffer", "buffer_updated")
    factory = InterruptingBuffered if buffered else Interrupting
    transport, protocol = wrap(loop, a, factory)

    def tidy() -> None:
        a.fail.clear()
        transport.abort()

    if where in ("recv", "recv_into", "send"):
        a.fail[where] = KeyboardInterrupt()
    if where in ("send", "pause_writing"):
        if where == "pause_writing":
            transport.set_write_buffer_limits(high=0)
            a.fail["send"] = BlockingIOError()
        with pytest.raises(KeyboardInterrupt):
            transport.write(b"x")
        tidy()
    else:
        if where == "eof":
            b.shutdown(socket.SHUT_WR)
        else:
            b.send(b"x")
        run_until_interrupted(loop, tidy)
    run(loop, protocol.lost)


def test_on_writable_keyboard_interrupt(loop: Any, flaky_pair: Any) -> None:
    a, _b = flaky_pair
    transport, protocol = wrap(loop, a)
    a.fail["send"] = BlockingIOError()
    transport.write(b"x")
    a.fail["send"] = KeyboardInterrupt()

    def tidy() -> None:
        a.fail.clear()
        transport.abort()

    run_until_interrupted(loop, tidy)
    run(loop, protocol.lost)


def test_transport_of_a_unix_socket(loop: Any) -> None:
    a, b = socket.socketpair()
    with a, b:
        b.setblocking(False)
        transport, protocol = wrap(loop, a)
        assert isinstance(transport, SocketTransport)
        assert transport.get_extra_info("socket").family == socket.AF_UNIX
        transport.write(b"unix")
        assert run(loop, recv_exactly(loop, b, 4)) == b"unix"
        transport.close()
        run(loop, protocol.lost)


def test_a_transports_descriptor_is_off_limits_to_add_reader(any_loop: Any) -> None:
    a, b = socket.socketpair()
    b.close()

    async def main() -> None:
        transport, _ = await any_loop.connect_accepted_socket(asyncio.Protocol, a)
        for call in (
            lambda: any_loop.add_reader(a.fileno(), print),
            lambda: any_loop.add_writer(a, print),
            lambda: any_loop.remove_reader(a),
            lambda: any_loop.remove_writer(a.fileno()),
        ):
            with pytest.raises(RuntimeError, match="is used by transport"):
                call()
        transport.close()
        assert any_loop.remove_reader(a.fileno()) is False  # a closing transport lets go

    any_loop.run_until_complete(main())
