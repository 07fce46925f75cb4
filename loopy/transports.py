"""Socket transports: the bridge between a connected socket and a protocol's callbacks.

A *protocol* (``asyncio.Protocol``) is an object with callbacks --
``connection_made``, ``data_received``, ``eof_received``, ``connection_lost``
-- and a *transport* is what it calls back into to ``write`` and ``close``.
``asyncio.start_server`` and ``open_connection`` build their streams on this
pair, so once the transport works, streams work.

:class:`SocketTransport` does all of its work in two loop callbacks:

* ``SocketTransport._on_readable``, registered with the loop's
  ``_add_reader``: an attribute, not a method, that ``_set_read_path`` points
  at :meth:`SocketTransport._read_data` or, for an
  ``asyncio.BufferedProtocol``, at :meth:`SocketTransport._read_into_buffer`.
  ``select()`` said the socket is readable, so one ``recv`` cannot block; the
  bytes go straight to ``protocol.data_received`` (or into the protocol's own
  buffer with ``recv_into``).  This is the end of a byte's path from
  ``select()``.
* :meth:`SocketTransport._on_writable`, registered with ``add_writer`` only
  while there is something buffered: sends as much of the write buffer as the
  kernel takes.

``write()`` first tries to send directly, and only buffers what the kernel
did not take.  When the buffer grows past the *high-water mark* the transport
calls ``protocol.pause_writing()`` (streams' ``drain()`` then waits), and when
it drains below the *low-water mark*, ``resume_writing()``: this is how a
slow reader on the other side slows the writer down instead of filling memory.

Invariant: ``connection_lost`` is called exactly once, always through
:meth:`SocketTransport._force_close` or ``close``, and the socket is closed
right after it.

Errors of the socket itself (``OSError``: the peer reset the connection, a
keep-alive timed out, the route went away) are a fact of network life: they
reach the protocol as ``connection_lost(exc)`` and are not reported to the
loop's exception handler, as in asyncio.  Exceptions raised by the protocol's
own callbacks are bugs, and are reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import warnings
from asyncio.constants import _SendfileMode
from asyncio.trsock import TransportSocket
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .contract import LoopContract

# Its warnings are the ones asyncio gives for the same events, so they go
# where asyncio's users look for them: the logger named "asyncio".
logger = logging.getLogger("asyncio")

# Reads of 64 KiB: large enough to drain a socket in few calls, small enough to
# stay below glibc's mmap threshold (larger reads make a fresh process slower).
MAX_READ_SIZE = 65536

# asyncio's defaults: pause the writer above 64 KiB buffered, resume below 16 KiB.
DEFAULT_HIGH_WATER = 64 * 1024

# After the connection is lost, writes are dropped; warn once this many were.
_WRITES_AFTER_LOSS_BEFORE_WARNING = 5

# Errors that mean the peer went away.  A socket transport keeps quiet about
# every OSError (see the module docstring); pipes.py, whose descriptors fail
# in fewer innocent ways, reports all but these.
_CONNECTION_ERRORS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


def _check_bytes_like(data: object) -> None:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")


class FlowControl:
    """Write buffer water marks: ``pause_writing`` above the high mark, resume below the low one.

    A mixin for every transport with a write buffer (sockets here, pipes in
    ``pipes.py``, datagrams in ``datagrams.py``); the transport provides
    ``get_write_buffer_size()``, ``_protocol`` and ``_loop``.  The defaults
    are asyncio's: 64 KiB, and a quarter of that.
    """

    # Instance state, with its initial values here so no __init__ is needed.
    _high_water = DEFAULT_HIGH_WATER
    _low_water = DEFAULT_HIGH_WATER // 4
    _protocol_paused = False  # we called protocol.pause_writing() (asyncio's name for it)

    _protocol: Any
    _loop: LoopContract

    def get_write_buffer_size(self) -> int:
        """Bytes written but not yet sent; each transport counts its own buffer."""
        raise NotImplementedError

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """The water marks, ``(low, high)``, in bytes."""
        return (self._low_water, self._high_water)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Set the water marks (``high`` defaults to 64 KiB, ``low`` to ``high // 4``)."""
        if high is None:
            high = DEFAULT_HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high_water, self._low_water = high, low
        self._maybe_pause_protocol()

    def _maybe_pause_protocol(self) -> None:
        if self._protocol_paused or self.get_write_buffer_size() <= self._high_water:
            return
        self._protocol_paused = True
        self._call_protocol("pause_writing")

    def _maybe_resume_protocol(self) -> None:
        if not self._protocol_paused or self.get_write_buffer_size() > self._low_water:
            return
        self._protocol_paused = False
        self._call_protocol("resume_writing")

    def _call_protocol(self, method: str) -> None:
        # A flow control callback that fails is the protocol's bug, not a
        # reason to lose the connection: report it and carry on.
        try:
            getattr(self._protocol, method)()
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


class FileTransport:
    """What every transport over one file descriptor shares (a mixin).

    The socket, datagram and pipe transports all keep their descriptor in
    ``_fd``, name the object that owns it as ``_file`` (None once closed),
    announce themselves the same way, and warn the same way when they are
    garbage-collected unclosed.
    """

    _fd: int
    _closing: bool
    _protocol: asyncio.BaseProtocol

    def _announce(
        self, loop: LoopContract, protocol: Any, waiter: asyncio.Future[None] | None
    ) -> None:
        """Schedule ``connection_made``, then reading, then the waiter's wake-up."""
        loop.call_soon(protocol.connection_made, self)
        # Only read once connection_made() has run.
        loop.call_soon(self._start_reading)
        if waiter is not None:
            loop.call_soon(_resolve_waiter, waiter)

    @property
    def _file(self) -> Any:
        raise NotImplementedError

    def _start_reading(self) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        state = "closed" if self._file is None else "closing" if self._closing else "open"
        return f"<{type(self).__name__} fd={self._fd} {state}>"

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        file = getattr(self, "_file", None)  # None too if __init__ failed early
        if file is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            file.close()

    def get_protocol(self) -> asyncio.BaseProtocol:
        """The protocol this transport calls (``data_received``, ``connection_lost``...)."""
        return self._protocol

    def is_closing(self) -> bool:
        """True once the transport is closing or closed (``close()``, ``abort()``, an error...)."""
        return self._closing


class ReadControl:
    """``pause_reading``, ``resume_reading`` and ``is_reading`` (a mixin).

    For every transport that reads: sockets here, read pipes in
    ``pipes.py``, datagrams in ``datagrams.py``.  The transport provides
    ``_start_reading`` (watch the descriptor, unless closing or paused) and
    ``_stop_reading``.  While paused, what arrives waits in the kernel's
    buffer (for datagrams: the kernel drops those that do not fit), as on
    asyncio.
    """

    _closing: bool
    _reading_paused = False  # the protocol called pause_reading()

    def _start_reading(self) -> None:
        raise NotImplementedError

    def _stop_reading(self) -> None:
        raise NotImplementedError

    def pause_reading(self) -> None:
        """Stop delivering what arrives (``data_received``...) until :meth:`resume_reading`."""
        if self._closing or self._reading_paused:
            return
        self._reading_paused = True
        self._stop_reading()

    def resume_reading(self) -> None:
        """Watch the descriptor again after :meth:`pause_reading`: delivery resumes."""
        if self._closing or not self._reading_paused:
            return
        self._reading_paused = False
        self._start_reading()

    def is_reading(self) -> bool:
        """True unless reading is paused or the transport is closing."""
        return not self._closing and not self._reading_paused


class SocketTransport(FileTransport, ReadControl, FlowControl, asyncio.Transport):
    """A transport over a connected stream socket (TCP or Unix)."""

    def __init__(
        self,
        loop: LoopContract,
        sock: socket.socket,
        protocol: asyncio.BaseProtocol,
        waiter: asyncio.Future[None] | None = None,
        extra: dict[str, Any] | None = None,
        server: Any = None,
    ) -> None:
        super().__init__()
        self._extra: dict[str, Any] = dict(extra or {})
        self._loop = loop
        self._sock: socket.socket | None = sock
        self._fd = sock.fileno()
        loop._transports[self._fd] = self  # add_reader() on this fd is now refused
        self._server = server
        self._extra.setdefault("socket", TransportSocket(sock))
        for key, getter in (("sockname", sock.getsockname), ("peername", sock.getpeername)):
            if key not in self._extra:
                try:
                    self._extra[key] = getter()
                except OSError:
                    self._extra[key] = None
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            # Small writes go out at once: an event loop batches on its own.
            # (A stream socket of another protocol, such as SCTP, refuses the
            # option; it then simply keeps its default.)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        self._protocol: asyncio.BaseProtocol = protocol
        self._set_read_path(protocol)
        self._write_buffer = bytearray()
        self._reader_registered = False  # the selector watches the socket for us
        self._closing = False  # close() or abort() was called
        self._eof_sent = False  # write_eof() was called
        # While a loop.sendfile() sends from the socket directly, write() is
        # refused; the sendfile waits on this future for the buffer to empty.
        self._sendfile_waiter: asyncio.Future[None] | None = None
        self._at_eof = False  # the peer sent EOF: there is nothing left to read
        # How many times the connection was lost: 0 while it is alive.
        # Also counts writes dropped afterwards, to warn about them once.
        self._conn_lost = 0

        if server is not None:
            server._attach(self)
        self._announce(loop, protocol, waiter)

    # -- protocol --------------------------------------------------------

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Switch to another protocol (``start_tls`` slides a TLS layer in this way)."""
        self._protocol = protocol
        self._set_read_path(protocol)
        if self._reader_registered:
            # The selector holds the old read path: point it at the new one.
            self._loop._add_reader(self._fd, self._on_readable)

    @property
    def _file(self) -> socket.socket | None:
        return self._sock

    def _set_read_path(self, protocol: asyncio.BaseProtocol) -> None:
        # A BufferedProtocol lends us its buffer: recv_into it, no copy.
        self._on_readable: Callable[[], None] = (
            self._read_into_buffer
            if isinstance(protocol, asyncio.BufferedProtocol)
            else self._read_data
        )

    # -- reading ------------------------------------------------------------

    def _start_reading(self) -> None:
        # After EOF the socket stays readable (recv returns b"" forever):
        # watching it again would report the same EOF a second time.
        if not self._closing and not self._reading_paused and not self._at_eof:
            self._loop._add_reader(self._fd, self._on_readable)
            self._reader_registered = True

    def _stop_reading(self) -> None:
        self._loop._remove_reader(self._fd)
        self._reader_registered = False

    def _read_data(self) -> None:
        """The socket is readable: hand what it has to ``protocol.data_received``."""
        assert self._sock is not None
        try:
            data = self._sock.recv(MAX_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal read error on socket transport")
            return
        if not data:
            self._eof_received()
            return
        try:
            self._protocol.data_received(data)  # type: ignore[attr-defined]
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")

    def _read_into_buffer(self) -> None:
        """The socket is readable: receive into the BufferedProtocol's own buffer."""
        assert self._sock is not None
        protocol: asyncio.BufferedProtocol = self._protocol  # type: ignore[assignment]
        try:
            buffer = protocol.get_buffer(-1)
            if not len(buffer):  # type: ignore[arg-type]
                raise RuntimeError("get_buffer() returned an empty buffer")
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.get_buffer() call failed.")
            return
        try:
            nbytes = self._sock.recv_into(buffer)
        except (BlockingIOError, InterruptedError):
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal read error on socket transport")
            return
        if not nbytes:
            self._eof_received()
            return
        try:
            protocol.buffer_updated(nbytes)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.buffer_updated() call failed.")

    def _eof_received(self) -> None:
        """The peer will send no more.  The protocol decides whether we may still write."""
        self._at_eof = True
        self._stop_reading()
        try:
            keep_open = self._protocol.eof_received()  # type: ignore[attr-defined]
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.eof_received() call failed.")
            return
        if not keep_open:
            self.close()

    # -- writing -------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data``: now if the kernel takes it, else from the buffer when writable."""
        if type(data) is not bytes:  # bytes, the common case, needs neither step
            _check_bytes_like(data)
            # send() counts bytes, so look at the data as bytes: a memoryview
            # of 4-byte integers has a len() four times too small.
            data = memoryview(data).cast("B")
        if self._eof_sent:
            raise RuntimeError("Cannot call write() after write_eof()")
        if self._sendfile_waiter is not None:
            raise RuntimeError("unable to write; sendfile is in progress")
        if not data:
            return
        if self._conn_lost:
            if self._conn_lost >= _WRITES_AFTER_LOSS_BEFORE_WARNING:
                logger.warning("socket.send() raised exception.")
            self._conn_lost += 1
            return
        if not self._write_buffer:
            # Nothing queued: try to send right away, and buffer only the rest.
            assert self._sock is not None
            try:
                sent = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal write error on socket transport")
                return
            if sent == len(data):
                return
            data = data[sent:]
            self._loop._add_writer(self._fd, self._on_writable)
        self._write_buffer += data
        self._maybe_pause_protocol()

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        """Write the pieces joined: one :meth:`write`, so one ``send()`` attempt."""
        self.write(b"".join(list_of_data))

    def _on_writable(self) -> None:
        """The socket has room: send as much of the buffer as it takes."""
        assert self._sock is not None
        try:
            sent = self._sock.send(self._write_buffer)
        except (BlockingIOError, InterruptedError):
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._loop._remove_writer(self._fd)
            self._write_buffer.clear()
            self._fatal_error(exc, "Fatal write error on socket transport")
            return
        del self._write_buffer[:sent]
        self._maybe_resume_protocol()
        if self._write_buffer:
            return
        self._loop._remove_writer(self._fd)
        if self._sendfile_waiter is not None and not self._sendfile_waiter.done():
            self._sendfile_waiter.set_result(None)
        if self._closing:
            self._lose_connection(None)
        elif self._eof_sent:
            self._shutdown_writing()

    def write_eof(self) -> None:
        """Close the sending side once the buffer is flushed; reading goes on."""
        if self._closing or self._eof_sent:
            return
        self._eof_sent = True
        if not self._write_buffer:
            self._shutdown_writing()

    def _shutdown_writing(self) -> None:
        # shutdown() fails when the peer already reset the connection: that
        # is the connection's end, not a bug in the caller.
        assert self._sock is not None
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self._fatal_error(exc, "Fatal error on socket.shutdown()")

    def can_write_eof(self) -> bool:
        """True: a stream socket can shut down its sending side (:meth:`write_eof`)."""
        return True

    def get_write_buffer_size(self) -> int:
        """Bytes written but not yet sent, waiting for the socket to have room."""
        return len(self._write_buffer)

    # -- closing ----------------------------------------------------------------

    def close(self) -> None:
        """Stop reading, send what is buffered, then lose the connection."""
        if self._closing:
            return
        self._closing = True
        self._stop_reading()
        if not self._write_buffer:
            self._lose_connection(None)

    def abort(self) -> None:
        """Close at once, dropping whatever is still buffered."""
        self._force_close(None)

    def _force_close(self, exc: BaseException | None) -> None:
        # asyncio's sslproto calls this private name on the transport under it.
        if self._conn_lost:
            return
        if self._write_buffer:
            self._write_buffer.clear()
            self._loop._remove_writer(self._fd)
        if not self._closing:
            self._closing = True
            self._stop_reading()
        self._lose_connection(exc)

    def _lose_connection(self, exc: BaseException | None) -> None:
        self._conn_lost += 1
        self._loop.call_soon(self._call_connection_lost, exc)

    def _fatal_error(self, exc: BaseException, message: str) -> None:
        # An OSError is the network's doing (see the module docstring): the
        # protocol learns of it in connection_lost, nobody else needs to.
        if not isinstance(exc, OSError):
            self._loop.call_exception_handler(
                {
                    "message": message,
                    "exception": exc,
                    "transport": self,
                    "protocol": self._protocol,
                }
            )
        self._force_close(exc)

    # -- sendfile (see sendfile.py) ------------------------------------------------

    # asyncio's marker, read by its loops and ours: sendfile() may bypass this
    # transport and call os.sendfile() on its socket.
    _sendfile_compatible = _SendfileMode.TRY_NATIVE
    # asyncio's marker for start_tls(): this transport can carry a TLS layer.
    _start_tls_compatible = True

    def _start_sendfile(self) -> asyncio.Future[None]:
        """Refuse write() from now on; the future is done once the buffer is flushed."""
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._sendfile_waiter = waiter
        if not self._write_buffer:
            waiter.set_result(None)
        return waiter

    def _end_sendfile(self) -> None:
        self._sendfile_waiter = None

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        waiter = self._sendfile_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError("Connection is closed by peer"))
        try:
            # typeshed says Exception; asyncio passes any BaseException here.
            self._protocol.connection_lost(exc)  # type: ignore[arg-type]
        finally:
            assert self._sock is not None
            self._sock.close()
            self._sock = None
            server, self._server = self._server, None
            if server is not None:
                server._detach(self)
            # Let go of the protocol (and, through TLS, its SSL context):
            # a closed transport may live on in user code.
            self._protocol = _LOST


#: What a transport's protocol becomes once the connection is lost.
_LOST = asyncio.Protocol()


async def start_transport(
    loop: LoopContract,
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    make_transport: Callable[[asyncio.BaseProtocol, asyncio.Future[None]], Any],
) -> tuple[Any, Any]:
    """Make a protocol and its transport; return both once ``connection_made`` has run.

    ``make_transport(protocol, waiter)`` builds the transport, which sets
    ``waiter`` once the protocol knows it.  If waiting fails (cancelled, or a
    TLS handshake error), the transport is closed before the error goes on.
    """
    protocol = protocol_factory()
    waiter: asyncio.Future[None] = loop.create_future()
    transport = make_transport(protocol, waiter)
    try:
        await waiter
    except BaseException:
        transport.close()
        raise
    return transport, protocol


def _resolve_waiter(waiter: asyncio.Future[None]) -> None:
    if not waiter.cancelled():
        waiter.set_result(None)
