"""The program: a ticking counter and a TCP logger sharing one thread.

This is the seed toy made real.  The toy printed a count every second and
logged whatever its clients sent, all from one thread, with callbacks; here
the same program is written with ``async``/``await`` and runs on loopy's
loop, with nothing from asyncio's loop in the process.  Each piece maps onto
one primitive of the loop (``loop.py``):

* the **ticker** (:func:`tick`) is a task sleeping on a timer: each tick is a
  ``call_at`` at an absolute deadline, so the count never drifts;
* the **acceptor** is a task awaiting ``sock_accept``: the listener sits in
  the selector (``add_reader``) until a client knocks;
* each **connection** is a task of its own awaiting ``sock_recv``: one reader
  registration per client, so a silent client costs nothing and blocks nobody;
* **shutdown** is a signal handler (``add_signal_handler``): SIGINT, SIGTERM
  or SIGHUP (the terminal went away) arrives through the wake-up socket as an
  ordinary callback, which resolves the future :meth:`Program.run` waits on.

What it logs, one line per event, always from ``MainThread``::

    Listening on ('127.0.0.1', 1234)
    Count: 0                                  every interval, from 0 upward
    Accept from ('127.0.0.1', 62857)
    Recvd (from ('127.0.0.1', 62857)): b'hello\\n'    one line per read
    Closed ('127.0.0.1', 62857)               the client closed (or we did)
    Reset ('127.0.0.1', 62857)                the client reset the connection

On SIGINT, SIGTERM or SIGHUP it logs ``Shutting down (SIGINT)`` (or
``SIGTERM``, ``SIGHUP``),
closes the listener, then closes every open connection, logging
``Closed ADDR`` for each, and :meth:`Program.run` returns.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import math
import signal
import socket
from typing import Any

__all__ = ["READ_SIZE", "Program", "describe", "open_listener", "tick"]

log = logging.getLogger(__name__)

#: Bytes asked of each ``recv``.  Bounded memory per read whatever a client
#: sends, and below glibc's initial mmap threshold (128 KiB): larger buffers
#: are mmapped and unmapped on every read, which is several times slower.
READ_SIZE = 65536

#: Pending connections the kernel may queue before we accept them.
BACKLOG = 1024

#: How long to stop accepting after an accept error such as EMFILE (out of
#: file descriptors).  The failed connection stays queued, so retrying at once
#: would fail again at once: a busy loop that starves every other client.
ACCEPT_PAUSE = 0.5

# Accept errors about one connection that died while it was queued: skip it
# and accept the next one, no pause needed.
_CONNECTION_GONE = (errno.ECONNABORTED, errno.EPROTO)

# SIGHUP too: closing the terminal the program runs in must shut it down
# cleanly (and write its trace), not kill it where it stands.
_SHUTDOWN_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def open_listener(host: str, port: int, backlog: int = BACKLOG) -> socket.socket:
    """A non-blocking TCP socket listening on ``host:port`` (port 0: any free port).

    SO_REUSEADDR lets a restarted server bind at once although connections
    of its previous run linger in TIME_WAIT.  Raises :class:`OSError` when
    the address cannot be resolved or is in use.
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    listener = socket.socket(family, kind, proto)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(backlog)
        listener.setblocking(False)
    except BaseException:
        listener.close()
        raise
    return listener


def describe(data: bytes, max_log_bytes: int) -> str:
    """How a read is logged: its repr, cut to ``max_log_bytes`` (0: never cut).

    A cut read says how long it really was: ``b'xxxx' ... (65536 bytes)``.
    """
    if max_log_bytes and len(data) > max_log_bytes:
        return f"{data[:max_log_bytes]!r} ... ({len(data)} bytes)"
    return repr(data)


async def tick(interval: float, logger: logging.Logger = log) -> None:
    """Log ``Count: N`` every ``interval`` seconds, forever, starting now with 0.

    Deadlines sit on a fixed grid, ``start + k * interval``, computed from the
    start rather than from the previous tick, so errors never accumulate.  A
    tick that fires late (the loop was blocked) leaves the grid alone: the
    next deadline is the first grid point after now, so missed ticks are
    skipped rather than fired in a burst, and the count still goes up by one
    per logged tick.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    count = 0
    k = 0
    while True:
        await _sleep_until(loop, start + k * interval)
        logger.info("Count: %d", count)
        count += 1
        # max(): a timer may fire a hair before its deadline (within the
        # clock's resolution), and must not make the same grid point due twice.
        k = max(k + 1, math.floor((loop.time() - start) / interval) + 1)


async def _sleep_until(loop: asyncio.AbstractEventLoop, when: float) -> None:
    """Sleep until ``loop.time()`` reaches ``when``, exactly (``call_at``, not a delay)."""
    waiter = loop.create_future()
    timer = loop.call_at(when, _wake, waiter)
    try:
        await waiter
    finally:
        timer.cancel()


def _close_socket(sock: socket.socket, task: asyncio.Task[None]) -> None:
    sock.close()  # closing twice is harmless


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Program:
    """The ticker and the TCP logger on one listener, until told to stop.

    ``Program(listener).run()`` is the whole program; :meth:`stop` (which
    SIGINT, SIGTERM and SIGHUP call) ends it.  The listener belongs to the program
    from then on: ``run`` closes it on the way out.
    """

    def __init__(
        self, listener: socket.socket, *, interval: float = 1.0, max_log_bytes: int = 200
    ) -> None:
        self.listener = listener
        self.interval = interval
        self.max_log_bytes = max_log_bytes
        # The tasks of the open connections.  The loop only keeps weak
        # references to tasks: this set keeps them alive, and lets shutdown
        # find them.
        self.connections: set[asyncio.Task[None]] = set()
        self._stopping: asyncio.Future[str] | None = None

    def stop(self, reason: str = "stop") -> None:
        """Make :meth:`run` shut down and return (safe to call more than once)."""
        if self._stopping is not None and not self._stopping.done():
            self._stopping.set_result(reason)

    async def run(self) -> None:
        """Tick and serve until :meth:`stop`, SIGINT, SIGTERM or SIGHUP; then close everything.

        If the ticker or the acceptor fails (a bug), the program shuts down
        the same way and the error propagates.
        """
        loop = asyncio.get_running_loop()
        kind = type(loop)
        log.debug("Event loop: %s.%s %s", kind.__module__, kind.__qualname__, repr(loop))
        self._stopping = loop.create_future()
        for sig in _SHUTDOWN_SIGNALS:
            loop.add_signal_handler(sig, self.stop, sig.name)
        log.info("Listening on %s", self.listener.getsockname())
        ticker = loop.create_task(tick(self.interval))
        acceptor = loop.create_task(self._accept_forever())
        waiting: list[asyncio.Future[Any]] = [self._stopping, ticker, acceptor]
        try:
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            reason = self._stopping.result() if self._stopping in done else "error"
            log.info("Shutting down (%s)", reason)
        finally:
            for sig in _SHUTDOWN_SIGNALS:
                loop.remove_signal_handler(sig)
            self._stopping.cancel()
            await self._close_all(ticker, acceptor)
        for task in done:
            task.result()  # re-raise the error of a failed ticker or acceptor

    async def _close_all(self, *tasks: asyncio.Task[None]) -> None:
        """Cancel the ticker, the acceptor and every connection; wait until all are gone.

        The listener is closed only once the acceptor has stopped watching it.
        """
        tasks = (*tasks, *self.connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.listener.close()

    async def _accept_forever(self) -> None:
        """Accept clients and start a task for each, forever.

        An accept error must neither end the server nor make it spin: on
        EMFILE, ENFILE and the like, log once and pause accepting for
        :data:`ACCEPT_PAUSE` seconds, as many times as it takes.
        """
        loop = asyncio.get_running_loop()
        failing = False
        while True:
            try:
                conn, address = await loop.sock_accept(self.listener)
            except OSError as exc:
                if exc.errno in _CONNECTION_GONE:
                    continue
                if not failing:
                    log.warning("Cannot accept (%s): pausing accepts for %s s", exc, ACCEPT_PAUSE)
                    failing = True
                await asyncio.sleep(ACCEPT_PAUSE)
                continue
            failing = False
            log.info("Accept from %s", address)
            task = loop.create_task(self._serve(conn, address))
            self.connections.add(task)
            task.add_done_callback(self.connections.discard)
            # A task cancelled before its first step never enters `with conn`
            # (shutdown right after an accept): close the socket here too.
            task.add_done_callback(functools.partial(_close_socket, conn))

    async def _serve(self, conn: socket.socket, address: Any) -> None:
        """Log everything one client sends, until it closes or resets the connection."""
        loop = asyncio.get_running_loop()
        with conn:
            try:
                while data := await loop.sock_recv(conn, READ_SIZE):
                    log.info("Recvd (from %s): %s", address, describe(data, self.max_log_bytes))
                    # sock_recv returns without suspending while data is
                    # waiting, so a client sending without pause would keep
                    # this loop, and the whole thread, to itself.  Let the
                    # others run between reads.
                    await asyncio.sleep(0)
            except ConnectionResetError:
                log.info("Reset %s", address)
            except OSError as exc:
                log.warning("Error on %s (%s): closing it", address, exc)
            except asyncio.CancelledError:
                log.info("Closed %s", address)  # by us, at shutdown
                raise
            else:
                log.info("Closed %s", address)
