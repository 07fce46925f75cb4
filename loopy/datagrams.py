"""Datagrams: UDP and Unix datagram endpoints, and the ``sock_recvfrom``/``sock_sendto`` coroutines.

A datagram socket has no connection and no byte stream: every ``recvfrom``
returns one whole message and the address it came from, and every
``sendto`` sends one whole message.  So its transport is simpler than a
stream's, and different in three ways:

* **Reading** is one ``recvfrom`` per readable event, handed to
  ``protocol.datagram_received(data, addr)``.  There is no EOF.
* **Errors are not fatal.**  A UDP socket learns from ICMP that an earlier
  datagram could not be delivered (``ConnectionRefusedError`` when nobody
  listens on the port): the next ``recvfrom`` or ``sendto`` fails with it.
  That says nothing about the datagrams still to come, so the transport hands
  such ``OSError`` to ``protocol.error_received(exc)`` and carries on.
* **Writing** keeps datagrams whole: ``sendto`` tries to send at once, and
  when the socket would block (its send buffer is full, which happens for
  Unix datagram sockets whose reader is slow), it queues ``(data, addr)``
  pairs and sends them, in order, when ``add_writer`` says there is room.
  The water marks are those of the stream transports
  (:class:`loopy.transports.FlowControl`).

``create_datagram_endpoint`` makes the socket -- resolving ``local_addr``
and ``remote_addr``, binding to the first and connecting to the second --
and wraps it in a :class:`DatagramTransport`.  A *connected* datagram socket
only talks to its remote address: ``sendto`` then needs no address, and the
kernel drops datagrams from anyone else.

The ``sock_recvfrom``, ``sock_recvfrom_into`` and ``sock_sendto`` coroutines
are here too, built the way ``sockets.py`` builds ``sock_recv``: try the
system call first, wait for readiness only if it would block.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
from asyncio.trsock import TransportSocket
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from . import versions
from .contract import LoopMixin
from .servers import remove_stale_socket_file
from .sockets import _TRY_AGAIN, _check_nonblocking
from .transports import (
    _WRITES_AFTER_LOSS_BEFORE_WARNING,
    FileTransport,
    FlowControl,
    ReadControl,
    _check_bytes_like,
    start_transport,
)

if TYPE_CHECKING:
    from .contract import LoopContract

# Its warnings are the ones asyncio gives for the same events, so they go
# where asyncio's users look for them: the logger named "asyncio".
logger = logging.getLogger("asyncio")

# The largest datagram a read accepts whole.  A datagram longer than the
# buffer is silently truncated by the kernel, so this must be generous: UDP
# carries at most 64 KiB, but a Unix datagram can be larger.
MAX_DATAGRAM_SIZE = 256 * 1024

# Marks "argument not given" where None is a meaningful value.
_NOT_GIVEN: Any = object()


class DatagramTransport(
    FileTransport, ReadControl, FlowControl, asyncio.DatagramTransport, asyncio.Transport
):
    """A transport over a datagram socket, connected or not.

    Invariant: ``connection_lost`` is called exactly once, always through
    :meth:`_lose_connection`, and the socket is closed right after it.
    """

    def __init__(
        self,
        loop: LoopContract,
        sock: socket.socket,
        protocol: asyncio.BaseProtocol,
        address: Any = None,
        waiter: asyncio.Future[None] | None = None,
    ) -> None:
        super().__init__()
        self._loop = loop
        self._sock: socket.socket | None = sock
        self._fd = sock.fileno()
        loop._transports[self._fd] = self  # add_reader() on this fd is now refused
        self._protocol: asyncio.BaseProtocol = protocol
        self._extra: dict[str, Any] = {"socket": TransportSocket(sock)}
        for key, getter in (("sockname", sock.getsockname), ("peername", sock.getpeername)):
            try:
                self._extra[key] = getter()
            except OSError:  # not bound, or not connected
                self._extra[key] = None
        # Whether the socket is connected: send() then, rather than sendto().
        # (An unnamed Unix socket's peer is "", which is still a peer.)
        self._connected = self._extra["peername"] is not None
        # The only address sendto() accepts, when remote_addr was given.
        self._address = address
        self._buffer: collections.deque[tuple[bytes, Any]] = collections.deque()
        self._buffer_size = 0  # bytes in _buffer
        self._closing = False  # close() or abort() was called
        # How many times the connection was lost: 0 while it is alive.
        # Also counts datagrams dropped afterwards, to warn about them once.
        self._conn_lost = 0
        self._announce(loop, protocol, waiter)

    @property
    def _file(self) -> socket.socket | None:
        return self._sock

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Hand the next datagrams and events to ``protocol`` instead."""
        self._protocol = protocol

    # -- receiving -----------------------------------------------------------

    def _start_reading(self) -> None:
        if not self._closing and not self._reading_paused:
            self._loop._add_reader(self._fd, self._on_readable)

    def _stop_reading(self) -> None:
        self._loop._remove_reader(self._fd)

    def _on_readable(self) -> None:
        """A datagram (or an error) is waiting: hand it to the protocol."""
        assert self._sock is not None
        try:
            data, addr = self._sock.recvfrom(MAX_DATAGRAM_SIZE)
        except _TRY_AGAIN:
            return
        except OSError as exc:
            self._call_protocol_with("error_received", exc)
        except Exception as exc:
            self._fatal_error(exc, "Fatal read error on datagram transport")
        else:
            self._call_protocol_with("datagram_received", data, addr)

    def _call_protocol_with(self, method: str, *args: Any) -> None:
        # Unlike a byte stream, a datagram endpoint has no state that a
        # failing callback could have corrupted for the next datagram: report
        # the error and keep the endpoint open (as asyncio does).
        try:
            getattr(self._protocol, method)(*args)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._loop.call_exception_handler(
                {
                    "message": f"protocol.{method}() failed",
                    "exception": exc,
                    "transport": self,
                    "protocol": self._protocol,
                }
            )

    # -- sending -------------------------------------------------------------

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        """Send one datagram to ``addr`` (or to the remote address, if connected)."""
        _check_bytes_like(data)
        if not data and not versions.EMPTY_DATAGRAMS_ARE_SENT:
            return  # as asyncio before 3.13 does: an empty datagram is not sent
        if self._address is not None:
            if addr not in (None, self._address):
                raise ValueError(f"Invalid address: must be None or {self._address}")
            addr = self._address
        if self._conn_lost:
            if self._conn_lost >= _WRITES_AFTER_LOSS_BEFORE_WARNING:
                logger.warning("socket.send() raised exception.")
            self._conn_lost += 1
            return
        if not self._buffer:
            # Nothing queued ahead of it: try to send it right away.
            try:
                self._send(data, addr)
                return
            except _TRY_AGAIN:
                self._loop._add_writer(self._fd, self._on_writable)
            except OSError as exc:
                self._call_protocol_with("error_received", exc)
                return
            except Exception as exc:  # e.g. TypeError: a bad address
                self._fatal_error(exc, "Fatal write error on datagram transport")
                return
        # Copy: the caller may reuse a bytearray it handed us.
        self._buffer.append((bytes(data), addr))
        self._buffer_size += len(data) + versions.DATAGRAM_HEADER_SIZE
        self._maybe_pause_protocol()

    def _send(self, data: Any, addr: Any) -> None:
        assert self._sock is not None
        if self._connected:
            self._sock.send(data)
        else:
            self._sock.sendto(data, addr)

    def _on_writable(self) -> None:
        """The socket has room: send queued datagrams, in order, until it is full again."""
        while self._buffer:
            data, addr = self._buffer[0]
            try:
                self._send(data, addr)
            except _TRY_AGAIN:
                break
            except OSError as exc:
                # This datagram is lost (and reported); the next ones may go.
                self._dequeue(data)
                self._call_protocol_with("error_received", exc)
                continue
            except Exception as exc:
                self._fatal_error(exc, "Fatal write error on datagram transport")
                return
            self._dequeue(data)
        self._maybe_resume_protocol()  # may send more, and refill the queue
        if self._buffer:
            return
        self._loop._remove_writer(self._fd)
        if self._closing:
            self._lose_connection(None)

    def _dequeue(self, data: bytes) -> None:
        """The first queued datagram, ``data``, was sent or lost: take it out of the buffer."""
        self._buffer.popleft()
        # (Header bytes too: asyncio 3.13.0 forgets them here, so its buffer
        # never empties again once a datagram had to wait.)
        self._buffer_size -= len(data) + versions.DATAGRAM_HEADER_SIZE

    def get_write_buffer_size(self) -> int:
        """Bytes of the datagrams queued because the socket would block.

        From Python 3.13, each queued datagram also counts 8 bytes of header,
        as asyncio's do.
        """
        return self._buffer_size

    # -- closing ----------------------------------------------------------------

    def close(self) -> None:
        """Stop receiving, send what is queued, then lose the connection."""
        if self._closing:
            return
        self._closing = True
        self._loop._remove_reader(self._fd)
        if not self._buffer:
            self._lose_connection(None)

    def abort(self) -> None:
        """Close at once, dropping the queued datagrams."""
        self._force_close(None)

    def _force_close(self, exc: BaseException | None) -> None:
        if self._conn_lost:
            return
        if self._buffer:
            self._buffer.clear()
            self._buffer_size = 0
            self._loop._remove_writer(self._fd)
        if not self._closing:
            self._closing = True
            self._loop._remove_reader(self._fd)
        self._lose_connection(exc)

    def _lose_connection(self, exc: BaseException | None) -> None:
        self._conn_lost += 1
        self._loop.call_soon(self._call_connection_lost, exc)

    def _fatal_error(self, exc: BaseException, message: str) -> None:
        # Only non-OSError exceptions get here (OSError goes to
        # error_received): a bug, such as sendto() with a bad address.
        self._loop.call_exception_handler(
            {"message": message, "exception": exc, "transport": self, "protocol": self._protocol}
        )
        self._force_close(exc)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        try:
            # typeshed says Exception; asyncio passes any BaseException here.
            self._protocol.connection_lost(exc)  # type: ignore[arg-type]
        finally:
            assert self._sock is not None
            self._sock.close()
            self._sock = None


def _check_no_socket_options(**options: Any) -> None:
    """With ``sock=``, the socket is the caller's: options to make one make no sense."""
    given = ", ".join(f"{name}={value}" for name, value in options.items() if value)
    if given:
        raise ValueError(
            f"socket modifier keyword arguments can not be used when sock is specified. ({given})"
        )


class DatagramMethods(LoopMixin):
    """Datagram endpoints and datagram socket coroutines (a mixin of :class:`loopy.loop.Loop`)."""

    # Provided by the loop and its other mixins; declared for the type checker.
    create_future: Callable[[], asyncio.Future[Any]]
    getaddrinfo: Callable[..., Any]
    sock_connect: Callable[..., Any]
    _wait_readable: Callable[..., Coroutine[Any, Any, Any]]
    _wait_writable: Callable[..., Coroutine[Any, Any, Any]]

    async def create_datagram_endpoint(
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        local_addr: Any = None,
        remote_addr: Any = None,
        *,
        family: int = 0,
        proto: int = 0,
        flags: int = 0,
        # Gone since Python 3.11: with SO_REUSEADDR, any other process could
        # bind the same UDP port and receive our datagrams.  Only declared
        # because typeshed still lists it; passing it fails, as in asyncio.
        reuse_address: bool | None = _NOT_GIVEN,
        reuse_port: bool | None = None,
        allow_broadcast: bool | None = None,
        sock: socket.socket | None = None,
    ) -> tuple[Any, Any]:
        """Make a datagram socket, bound to ``local_addr`` and connected to ``remote_addr``.

        Or wrap ``sock``, a datagram socket the caller made.  With
        ``family=socket.AF_UNIX`` the addresses are paths.  With
        ``allow_broadcast`` the socket may send to broadcast addresses, and
        ``remote_addr`` is only a default destination (it is not connected).
        """
        if reuse_address is not _NOT_GIVEN:
            raise TypeError(
                "create_datagram_endpoint() got an unexpected keyword argument 'reuse_address' "
                "(SO_REUSEADDR is unsafe for UDP; use reuse_port)"
            )
        remote: Any = None
        if sock is not None:
            if sock.type != socket.SOCK_DGRAM:
                raise ValueError(f"{versions.DATAGRAM_SOCKET_EXPECTED}, got {sock!r}")
            _check_no_socket_options(
                local_addr=local_addr,
                remote_addr=remote_addr,
                family=family,
                proto=proto,
                flags=flags,
                reuse_port=reuse_port,
                allow_broadcast=allow_broadcast,
            )
            sock.setblocking(False)
        else:
            candidates = await self._datagram_candidates(
                local_addr, remote_addr, family, proto, flags
            )
            sock, remote = await self._open_datagram_socket(
                candidates, bool(local_addr), bool(remote_addr), reuse_port, allow_broadcast
            )

        return await start_transport(
            self,
            protocol_factory,
            lambda protocol, waiter: DatagramTransport(self, sock, protocol, remote, waiter),
        )

    async def _datagram_candidates(
        self, local_addr: Any, remote_addr: Any, family: int, proto: int, flags: int
    ) -> list[tuple[int, int, Any, Any]]:
        """The ways to make the endpoint: ``(family, proto, local, remote)``, best first."""
        if not (local_addr or remote_addr):
            if family == 0:
                raise ValueError("unexpected address family")
            return [(family, proto, None, None)]
        if family == socket.AF_UNIX:
            for addr in (local_addr, remote_addr):
                if addr is not None and not isinstance(addr, str):
                    raise TypeError("string is expected")
            # Addresses starting with a NUL byte are in Linux's abstract
            # namespace: they have no file to clean up.
            if local_addr and local_addr[0] != "\0":
                remove_stale_socket_file(local_addr)
            return [(family, proto, local_addr, remote_addr)]

        # Resolve both addresses, then pair them up by (family, proto): a
        # local IPv4 address cannot be used to reach a remote IPv6 one.
        pairs: dict[tuple[int, int], list[Any]] = {}
        for index, addr in ((0, local_addr), (1, remote_addr)):
            if addr is None:
                continue
            if not (isinstance(addr, tuple) and len(addr) == 2):
                raise TypeError("2-tuple is expected")
            infos = await self.getaddrinfo(
                addr[0], addr[1], family=family, type=socket.SOCK_DGRAM, proto=proto, flags=flags
            )
            if not infos:
                raise OSError("getaddrinfo() returned empty list")
            for info_family, _, info_proto, _, address in infos:
                pairs.setdefault((info_family, info_proto), [None, None])[index] = address
        candidates = [
            (pair_family, pair_proto, local, remote)
            for (pair_family, pair_proto), (local, remote) in pairs.items()
            if not (local_addr and local is None) and not (remote_addr and remote is None)
        ]
        if not candidates:
            raise ValueError("can not get address information")
        return candidates

    async def _open_datagram_socket(
        self,
        candidates: list[tuple[int, int, Any, Any]],
        bind: bool,
        connect: bool,
        reuse_port: bool | None,
        allow_broadcast: bool | None,
    ) -> tuple[socket.socket, Any]:
        """Try the candidates in order; the first socket that binds and connects wins.

        Returns the socket and the remote address (None when there is none).
        If every candidate fails, the first error is raised.
        """
        errors: list[OSError] = []
        for family, proto, local, remote in candidates:
            try:
                sock = socket.socket(family, socket.SOCK_DGRAM, proto)
            except OSError as exc:  # e.g. IPv6 is disabled on this host
                errors.append(exc)
                continue
            try:
                if reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if allow_broadcast:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                sock.setblocking(False)
                if bind:
                    sock.bind(local)
                if connect and not allow_broadcast:
                    # A broadcast socket stays unconnected: replies come
                    # from the hosts that answer, not the broadcast address.
                    await self.sock_connect(sock, remote)
            except BaseException as exc:
                sock.close()
                if not isinstance(exc, OSError):
                    raise
                errors.append(exc)
                continue
            return sock, remote if connect else None
        raise errors[0]

    # -- datagram socket coroutines ---------------------------------------------

    async def sock_recvfrom(self, sock: socket.socket, bufsize: int) -> tuple[bytes, Any]:
        """Receive one datagram of up to ``bufsize`` bytes; return ``(data, address)``."""
        _check_nonblocking(sock)
        try:
            return sock.recvfrom(bufsize)
        except _TRY_AGAIN:
            pass
        result: tuple[bytes, Any] = await self._wait_readable(
            sock, self._recvfrom_ready, sock, bufsize
        )
        return result

    def _recvfrom_ready(
        self, future: asyncio.Future[tuple[bytes, Any]], sock: socket.socket, bufsize: int
    ) -> None:
        if future.done():
            return
        try:
            result = sock.recvfrom(bufsize)
        except _TRY_AGAIN:
            return
        except Exception as exc:
            future.set_exception(exc)
            del future  # the error's traceback holds this frame: no cycle through it
        else:
            future.set_result(result)

    async def sock_recvfrom_into(
        self, sock: socket.socket, buf: Any, nbytes: int = 0
    ) -> tuple[int, Any]:
        """Receive one datagram into ``buf`` (at most ``nbytes``, 0: all of it).

        Returns ``(number of bytes written, address)``.
        """
        _check_nonblocking(sock)
        if not nbytes:
            nbytes = len(buf)
        try:
            return sock.recvfrom_into(buf, nbytes)
        except _TRY_AGAIN:
            pass
        result: tuple[int, Any] = await self._wait_readable(
            sock, self._recvfrom_into_ready, sock, buf, nbytes
        )
        return result

    def _recvfrom_into_ready(
        self,
        future: asyncio.Future[tuple[int, Any]],
        sock: socket.socket,
        buf: Any,
        nbytes: int,
    ) -> None:
        if future.done():
            return
        try:
            result = sock.recvfrom_into(buf, nbytes)
        except _TRY_AGAIN:
            return
        except Exception as exc:
            future.set_exception(exc)
            del future  # the error's traceback holds this frame: no cycle through it
        else:
            future.set_result(result)

    async def sock_sendto(self, sock: socket.socket, data: Any, address: Any) -> int:
        """Send one datagram to ``address``; return the number of bytes sent."""
        _check_nonblocking(sock)
        try:
            return sock.sendto(data, address)
        except _TRY_AGAIN:
            pass
        sent: int = await self._wait_writable(sock, self._sendto_ready, sock, data, address)
        return sent

    def _sendto_ready(
        self, future: asyncio.Future[int], sock: socket.socket, data: Any, address: Any
    ) -> None:
        if future.done():
            return
        try:
            sent = sock.sendto(data, address)
        except _TRY_AGAIN:
            return
        except Exception as exc:
            future.set_exception(exc)
            del future  # the error's traceback holds this frame: no cycle through it
        else:
            future.set_result(sent)
