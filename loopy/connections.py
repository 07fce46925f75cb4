"""Opening connections: name resolution, ``create_connection``, TLS, accepted sockets.

The client side of networking, built from pieces the loop already has:

* **Names.**  ``getaddrinfo`` and ``getnameinfo`` block (they may ask a DNS
  server), so they run in the default thread pool.  A numeric address such
  as ``127.0.0.1`` needs no lookup: it is answered at once, without a thread.
* **Connecting.**  ``create_connection`` resolves the host, then tries its
  addresses one after the other with ``sock_connect`` (or, with
  ``happy_eyeballs_delay``, starts the next attempt when the previous one has
  not succeeded within that delay: RFC 8305).  The connected socket is
  wrapped in a :class:`~loopy.transports.SocketTransport`.
* **TLS.**  loopy writes no TLS code: it slides the standard library's
  ``asyncio.sslproto.SSLProtocol`` between the transport and the user's
  protocol.  To the transport, SSLProtocol is just a ``BufferedProtocol``;
  to the user's protocol, it offers an ordinary transport that encrypts.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import ssl as ssl_module
from asyncio import sslproto, staggered
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, TypeVarTuple, cast

from .contract import LoopMixin
from .transports import SocketTransport, start_transport

AddrInfo = tuple[Any, ...]
_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")

# The socket types the numeric fast path answers, with the protocol of each.
_PROTOCOL_OF_TYPE: dict[int, int] = {
    socket.SOCK_STREAM: socket.IPPROTO_TCP,
    socket.SOCK_DGRAM: socket.IPPROTO_UDP,
}


def _numeric_addrinfo(
    host: Any, port: Any, family: int, type_: int, proto: int, flags: int
) -> list[AddrInfo] | None:
    """The getaddrinfo() answer for a numeric host and port, or None if a lookup is needed.

    Only the unambiguous case is answered: a socket type is given (with its
    own protocol or none), the host is an IP address, and the port is a
    number in range.  Anything else -- including every error -- is left to
    the real getaddrinfo, so that it keeps its exact answers and messages.
    """
    if type_ not in _PROTOCOL_OF_TYPE or flags & ~socket.AI_PASSIVE:
        return None
    if proto not in (0, _PROTOCOL_OF_TYPE[type_]):
        return None
    if not isinstance(host, (str, bytes)) or not host:
        return None
    if isinstance(host, bytes):
        host = host.decode("idna")
    if port is None:
        port = 0
    elif isinstance(port, bytes):
        port = port.decode()
    if isinstance(port, str):
        if not (port.isascii() and port.isdigit()):
            return None  # a service name such as "http"
        port = int(port)
    # (glibc quietly wraps 70000 around to 4464: leave such ports to it.)
    if not isinstance(port, int) or not 0 <= port <= 65535:
        return None
    proto = _PROTOCOL_OF_TYPE[type_]
    for candidate in (socket.AF_INET, socket.AF_INET6):
        if family not in (socket.AF_UNSPEC, candidate):
            continue
        try:
            socket.inet_pton(candidate, host)
        except (OSError, ValueError):
            continue
        address: tuple[Any, ...] = (
            (host, port) if candidate == socket.AF_INET else (host, port, 0, 0)
        )
        return [(candidate, type_, proto, "", address)]
    return None


def _interleave(infos: Sequence[AddrInfo], first_family_count: int) -> list[AddrInfo]:
    """Reorder addresses to alternate between families (RFC 8305, section 4).

    The first ``first_family_count`` addresses of the first family lead,
    then the families take turns, so that one broken IPv6 route does not
    delay every IPv4 attempt.
    """
    by_family: dict[int, list[AddrInfo]] = {}
    for info in infos:
        by_family.setdefault(info[0], []).append(info)
    queues = list(by_family.values())
    ordered = queues[0][: first_family_count - 1]
    queues[0] = queues[0][first_family_count - 1 :]
    while any(queues):
        for queue in queues:
            if queue:
                ordered.append(queue.pop(0))
    return ordered


def _connect_error(exceptions: list[OSError], all_errors: bool) -> BaseException:
    """One error for a failed create_connection, as asyncio words it."""
    if all_errors:
        return ExceptionGroup("create_connection failed", exceptions)
    if len(exceptions) == 1 or all(str(exc) == str(exceptions[0]) for exc in exceptions):
        return exceptions[0]
    return OSError(f"Multiple exceptions: {', '.join(str(exc) for exc in exceptions)}")


def _client_ssl_context(ssl: Any, server_hostname: str | None) -> ssl_module.SSLContext:
    if isinstance(ssl, ssl_module.SSLContext):
        return ssl
    context = ssl_module.create_default_context()
    if not server_hostname:
        context.check_hostname = False
    return context


def _check_ssl_arguments(
    ssl: Any, handshake_timeout: float | None, shutdown_timeout: float | None
) -> None:
    if ssl:
        return
    if handshake_timeout is not None:
        raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
    if shutdown_timeout is not None:
        raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")


def _check_plain_socket(sock: socket.socket) -> None:
    # An ssl.SSLSocket does its own (blocking) TLS: the loop cannot drive it.
    if isinstance(sock, ssl_module.SSLSocket):
        raise TypeError("Socket cannot be of type SSLSocket")


def _retrieve_exception(future: asyncio.Future[Any]) -> None:
    # A server-side TLS handshake that fails is the client's problem, and
    # SSLProtocol already closed the connection: only mark it as seen.
    if not future.cancelled():
        future.exception()


class ConnectionMethods(LoopMixin):
    """Name resolution and client connections (a mixin of :class:`loopy.loop.Loop`)."""

    # Provided by the loop and its other mixins; declared for the type checker.
    create_future: Callable[[], asyncio.Future[Any]]
    call_soon: Callable[..., Any]
    sock_connect: Callable[..., Any]
    if TYPE_CHECKING:

        def run_in_executor(
            self, executor: Any, func: Callable[[*_Ts], _T], *args: *_Ts
        ) -> asyncio.Future[_T]: ...

    # -- names ------------------------------------------------------------------

    async def getaddrinfo(
        self,
        host: Any,
        port: Any,
        *,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[AddrInfo]:
        """``socket.getaddrinfo`` without blocking the loop."""
        numeric = _numeric_addrinfo(host, port, family, type, proto, flags)
        if numeric is not None:
            return numeric
        result: list[AddrInfo] = await self.run_in_executor(
            None, socket.getaddrinfo, host, port, family, type, proto, flags
        )
        return result

    async def getnameinfo(self, sockaddr: tuple[Any, ...], flags: int = 0) -> tuple[str, str]:
        """``socket.getnameinfo`` without blocking the loop."""
        result: tuple[str, str] = await self.run_in_executor(
            None, socket.getnameinfo, sockaddr, flags
        )
        return result

    async def _resolve(
        self, address: Any, family: int, type_: int, proto: int, flags: int
    ) -> list[AddrInfo]:
        host, port = address[:2]
        infos = await self.getaddrinfo(
            host, port, family=family, type=type_, proto=proto, flags=flags
        )
        if not infos:
            raise OSError("getaddrinfo() returned empty list")
        return infos

    # -- transports for connected sockets ------------------------------------------

    def _connection_factory(
        self,
        ssl: Any,
        *,
        server_side: bool,
        server_hostname: str | None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> Callable[..., Any]:
        """A function that wraps a connected socket in a transport, with TLS if asked.

        It is called as ``make(sock, protocol, extra, server, waiter)`` and
        returns the transport the *user's* protocol sees.
        """
        _check_ssl_arguments(ssl, ssl_handshake_timeout, ssl_shutdown_timeout)
        if not ssl:
            return self._plain_transport
        if server_side:
            if not isinstance(ssl, ssl_module.SSLContext):
                raise TypeError("ssl argument must be an SSLContext or None")
            context = ssl
        else:
            context = _client_ssl_context(ssl, server_hostname)

        def make_tls_transport(
            sock: socket.socket,
            protocol: asyncio.BaseProtocol,
            extra: dict[str, Any] | None,
            server: Any,
            waiter: asyncio.Future[None] | None = None,
        ) -> Any:
            if waiter is None:
                waiter = self.create_future()
                waiter.add_done_callback(_retrieve_exception)
            tls = sslproto.SSLProtocol(
                cast(asyncio.AbstractEventLoop, self),
                cast(asyncio.Protocol, protocol),
                context,
                waiter,
                server_side,
                server_hostname,
                # typeshed says int; asyncio accepts any number of seconds
                ssl_handshake_timeout=cast(int | None, ssl_handshake_timeout),
                ssl_shutdown_timeout=ssl_shutdown_timeout,
            )
            SocketTransport(self, sock, tls, None, extra, server)
            return tls._app_transport

        return make_tls_transport

    def _plain_transport(
        self,
        sock: socket.socket,
        protocol: asyncio.BaseProtocol,
        extra: dict[str, Any] | None,
        server: Any,
        waiter: asyncio.Future[None] | None = None,
    ) -> SocketTransport:
        return SocketTransport(self, sock, protocol, waiter, extra, server)

    async def _connected(
        self,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        make_transport: Callable[..., Any],
    ) -> tuple[Any, Any]:
        """Wrap a connected socket and wait until the transport (and TLS) is ready."""
        sock.setblocking(False)
        return await start_transport(
            self,
            protocol_factory,
            lambda protocol, waiter: make_transport(sock, protocol, None, None, waiter),
        )

    # -- client connections ------------------------------------------------------------

    async def create_connection(
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: str | None = None,
        port: int | None = None,
        *,
        ssl: Any = None,
        family: int = 0,
        proto: int = 0,
        flags: int = 0,
        sock: socket.socket | None = None,
        local_addr: tuple[str, int] | None = None,
        server_hostname: str | None = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
        happy_eyeballs_delay: float | None = None,
        interleave: int | None = None,
        all_errors: bool = False,
    ) -> tuple[Any, Any]:
        """Connect to ``host``:``port`` (or use ``sock``) and wrap it in a transport."""
        if server_hostname is not None and not ssl:
            raise ValueError("server_hostname is only meaningful with ssl")
        if server_hostname is None and ssl:
            if not host:
                raise ValueError("You must set server_hostname when using ssl without a host")
            server_hostname = host
        make_transport = self._connection_factory(
            ssl,
            server_side=False,
            server_hostname=server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        if host is not None or port is not None:
            if sock is not None:
                raise ValueError("host/port and sock can not be specified at the same time")
            sock = await self._connect_to_any(
                host,
                port,
                family,
                proto,
                flags,
                local_addr,
                happy_eyeballs_delay,
                interleave,
                all_errors,
            )
        elif sock is None:
            raise ValueError("host and port was not specified and no sock specified")
        else:
            _check_plain_socket(sock)
            if sock.type != socket.SOCK_STREAM:
                raise ValueError(f"A Stream Socket was expected, got {sock!r}")
        return await self._connected(sock, protocol_factory, make_transport)

    async def _connect_to_any(
        self,
        host: str | None,
        port: int | None,
        family: int,
        proto: int,
        flags: int,
        local_addr: tuple[str, int] | None,
        happy_eyeballs_delay: float | None,
        interleave: int | None,
        all_errors: bool,
    ) -> socket.socket:
        """Try the addresses ``host`` resolves to until one connects."""
        infos = await self._resolve((host, port), family, socket.SOCK_STREAM, proto, flags)
        local_infos = None
        if local_addr is not None:
            local_infos = await self._resolve(local_addr, family, socket.SOCK_STREAM, proto, flags)
        if happy_eyeballs_delay is not None and interleave is None:
            interleave = 1  # RFC 8305 recommends alternating families
        if interleave:
            infos = _interleave(infos, interleave)
        errors: list[OSError] = []
        sock: socket.socket | None = None
        if happy_eyeballs_delay is None:
            for info in infos:
                try:
                    sock = await self._connect_one(errors, info, local_infos)
                    break
                except OSError:
                    continue
        else:
            attempts = [
                functools.partial(self._connect_one, errors, info, local_infos) for info in infos
            ]
            sock, _, _ = await staggered.staggered_race(attempts, happy_eyeballs_delay, loop=self)  # type: ignore[arg-type]
            del attempts  # they hold the list of errors (see below)
        if sock is None:
            try:
                raise _connect_error(errors, all_errors)
            finally:
                # The error's traceback holds this frame, and the list holds
                # the error: without it, no reference cycle keeps the error
                # alive once the caller is done with it.
                del errors
        return sock

    async def _connect_one(
        self, errors: list[OSError], info: AddrInfo, local_infos: list[AddrInfo] | None
    ) -> socket.socket:
        """One attempt: a socket of the address's family, bound locally if asked, connected."""
        family, type_, proto, _, address = info
        sock = None
        try:
            # Inside the try: a family the host cannot use (IPv6 turned off)
            # fails here, and that is one more error to report.
            sock = socket.socket(family, type_, proto)
            sock.setblocking(False)
            if local_infos is not None:
                self._bind_local(sock, family, local_infos)
            await self.sock_connect(sock, address)
        except BaseException as exc:  # a failure, or cancelled by happy eyeballs
            if sock is not None:
                sock.close()
            if isinstance(exc, OSError):
                errors.append(exc)
            raise
        finally:
            # As in _connect_to_any: the error's traceback holds this frame,
            # which must not hold the list that holds the error.
            del errors
        return sock

    @staticmethod
    def _bind_local(sock: socket.socket, family: int, local_infos: list[AddrInfo]) -> None:
        last_error: OSError | None = None
        for local_family, _, _, _, local_address in local_infos:
            if local_family != family:
                continue
            try:
                sock.bind(local_address)
                return
            except OSError as exc:
                message = exc.strerror.lower() if exc.strerror else str(exc)
                last_error = OSError(
                    exc.errno,
                    f"error while attempting to bind on address {local_address!r}: {message}",
                )
        raise last_error or OSError(f"no matching local address with family={family} found")

    async def create_unix_connection(
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        path: str | os.PathLike[str] | None = None,
        *,
        ssl: Any = None,
        sock: socket.socket | None = None,
        server_hostname: str | None = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> tuple[Any, Any]:
        """Connect to the Unix socket at ``path`` (or use ``sock``)."""
        if ssl:
            if server_hostname is None:
                raise ValueError("you have to pass server_hostname when using ssl")
        elif server_hostname is not None:
            raise ValueError("server_hostname is only meaningful with ssl")
        make_transport = self._connection_factory(
            ssl,
            server_side=False,
            server_hostname=server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        if path is not None:
            if sock is not None:
                raise ValueError("path and sock can not be specified at the same time")
            path = os.fspath(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.setblocking(False)
                await self.sock_connect(sock, path)
            except BaseException:
                sock.close()
                raise
        elif sock is None:
            raise ValueError("no path and sock were specified")
        elif sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            raise ValueError(f"A UNIX Domain Stream Socket was expected, got {sock!r}")
        return await self._connected(sock, protocol_factory, make_transport)

    async def connect_accepted_socket(
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        sock: socket.socket,
        *,
        ssl: Any = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> tuple[Any, Any]:
        """Wrap a socket accepted outside the loop in a transport (server side)."""
        _check_plain_socket(sock)
        if sock.type != socket.SOCK_STREAM:
            raise ValueError(f"A Stream Socket was expected, got {sock!r}")
        make_transport = self._connection_factory(
            ssl,
            server_side=True,
            server_hostname=None,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        return await self._connected(sock, protocol_factory, make_transport)

    # -- upgrading to TLS -------------------------------------------------------------

    async def start_tls(
        self,
        transport: asyncio.BaseTransport,
        protocol: asyncio.BaseProtocol,
        sslcontext: ssl_module.SSLContext,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> Any:
        """Upgrade an open connection to TLS; return the new (encrypting) transport."""
        if not isinstance(sslcontext, ssl_module.SSLContext):
            raise TypeError(
                f"sslcontext is expected to be an instance of ssl.SSLContext, got {sslcontext!r}"
            )
        # Ours, and asyncio's TLS transport (TLS inside TLS), carry this marker.
        if not getattr(transport, "_start_tls_compatible", False):
            raise TypeError(f"transport {transport!r} is not supported by start_tls()")
        waiter = self.create_future()
        tls = sslproto.SSLProtocol(
            cast(asyncio.AbstractEventLoop, self),
            cast(asyncio.Protocol, protocol),
            sslcontext,
            waiter,
            server_side,
            server_hostname,
            ssl_handshake_timeout=cast(int | None, ssl_handshake_timeout),
            ssl_shutdown_timeout=ssl_shutdown_timeout,
            call_connection_made=False,
        )
        # Hold incoming bytes until the TLS layer is in place to read them.
        transport.pause_reading()  # type: ignore[attr-defined]
        transport.set_protocol(tls)
        connection_made = self.call_soon(tls.connection_made, transport)
        resume = self.call_soon(transport.resume_reading)  # type: ignore[attr-defined]
        try:
            await waiter
        except BaseException:
            transport.close()
            connection_made.cancel()
            resume.cancel()
            raise
        return tls._app_transport
