"""Pipe transports: one end of a pipe (or a pty, or a socket) as protocol callbacks.

``connect_read_pipe`` and ``connect_write_pipe`` wrap a file object that a
program already has -- ``sys.stdin``, one end of ``os.pipe()``, a pty master,
a child process's ``stdout`` -- in a transport, the same way
``transports.py`` wraps a socket.  ``subprocesses.py`` builds on them: a child
process's three pipes are three of these transports.

A pipe goes one way, so there are two transports:

* :class:`ReadPipeTransport` registers the descriptor with ``add_reader``
  and hands what ``os.read`` returns to ``protocol.data_received``.  An empty
  read is the end of the data (every writer closed its end): the protocol
  gets ``eof_received`` and then ``connection_lost(None)``.
* :class:`WritePipeTransport` writes with ``os.write``, buffering what the
  pipe did not take and sending it when ``add_writer`` says there is room
  again, with the same water marks as a socket transport
  (:class:`loopy.transports.FlowControl`, shared by every transport that buffers).

How does a writer learn that the reader went away, before it writes into the
void?  A pipe's write end never has data to read, yet ``select()`` reports
it *readable* (an error condition, in poll/epoll terms) as soon as the last
read end is closed.  So the write transport also watches its descriptor with
``add_reader``, and readability means "the reader is gone":
``connection_lost(None)`` if nothing was waiting to be written, or
``connection_lost(BrokenPipeError())`` if data was lost.  The same trick works
for a socket (the peer closing makes it readable, with EOF), but not for a
terminal, which is readable when someone types: a character device is not
watched that way.

Both transports make the descriptor non-blocking (a blocking read or write
would stop the whole loop), accept only pipes, sockets and character devices
(a regular file is always "ready", so ``select()`` cannot help with it), and
close the file object after ``connection_lost``, which they call exactly once.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .contract import LoopMixin
from .transports import (
    _CONNECTION_ERRORS,
    _WRITES_AFTER_LOSS_BEFORE_WARNING,
    MAX_READ_SIZE,
    FileTransport,
    FlowControl,
    ReadControl,
    _check_bytes_like,
    _resolve_waiter,
    start_transport,
)

if TYPE_CHECKING:
    from .contract import LoopContract

# Its warnings are the ones asyncio gives for the same events, so they go
# where asyncio's users look for them: the logger named "asyncio".
logger = logging.getLogger("asyncio")


def _is_peer_gone(exc: BaseException) -> bool:
    """True for errors that only mean the other end closed, which are not worth a report.

    Besides the connection errors of sockets, reading a pty whose other
    side was closed fails with EIO: that is how a terminal hangs up.
    """
    return isinstance(exc, _CONNECTION_ERRORS) or (
        isinstance(exc, OSError) and exc.errno == errno.EIO
    )


def _file_type(pipe: Any) -> int:
    """The ``st_mode`` of ``pipe``'s descriptor, which must be a pipe, socket or device."""
    mode = os.fstat(pipe.fileno()).st_mode
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)):
        raise ValueError(
            f"Pipe transport is only for pipes, sockets and character devices, not {pipe!r}"
        )
    return mode


class _PipeTransport(FileTransport):
    """What both directions share: the file object, closing, ``connection_lost`` once.

    Invariant: ``connection_lost`` is called exactly once, scheduled by
    :meth:`_lose_connection`, and the pipe is closed right after it.
    """

    _loop: LoopContract
    _protocol: asyncio.BaseProtocol

    def _setup(self, loop: LoopContract, pipe: Any, protocol: asyncio.BaseProtocol) -> None:
        self._loop = loop
        self._pipe: Any = pipe
        self._fd: int = pipe.fileno()
        loop._transports[self._fd] = self  # add_reader() on this fd is now refused
        self._protocol = protocol
        self._closing = False  # no more reading or writing is wanted
        self._lost = False  # connection_lost is scheduled (or done)
        # A blocking read or write would stop the whole loop.
        os.set_blocking(self._fd, False)

    @property
    def _file(self) -> Any:
        return self._pipe

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def _lose_connection(self, exc: BaseException | None) -> None:
        self._lost = True
        self._loop.call_soon(self._call_connection_lost, exc)

    def _fatal_error(self, exc: BaseException, message: str) -> None:
        if not _is_peer_gone(exc):
            self._loop.call_exception_handler(
                {
                    "message": message,
                    "exception": exc,
                    "transport": self,
                    "protocol": self._protocol,
                }
            )
        self._force_close(exc)

    def _force_close(self, exc: BaseException | None) -> None:
        raise NotImplementedError

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        try:
            # typeshed says Exception; asyncio passes any BaseException here.
            self._protocol.connection_lost(exc)  # type: ignore[arg-type]
        finally:
            self._pipe.close()
            self._pipe = None


class ReadPipeTransport(_PipeTransport, ReadControl, asyncio.ReadTransport):
    """The reading end of a pipe (or a socket, or a pty) as ``data_received`` calls."""

    def __init__(
        self,
        loop: LoopContract,
        pipe: Any,
        protocol: asyncio.BaseProtocol,
        waiter: asyncio.Future[None] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__({**(extra or {}), "pipe": pipe})
        _file_type(pipe)
        self._setup(loop, pipe, protocol)
        self._announce(loop, protocol, waiter)

    def _start_reading(self) -> None:
        if not self._closing and not self._reading_paused:
            self._loop._add_reader(self._fd, self._on_readable)

    def _stop_reading(self) -> None:
        self._loop._remove_reader(self._fd)

    def _on_readable(self) -> None:
        """The pipe is readable: hand what it has to ``protocol.data_received``."""
        try:
            data = os.read(self._fd, MAX_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fatal_error(exc, "Fatal read error on pipe transport")
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

    def _eof_received(self) -> None:
        """Every writer closed its end.  A pipe cannot be half-open, so this is the end."""
        self._closing = True
        self._loop._remove_reader(self._fd)
        try:
            # Its answer ("keep the transport open?") means nothing for a
            # read-only pipe: there is nothing left to keep open.
            self._protocol.eof_received()  # type: ignore[attr-defined]
        except (SystemExit, KeyboardInterrupt):
            self._force_close(None)  # the pipe is finished all the same
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.eof_received() call failed.")
            return
        self._force_close(None)

    def close(self) -> None:
        """Stop reading and lose the connection (the pipe is closed after ``connection_lost``)."""
        if not self._closing:
            self._force_close(None)

    def _force_close(self, exc: BaseException | None) -> None:
        if self._lost:
            return  # e.g. data_received() closed the transport, then raised
        self._closing = True
        self._loop._remove_reader(self._fd)
        self._lose_connection(exc)


class WritePipeTransport(_PipeTransport, FlowControl, asyncio.Transport):
    """The writing end of a pipe (or a socket, or a pty), with a buffer and water marks.

    Like asyncio's, it is a full :class:`asyncio.Transport`, so code that
    handles transports generically may call ``pause_reading()``,
    ``resume_reading()`` and ``is_reading()``: there is nothing to read,
    and they raise NotImplementedError, as asyncio's do.
    """

    def __init__(
        self,
        loop: LoopContract,
        pipe: Any,
        protocol: asyncio.BaseProtocol,
        waiter: asyncio.Future[None] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__({**(extra or {}), "pipe": pipe})
        mode = _file_type(pipe)
        self._setup(loop, pipe, protocol)
        self._buffer = bytearray()
        self._dropped_writes = 0  # writes after close(), to warn about them once
        loop.call_soon(protocol.connection_made, self)
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            # Readable means the reader went away (see the module docstring).
            # A terminal is readable when someone types, so it is not watched.
            loop.call_soon(self._watch_for_reader_gone)
        if waiter is not None:
            loop.call_soon(_resolve_waiter, waiter)

    def _watch_for_reader_gone(self) -> None:
        if not self._closing:
            self._loop._add_reader(self._fd, self._on_reader_gone)

    def _on_reader_gone(self) -> None:
        """The read end was closed: nothing written from now on can arrive."""
        self._force_close(BrokenPipeError() if self._buffer else None)

    # -- writing -------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Write ``data``: now if the pipe takes it, else from the buffer when it has room."""
        _check_bytes_like(data)
        if not data:
            return
        if self._closing:
            # The pipe is (being) closed: the data cannot go anywhere.
            self._dropped_writes += 1
            if self._dropped_writes == _WRITES_AFTER_LOSS_BEFORE_WARNING:
                logger.warning("pipe closed by peer or os.write(pipe, data) raised exception.")
            return
        if not self._buffer:
            try:
                written = os.write(self._fd, data)
            except (BlockingIOError, InterruptedError):
                written = 0
            except OSError as exc:
                self._fatal_error(exc, "Fatal write error on pipe transport")
                return
            if written == len(data):
                return
            data = memoryview(data)[written:]
            self._loop._add_writer(self._fd, self._on_writable)
        self._buffer += data
        self._maybe_pause_protocol()

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        """Write the pieces joined: one ``write``, so one attempt to send."""
        self.write(b"".join(list_of_data))

    def _on_writable(self) -> None:
        """The pipe has room: write as much of the buffer as it takes."""
        try:
            written = os.write(self._fd, self._buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fatal_error(exc, "Fatal write error on pipe transport")
            return
        del self._buffer[:written]
        self._maybe_resume_protocol()  # may write more, and refill the buffer
        if self._buffer:
            return
        self._loop._remove_writer(self._fd)
        if self._closing:
            self._loop._remove_reader(self._fd)
            self._lose_connection(None)

    def get_write_buffer_size(self) -> int:
        """Bytes waiting in the buffer for the pipe to have room."""
        return len(self._buffer)

    # -- closing ----------------------------------------------------------------

    def can_write_eof(self) -> bool:
        """True: :meth:`write_eof` closes the pipe once the buffer is written."""
        return True

    def write_eof(self) -> None:
        """Close once the buffer is written: for a pipe, the end of the data *is* closing."""
        if self._closing:
            return
        self._closing = True
        if not self._buffer:
            self._loop._remove_reader(self._fd)
            self._lose_connection(None)

    def close(self) -> None:
        """Write what is buffered, then lose the connection and close the pipe."""
        self.write_eof()

    def abort(self) -> None:
        """Close at once, dropping whatever is still buffered."""
        self._force_close(None)

    def _force_close(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        if self._buffer:
            self._buffer.clear()
            self._loop._remove_writer(self._fd)
        self._closing = True
        self._loop._remove_reader(self._fd)
        self._lose_connection(exc)


class PipeMethods(LoopMixin):
    """``connect_read_pipe`` and ``connect_write_pipe`` (a mixin of :class:`loopy.loop.Loop`)."""

    # Provided by the loop; declared here for the type checker.
    create_future: Callable[[], asyncio.Future[Any]]

    async def connect_read_pipe(
        self, protocol_factory: Callable[[], asyncio.BaseProtocol], pipe: Any
    ) -> tuple[Any, Any]:
        """Wrap ``pipe`` (a file object with ``fileno()``) in a :class:`ReadPipeTransport`."""
        return await start_transport(
            self,
            protocol_factory,
            lambda protocol, waiter: ReadPipeTransport(self, pipe, protocol, waiter),
        )

    async def connect_write_pipe(
        self, protocol_factory: Callable[[], asyncio.BaseProtocol], pipe: Any
    ) -> tuple[Any, Any]:
        """Wrap ``pipe`` (a file object with ``fileno()``) in a :class:`WritePipeTransport`."""
        return await start_transport(
            self,
            protocol_factory,
            lambda protocol, waiter: WritePipeTransport(self, pipe, protocol, waiter),
        )
