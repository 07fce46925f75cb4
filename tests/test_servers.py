"""Servers: ``create_server``, ``create_unix_server`` and the Server they return.

Behaviour asyncio shares is checked on asyncio's loop too (``any_loop``).
Three things are checked on loopy only, because asyncio 3.11 (the oldest
supported Python) differs: ``wait_closed()`` waits for the accepted
connections (asyncio 3.12 semantics; 3.11 returns once the listening sockets
are closed), ``close_clients``/``abort_clients``/``keep_alive``/
``cleanup_socket`` (asyncio 3.13), and skipping addresses the host does not
have (asyncio 3.12).
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

import loopy.servers
from loopy.servers import Server
from tests.helpers import catch_errors, iterations, run, run_until_interrupted


def ipv6_works() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


class Accepted(asyncio.Protocol):
    """Server side: records what happens to one accepted connection."""

    def __init__(self, factory: Factory) -> None:
        self.factory = factory
        self.transport: Any = None
        self.data = bytearray()
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.factory._made(self)

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.transport.write(data)  # echo

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)


class Factory:
    """A protocol factory that keeps its protocols and lets tests await them."""

    def __init__(self) -> None:
        self.protocols: list[Accepted] = []
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def __call__(self) -> Accepted:
        return Accepted(self)

    def _made(self, protocol: Accepted) -> None:
        self.protocols.append(protocol)
        for waiter in list(self._waiters):
            if len(self.protocols) >= waiter[0]:
                self._waiters.remove(waiter)
                waiter[1].set_result(None)

    async def made(self, count: int = 1) -> Accepted:
        """Wait until ``count`` connections were made; return the last one."""
        if len(self.protocols) < count:
            future = asyncio.get_running_loop().create_future()
            self._waiters.append((count, future))
            await future
        return self.protocols[count - 1]


async def echo_once(host: Any, port: int | None = None, data: bytes = b"ping") -> bytes:
    """Connect, send ``data``, read the echo, close."""
    if port is None:
        reader, writer = await asyncio.open_unix_connection(host)
    else:
        reader, writer = await asyncio.open_connection(host, port)
    writer.write(data)
    echoed = await reader.readexactly(len(data))
    writer.close()
    await writer.wait_closed()
    return echoed


def port_of(server: Any) -> int:
    port: int = server.sockets[0].getsockname()[1]
    return port


# -- the basics -------------------------------------------------------------------


def test_server_on_port_zero(any_loop: Any) -> None:
    factory = Factory()

    async def main() -> None:
        server = await any_loop.create_server(factory, "127.0.0.1", 0)
        assert server.is_serving()
        assert server.get_loop() is any_loop
        (sock,) = server.sockets
        host, port = sock.getsockname()
        assert host == "127.0.0.1"
        assert port != 0
        assert sock.family == socket.AF_INET
        assert sock.type == socket.SOCK_STREAM
        assert "sockets=" in repr(server)
        assert await echo_once("127.0.0.1", port) == b"ping"
        assert await factory.protocols[0].lost is None
        server.close()
        server.close()  # idempotent
        assert not server.is_serving()
        assert server.sockets == ()
        await server.wait_closed()
        await server.wait_closed()

    run(any_loop, main())


def test_several_hosts(any_loop: Any) -> None:
    if not ipv6_works():
        pytest.skip("IPv6 is not available on this host")

    async def main() -> None:
        server = await any_loop.create_server(Factory(), ["127.0.0.1", "::1"], 0)
        addresses = {sock.family: sock.getsockname() for sock in server.sockets}
        assert set(addresses) == {socket.AF_INET, socket.AF_INET6}
        for address in addresses.values():
            assert await echo_once(address[0], address[1]) == b"ping"
        server.close()
        await server.wait_closed()

    run(any_loop, main())


def test_all_interfaces(any_loop: Any) -> None:
    async def main() -> None:
        server = await any_loop.create_server(Factory(), "", 0, family=socket.AF_INET)
        assert [sock.getsockname()[0] for sock in server.sockets] == ["0.0.0.0"]
        assert await echo_once("127.0.0.1", port_of(server)) == b"ping"
        server.close()
        await server.wait_closed()

    run(any_loop, main())


def test_reuse_port(any_loop: Any) -> None:
    async def main() -> None:
        first = await any_loop.create_server(Factory(), "127.0.0.1", 0, reuse_port=True)
        port = port_of(first)
        second = await any_loop.create_server(Factory(), "127.0.0.1", port, reuse_port=True)
        assert port_of(second) == port
        for server in (first, second):
            opt = server.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
            assert opt
            server.close()
            await server.wait_closed()

    run(any_loop, main())


def test_reuse_address(any_loop: Any) -> None:
    async def main() -> None:
        for reuse, expected in ((None, True), (True, True), (False, False)):
            server = await any_loop.create_server(Factory(), "127.0.0.1", 0, reuse_address=reuse)
            opt = server.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
            assert bool(opt) is expected
            server.close()
            await server.wait_closed()

    run(any_loop, main())


def test_small_backlog_still_accepts_everyone(any_loop: Any) -> None:
    factory = Factory()

    async def main() -> None:
        server = await any_loop.create_server(factory, "127.0.0.1", 0, backlog=1)
        port = port_of(server)
        # One at a time: a full queue of a listen(1) socket drops SYNs, and
        # the kernel retries them only a second later.
        for i in range(4):
            assert await echo_once("127.0.0.1", port, b"%d" % i) == b"%d" % i
        server.close()
        await server.wait_closed()

    run(any_loop, main())
    assert len(factory.protocols) == 4


def test_start_serving_later(any_loop: Any) -> None:
    async def main() -> None:
        server = await any_loop.create_server(Factory(), "127.0.0.1", 0, start_serving=False)
        assert not server.is_serving()
        port = port_of(server)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)  # bound, not listening
        await server.start_serving()
        await server.start_serving()  # twice is fine
        assert server.is_serving()
        assert await echo_once("127.0.0.1", port) == b"ping"
        server.close()
        await server.wait_closed()

    run(any_loop, main())


def test_start_serving_a_closed_server(loop: Any) -> None:
    # asyncio 3.11 fails here with a TypeError from its internals.
    async def main() -> None:
        server = await loop.create_server(Factory(), "127.0.0.1", 0, start_serving=False)
        server.close()
        await server.start_serving()
        assert not server.is_serving()
        await server.wait_closed()

    run(loop, main())


def test_serve_forever(any_loop: Any) -> None:
    async def main() -> None:
        server = await any_loop.create_server(Factory(), "127.0.0.1", 0, start_serving=False)
        port = port_of(server)
        serving = asyncio.ensure_future(server.serve_forever())
        await iterations(1)
        assert server.is_serving()
        assert await echo_once("127.0.0.1", port) == b"ping"
        with pytest.raises(RuntimeError, match="already being awaited"):
            await server.serve_forever()
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
        assert not server.is_serving()
        assert server.sockets == ()
        with pytest.raises(RuntimeError, match="is closed"):
            await server.serve_forever()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)

    run(any_loop, main())


def test_close_ends_serve_forever(any_loop: Any) -> None:
    async def main() -> None:
        server = await any_loop.create_server(Factory(), "127.0.0.1", 0)
        serving = asyncio.ensure_future(server.serve_forever())
        await iterations(1)
        server.close()
        with pytest.raises(asyncio.CancelledError):
            await serving

    run(any_loop, main())


def test_async_with(any_loop: Any) -> None:
    async def main() -> None:
        server = await any_loop.create_server(Factory(), "127.0.0.1", 0)
        async with server as entered:
            assert entered is server
            assert server.is_serving()
        assert not server.is_serving()
        assert server.sockets == ()

    run(any_loop, main())


def test_bind_error_names_the_address(any_loop: Any) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(OSError, match="error while attempting to bind on address") as info:
            run(any_loop, any_loop.create_server(Factory(), "127.0.0.1", port))
    assert info.value.errno == errno.EADDRINUSE
    assert f"('127.0.0.1', {port})" in str(info.value)


def test_address_this_host_does_not_have(loop: Any) -> None:
    # 192.0.2.1 is TEST-NET-1: bind() fails with EADDRNOTAVAIL.  Such an
    # address is skipped (as "::1" must be where IPv6 is off); with nothing
    # left, the error says which addresses were tried.
    with pytest.raises(
        OSError, match=r"could not bind on any address out of \[\('192.0.2.1', 0\)\]"
    ):
        run(loop, loop.create_server(Factory(), "192.0.2.1", 0))


def test_unusable_address_is_skipped(loop: Any) -> None:
    async def main() -> None:
        server = await loop.create_server(Factory(), ["192.0.2.1", "127.0.0.1"], 0)
        assert [sock.getsockname()[0] for sock in server.sockets] == ["127.0.0.1"]
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_unsupported_family_is_skipped(loop: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    async def getaddrinfo(host: Any, port: Any, **kwargs: Any) -> list[Any]:
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 12345, "", ("127.0.0.2", 0)),  # no such protocol
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 0)),
        ]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)

    async def main() -> None:
        server = await loop.create_server(Factory(), "example.test", 0)
        assert len(server.sockets) == 1
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_getaddrinfo_returning_nothing(any_loop: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    async def getaddrinfo(host: Any, port: Any, **kwargs: Any) -> list[Any]:
        return []

    monkeypatch.setattr(any_loop, "getaddrinfo", getaddrinfo)
    with pytest.raises(OSError, match=r"getaddrinfo\('example.test'\) returned empty list"):
        run(any_loop, any_loop.create_server(Factory(), "example.test", 0))


def test_existing_socket(any_loop: Any) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))

    async def main() -> None:
        server = await any_loop.create_server(Factory(), sock=sock)
        assert server.sockets[0].fileno() == sock.fileno()
        assert await echo_once("127.0.0.1", port_of(server)) == b"ping"
        server.close()
        await server.wait_closed()

    run(any_loop, main())
    assert sock.fileno() == -1  # the server owns it, and closed it


def test_argument_errors(any_loop: Any) -> None:
    with socket.socket(type=socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
        with pytest.raises(ValueError, match="A Stream Socket was expected"):
            run(any_loop, any_loop.create_server(Factory(), sock=udp))
        with pytest.raises(ValueError, match="can not be specified at the same time"):
            run(any_loop, any_loop.create_server(Factory(), "127.0.0.1", 0, sock=tcp))
        with pytest.raises(ValueError, match="Neither host/port nor sock"):
            run(any_loop, any_loop.create_server(Factory()))
        with pytest.raises(TypeError, match="SSLContext or None"):
            run(any_loop, any_loop.create_server(Factory(), sock=tcp, ssl=True))
        # Checked before binding: no socket may be left behind (the test
        # would fail on its ResourceWarning).
        with pytest.raises(ValueError, match="ssl_handshake_timeout is only meaningful"):
            run(
                any_loop, any_loop.create_server(Factory(), "127.0.0.1", 0, ssl_handshake_timeout=1)
            )
        with pytest.raises(ValueError, match="ssl_shutdown_timeout is only meaningful"):
            run(any_loop, any_loop.create_server(Factory(), "127.0.0.1", 0, ssl_shutdown_timeout=1))


def test_ssl_must_be_a_context(loop: Any) -> None:
    # asyncio accepts this and fails on the first connection.
    with pytest.raises(TypeError, match="SSLContext or None"):
        run(loop, loop.create_server(Factory(), "127.0.0.1", 0, ssl="yes please"))


# -- closing and its connections (asyncio 3.12+ semantics) ----------------------------------


def test_wait_closed_waits_for_the_connections(loop: Any) -> None:
    factory = Factory()

    async def main() -> None:
        server = await loop.create_server(factory, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
        accepted = await factory.made()
        early = asyncio.ensure_future(server.wait_closed())  # before close(): waits too
        await iterations()
        assert not early.done()
        server.close()
        late = asyncio.ensure_future(server.wait_closed())
        await iterations()
        assert not early.done()
        assert not late.done()
        # The accepted connection still works after close().
        writer.write(b"still here")
        assert await reader.readexactly(10) == b"still here"
        writer.close()
        await writer.wait_closed()
        await accepted.lost
        await early
        await late
        await server.wait_closed()  # all gone: returns at once

    run(loop, main())


def test_cancelled_wait_closed(loop: Any) -> None:
    async def main() -> None:
        server = await loop.create_server(Factory(), "127.0.0.1", 0)
        waiting = asyncio.ensure_future(server.wait_closed())
        await iterations(1)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_close_clients(loop: Any) -> None:
    factory = Factory()

    async def main() -> None:
        server = await loop.create_server(factory, "127.0.0.1", 0)
        port = port_of(server)
        clients = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        await factory.made(2)
        factory.protocols[0].transport.write(b"goodbye")
        server.close()
        server.close_clients()
        for reader, _ in clients:
            assert await reader.read() in (b"", b"goodbye")
        assert (await clients[0][0].read()) == b""
        await server.wait_closed()
        for _, writer in clients:
            writer.close()
            await writer.wait_closed()

    run(loop, main())


@pytest.mark.parametrize("how", ["close_clients", "abort_clients"])
def test_close_clients_flushes_and_abort_clients_does_not(
    loop: Any, tmp_path: Path, how: str
) -> None:
    factory = Factory()
    payload = os.urandom(1024 * 1024)
    path = tmp_path / "clients.sock"

    async def main() -> None:
        server = await loop.create_unix_server(factory, path)
        reader, writer = await asyncio.open_unix_connection(path)
        accepted = await factory.made()
        sock = accepted.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        accepted.transport.write(payload)
        assert accepted.transport.get_write_buffer_size() > 0
        server.close()
        getattr(server, how)()
        received = await reader.read()
        if how == "close_clients":
            assert received == payload
        else:
            assert len(received) < len(payload)
        await server.wait_closed()
        writer.close()
        await writer.wait_closed()

    run(loop, main())


def test_keep_alive(loop: Any) -> None:
    factory = Factory()

    async def main() -> None:
        server = await loop.create_server(factory, "127.0.0.1", 0, keep_alive=True)
        _reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
        accepted = await factory.made()
        sock = accepted.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_failing_protocol_factory(loop: Any) -> None:
    # asyncio reports this only in debug mode (and leaks the socket);
    # loopy closes the connection and always reports.
    errors = catch_errors(loop)

    def factory() -> asyncio.Protocol:
        raise ZeroDivisionError("no protocol for you")

    async def main() -> None:
        server = await loop.create_server(factory, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
        assert await reader.read() == b""  # closed at once
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop, main())
    assert [e["message"] for e in errors] == ["Error setting up an accepted connection"]
    assert isinstance(errors[0]["exception"], ZeroDivisionError)


def test_keyboard_interrupt_in_protocol_factory(loop: Any) -> None:
    def factory() -> asyncio.Protocol:
        raise KeyboardInterrupt

    server = run(loop, loop.create_server(factory, "127.0.0.1", 0))
    with socket.create_connection(server.sockets[0].getsockname()):
        run_until_interrupted(loop, server.close)
    run(loop, server.wait_closed())


# -- accept() failures ---------------------------------------------------------------


class FailingListener(socket.socket):
    """A listening socket whose accept() raises ``self.error`` while it is set."""

    error: OSError | None = None
    attempts = 0

    def accept(self) -> tuple[socket.socket, Any]:
        self.attempts += 1
        if self.error is not None:
            raise self.error
        return super().accept()


def server_log(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What servers.py logged (other tests' garbage may log too, when collected)."""
    return [r.getMessage() for r in caplog.records if r.pathname == loopy.servers.__file__]


def failing_listener() -> FailingListener:
    sock = FailingListener()
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def test_out_of_descriptors_pauses_and_logs_once(
    vloop: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # On a virtual clock: the retries happen at once, in virtual seconds.
    listeners = [failing_listener(), failing_listener()]
    factory = Factory()

    async def main() -> None:
        server = Server(vloop, listeners, factory, 100, vloop._plain_transport)
        await server.start_serving()
        for listener in listeners:
            listener.error = OSError(errno.EMFILE, "Too many open files")
        clients = [socket.create_connection(s.getsockname()) for s in listeners]
        try:
            while sum(listener.attempts for listener in listeners) < 5:
                await asyncio.sleep(0.5)  # virtual time: several retries
            assert server.is_serving()  # paused, not stopped
            assert server._loop._timers.count >= 1
            for listener in listeners:
                listener.error = None
            await factory.made(2)
        finally:
            for client in clients:
                client.close()
        for protocol in factory.protocols:
            await protocol.lost
        server.close()
        await server.wait_closed()

    caplog.set_level(logging.WARNING, logger="loopy")
    run(vloop, main())
    messages = server_log(caplog)
    assert len(messages) == 2
    assert "accept() failed" in messages[0]
    assert "Too many open files" in messages[0]
    assert "Accepting connections again" in messages[1]


def test_close_during_an_outage(vloop: Any, caplog: pytest.LogCaptureFixture) -> None:
    listener = failing_listener()
    listener.error = OSError(errno.ENFILE, "Too many open files in system")

    async def main() -> None:
        server = Server(vloop, [listener], Factory(), 100, vloop._plain_transport)
        await server.start_serving()
        with socket.create_connection(listener.getsockname()):
            while not listener.attempts:
                await asyncio.sleep(0)
        assert server._retry is not None
        server.close()
        assert server._retry is None
        await server.wait_closed()

    caplog.set_level(logging.WARNING, logger="loopy")
    run(vloop, main())
    assert len(server_log(caplog)) == 1


def test_other_accept_errors_are_reported(loop: Any) -> None:
    errors = catch_errors(loop)
    listener = failing_listener()
    listener.error = OSError(errno.EPERM, "Operation not permitted")

    async def main() -> None:
        server = await loop.create_server(Factory(), sock=listener)
        with socket.create_connection(listener.getsockname()):
            while not errors:
                await asyncio.sleep(0)
        server.close()
        await server.wait_closed()

    run(loop, main())
    assert errors[0]["message"] == "socket.accept() failed"
    assert errors[0]["exception"] is listener.error


def test_aborted_connections_are_skipped(loop: Any) -> None:
    listener = failing_listener()
    listener.error = ConnectionAbortedError()
    factory = Factory()

    async def main() -> None:
        server = await loop.create_server(factory, sock=listener)
        with socket.create_connection(listener.getsockname()):
            while not listener.attempts:
                await asyncio.sleep(0)
            listener.error = None
            await factory.made()
        await factory.protocols[0].lost
        server.close()
        await server.wait_closed()

    run(loop, main())


EMFILE_CHILD = """
import asyncio, errno, json, logging, os, resource, socket, sys, time

import loopy, loopy.servers

loopy.servers.ACCEPT_RETRY_DELAY = 0.25  # several retries within the outage


class Capture(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []
        self.waiters = []

    def emit(self, record):
        self.messages.append(record.getMessage())
        for text, future in self.waiters:
            if text in record.getMessage() and not future.done():
                future.set_result(None)

    def seen(self, text):
        future = asyncio.get_running_loop().create_future()
        self.waiters.append((text, future))
        return asyncio.wait_for(future, 10)


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def main():
    capture = Capture()
    logging.getLogger("loopy").addHandler(capture)
    accepted = []
    server = await asyncio.get_running_loop().create_server(
        lambda: accepted.append(1) or asyncio.Protocol(), "127.0.0.1", 0
    )
    address = server.sockets[0].getsockname()
    outage = capture.seen("accept() failed")
    resumed = capture.seen("Accepting connections again")
    # accept() needs a free descriptor even to find the queue empty: keep a
    # few spare ones to give back, so that the last accept() says EAGAIN.
    spare = [os.open(os.devnull, os.O_RDONLY) for _ in range(4)]
    clients = []
    while True:  # use up every descriptor; the server cannot accept these
        try:
            client = socket.socket()
        except OSError as exc:
            assert exc.errno == errno.EMFILE, exc
            break
        client.setblocking(False)
        client.connect_ex(address)
        clients.append(client)
    await outage
    before = cpu_seconds()
    started = time.monotonic()
    await asyncio.sleep(1.5)  # the outage goes on: measure what it costs
    cpu = cpu_seconds() - before
    wall = time.monotonic() - started
    warnings_during_outage = sum("accept() failed" in m for m in capture.messages)
    for client in clients:
        client.close()
    for fd in spare:
        os.close(fd)
    await resumed
    while len(accepted) < len(clients):
        await asyncio.sleep(0.01)
    server.close()
    await server.wait_closed()
    print(json.dumps({
        "clients": len(clients),
        "accepted": len(accepted),
        "warnings": warnings_during_outage,
        "messages": capture.messages,
        "cpu": cpu,
        "wall": wall,
    }))


soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
loopy.run(main())
"""


def test_out_of_descriptors_for_real(tmp_path: Path) -> None:
    # RLIMIT_NOFILE is lowered in a child process, never in pytest's own.
    script = tmp_path / "emfile.py"
    script.write_text(textwrap.dedent(EMFILE_CHILD))
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["clients"] > 10
    assert report["accepted"] == report["clients"]  # nobody was turned away
    assert report["warnings"] == 1  # once per outage, not once per retry
    assert sum("accept() failed" in m for m in report["messages"]) == 1
    assert sum("Accepting connections again" in m for m in report["messages"]) == 1
    assert report["wall"] >= 1.4
    assert report["cpu"] < 0.5, report  # no busy loop on a readable listener


# -- Unix sockets -------------------------------------------------------------------


def test_unix_server_and_connection(any_loop: Any, tmp_path: Path) -> None:
    path = tmp_path / "server.sock"

    async def main() -> None:
        server = await any_loop.create_unix_server(Factory(), path)
        assert server.sockets[0].getsockname() == str(path)
        assert server.sockets[0].family == socket.AF_UNIX
        transport, _protocol = await any_loop.create_unix_connection(asyncio.Protocol, path)
        assert transport.get_extra_info("peername") == str(path)
        transport.close()
        assert await echo_once(str(path)) == b"ping"
        server.close()
        await server.wait_closed()

    run(any_loop, main())


def test_stale_socket_file_is_replaced(any_loop: Any, tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as old:
        old.bind(str(path))  # a crashed server's leftover
    assert path.exists()

    async def main() -> None:
        server = await any_loop.create_unix_server(Factory(), str(path))
        assert await echo_once(str(path)) == b"ping"
        server.close()
        await server.wait_closed()

    run(any_loop, main())


def test_other_files_are_not_replaced(any_loop: Any, tmp_path: Path) -> None:
    path = tmp_path / "precious.txt"
    path.write_text("not a socket")
    with pytest.raises(OSError, match="already in use"):
        run(any_loop, any_loop.create_unix_server(Factory(), str(path)))
    assert path.read_text() == "not a socket"


def test_unix_bind_errors_pass_through(any_loop: Any, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        run(any_loop, any_loop.create_unix_server(Factory(), str(tmp_path / "no" / "dir.sock")))


def test_abstract_unix_socket(any_loop: Any) -> None:
    name = f"\0loopy-test-{uuid.uuid4().hex}"

    async def main() -> None:
        server = await any_loop.create_unix_server(Factory(), name)
        assert await echo_once(name) == b"ping"
        server.close()
        await server.wait_closed()

    run(any_loop, main())


def test_unix_server_on_an_existing_socket(any_loop: Any, tmp_path: Path) -> None:
    path = str(tmp_path / "given.sock")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(path)

    async def main() -> None:
        server = await any_loop.create_unix_server(Factory(), sock=sock, start_serving=False)
        assert not server.is_serving()
        await server.start_serving()
        assert await echo_once(path) == b"ping"
        server.close()
        await server.wait_closed()

    run(any_loop, main())


def test_unix_argument_errors(any_loop: Any, tmp_path: Path) -> None:
    path = tmp_path / "never.sock"
    with socket.socket(socket.AF_UNIX) as unix, socket.socket() as tcp:
        with pytest.raises(ValueError, match="can not be specified at the same time"):
            run(any_loop, any_loop.create_unix_server(Factory(), str(path), sock=unix))
        with pytest.raises(ValueError, match="path was not specified"):
            run(any_loop, any_loop.create_unix_server(Factory()))
        with pytest.raises(ValueError, match="UNIX Domain Stream Socket was expected"):
            run(any_loop, any_loop.create_unix_server(Factory(), sock=tcp))
        with pytest.raises(TypeError, match="SSLContext or None"):
            run(any_loop, any_loop.create_unix_server(Factory(), str(path), ssl=True))
        with pytest.raises(ValueError, match="ssl_handshake_timeout is only meaningful"):
            run(
                any_loop,
                any_loop.create_unix_server(Factory(), str(path), ssl_handshake_timeout=1),
            )
    assert not path.exists()


def test_unix_socket_file_is_removed_on_close(loop: Any, tmp_path: Path) -> None:
    path = tmp_path / "cleanup.sock"

    async def main() -> None:
        server = await loop.create_unix_server(Factory(), path, cleanup_socket=True)
        assert path.exists()
        server.close()
        assert not path.exists()
        await server.wait_closed()

        kept = await loop.create_unix_server(Factory(), path, cleanup_socket=False)
        kept.close()
        assert path.exists()
        await kept.wait_closed()

        path.unlink()
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        given = await loop.create_unix_server(Factory(), sock=sock, cleanup_socket=True)
        given.close()
        assert not path.exists()
        await given.wait_closed()

        # By default, what the running Python's asyncio does (3.13 added the cleanup).
        default = await loop.create_unix_server(Factory(), path)
        default.close()
        await default.wait_closed()
        assert path.exists() is (sys.version_info < (3, 13))

    run(loop, main())


def test_socket_file_of_a_newer_server_is_left_alone(loop: Any, tmp_path: Path) -> None:
    # A restart: the new server replaces the old one's file before the old
    # one has closed.  Closing the old server must not unlink the new file.
    path = tmp_path / "restart.sock"

    async def main() -> None:
        old = await loop.create_unix_server(Factory(), path, cleanup_socket=True)
        new = await loop.create_unix_server(Factory(), path, cleanup_socket=True)
        old.close()
        await old.wait_closed()
        assert path.exists()
        assert await echo_once(str(path)) == b"ping"
        new.close()
        await new.wait_closed()
        assert not path.exists()

    run(loop, main())


def test_socket_file_removed_by_someone_else(loop: Any, tmp_path: Path) -> None:
    path = tmp_path / "gone.sock"

    async def main() -> None:
        server = await loop.create_unix_server(Factory(), path, cleanup_socket=True)
        path.unlink()
        server.close()  # nothing to remove, and no error
        await server.wait_closed()

    run(loop, main())


def test_socket_file_that_cannot_be_removed(
    loop: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "stuck.sock"

    def refuse(path: Any) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    async def main() -> None:
        server = await loop.create_unix_server(Factory(), path, cleanup_socket=True)
        monkeypatch.setattr(loopy.servers.os, "remove", refuse)
        server.close()
        await server.wait_closed()

    run(loop, main())
    # asyncio's message (3.13+), on asyncio's logger.
    [record] = [r for r in caplog.records if "Unable to clean up" in r.getMessage()]
    assert record.name == "asyncio"
    assert record.getMessage().startswith("Unable to clean up listening UNIX socket")


def test_unbound_unix_socket_has_no_file(loop: Any) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind("")  # Linux: an autobound abstract name

    async def main() -> None:
        server = await loop.create_unix_server(Factory(), sock=sock, cleanup_socket=True)
        assert server._socket_file is None
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_unix_socket_file_deleted_before_serving(loop: Any, tmp_path: Path) -> None:
    path = tmp_path / "deleted.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    path.unlink()

    async def main() -> None:
        server = await loop.create_unix_server(Factory(), sock=sock, cleanup_socket=True)
        assert server._socket_file is None
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_unix_server_on_a_path_that_cannot_be_checked(
    loop: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")
    below_a_file = str(a_file / "socket")  # stat() fails: not a directory
    with pytest.raises(OSError):
        run(loop, loop.create_unix_server(Factory(), below_a_file))
    # Logged, and bind() had the last word, as for datagram endpoints.
    [record] = [r for r in caplog.records if "stale" in r.getMessage()]
    assert record.name == "asyncio"
    assert record.getMessage().startswith("Unable to check or remove stale UNIX socket")
