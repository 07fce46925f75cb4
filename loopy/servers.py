"""Listening servers: ``create_server``, ``create_unix_server`` and the :class:`Server` they return.

A server is a listening socket plus a reader callback.  When ``select()``
reports the listening socket readable, connections are waiting in the
kernel's accept queue; :meth:`Server._on_acceptable` accepts them, makes a
protocol for each with the user's ``protocol_factory`` and wraps the
connection in a :class:`~loopy.transports.SocketTransport`.

Running out of file descriptors (``EMFILE``/``ENFILE``) is not fatal and must
not spin: the listening socket would stay readable, ``select()`` would return
at once, ``accept()`` would fail again, forever at 100% CPU.  So the server
stops watching its sockets for :data:`ACCEPT_RETRY_DELAY` seconds, logs the
outage once (not once per attempt), and logs again when accepting works.
The server is still serving meanwhile (``is_serving()`` stays true): the
connections wait in the kernel's queue, not refused.

``close()`` stops listening; ``wait_closed()`` waits until every connection
the server accepted is gone too (the behaviour asyncio settled on in 3.12).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import stat
from asyncio.trsock import TransportSocket
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

from .contract import LoopMixin

if TYPE_CHECKING:
    from .contract import LoopContract

from . import versions

# Messages asyncio also gives go on its logger, where its users look for
# them; those about behaviour of loopy's own (the pause after running out of
# descriptors, skipped addresses) on loopy's.
logger = logging.getLogger("asyncio")
loopy_logger = logging.getLogger("loopy")

#: Seconds to stop accepting after the process ran out of file descriptors.
ACCEPT_RETRY_DELAY = 1.0

# accept() errors that mean "out of resources for now", not "this socket is broken".
_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Server(asyncio.AbstractServer):
    """Listening sockets that turn each accepted connection into a transport and a protocol.

    Invariants: ``_sockets`` is None once closed; ``_waiters`` is None once
    closed *and* every accepted connection is gone, which is what
    ``wait_closed()`` waits for.
    """

    def __init__(
        self,
        loop: LoopContract,
        sockets: list[socket.socket],
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        backlog: int,
        make_transport: Callable[..., Any],
        keep_alive: bool = False,
    ) -> None:
        self._loop = loop
        self._keep_alive = keep_alive
        self._sockets: list[socket.socket] | None = sockets
        self._protocol_factory = protocol_factory
        self._backlog = backlog
        # Builds the transport (plain or TLS) for an accepted socket.
        self._make_transport = make_transport
        self._serving = False
        self._serving_forever: asyncio.Future[None] | None = None
        self._connections: set[Any] = set()  # transports accepted and not yet lost
        self._waiters: list[asyncio.Future[None]] | None = []
        self._accept_outage = False  # accepting is paused for lack of resources
        self._retry: asyncio.TimerHandle | None = None  # resumes accepting after an outage
        # A Unix socket's file and its inode, removed on close if still ours.
        self._socket_file: tuple[str, int] | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} sockets={self.sockets!r}>"

    def get_loop(self) -> asyncio.AbstractEventLoop:
        """The loop that accepts this server's connections."""
        # (Always an asyncio event loop, which a Protocol cannot say.)
        return cast(asyncio.AbstractEventLoop, self._loop)

    def is_serving(self) -> bool:
        """True while the server accepts connections: from start_serving until close."""
        return self._serving

    @property
    def sockets(self) -> tuple[TransportSocket, ...]:
        """The listening sockets, wrapped in asyncio's ``TransportSocket``; empty once closed."""
        if self._sockets is None:
            return ()
        return tuple(TransportSocket(sock) for sock in self._sockets)

    # -- accepting ------------------------------------------------------------

    async def start_serving(self) -> None:
        """Start accepting, if not yet; return one iteration later, with the listeners watched."""
        self._start_serving()
        # Give the loop one iteration, so that a client connecting right
        # after this returns finds the reader in place.
        await asyncio.sleep(0)

    def _start_serving(self) -> None:
        if self._serving or self._sockets is None:
            return
        self._serving = True
        for sock in self._sockets:
            sock.listen(self._backlog)
        self._watch()

    def _watch(self) -> None:
        for sock in self._sockets or ():
            self._loop.add_reader(sock.fileno(), self._on_acceptable, sock)

    def _stop_watching(self) -> None:
        for sock in self._sockets or ():
            self._loop.remove_reader(sock.fileno())

    def _on_acceptable(self, sock: socket.socket) -> None:
        """Connections are waiting: accept them (at most a backlog's worth per iteration)."""
        for _ in range(self._backlog):
            try:
                conn, address = sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRORS:
                    self._pause_accepting(sock, exc)
                else:
                    self._loop.call_exception_handler(
                        {"message": "socket.accept() failed", "exception": exc, "socket": sock}
                    )
                return
            if self._accept_outage:
                self._accept_outage = False
                loopy_logger.warning("Accepting connections again on %s", sock.getsockname())
            conn.setblocking(False)
            if self._keep_alive:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, True)
            try:
                protocol = self._protocol_factory()
                self._make_transport(conn, protocol, {"peername": address}, self)
            except BaseException as exc:
                conn.close()  # nobody else will: not even after a Ctrl-C
                if isinstance(exc, (SystemExit, KeyboardInterrupt)):
                    raise
                self._loop.call_exception_handler(
                    {
                        "message": "Error setting up an accepted connection",
                        "exception": exc,
                        "socket": sock,
                    }
                )

    def _pause_accepting(self, sock: socket.socket, exc: OSError) -> None:
        if not self._accept_outage:
            self._accept_outage = True
            loopy_logger.warning(
                "accept() failed on %s: %s; pausing accepting for %.1f s "
                "(logged once until accepting works again)",
                sock.getsockname(),
                exc,
                ACCEPT_RETRY_DELAY,
            )
        # All sockets pause, not only this one: they share the process's
        # descriptor table.  Unwatching them also cancels any accept already
        # queued for this iteration, so this runs once per retry, and one
        # timer brings them all back (close() cancels it).
        self._stop_watching()
        self._retry = self._loop.call_later(ACCEPT_RETRY_DELAY, self._resume_accepting)

    def _resume_accepting(self) -> None:
        self._retry = None
        self._watch()

    # -- connection bookkeeping (called by the transports) -------------------

    def _attach(self, transport: Any) -> None:
        self._connections.add(transport)

    def _detach(self, transport: Any) -> None:
        self._connections.discard(transport)
        if not self._connections and self._sockets is None:
            self._wake_waiters()

    def _wake_waiters(self) -> None:
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    # -- closing -------------------------------------------------------------------

    def close(self) -> None:
        """Stop listening.  Connections already accepted stay open."""
        sockets, self._sockets = self._sockets, None
        if sockets is None:
            return
        for sock in sockets:
            self._loop.remove_reader(sock.fileno())
            sock.close()
        self._serving = False
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._socket_file is not None:
            _remove_own_socket_file(*self._socket_file)
        if self._serving_forever is not None and not self._serving_forever.done():
            self._serving_forever.cancel()
            self._serving_forever = None
        if not self._connections:
            self._wake_waiters()

    def close_clients(self) -> None:
        """Close every accepted connection (their buffers are flushed first)."""
        for transport in list(self._connections):
            transport.close()

    def abort_clients(self) -> None:
        """Abort every accepted connection (buffered data is dropped)."""
        for transport in list(self._connections):
            transport.abort()

    async def wait_closed(self) -> None:
        """Wait until the server is closed and all its connections are gone."""
        if self._waiters is None:
            return
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._waiters.append(waiter)
        await waiter

    async def serve_forever(self) -> None:
        """Accept connections until cancelled; then close the server."""
        if self._serving_forever is not None:
            raise RuntimeError(f"server {self!r} is already being awaited on serve_forever()")
        if self._sockets is None:
            raise RuntimeError(f"server {self!r} is closed")
        self._start_serving()
        self._serving_forever = self._loop.create_future()
        try:
            await self._serving_forever
        except asyncio.CancelledError:
            try:
                self.close()
                await self.wait_closed()
            finally:
                raise
        finally:
            self._serving_forever = None


def _open_listeners(
    infos: Iterable[tuple[Any, ...]], reuse_address: bool | None, reuse_port: bool | None
) -> list[socket.socket]:
    """Create, configure and bind one socket per address; close all on failure."""
    infos = list(infos)
    sockets: list[socket.socket] = []
    try:
        for family, type_, proto, _, address in infos:
            try:
                sock = socket.socket(family, type_, proto)
            except OSError:
                # e.g. IPv6 is disabled on this host: listen on the others.
                logger.warning(
                    "create_server() failed to create socket.socket(%r, %r, %r)",
                    family,
                    type_,
                    proto,
                    exc_info=True,
                )
                continue
            sockets.append(sock)
            if reuse_address is None or reuse_address:
                # Let a restarted server bind while old connections linger in TIME_WAIT.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, True)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, True)
            if family == socket.AF_INET6:
                # Keep IPv6 sockets IPv6-only: the IPv4 address gets its own socket.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, True)
            try:
                sock.bind(address)
            except OSError as exc:
                message = exc.strerror.lower() if exc.strerror else str(exc)
                if exc.errno == errno.EADDRNOTAVAIL:
                    # An address this host does not have, typically "::1"
                    # for "localhost" with IPv6 turned off: listen on the others.
                    loopy_logger.warning("create_server() skipped %r: %s", address, message)
                    sockets.pop().close()
                    continue
                raise OSError(
                    exc.errno, f"error while attempting to bind on address {address!r}: {message}"
                ) from None
            sock.setblocking(False)
        if not sockets:
            raise OSError(f"could not bind on any address out of {[info[4] for info in infos]!r}")
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class ServerMethods(LoopMixin):
    """``create_server`` and ``create_unix_server`` (a mixin of :class:`loopy.loop.Loop`)."""

    # Provided by the loop and its other mixins; declared for the type checker.
    getaddrinfo: Callable[..., Any]
    _connection_factory: Callable[..., Callable[..., Any]]

    async def create_server(
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: str | Iterable[str] | None = None,
        port: int | None = None,
        *,
        family: int = socket.AF_UNSPEC,
        flags: int = socket.AI_PASSIVE,
        sock: socket.socket | None = None,
        backlog: int = 100,
        ssl: Any = None,
        reuse_address: bool | None = None,
        reuse_port: bool | None = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
        start_serving: bool = True,
        keep_alive: bool | None = None,
    ) -> Any:  # a Server (typeshed insists on asyncio's concrete class here)
        """Listen on ``host``:``port`` (all interfaces when host is None or "").

        ``host`` may also be a list of hosts; one socket is bound per address
        each resolves to.
        """
        # Check the TLS arguments before any socket exists, so that a wrong
        # one cannot leave a bound socket behind.
        make_transport = self._server_transport_factory(
            ssl, ssl_handshake_timeout, ssl_shutdown_timeout
        )
        if host is not None or port is not None:
            if sock is not None:
                raise ValueError("host/port and sock can not be specified at the same time")
            hosts: list[str | None] = (
                [host] if host == "" or host is None or isinstance(host, str) else list(host)
            )
            infos: dict[Any, tuple[Any, ...]] = {}
            for one_host in hosts:
                found = await self.getaddrinfo(
                    one_host or None, port, family=family, type=socket.SOCK_STREAM, flags=flags
                )
                if not found:
                    raise OSError(f"getaddrinfo({one_host!r}) returned empty list")
                for info in found:
                    infos.setdefault(info[4], info)  # one socket per distinct address
            sockets = _open_listeners(infos.values(), reuse_address, reuse_port)
        else:
            if sock is None:
                raise ValueError("Neither host/port nor sock were specified")
            if sock.type != socket.SOCK_STREAM:
                raise ValueError(f"A Stream Socket was expected, got {sock!r}")
            sock.setblocking(False)
            sockets = [sock]
        server = Server(self, sockets, protocol_factory, backlog, make_transport, bool(keep_alive))
        if start_serving:
            await server.start_serving()
        return server

    async def create_unix_server(
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        path: str | os.PathLike[str] | None = None,
        *,
        sock: socket.socket | None = None,
        backlog: int = 100,
        ssl: Any = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
        start_serving: bool = True,
        cleanup_socket: bool | None = None,
    ) -> Any:  # a Server, as above
        """Listen on the Unix socket at ``path`` (a stale socket file there is replaced).

        With ``cleanup_socket``, ``close()`` removes the socket file -- unless
        another server has replaced it since.  It defaults to what the running
        Python's asyncio does: True from 3.13 (which added it), else False.
        """
        if cleanup_socket is None:
            cleanup_socket = versions.UNIX_SERVERS_REMOVE_THEIR_SOCKET
        make_transport = self._server_transport_factory(
            ssl, ssl_handshake_timeout, ssl_shutdown_timeout
        )
        if path is not None:
            if sock is not None:
                raise ValueError("path and sock can not be specified at the same time")
            path = os.fspath(path)
            if not _is_abstract(path):
                remove_stale_socket_file(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(path)
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:
                    raise OSError(errno.EADDRINUSE, f"Address {path!r} is already in use") from None
                raise
        elif sock is None:
            raise ValueError("path was not specified, and no sock specified")
        elif sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            raise ValueError(f"A UNIX Domain Stream Socket was expected, got {sock!r}")
        sock.setblocking(False)
        server = Server(self, [sock], protocol_factory, backlog, make_transport)
        if cleanup_socket:
            server._socket_file = _socket_file_of(sock)
        if start_serving:
            await server.start_serving()
        return server

    def _server_transport_factory(
        self, ssl: Any, ssl_handshake_timeout: float | None, ssl_shutdown_timeout: float | None
    ) -> Callable[..., Any]:
        if isinstance(ssl, bool):
            raise TypeError("ssl argument must be an SSLContext or None")
        return self._connection_factory(
            ssl,
            server_side=True,
            server_hostname=None,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )


def _is_abstract(path: str | bytes) -> bool:
    # Linux's abstract namespace: a name that starts with NUL has no file.
    return path[:1] in ("\0", b"\0")


def _socket_file_of(sock: socket.socket) -> tuple[str, int] | None:
    """The file a listening Unix socket is bound to, with its inode (None: no file)."""
    address = sock.getsockname()
    if not isinstance(address, str) or not address or _is_abstract(address):
        return None
    try:
        return address, os.stat(address).st_ino
    except FileNotFoundError:
        return None


def remove_stale_socket_file(path: str) -> None:
    """Remove a Unix socket file a previous run left at ``path`` (stream or datagram).

    It would make bind() fail; any other kind of file is the user's and is
    left alone.
    """
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.remove(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        # e.g. a directory we may create sockets in but not look into:
        # bind() will tell whether the path is usable.
        logger.error("Unable to check or remove stale UNIX socket %r: %r", path, exc)


def _remove_own_socket_file(path: str, inode: int) -> None:
    # Another server may have replaced the file since (a restart that bound
    # before the old server closed): its file is not ours to remove.
    try:
        if os.stat(path).st_ino == inode:
            os.remove(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        logger.error("Unable to clean up listening UNIX socket %r: %r", path, exc)
