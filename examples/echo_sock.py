"""An echo server written with the loop's socket coroutines, one task per client.

Shows ``loop.sock_accept``, ``loop.sock_recv`` and ``loop.sock_sendall``: the
same non-blocking sockets as ``echo_callbacks.py``, but each wait is an
``await``, so a connection reads as straight-line code.  ``sock_sendall``
only returns once every byte is sent, which gives back-pressure for free.

Run::

    uv run python examples/echo_sock.py [--port 8802]   # 0 = any free port

The first line logged is ``listening on 127.0.0.1:PORT``; then one line per
client that connects or leaves.  Try ``nc 127.0.0.1 PORT``.  Ctrl-C or
SIGTERM cancels every task, closes every socket and exits with status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket

import loopy

log = logging.getLogger("echo")


async def echo(conn: socket.socket, addr: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    log.info("connected %s:%d", *addr)
    try:
        while data := await loop.sock_recv(conn, 65536):
            await loop.sock_sendall(conn, data)
    except ConnectionError:
        pass
    finally:
        conn.close()
        log.info("closed %s:%d", *addr)


async def accept_forever(listener: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    clients: set[asyncio.Task[None]] = set()
    try:
        while True:
            conn, addr = await loop.sock_accept(listener)
            task = asyncio.create_task(echo(conn, addr))
            clients.add(task)  # keep a reference; forget it when it is done
            task.add_done_callback(clients.discard)
    finally:  # cancelled: cancel the clients too and wait for them to close
        for task in clients:
            task.cancel()
        await asyncio.gather(*clients, return_exceptions=True)


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
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(100)
        listener.setblocking(False)
        log.info("listening on 127.0.0.1:%d", listener.getsockname()[1])
        acceptor = asyncio.create_task(accept_forever(listener))
        log.info("got %s, shutting down", await wait_for_signal())
        acceptor.cancel()
        await asyncio.gather(acceptor, return_exceptions=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8802, help="0 picks a free port")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    loopy.run(main(parser.parse_args().port))
