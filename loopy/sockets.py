"""Socket coroutines: ``sock_recv``, ``sock_sendall``, ``sock_accept``, ``sock_connect``...

Each one turns a non-blocking socket call into something a coroutine can
``await``, always the same way:

1. **Try the call right away.**  Data is often already there (or the send
   buffer has room), and then the answer costs one system call and no
   selector work at all.
2. If the socket says it would block (``BlockingIOError``), **make a
   future, ask the loop to call us back when the socket is ready**
   (``add_reader`` or ``add_writer``) and await the future.
3. The callback retries the call.  If it would still block (another reader
   got there first, or the readiness was spurious) it simply waits for the
   next readiness; otherwise it resolves the future with the result or the
   error.
4. However the wait ends -- a result, an error, or the awaiting task being
   cancelled -- a ``finally`` removes the registration (one iteration
   later, unless the next call on the socket took it over), so no
   descriptor stays watched by a coroutine that gave up.

This is the path of a byte in ``sock_recv``: ``select()`` reports the socket
readable (``Loop._run_once``), the loop runs :meth:`SocketMethods._recv_ready`,
which calls ``sock.recv`` and sets the future's result, which wakes the task
awaiting ``sock_recv``.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

from .handles import Handle

# The errors that mean "not now, try again when the socket is ready".
_TRY_AGAIN = (BlockingIOError, InterruptedError)


def _check_nonblocking(sock: socket.socket) -> None:
    # A blocking socket would block the whole loop on the first call.
    if sock.gettimeout() != 0:
        raise ValueError("the socket must be non-blocking")


def _is_ip_address(family: int, host: Any) -> bool:
    try:
        socket.inet_pton(family, host)
    except (OSError, TypeError, ValueError):
        return False
    return True


class SocketMethods:
    """The ``sock_*`` coroutines of the loop (a mixin of :class:`loopy.loop.Loop`).

    What it uses of the loop is declared below: ``create_future``,
    ``call_soon``, ``is_closed`` and ``getaddrinfo`` from the public API, and
    the private ``_add_reader``/``_add_writer`` (they return the handle, so
    each wait can later remove only its own registration) with
    ``_remove_reader``/``_remove_writer``.
    """

    # Provided by the loop; declared here for the type checker.
    create_future: Callable[[], asyncio.Future[Any]]
    call_soon: Callable[..., Any]
    is_closed: Callable[[], bool]
    _add_reader: Callable[..., Handle]
    _add_writer: Callable[..., Handle]
    _remove_reader: Callable[[Any], bool]
    _remove_writer: Callable[[Any], bool]
    getaddrinfo: Callable[..., Any]

    async def _wait_readable(
        self, sock: socket.socket, callback: Callable[..., None], *args: Any
    ) -> Any:
        """Wait until ``callback(future, *args)``, run whenever ``sock`` is readable,
        resolves the future; return its result."""
        future = self.create_future()
        fd = sock.fileno()
        # Registered under the socket object, not its number, so that the
        # loop can tell if it was closed (see Loop._watch).
        handle = self._add_reader(sock, callback, future, *args)
        try:
            return await future
        finally:
            # (A task collected after its loop closed ends here too: nothing to remove.)
            if not self.is_closed():
                self.call_soon(self._remove_reader_if_ours, fd, handle)
            # An error raised from the future holds a traceback through this
            # frame, and the future (also through the handle's arguments)
            # holds the error: without these locals that is no reference
            # cycle, and the error is freed as soon as nobody holds it.
            del future, handle

    async def _wait_writable(
        self, sock: socket.socket, callback: Callable[..., None], *args: Any
    ) -> Any:
        """Wait until ``callback(future, *args)``, run whenever ``sock`` is writable,
        resolves the future; return its result."""
        future = self.create_future()
        fd = sock.fileno()
        handle = self._add_writer(sock, callback, future, *args)
        try:
            return await future
        finally:
            if not self.is_closed():
                self.call_soon(self._remove_writer_if_ours, fd, handle)
            del future, handle  # no reference cycle through this frame, as above

    # When is a registration ours to remove?  The ``finally`` above runs as
    # soon as the waiting task resumes -- with a result, an error or a
    # cancellation.  That task usually asks for the same socket again at
    # once (a read loop calls sock_recv again), so removing the registration
    # now would only make it add it back: two system calls per message.  So
    # the check runs one iteration later, and removes the registration only
    # if nobody replaced it meanwhile.  A replacing call cancelled our handle
    # (add_reader does that), and so did remove_reader.

    # The socket may belong to a transport by now (create_connection hands
    # it over): the private removers skip the check that add_reader() and
    # friends make against that, and the handle says the registration is ours.

    def _remove_reader_if_ours(self, fd: int, handle: Handle) -> None:
        if not handle.cancelled():
            self._remove_reader(fd)

    def _remove_writer_if_ours(self, fd: int, handle: Handle) -> None:
        if not handle.cancelled():
            self._remove_writer(fd)

    # -- receiving --------------------------------------------------------

    async def sock_recv(self, sock: socket.socket, nbytes: int) -> bytes:
        """Receive up to ``nbytes`` bytes; ``b""`` means the peer closed."""
        _check_nonblocking(sock)
        try:
            return sock.recv(nbytes)
        except _TRY_AGAIN:
            pass
        data: bytes = await self._wait_readable(sock, self._recv_ready, sock, nbytes)
        return data

    def _recv_ready(self, future: asyncio.Future[bytes], sock: socket.socket, nbytes: int) -> None:
        if future.done():
            return
        try:
            data = sock.recv(nbytes)
        except _TRY_AGAIN:
            return
        except Exception as exc:
            future.set_exception(exc)
            del future  # the error's traceback holds this frame: no cycle through it
        else:
            future.set_result(data)

    async def sock_recv_into(self, sock: socket.socket, buf: Any) -> int:
        """Receive into ``buf``; return how many bytes were written (0: the peer closed)."""
        _check_nonblocking(sock)
        try:
            return sock.recv_into(buf)
        except _TRY_AGAIN:
            pass
        nbytes: int = await self._wait_readable(sock, self._recv_into_ready, sock, buf)
        return nbytes

    def _recv_into_ready(self, future: asyncio.Future[int], sock: socket.socket, buf: Any) -> None:
        if future.done():
            return
        try:
            nbytes = sock.recv_into(buf)
        except _TRY_AGAIN:
            return
        except Exception as exc:
            future.set_exception(exc)
            del future  # the error's traceback holds this frame: no cycle through it
        else:
            future.set_result(nbytes)

    # -- sending ----------------------------------------------------------

    async def sock_sendall(self, sock: socket.socket, data: Any) -> None:
        """Send all of ``data``, waiting for room in the send buffer as needed."""
        _check_nonblocking(sock)
        try:
            sent = sock.send(data)
        except _TRY_AGAIN:
            sent = 0
        view = memoryview(data).cast("B")
        if sent == len(view):
            return
        # The rest goes out as the socket becomes writable.  The callback
        # keeps its progress in a one-element list so it can resume there.
        await self._wait_writable(sock, self._sendall_ready, sock, view, [sent])

    def _sendall_ready(
        self, future: asyncio.Future[None], sock: socket.socket, view: memoryview, sent: list[int]
    ) -> None:
        if future.done():
            return
        try:
            sent[0] += sock.send(view[sent[0] :])
        except _TRY_AGAIN:
            return
        except Exception as exc:
            future.set_exception(exc)
            del future  # the error's traceback holds this frame: no cycle through it
            return
        if sent[0] == len(view):
            future.set_result(None)

    # -- connecting and accepting ----------------------------------------

    async def sock_connect(self, sock: socket.socket, address: Any) -> None:
        """Connect ``sock`` to ``address``; a host name is resolved first, off the loop's thread."""
        _check_nonblocking(sock)
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_ip_address(
            sock.family, address[0]
        ):
            # connect() would resolve a name itself, blocking the whole loop.
            infos = await self.getaddrinfo(
                *address[:2], family=sock.family, type=sock.type, proto=sock.proto
            )
            address = infos[0][4]
        try:
            sock.connect(address)
            return
        except _TRY_AGAIN:
            # The connection is under way: it is done when the socket
            # becomes writable, successfully or not (SO_ERROR tells).
            pass
        await self._wait_writable(sock, self._connect_ready, sock, address)

    def _connect_ready(
        self, future: asyncio.Future[None], sock: socket.socket, address: Any
    ) -> None:
        if future.done():
            return
        try:
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error != 0:
                raise OSError(error, f"Connect call failed {address}")
        except _TRY_AGAIN:
            return
        except Exception as exc:
            future.set_exception(exc)
            del future  # the error's traceback holds this frame: no cycle through it
        else:
            future.set_result(None)

    async def sock_accept(self, sock: socket.socket) -> tuple[socket.socket, Any]:
        """Accept a connection; return ``(conn, address)`` with ``conn`` non-blocking."""
        _check_nonblocking(sock)
        try:
            conn, address = sock.accept()
        except _TRY_AGAIN:
            result: tuple[socket.socket, Any] = await self._wait_readable(
                sock, self._accept_ready, sock
            )
            return result
        conn.setblocking(False)
        return conn, address

    def _accept_ready(
        self, future: asyncio.Future[tuple[socket.socket, Any]], sock: socket.socket
    ) -> None:
        if future.done():
            return
        try:
            conn, address = sock.accept()
        except _TRY_AGAIN:
            return
        except Exception as exc:
            future.set_exception(exc)
            del future  # the error's traceback holds this frame: no cycle through it
        else:
            conn.setblocking(False)
            future.set_result((conn, address))
