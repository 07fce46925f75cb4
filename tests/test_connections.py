"""Client connections: name resolution, ``create_connection``, Unix sockets, TLS.

Everything asyncio also does runs on asyncio's loop too (``any_loop``).  To
put chosen addresses behind a host name, tests replace ``getaddrinfo`` on the
loop *instance* and connect to a name: asyncio short-circuits numeric hosts
itself, so a name is what makes both loops ask ``loop.getaddrinfo``.

A "black hole" is a listening socket with ``listen(0)`` whose one-slot accept
queue is already full: the kernel drops further SYNs, so a connection attempt
to it hangs (the client would retry after a second) without a firewall.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

import loopy.connections
from loopy.connections import _interleave
from tests.helpers import catch_errors, run

STREAM = socket.SOCK_STREAM


def info(address: tuple[Any, ...], family: int = socket.AF_INET, proto: int = 6) -> Any:
    return (family, STREAM, proto, "", address)


def resolve_to(loop: Any, monkeypatch: pytest.MonkeyPatch, *infos: Any) -> list[Any]:
    """Make every name ``loop`` resolves answer ``infos``; return the calls' hosts."""
    calls: list[Any] = []

    async def getaddrinfo(host: Any, port: Any, **kwargs: Any) -> list[Any]:
        calls.append(host)
        return list(infos)

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    return calls


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A listening socket that accepts nothing by itself (the kernel completes handshakes)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock
    sock.close()


@pytest.fixture
def refusing_address() -> tuple[str, int]:
    """An address on 127.0.0.1 where nothing listens: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address: tuple[str, int] = sock.getsockname()
    return address


@pytest.fixture
def black_hole() -> Iterator[tuple[str, int]]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(0)
    filler = socket.create_connection(sock.getsockname())  # fills the queue
    yield sock.getsockname()
    filler.close()
    sock.close()


class Echo(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class Client(asyncio.Protocol):
    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.data = bytearray()
        self.made = loop.create_future()
        self.lost = loop.create_future()
        self.events: list[str] = []

    def connection_made(self, transport: Any) -> None:
        self.events.append("made")
        self.transport = transport
        self.made.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.data += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")
        self.lost.set_result(exc)


async def echo_server(loop: Any, **kwargs: Any) -> tuple[Any, tuple[str, int]]:
    server = await loop.create_server(Echo, "127.0.0.1", 0, **kwargs)
    return server, server.sockets[0].getsockname()


async def close_server(server: Any) -> None:
    server.close()
    await server.wait_closed()


async def close_transport(transport: Any, protocol: Client) -> None:
    transport.close()
    await protocol.lost


# -- names ------------------------------------------------------------------------------


GETADDRINFO_CASES = [
    ("127.0.0.1", 80, {"type": STREAM}),
    ("127.0.0.1", "80", {"type": STREAM}),
    (b"127.0.0.1", b"80", {"type": STREAM}),
    ("127.0.0.1", None, {"type": socket.SOCK_DGRAM}),
    ("127.0.0.1", 80, {"type": STREAM, "family": socket.AF_INET}),
    ("127.0.0.1", 80, {"type": STREAM, "proto": socket.IPPROTO_TCP}),
    ("127.0.0.1", 80, {"type": STREAM, "flags": socket.AI_PASSIVE}),
    ("::1", 443, {"type": STREAM}),
    ("127.0.0.1", 80, {}),  # no type: one answer per type
    ("127.0.0.1", "http", {"type": STREAM}),  # a service name
    ("127.0.0.1", 70000, {"type": STREAM}),  # out of range: glibc's own answer
    ("localhost", 80, {"type": STREAM}),
    (None, 80, {"type": STREAM, "flags": socket.AI_PASSIVE}),
    ("127.0.0.1", 80, {"type": STREAM, "flags": socket.AI_CANONNAME}),
]


@pytest.mark.parametrize(("host", "port", "kwargs"), GETADDRINFO_CASES)
def test_getaddrinfo_answers_like_the_socket_module(
    any_loop: Any, host: Any, port: Any, kwargs: dict[str, int]
) -> None:
    expected = socket.getaddrinfo(host, port, **kwargs)  # type: ignore[arg-type]
    got = run(any_loop, any_loop.getaddrinfo(host, port, **kwargs))
    assert sorted(got) == sorted(expected)


@pytest.mark.parametrize(
    ("host", "port", "kwargs"),
    [
        ("127.0.0.1", -1, {"type": STREAM}),
        ("127.0.0.1", 80, {"type": STREAM, "proto": socket.IPPROTO_UDP}),
        ("::1", 80, {"type": STREAM, "family": socket.AF_INET}),
    ],
)
def test_getaddrinfo_errors_are_the_socket_modules(
    any_loop: Any, host: Any, port: Any, kwargs: dict[str, int]
) -> None:
    with pytest.raises(socket.gaierror) as expected:
        socket.getaddrinfo(host, port, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(socket.gaierror) as got:
        run(any_loop, any_loop.getaddrinfo(host, port, **kwargs))
    assert got.value.errno == expected.value.errno


def test_numeric_addresses_need_no_thread(loop: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_executor(*args: Any) -> Any:
        raise AssertionError("the executor was used")

    monkeypatch.setattr(loop, "run_in_executor", no_executor)
    for host, port, kwargs in GETADDRINFO_CASES[:9]:
        if not kwargs.get("type"):
            continue
        got = run(loop, loop.getaddrinfo(host, port, **kwargs))
        assert sorted(got) == sorted(socket.getaddrinfo(host, port, **kwargs))  # type: ignore[arg-type]
    assert loop._default_executor is None


def test_names_are_resolved_in_a_thread(loop: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    used: list[Any] = []
    real = loop.run_in_executor

    def spy(executor: Any, func: Any, *args: Any) -> Any:
        used.append(func)
        return real(executor, func, *args)

    monkeypatch.setattr(loop, "run_in_executor", spy)
    got = run(loop, loop.getaddrinfo("localhost", 80, type=STREAM))
    assert sorted(got) == sorted(socket.getaddrinfo("localhost", 80, type=STREAM))
    assert used == [socket.getaddrinfo]


def test_numeric_fast_path_corner_cases() -> None:
    numeric = loopy.connections._numeric_addrinfo
    tcp, udp = socket.IPPROTO_TCP, socket.IPPROTO_UDP
    assert numeric("127.0.0.1", 0, 0, STREAM, 0, 0) == [
        (socket.AF_INET, STREAM, tcp, "", ("127.0.0.1", 0))
    ]
    assert numeric("::1", "8", socket.AF_INET6, socket.SOCK_DGRAM, udp, 0) == [
        (socket.AF_INET6, socket.SOCK_DGRAM, udp, "", ("::1", 8, 0, 0))
    ]
    assert numeric("", 80, 0, STREAM, 0, 0) is None  # "" is not an address
    assert numeric(None, 80, 0, STREAM, 0, 0) is None
    assert numeric("example.test", 80, 0, STREAM, 0, 0) is None
    assert numeric("127.0.0.1", 1.5, 0, STREAM, 0, 0) is None
    assert numeric("127.0.0.1", "\u0663", 0, STREAM, 0, 0) is None  # a non-ASCII digit
    assert numeric("127.0.0.1", 80, 0, socket.SOCK_RAW, 0, 0) is None


def test_getnameinfo(any_loop: Any) -> None:
    flags = socket.NI_NUMERICHOST | socket.NI_NUMERICSERV
    assert run(any_loop, any_loop.getnameinfo(("127.0.0.1", 80), flags)) == ("127.0.0.1", "80")


# -- create_connection ---------------------------------------------------------------------


def test_connect_and_talk(any_loop: Any) -> None:
    async def main() -> None:
        server, address = await echo_server(any_loop)
        transport, protocol = await any_loop.create_connection(Client, *address)
        assert isinstance(transport, asyncio.Transport)
        assert transport.get_extra_info("peername") == address
        transport.write(b"hello")
        while protocol.data != b"hello":
            await asyncio.sleep(0)
        await close_transport(transport, protocol)
        await close_server(server)

    run(any_loop, main())


def test_connection_refused(any_loop: Any, refusing_address: Any) -> None:
    with pytest.raises(ConnectionRefusedError):
        run(any_loop, any_loop.create_connection(Client, *refusing_address))


def test_local_addr(any_loop: Any) -> None:
    async def main() -> None:
        server, address = await echo_server(any_loop)
        transport, protocol = await any_loop.create_connection(
            Client, *address, local_addr=("127.0.0.1", 0)
        )
        host, port = transport.get_extra_info("sockname")
        assert host == "127.0.0.1"
        assert port != 0
        await close_transport(transport, protocol)
        await close_server(server)

    run(any_loop, main())


def test_local_addr_in_use(any_loop: Any, listener: socket.socket) -> None:
    async def main() -> None:
        server, address = await echo_server(any_loop)
        with pytest.raises(OSError, match="error while attempting to bind on address"):
            await any_loop.create_connection(Client, *address, local_addr=listener.getsockname())
        await close_server(server)

    run(any_loop, main())


def test_local_addr_of_another_family(any_loop: Any) -> None:
    async def main() -> None:
        server, address = await echo_server(any_loop)
        with pytest.raises(OSError, match="no matching local address with family"):
            await any_loop.create_connection(Client, *address, local_addr=("::1", 0))
        await close_server(server)

    run(any_loop, main())


def test_resolving_to_nothing(any_loop: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    resolve_to(any_loop, monkeypatch)
    with pytest.raises(OSError, match="getaddrinfo\\(\\) returned empty list"):
        run(any_loop, any_loop.create_connection(Client, "example.test", 80))


def test_next_address_after_a_refusal(
    any_loop: Any, monkeypatch: pytest.MonkeyPatch, refusing_address: Any
) -> None:
    async def main() -> None:
        server, address = await echo_server(any_loop)
        calls = resolve_to(any_loop, monkeypatch, info(refusing_address), info(address))
        transport, protocol = await any_loop.create_connection(
            Client, "example.test", 80, interleave=1
        )
        assert calls == ["example.test"]
        assert transport.get_extra_info("peername") == address
        await close_transport(transport, protocol)
        await close_server(server)

    run(any_loop, main())


def test_unusable_address_is_one_more_error(any_loop: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        server, address = await echo_server(any_loop)
        # Protocol 12345 does not exist: socket() itself fails for it.
        resolve_to(any_loop, monkeypatch, info(address, proto=12345), info(address))
        transport, protocol = await any_loop.create_connection(Client, "example.test", 80)
        await close_transport(transport, protocol)
        resolve_to(any_loop, monkeypatch, info(address, proto=12345))
        with pytest.raises(OSError) as failure:
            await any_loop.create_connection(Client, "example.test", 80)
        assert failure.value.errno is not None
        await close_server(server)

    run(any_loop, main())


def test_happy_eyeballs_skips_a_hanging_address(
    any_loop: Any, monkeypatch: pytest.MonkeyPatch, black_hole: Any
) -> None:
    async def main() -> None:
        server, address = await echo_server(any_loop)
        resolve_to(any_loop, monkeypatch, info(black_hole), info(address))
        started = any_loop.time()
        transport, protocol = await any_loop.create_connection(
            Client, "example.test", 80, happy_eyeballs_delay=0.05
        )
        assert transport.get_extra_info("peername") == address
        assert any_loop.time() - started < 0.9  # not the SYN retry's full second
        await close_transport(transport, protocol)
        await close_server(server)

    run(any_loop, main())


def test_happy_eyeballs_when_everything_fails(
    loop: Any, monkeypatch: pytest.MonkeyPatch, refusing_address: Any
) -> None:
    resolve_to(loop, monkeypatch, info(refusing_address), info(refusing_address))
    with pytest.raises(ConnectionRefusedError):
        run(loop, loop.create_connection(Client, "example.test", 80, happy_eyeballs_delay=0.01))


def test_different_errors_are_combined(
    any_loop: Any, monkeypatch: pytest.MonkeyPatch, refusing_address: Any
) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other_address = other.getsockname()
    resolve_to(any_loop, monkeypatch, info(refusing_address), info(other_address))
    with pytest.raises(OSError, match=r"^Multiple exceptions: ") as failure:
        run(any_loop, any_loop.create_connection(Client, "example.test", 80))
    assert str(refusing_address[1]) in str(failure.value)
    assert str(other_address[1]) in str(failure.value)


def test_identical_errors_are_one(
    any_loop: Any, monkeypatch: pytest.MonkeyPatch, refusing_address: Any
) -> None:
    resolve_to(any_loop, monkeypatch, info(refusing_address), info(refusing_address))
    with pytest.raises(ConnectionRefusedError):
        run(any_loop, any_loop.create_connection(Client, "example.test", 80))


def test_all_errors(loop: Any, monkeypatch: pytest.MonkeyPatch, refusing_address: Any) -> None:
    # all_errors is asyncio 3.12's: on loopy with every Python.
    resolve_to(loop, monkeypatch, info(refusing_address), info(refusing_address))
    with pytest.raises(ExceptionGroup) as group:
        run(loop, loop.create_connection(Client, "example.test", 80, all_errors=True))
    assert len(group.value.exceptions) == 2
    assert all(isinstance(e, ConnectionRefusedError) for e in group.value.exceptions)
    resolve_to(loop, monkeypatch, info(refusing_address))
    with pytest.raises(ExceptionGroup) as group:
        run(loop, loop.create_connection(Client, "example.test", 80, all_errors=True))
    assert len(group.value.exceptions) == 1


@pytest.mark.parametrize(
    ("families", "first_count"),
    [
        ("6644", 1),
        ("6644", 2),
        ("666444", 3),
        ("464646", 1),
        ("4", 1),
        ("66", 1),
        ("6664", 5),
    ],
)
def test_interleaving_matches_asyncio(families: str, first_count: int) -> None:
    family = {"4": socket.AF_INET, "6": socket.AF_INET6}
    infos = [info(("addr", i), family[f]) for i, f in enumerate(families)]
    reference = asyncio.base_events._interleave_addrinfos(infos, first_count)  # type: ignore[attr-defined]
    assert _interleave(infos, first_count) == reference


def test_connect_existing_socket(any_loop: Any, listener: socket.socket) -> None:
    sock = socket.create_connection(listener.getsockname())
    conn, _ = listener.accept()

    async def main() -> None:
        transport, protocol = await any_loop.create_connection(Client, sock=sock)
        conn.sendall(b"from the peer")
        while protocol.data != b"from the peer":
            await asyncio.sleep(0)
        await close_transport(transport, protocol)

    with conn:
        run(any_loop, main())


def test_connect_existing_unix_socket(any_loop: Any) -> None:
    a, b = socket.socketpair()

    async def main() -> None:
        transport, protocol = await any_loop.create_connection(Client, sock=a)
        assert transport.get_extra_info("socket").family == socket.AF_UNIX
        b.sendall(b"unix")
        while protocol.data != b"unix":
            await asyncio.sleep(0)
        await close_transport(transport, protocol)

    with b:
        run(any_loop, main())


def test_cancelled_while_connecting(any_loop: Any) -> None:
    a, b = socket.socketpair()
    protocols: list[Client] = []

    def factory() -> Client:
        protocols.append(Client())
        return protocols[-1]

    async def main() -> None:
        connecting = asyncio.ensure_future(any_loop.create_connection(factory, sock=a))
        await asyncio.sleep(0)  # it made its transport and waits for it
        connecting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await connecting
        assert await protocols[0].lost is None  # closed for us
        assert protocols[0].events == ["made", "lost"]

    with b:
        run(any_loop, main())
    assert a.fileno() == -1


def test_argument_errors(any_loop: Any, client_context: ssl.SSLContext) -> None:
    create = any_loop.create_connection
    with socket.socket() as tcp, socket.socket(type=socket.SOCK_DGRAM) as udp:
        tls_sock = client_context.wrap_socket(
            socket.socket(), server_hostname="localhost", do_handshake_on_connect=False
        )
        with tls_sock:
            cases: list[tuple[Any, type[Exception], str]] = [
                (
                    create(Client, "127.0.0.1", 1, server_hostname="x"),
                    ValueError,
                    "server_hostname",
                ),
                (create(Client, "127.0.0.1", 1, ssl_handshake_timeout=1), ValueError, "handshake"),
                (create(Client, "127.0.0.1", 1, ssl_shutdown_timeout=1), ValueError, "shutdown"),
                (create(Client, sock=tcp, ssl=True), ValueError, "You must set server_hostname"),
                (create(Client, "127.0.0.1", 1, sock=tcp), ValueError, "same time"),
                (create(Client), ValueError, "no sock specified"),
                (create(Client, sock=udp), ValueError, "A Stream Socket was expected"),
                (create(Client, sock=tls_sock), TypeError, "SSLSocket"),
            ]
            for coro, error, message in cases:
                with pytest.raises(error, match=message):
                    run(any_loop, coro)


# -- Unix sockets and accepted sockets --------------------------------------------------------


def test_unix_connection(any_loop: Any, tmp_path: Path) -> None:
    path = tmp_path / "echo.sock"

    async def main() -> None:
        server = await any_loop.create_unix_server(Echo, path)
        transport, protocol = await any_loop.create_unix_connection(Client, path)
        transport.write(b"over unix")
        while protocol.data != b"over unix":
            await asyncio.sleep(0)
        await close_transport(transport, protocol)

        sock = socket.socket(socket.AF_UNIX)
        sock.connect(str(path))
        transport, protocol = await any_loop.create_unix_connection(Client, sock=sock)
        await close_transport(transport, protocol)
        await close_server(server)

    run(any_loop, main())


def test_unix_connection_errors(any_loop: Any, tmp_path: Path) -> None:
    create = any_loop.create_unix_connection
    with socket.socket(socket.AF_UNIX) as unix, socket.socket() as tcp:
        cases: list[tuple[Any, type[Exception], str]] = [
            (create(Client, str(tmp_path / "x"), sock=unix), ValueError, "same time"),
            (create(Client), ValueError, "no path and sock"),
            (create(Client, sock=tcp), ValueError, "UNIX Domain Stream Socket"),
            (create(Client, "x", server_hostname="x"), ValueError, "only meaningful with ssl"),
            (create(Client, "x", ssl=True), ValueError, "server_hostname"),
        ]
        for coro, error, message in cases:
            with pytest.raises(error, match=message):
                run(any_loop, coro)
    with pytest.raises(FileNotFoundError):
        run(any_loop, create(Client, str(tmp_path / "nobody-here.sock")))


def test_connect_accepted_socket(any_loop: Any, listener: socket.socket) -> None:
    client = socket.create_connection(listener.getsockname())
    conn, _ = listener.accept()

    async def main() -> None:
        transport, protocol = await any_loop.connect_accepted_socket(Client, conn)
        assert transport.get_extra_info("peername") == client.getsockname()
        client.sendall(b"accepted elsewhere")
        while protocol.data != b"accepted elsewhere":
            await asyncio.sleep(0)
        await close_transport(transport, protocol)

    with client:
        run(any_loop, main())


def test_connect_accepted_socket_errors(any_loop: Any, client_context: ssl.SSLContext) -> None:
    with socket.socket(type=socket.SOCK_DGRAM) as udp:
        with pytest.raises(ValueError, match="A Stream Socket was expected"):
            run(any_loop, any_loop.connect_accepted_socket(Client, udp))
    with socket.socket() as tcp:
        with pytest.raises(ValueError, match="ssl_handshake_timeout is only meaningful"):
            run(any_loop, any_loop.connect_accepted_socket(Client, tcp, ssl_handshake_timeout=1))
    with client_context.wrap_socket(
        socket.socket(), server_hostname="localhost", do_handshake_on_connect=False
    ) as tls_sock:
        with pytest.raises(TypeError, match="SSLSocket"):
            run(any_loop, any_loop.connect_accepted_socket(Client, tls_sock))


# -- TLS ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate_authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_context(certificate_authority: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate_authority.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    return context


@pytest.fixture(scope="module")
def client_context(certificate_authority: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    certificate_authority.configure_trust(context)
    return context


async def _echo_lines(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while chunk := await reader.read(1 << 16):
        writer.write(chunk)
        await writer.drain()
    writer.close()
    await writer.wait_closed()


def test_tls_echo(
    any_loop: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    payload = os.urandom(500_000)

    async def main() -> None:
        server = await asyncio.start_server(
            _echo_lines, "127.0.0.1", 0, ssl=server_context, ssl_handshake_timeout=5
        )
        host, port = server.sockets[0].getsockname()
        reader, writer = await asyncio.open_connection(
            host, port, ssl=client_context, server_hostname="localhost", ssl_handshake_timeout=5
        )
        assert writer.get_extra_info("peercert")["subjectAltName"][0] == ("DNS", "localhost")
        assert writer.get_extra_info("ssl_object").version().startswith("TLS")
        assert writer.get_extra_info("peername") == (host, port)
        writer.write(payload)
        await writer.drain()
        assert await reader.readexactly(len(payload)) == payload
        writer.close()
        await writer.wait_closed()
        await close_server(server)

    run(any_loop, main())


def test_tls_host_name_is_checked(
    any_loop: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    async def main() -> None:
        server = await asyncio.start_server(_echo_lines, "127.0.0.1", 0, ssl=server_context)
        port = server.sockets[0].getsockname()[1]
        # The host doubles as the server name: 127.0.0.1 is in the certificate...
        _reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context)
        writer.close()
        await writer.wait_closed()
        # ...and "example.test" is not.
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_context, server_hostname="example.test"
            )
        await close_server(server)

    run(any_loop, main())


def test_failed_handshake_leaves_the_server_serving(
    any_loop: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    errors = catch_errors(any_loop)

    async def main() -> None:
        server = await asyncio.start_server(_echo_lines, "127.0.0.1", 0, ssl=server_context)
        port = server.sockets[0].getsockname()[1]
        untrusting = ssl.create_default_context()  # does not know our CA
        for context in (untrusting, True):
            with pytest.raises(ssl.SSLCertVerificationError):
                await asyncio.open_connection("127.0.0.1", port, ssl=context)
        with pytest.raises(ssl.SSLCertVerificationError):  # no host name check, still no trust
            await asyncio.open_connection("127.0.0.1", port, ssl=True, server_hostname="")
        assert server.is_serving()
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_context, server_hostname="localhost"
        )
        writer.write(b"still serving")
        assert await reader.readexactly(13) == b"still serving"
        writer.close()
        await writer.wait_closed()
        await close_server(server)

    run(any_loop, main())
    assert errors == []


def test_start_tls_on_both_sides(
    any_loop: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.readline() == b"STARTTLS\n"
        writer.write(b"OK\n")
        await writer.drain()
        await writer.start_tls(server_context)
        line = await reader.readline()
        writer.write(b"secret " + line)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main() -> None:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert writer.get_extra_info("ssl_object") is None
        writer.write(b"STARTTLS\n")
        assert await reader.readline() == b"OK\n"
        await writer.start_tls(client_context, server_hostname="localhost")
        assert writer.get_extra_info("ssl_object") is not None
        writer.write(b"handshake done\n")
        assert await reader.readline() == b"secret handshake done\n"
        writer.close()
        await writer.wait_closed()
        await close_server(server)

    run(any_loop, main())


def test_start_tls_handshake_failure(
    any_loop: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    async def main() -> None:
        server_failed = any_loop.create_future()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readline()
            writer.write(b"OK\n")
            try:
                await writer.start_tls(server_context)
            except (ssl.SSLError, ConnectionError) as exc:
                server_failed.set_result(exc)
            writer.close()

        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"STARTTLS\n")
        await reader.readline()
        with pytest.raises(ssl.SSLCertVerificationError):
            await writer.start_tls(ssl.create_default_context(), server_hostname="localhost")
        assert writer.transport.is_closing()
        await server_failed
        writer.close()
        await close_server(server)

    run(any_loop, main())


def test_start_tls_argument_errors(
    any_loop: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    async def main() -> None:
        server = await asyncio.start_server(_echo_lines, "127.0.0.1", 0, ssl=server_context)
        port = server.sockets[0].getsockname()[1]
        transport, protocol = await any_loop.create_connection(Client, "127.0.0.1", port)
        with pytest.raises(TypeError, match="sslcontext is expected to be an instance"):
            await any_loop.start_tls(transport, protocol, object())
        await close_transport(transport, protocol)
        await close_server(server)

    run(any_loop, main())


def test_tls_inside_tls(
    any_loop: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    """start_tls() on a TLS connection wraps it once more (asyncio's TLS transport allows it)."""

    async def upgrade_then_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await writer.start_tls(server_context)
        await _echo_lines(reader, writer)

    async def main() -> bytes:
        server = await asyncio.start_server(upgrade_then_echo, "127.0.0.1", 0, ssl=server_context)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_context, server_hostname="localhost"
        )
        await writer.start_tls(client_context, server_hostname="localhost")
        assert isinstance(writer.get_extra_info("ssl_object"), ssl.SSLObject)
        writer.write(b"twice wrapped\n")
        line = await reader.readline()
        writer.close()
        await writer.wait_closed()
        await close_server(server)
        return line

    assert run(any_loop, main()) == b"twice wrapped\n"


def test_start_tls_refuses_transports_that_cannot_carry_it(
    loop: Any, client_context: ssl.SSLContext
) -> None:
    class Plain(asyncio.Transport):
        pass

    async def main() -> None:
        with pytest.raises(TypeError, match="is not supported by start_tls"):
            await loop.start_tls(Plain(), asyncio.Protocol(), client_context)

    run(loop, main())


def test_tls_over_unix_and_accepted_sockets(
    any_loop: Any,
    tmp_path: Path,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
    listener: socket.socket,
) -> None:
    path = tmp_path / "tls.sock"

    async def main() -> None:
        server = await asyncio.start_unix_server(_echo_lines, path, ssl=server_context)
        reader, writer = await asyncio.open_unix_connection(
            path, ssl=client_context, server_hostname="localhost"
        )
        writer.write(b"tls over unix")
        assert await reader.readexactly(13) == b"tls over unix"
        writer.close()
        await writer.wait_closed()
        await close_server(server)

        # The server side of TLS on a socket accepted outside the loop.
        listener.setblocking(False)
        connecting = asyncio.ensure_future(
            asyncio.open_connection(
                *listener.getsockname(), ssl=client_context, server_hostname="localhost"
            )
        )
        conn, _ = await any_loop.sock_accept(listener)
        transport, _protocol = await any_loop.connect_accepted_socket(
            Echo, conn, ssl=server_context, ssl_handshake_timeout=5
        )
        reader, writer = await connecting
        writer.write(b"accepted tls")
        assert await reader.readexactly(12) == b"accepted tls"
        writer.close()
        await writer.wait_closed()
        transport.close()

    run(any_loop, main())


def test_tls_connection_cancelled_during_the_handshake(
    any_loop: Any, listener: socket.socket, client_context: ssl.SSLContext
) -> None:
    # The listener never answers the ClientHello: cancel the wait.
    async def main() -> None:
        connecting = asyncio.ensure_future(
            any_loop.create_connection(
                Client, *listener.getsockname(), ssl=client_context, server_hostname="localhost"
            )
        )
        for _ in range(10):
            await asyncio.sleep(0)
        connecting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await connecting

    run(any_loop, main())


def test_server_ssl_argument_must_be_a_context(loop: Any) -> None:
    factory = loop._connection_factory
    with pytest.raises(TypeError, match="SSLContext or None"):
        factory("not a context", server_side=True, server_hostname=None)
