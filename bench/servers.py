"""The servers under load, each run as its own subprocess: ``python -m bench.servers``.

The parent reads the server's CPU time from ``/proc/PID/stat``, so each server
is a process of its own.  It binds ``127.0.0.1`` port 0, prints ``PORT <n>``
on stdout, pins itself to a core and serves until SIGTERM, its parent's death
or ``--max-seconds``, whichever comes first.

Modes (all echo everything they receive, reading at most 64 KiB at a time,
except ``http``):

* ``protocol``  an ``asyncio.Protocol`` whose ``data_received`` calls ``transport.write``
* ``streams``   ``asyncio.start_server``: ``reader.read``, ``writer.write``, ``drain``
* ``sock``      ``loop.sock_accept``, then a task per connection: ``sock_recv``/``sock_sendall``
* ``buffered``  an ``asyncio.BufferedProtocol`` that lends one 64 KiB buffer
* ``http``      an aiohttp application answering ``GET /`` with "Hello, World!"
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
from typing import Any

from bench.loops import VARIANTS, new_loop
from bench.proc import die_with_parent, pin

ECHO_MODES = ("protocol", "streams", "sock", "buffered")
MODES = (*ECHO_MODES, "http")
READ_SIZE = 65536  # below glibc's initial mmap threshold (128 KiB), see FIELD-NOTES
BACKLOG = 2048


def raise_mmap_threshold() -> None:
    """Put glibc's malloc in the state a server reaches after running for a while.

    asyncio's transports read with ``recv(262144)``; 256 KiB is above glibc's
    initial mmap threshold (128 KiB), so each read maps and unmaps memory
    and a fresh asyncio server is several times slower, until a ``free()`` of
    a mapped block happens to raise the threshold (a shrunk read buffer does
    not).  Allocating and freeing one such block here raises it at once, for
    every loop alike, so the measurement does not depend on that chance.
    """
    block = bytes(512 * 1024)
    del block


class EchoProtocol(asyncio.Protocol):
    """Writes back every chunk it receives."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class BufferedEchoProtocol(asyncio.BufferedProtocol):
    """Receives into a buffer and writes back a copy of what arrived.

    All connections share one buffer (each read is copied out at once), so
    the memory per idle connection is the loop's, not 64 KiB of ours.
    """

    buffer = bytearray(READ_SIZE)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        # A copy: the transport may keep what it could not send yet, and the
        # next read reuses the buffer.
        self.transport.write(self.buffer[:nbytes])


async def echo_streams(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(READ_SIZE):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def echo_sock(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
    with conn:
        try:
            while data := await loop.sock_recv(conn, READ_SIZE):
                await loop.sock_sendall(conn, data)
        except ConnectionError:
            pass


async def serve_sock(loop: asyncio.AbstractEventLoop, listener: socket.socket) -> None:
    """Accept forever; one echo task per connection (kept referenced until done)."""
    tasks: set[asyncio.Task[None]] = set()
    while True:
        conn, _ = await loop.sock_accept(listener)
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = loop.create_task(echo_sock(loop, conn))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def start(loop: asyncio.AbstractEventLoop, mode: str, listener: socket.socket) -> object:
    """Start serving ``mode`` on ``listener``; return what keeps it alive."""
    if mode == "protocol":
        return await loop.create_server(EchoProtocol, sock=listener, backlog=BACKLOG)
    if mode == "buffered":
        return await loop.create_server(BufferedEchoProtocol, sock=listener, backlog=BACKLOG)
    if mode == "streams":
        return await asyncio.start_server(echo_streams, sock=listener, backlog=BACKLOG)
    if mode == "sock":
        listener.setblocking(False)
        return loop.create_task(serve_sock(loop, listener))
    if mode == "http":
        from aiohttp import web  # noqa: PLC0415 (only this mode needs it)

        async def hello(request: web.Request) -> web.Response:
            return web.Response(text="Hello, World!")

        app = web.Application()
        app.router.add_get("/", hello)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.SockSite(runner, listener, backlog=BACKLOG)
        await site.start()
        return runner
    raise ValueError(f"unknown mode {mode!r}")


async def shutdown(keep: object) -> None:
    """Stop serving and cancel every task left, so the loop closes cleanly."""
    if isinstance(keep, asyncio.Task):
        keep.cancel()
    elif hasattr(keep, "cleanup"):  # aiohttp's AppRunner
        await keep.cleanup()
    elif isinstance(keep, asyncio.AbstractServer):
        keep.close()
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.servers", description=__doc__)
    parser.add_argument("--loop", choices=VARIANTS, required=True)
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--core", type=int, default=None, help="CPU core to run on")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="exit after this long")
    args = parser.parse_args(argv)

    die_with_parent()
    raise_mmap_threshold()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(BACKLOG)
    if args.mode == "sock":
        listener.setblocking(False)

    loop = new_loop(args.loop)
    asyncio.set_event_loop(loop)
    try:
        keep = loop.run_until_complete(start(loop, args.mode, listener))
        loop.add_signal_handler(signal.SIGTERM, loop.stop)
        loop.call_later(args.max_seconds, loop.stop)
        pin(args.core)
        print(f"PORT {listener.getsockname()[1]}", flush=True)
        loop.run_forever()
        loop.run_until_complete(shutdown(keep))
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
