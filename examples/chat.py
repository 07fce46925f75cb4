"""A line-based chat server written with streams (``asyncio.start_server``).

Every line a client sends is broadcast to all the other clients as
``ADDR: line``, where ADDR is the sender's ``host:port``.  A new client is
first greeted with ``welcome ADDR`` (its own address), and the others are
told ``ADDR joined``; when it leaves they are told ``ADDR left``.

Run::

    uv run python examples/chat.py [--port 8806]   # 0 = any free port

The first line logged is ``listening on 127.0.0.1:PORT``; then one line per
client that joins or leaves.  Connect two terminals with
``nc 127.0.0.1 PORT`` and type.  Ctrl-C or SIGTERM hangs up on everyone and
exits with status 0.

Broadcasting only ``write``s, without awaiting ``drain``: one slow reader
must not stall the whole room (its bytes wait in its transport's buffer).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

import loopy

log = logging.getLogger("chat")
clients: dict[asyncio.StreamWriter, str] = {}


def broadcast(line: str, sender: asyncio.StreamWriter | None = None) -> None:
    for writer in clients:
        if writer is not sender and not writer.is_closing():
            writer.write(line.encode() + b"\n")


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    host, port = writer.get_extra_info("peername")[:2]
    addr = f"{host}:{port}"
    log.info("%s joined", addr)
    broadcast(f"{addr} joined")
    clients[writer] = addr
    writer.write(f"welcome {addr}\n".encode())
    try:
        while line := await reader.readline():
            broadcast(f"{addr}: {line.decode(errors='replace').rstrip()}", sender=writer)
    except ConnectionError:
        pass
    finally:
        del clients[writer]
        writer.close()
        log.info("%s left", addr)
        broadcast(f"{addr} left")


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
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    log.info("listening on 127.0.0.1:%d", server.sockets[0].getsockname()[1])
    log.info("got %s, shutting down", await wait_for_signal())
    server.close()
    for writer in list(clients):
        writer.close()  # each handler then reads end of file and says goodbye
    await server.wait_closed()
    while clients:  # wait for the handlers to finish
        await asyncio.sleep(0.01)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8806, help="0 picks a free port")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    loopy.run(main(parser.parse_args().port))
