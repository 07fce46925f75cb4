"""Sending a file: ``sock_sendfile`` for a socket, ``sendfile`` for a transport.

The fast way to send a file is to not read it at all: ``os.sendfile`` asks
the kernel to copy from the file to the socket directly.  On a non-blocking
socket it sends what fits in the socket buffer and says how much; the rest
waits until ``add_writer`` reports room again.  This is the *native* path.

It does not always apply: the "file" may be a ``BytesIO`` with no descriptor,
the platform may lack ``os.sendfile``, or the transport may encrypt (TLS
must see every byte).  Then, unless the caller said ``fallback=False``, the
file is read in blocks (in the default executor: reading a file blocks) and
written the ordinary way.  Either way the file's position ends up just after
the last byte sent, as if it had been read.

For a transport, the native path first waits until the transport's own
write buffer is empty -- its bytes must reach the peer before the file's --
and refuses ``write()`` until it is done.
"""

from __future__ import annotations

import asyncio
import io
import os
import socket
from asyncio.constants import _SendfileMode
from collections.abc import Callable, Coroutine
from typing import IO, Any

from .transports import SocketTransport

# Blocks read by the fallback paths: a socket accepts large writes; a
# transport's flow control works best with writes near its high-water mark.
_SOCKET_FALLBACK_BLOCK = 256 * 1024
_TRANSPORT_FALLBACK_BLOCK = 16 * 1024

SendfileNotAvailableError = asyncio.SendfileNotAvailableError


def _check_arguments(sock: socket.socket, file: IO[bytes], offset: int, count: int | None) -> None:
    if "b" not in getattr(file, "mode", "b"):
        raise ValueError("file should be opened in binary mode")
    if sock.type != socket.SOCK_STREAM:
        raise ValueError("only SOCK_STREAM type sockets are supported")
    if count is not None:
        if not isinstance(count, int):
            raise TypeError(f"count must be a positive integer (got {count!r})")
        if count <= 0:
            raise ValueError(f"count must be a positive integer (got {count!r})")
    if not isinstance(offset, int):
        raise TypeError(f"offset must be a non-negative integer (got {offset!r})")
    if offset < 0:
        raise ValueError(f"offset must be a non-negative integer (got {offset!r})")


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class SendfileMethods:
    """``sock_sendfile`` and ``sendfile`` (a mixin of :class:`loopy.loop.Loop`)."""

    # Provided by the loop and its other mixins; declared for the type checker.
    _wait_writable: Callable[..., Coroutine[Any, Any, Any]]
    sock_sendall: Callable[..., Any]
    run_in_executor: Any

    async def sock_sendfile(
        self,
        sock: socket.socket,
        file: IO[bytes],
        offset: int = 0,
        count: int | None = None,
        *,
        fallback: bool | None = True,
    ) -> int:
        """Send ``count`` bytes of ``file`` (all, if None) from ``offset``; return how many."""
        if sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")
        _check_arguments(sock, file, offset, count)
        try:
            return await self._sendfile_native(sock, file, offset, count)
        except SendfileNotAvailableError:
            if not fallback:
                raise
        return await self._sendfile_by_reading(sock, file, offset, count)

    async def _sendfile_native(
        self, sock: socket.socket, file: IO[bytes], offset: int, count: int | None
    ) -> int:
        """``os.sendfile`` until done; SendfileNotAvailableError if it cannot start."""
        try:
            fileno = file.fileno()
            size = os.fstat(fileno).st_size
        except (AttributeError, io.UnsupportedOperation, OSError) as exc:
            raise SendfileNotAvailableError("not a regular file") from exc
        if not (count or size):
            return 0
        total = 0
        try:
            while count is None or total < count:
                blocksize = count - total if count is not None else size
                try:
                    sent = os.sendfile(sock.fileno(), fileno, offset + total, blocksize)
                except (BlockingIOError, InterruptedError):
                    await self._wait_writable(sock, _resolve)
                    continue
                except OSError as exc:
                    if total == 0:
                        # Nothing sent yet: the caller may still send it another way.
                        raise SendfileNotAvailableError("os.sendfile call failed") from exc
                    raise
                if sent == 0:
                    break  # end of file
                total += sent
        finally:
            if total:
                os.lseek(fileno, offset + total, os.SEEK_SET)
        return total

    async def _sendfile_by_reading(
        self, sock: socket.socket, file: IO[bytes], offset: int, count: int | None
    ) -> int:
        """The fallback: read blocks in a thread, ``sock_sendall`` each."""
        return await self._copy_blocks(
            file,
            offset,
            count,
            _SOCKET_FALLBACK_BLOCK,
            lambda block: self.sock_sendall(sock, block),
        )

    async def _copy_blocks(
        self,
        file: IO[bytes],
        offset: int,
        count: int | None,
        block_size: int,
        send: Callable[[memoryview], Any],
    ) -> int:
        """Read ``file`` block by block from ``offset`` and ``await send(block)`` each."""
        if offset:
            file.seek(offset)
        buffer = bytearray(min(count, block_size) if count else block_size)
        total = 0
        try:
            while count is None or total < count:
                want = len(buffer) if count is None else min(count - total, len(buffer))
                view = memoryview(buffer)[:want]
                nread = await self.run_in_executor(None, file.readinto, view)  # type: ignore[attr-defined]
                if not nread:
                    break
                await send(view[:nread])
                total += nread
        finally:
            if total and hasattr(file, "seek"):
                file.seek(offset + total)
        return total

    async def sendfile(
        self,
        transport: asyncio.WriteTransport,
        file: IO[bytes],
        offset: int = 0,
        count: int | None = None,
        *,
        fallback: bool = True,
    ) -> int:
        """Send ``file`` over ``transport``: natively when it is a plain socket transport."""
        if transport.is_closing():
            raise RuntimeError("Transport is closing")
        mode = getattr(transport, "_sendfile_compatible", _SendfileMode.UNSUPPORTED)
        if mode is _SendfileMode.UNSUPPORTED:
            raise RuntimeError(f"sendfile is not supported for transport {transport!r}")
        if mode is _SendfileMode.TRY_NATIVE and isinstance(transport, SocketTransport):
            try:
                return await self._sendfile_over_socket(transport, file, offset, count)
            except SendfileNotAvailableError:
                if not fallback:
                    raise
        if not fallback:
            raise RuntimeError(
                f"fallback is disabled and native sendfile is not supported "
                f"for transport {transport!r}"
            )
        return await self._sendfile_by_writing(transport, file, offset, count)

    async def _sendfile_over_socket(
        self, transport: SocketTransport, file: IO[bytes], offset: int, count: int | None
    ) -> int:
        transport.pause_reading()
        try:
            await transport._start_sendfile()
            assert transport._sock is not None
            return await self.sock_sendfile(transport._sock, file, offset, count, fallback=False)
        finally:
            transport._end_sendfile()
            transport.resume_reading()

    async def _sendfile_by_writing(
        self, transport: asyncio.WriteTransport, file: IO[bytes], offset: int, count: int | None
    ) -> int:
        """The fallback for transports: ``write`` blocks, pausing while the transport is full."""
        watcher = _FlowWatcher(transport)
        try:
            return await self._copy_blocks(
                file, offset, count, _TRANSPORT_FALLBACK_BLOCK, watcher.write_when_ready
            )
        finally:
            watcher.restore()


class _FlowWatcher(asyncio.Protocol):
    """Stands in for a transport's protocol while a file is written through it.

    It learns of ``pause_writing``/``resume_writing`` (so the copy waits
    instead of filling memory) and of a lost connection; reading is paused
    meanwhile, and everything is handed back to the real protocol after.
    """

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._protocol = transport.get_protocol()
        self._was_reading = transport.is_reading()
        self._was_paused = bool(getattr(transport, "_protocol_paused", False))
        self._ready: asyncio.Future[None] | None = None
        if self._was_paused:
            self._ready = asyncio.get_running_loop().create_future()
        transport.pause_reading()
        transport.set_protocol(self)

    async def write_when_ready(self, block: memoryview) -> None:
        if self._transport.is_closing():
            raise ConnectionError("Connection closed by peer")
        if self._ready is not None:
            await self._ready
        self._transport.write(block)

    def pause_writing(self) -> None:
        if self._ready is None:
            self._ready = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        ready, self._ready = self._ready, None
        if ready is not None and not ready.done():
            ready.set_result(None)

    def data_received(self, data: bytes) -> None:
        raise RuntimeError("Invalid state: reading should be paused")

    def eof_received(self) -> bool:
        raise RuntimeError("Invalid state: reading should be paused")

    def connection_lost(self, exc: Exception | None) -> None:
        ready, self._ready = self._ready, None
        if ready is not None and not ready.done():
            ready.set_exception(exc or ConnectionError("Connection is closed by peer"))
        self._protocol.connection_lost(exc)

    def restore(self) -> None:
        self._transport.set_protocol(self._protocol)
        if self._was_reading:
            self._transport.resume_reading()
        if self._ready is not None:
            self._ready.cancel()
        if self._was_paused:
            self._protocol.resume_writing()
