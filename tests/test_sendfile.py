"""``sock_sendfile`` and ``sendfile``: native ``os.sendfile``, the fallbacks, and their errors."""

from __future__ import annotations

import asyncio
import io
import os
import selectors
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

import loopy.sendfile

DATA = os.urandom(3 * 1024 * 1024 + 17)  # larger than a socket buffer: sending must wait


@pytest.fixture
def data_file(tmp_path: Path) -> Iterator[Any]:
    path = tmp_path / "data.bin"
    path.write_bytes(DATA)
    with path.open("rb") as file:
        yield file


async def receive_all(loop: Any, sock: socket.socket) -> bytes:
    chunks = []
    while chunk := await loop.sock_recv(sock, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def send_and_receive(loop: Any, pair: Any, coro_factory: Any) -> tuple[Any, bytes]:
    a, b = pair

    async def main() -> tuple[Any, bytes]:
        receiver = asyncio.ensure_future(receive_all(loop, b))
        result = await coro_factory(a)
        a.shutdown(socket.SHUT_WR)
        return result, await receiver

    return loop.run_until_complete(main())  # type: ignore[no-any-return]


# -- sock_sendfile ---------------------------------------------------------------


def test_sock_sendfile_sends_the_whole_file(any_loop: Any, pair: Any, data_file: Any) -> None:
    sent, received = send_and_receive(
        any_loop, pair, lambda sock: any_loop.sock_sendfile(sock, data_file)
    )
    assert sent == len(DATA)
    assert received == DATA
    assert data_file.tell() == len(DATA)


def test_sock_sendfile_with_offset_and_count(any_loop: Any, pair: Any, data_file: Any) -> None:
    sent, received = send_and_receive(
        any_loop, pair, lambda sock: any_loop.sock_sendfile(sock, data_file, 1000, 70000)
    )
    assert sent == 70000
    assert received == DATA[1000:71000]
    assert data_file.tell() == 71000


def test_sock_sendfile_of_an_empty_file(any_loop: Any, pair: Any, tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    with (tmp_path / "empty").open("rb") as empty:
        sent, received = send_and_receive(
            any_loop, pair, lambda sock: any_loop.sock_sendfile(sock, empty)
        )
    assert (sent, received) == (0, b"")


def test_sock_sendfile_falls_back_for_a_file_without_descriptor(any_loop: Any, pair: Any) -> None:
    file = io.BytesIO(DATA)
    sent, received = send_and_receive(
        any_loop, pair, lambda sock: any_loop.sock_sendfile(sock, file, 5, 300000)
    )
    assert sent == 300000
    assert received == DATA[5:300005]
    assert file.tell() == 300005


def test_sock_sendfile_without_fallback_says_why(any_loop: Any, pair: Any) -> None:
    a, _ = pair
    with pytest.raises(asyncio.SendfileNotAvailableError, match="not a regular file"):
        any_loop.run_until_complete(any_loop.sock_sendfile(a, io.BytesIO(b"x"), fallback=False))


def test_sock_sendfile_falls_back_when_os_sendfile_fails(
    any_loop: Any, pair: Any, data_file: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any) -> int:
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "sendfile", refuse)
    sent, received = send_and_receive(
        any_loop, pair, lambda sock: any_loop.sock_sendfile(sock, data_file, 0, 1000)
    )
    assert (sent, received) == (1000, DATA[:1000])


def test_sock_sendfile_error_after_some_bytes_is_raised(
    loop: Any, pair: Any, data_file: Any
) -> None:
    a, b = pair

    async def main() -> None:
        task = asyncio.ensure_future(loop.sock_sendfile(a, data_file))
        await asyncio.sleep(0.01)  # the socket buffer is full by now: it waits
        assert not task.done()
        b.close()
        await task

    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        loop.run_until_complete(main())
    assert 0 < data_file.tell() < len(DATA)


@pytest.mark.parametrize(
    ("offset", "count", "error", "message"),
    [
        (0, 0, ValueError, "count must be a positive integer"),
        (0, -1, ValueError, "count must be a positive integer"),
        (0, 1.5, TypeError, "count must be a positive integer"),
        (-1, None, ValueError, "offset must be a non-negative integer"),
        ("0", None, TypeError, "offset must be a non-negative integer"),
    ],
)
def test_sock_sendfile_checks_its_arguments(
    any_loop: Any, pair: Any, data_file: Any, offset: Any, count: Any, error: Any, message: str
) -> None:
    a, _ = pair
    with pytest.raises(error, match=message):
        any_loop.run_until_complete(any_loop.sock_sendfile(a, data_file, offset, count))


def test_sock_sendfile_refuses_text_files_and_datagram_sockets(
    any_loop: Any, pair: Any, data_file: Any, tmp_path: Path
) -> None:
    a, _ = pair
    (tmp_path / "text").write_text("text")
    with (tmp_path / "text").open() as text, pytest.raises(ValueError, match="binary mode"):
        any_loop.run_until_complete(any_loop.sock_sendfile(a, text))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setblocking(False)
    with udp, pytest.raises(ValueError, match="only SOCK_STREAM"):
        any_loop.run_until_complete(any_loop.sock_sendfile(udp, data_file))


def test_sock_sendfile_refuses_a_blocking_socket(loop: Any, data_file: Any) -> None:
    a, b = socket.socketpair()
    with a, b, pytest.raises(ValueError, match="non-blocking"):
        loop.run_until_complete(loop.sock_sendfile(a, data_file))


# -- sendfile over a transport ------------------------------------------------------


class Collector(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def serve_and_connect(
    loop: Any, server_ssl: Any = None, client_ssl: Any = None
) -> tuple[Any, Collector, Any]:
    collectors: list[Collector] = []

    def factory() -> Collector:
        collectors.append(Collector())
        return collectors[-1]

    server = await loop.create_server(factory, "127.0.0.1", 0, ssl=server_ssl)
    port = server.sockets[0].getsockname()[1]
    transport, _ = await loop.create_connection(
        asyncio.Protocol,
        "127.0.0.1",
        port,
        ssl=client_ssl,
        server_hostname="localhost" if client_ssl else None,
    )
    while not collectors:
        await asyncio.sleep(0)
    return server, collectors[0], transport


def transfer(loop: Any, send: Any, server_ssl: Any = None, client_ssl: Any = None) -> bytes:
    async def main() -> bytes:
        server, collector, transport = await serve_and_connect(loop, server_ssl, client_ssl)
        try:
            await send(transport)
            transport.close()
            await collector.done
            return bytes(collector.data)
        finally:
            server.close()
            await server.wait_closed()

    return loop.run_until_complete(main())  # type: ignore[no-any-return]


def test_sendfile_with_data_before_and_after(any_loop: Any, data_file: Any) -> None:
    async def send(transport: Any) -> None:
        transport.write(b"before:" * 50000)  # some of it is still buffered
        assert await any_loop.sendfile(transport, data_file) == len(DATA)
        transport.write(b":after")

    assert transfer(any_loop, send) == b"before:" * 50000 + DATA + b":after"


def test_sendfile_refuses_write_while_it_runs(loop: Any, data_file: Any) -> None:
    errors: list[str] = []

    filler = b"f" * (8 * 1024 * 1024)  # more than the kernel takes at once

    async def send(transport: Any) -> None:
        transport.write(filler)
        task = asyncio.ensure_future(loop.sendfile(transport, data_file))
        await asyncio.sleep(0)  # sendfile now waits for the filler to drain
        try:
            transport.write(b"sneaky")
        except RuntimeError as exc:
            errors.append(str(exc))
        await task

    assert transfer(loop, send) == filler + DATA
    assert errors == ["unable to write; sendfile is in progress"]


def test_sendfile_falls_back_over_tls(any_loop: Any, data_file: Any) -> None:
    authority = trustme.CA()
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(server_ssl)
    client_ssl = ssl.create_default_context()
    authority.configure_trust(client_ssl)

    async def send(transport: Any) -> None:
        assert await any_loop.sendfile(transport, data_file, 10, 1_000_000) == 1_000_000
        with pytest.raises(RuntimeError, match="fallback is disabled"):
            await any_loop.sendfile(transport, data_file, fallback=False)

    assert transfer(any_loop, send, server_ssl, client_ssl) == DATA[10:1_000_010]
    assert data_file.tell() == 1_000_010


def test_sendfile_native_only_when_the_file_allows_it(loop: Any) -> None:
    async def send(transport: Any) -> None:
        with pytest.raises(asyncio.SendfileNotAvailableError):
            await loop.sendfile(transport, io.BytesIO(b"abc"), fallback=False)
        assert await loop.sendfile(transport, io.BytesIO(b"abc")) == 3

    assert transfer(loop, send) == b"abc"


def test_sendfile_on_a_closing_or_unsupported_transport(any_loop: Any, data_file: Any) -> None:
    class NoSendfile(asyncio.WriteTransport):
        def is_closing(self) -> bool:
            return False

    async def main() -> None:
        server, collector, transport = await serve_and_connect(any_loop)
        transport.close()
        with pytest.raises(RuntimeError, match="Transport is closing"):
            await any_loop.sendfile(transport, data_file)
        with pytest.raises(RuntimeError, match="not supported"):
            await any_loop.sendfile(NoSendfile(), data_file)
        await collector.done  # the server's side saw the close
        server.close()
        await server.wait_closed()

    any_loop.run_until_complete(main())


def test_sendfile_fails_cleanly_when_the_peer_goes_away(loop: Any, tmp_path: Path) -> None:
    path = tmp_path / "huge"
    with path.open("wb") as file:
        file.truncate(64 * 1024 * 1024)  # more than every buffer on the way holds

    async def main() -> None:
        server, collector, transport = await serve_and_connect(loop)
        collector.transport.pause_reading()  # the peer stops reading...
        with path.open("rb") as huge:
            task = asyncio.ensure_future(loop.sendfile(transport, huge))
            while not loop._selector.get_map().get(transport._fd, None) or not (
                loop._selector.get_key(transport._fd).events & selectors.EVENT_WRITE
            ):
                await asyncio.sleep(0.001)  # ...until sendfile waits for room
            server.abort_clients()  # ...and then goes away
            with pytest.raises(ConnectionError):
                await task
        transport.close()
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())


def test_fallback_waits_while_the_transport_is_paused(loop: Any) -> None:
    """The fallback path pauses with the transport's flow control, and resumes after."""
    big = io.BytesIO(DATA)

    async def send(transport: Any) -> None:
        transport.set_write_buffer_limits(high=32 * 1024)
        assert await loop.sendfile(transport, big) == len(DATA)

    assert transfer(loop, send) == DATA


# Enough to fill the kernel's buffers on both sides, so the transport's own fills too.
BIG = DATA * 8


def test_fallback_pauses_while_the_peer_does_not_read(loop: Any) -> None:
    """Over a full transport the fallback waits for resume_writing(), then carries on."""

    async def main() -> bytes:
        server, collector, transport = await serve_and_connect(loop)
        collector.transport.pause_reading()  # the peer stops reading
        task = asyncio.ensure_future(loop.sendfile(transport, io.BytesIO(BIG)))
        while not transport._protocol_paused:  # the fallback filled the transport...
            assert not task.done()
            await asyncio.sleep(0.001)
        assert isinstance(transport.get_protocol(), loopy.sendfile._FlowWatcher)
        assert not task.done()  # ...and waits
        collector.transport.resume_reading()
        assert await task == len(BIG)
        transport.close()
        await collector.done
        server.close()
        await server.wait_closed()
        return bytes(collector.data)

    assert loop.run_until_complete(main()) == BIG


def test_fallback_fails_when_the_peer_goes_away_meanwhile(loop: Any) -> None:
    lost: list[Any] = []

    class Client(asyncio.Protocol):
        def connection_lost(self, exc: Exception | None) -> None:
            lost.append(exc)

    async def main() -> None:
        collectors: list[Collector] = []
        server = await loop.create_server(
            lambda: collectors.append(Collector()) or collectors[-1], "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        transport, _ = await loop.create_connection(Client, "127.0.0.1", port)
        while not collectors:
            await asyncio.sleep(0)
        collectors[0].transport.pause_reading()
        task = asyncio.ensure_future(loop.sendfile(transport, io.BytesIO(BIG)))
        while not transport._protocol_paused:
            assert not task.done()
            await asyncio.sleep(0.001)
        server.abort_clients()
        with pytest.raises(ConnectionError):
            await task
        transport.close()
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())
    assert len(lost) == 1  # the real protocol still heard of it, once


def test_the_stand_in_protocol_refuses_data(loop: Any) -> None:
    async def main() -> None:
        server, collector, transport = await serve_and_connect(loop)
        watcher = loopy.sendfile._FlowWatcher(transport)
        with pytest.raises(RuntimeError, match="reading should be paused"):
            watcher.data_received(b"x")
        with pytest.raises(RuntimeError, match="reading should be paused"):
            watcher.eof_received()
        watcher.restore()
        assert transport.is_reading()
        transport.close()
        await collector.done
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())
