"""An echo server written with raw callbacks: no coroutines, no protocols.

Shows the lowest layer of the loop: a non-blocking listening socket watched
with ``loop.add_reader``; each accepted connection gets a reader callback of
its own, and echoes with plain ``sock.send``.  A send may take only part of
the bytes, so what is left waits in a buffer: the connection stops reading
(``remove_reader``) and watches for writability (``add_writer``) until the
buffer is drained -- the back-pressure the naive version forgets.

Run::

    uv run python examples/echo_callbacks.py [--port 8801]   # 0 = any free port

The first line logged is ``listening on 127.0.0.1:PORT``; then one line per
client that connects or leaves.  Try ``nc 127.0.0.1 PORT``.  Ctrl-C or
SIGTERM closes every socket and exits with status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket

import loopy

log = logging.getLogger("echo")


class EchoServer:
    """The listener and its connections, each with the bytes still to send back."""

    def __init__(self, loop: asyncio.AbstractEventLoop, listener: socket.socket) -> None:
        self.loop = loop
        self.listener = listener
        self.pending: dict[socket.socket, bytearray] = {}
        loop.add_reader(listener, self.on_accept)

    def on_accept(self) -> None:
        try:
            conn, addr = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return  # another wake-up got there first
        conn.setblocking(False)
        log.info("connected %s:%d", *addr)
        self.pending[conn] = bytearray()
        self.loop.add_reader(conn, self.on_readable, conn)

    def on_readable(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except ConnectionError:
            data = b""
        if not data:  # end of file (or a reset): the client is gone
            self.drop(conn)
            return
        self.pending[conn] += data
        self.flush(conn)

    def flush(self, conn: socket.socket) -> None:
        """Send what we can; if some is left, wait for writability instead of reading."""
        buf = self.pending[conn]
        try:
            sent = conn.send(buf)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except ConnectionError:
            self.drop(conn)
            return
        del buf[:sent]
        if buf:
            self.loop.remove_reader(conn)  # no more input until the output drains
            self.loop.add_writer(conn, self.on_writable, conn)

    def on_writable(self, conn: socket.socket) -> None:
        self.loop.remove_writer(conn)
        self.loop.add_reader(conn, self.on_readable, conn)
        self.flush(conn)  # puts the writer back if the buffer is still not empty

    def drop(self, conn: socket.socket) -> None:
        self.loop.remove_reader(conn)
        self.loop.remove_writer(conn)
        del self.pending[conn]
        log.info("closed fd %d", conn.fileno())
        conn.close()

    def close(self) -> None:
        for conn in list(self.pending):
            self.drop(conn)
        self.loop.remove_reader(self.listener)
        self.listener.close()


async def wait_for_signal() -> str:
    """Wait for SIGINT or SIGTERM; return its name."""
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[str] = loop.create_future()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, lambda s=sig: stop.done() or stop.set_result(s.name))
    try:
        return await stop
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


async def main(port: int) -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(100)
    listener.setblocking(False)
    log.info("listening on 127.0.0.1:%d", listener.getsockname()[1])
    server = EchoServer(asyncio.get_running_loop(), listener)
    try:
        log.info("got %s, shutting down", await wait_for_signal())
    finally:
        server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8801, help="0 picks a free port")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    loopy.run(main(parser.parse_args().port))
