"""An echo server written with ``loop.create_server`` and an ``asyncio.Protocol``.

Shows the transport/protocol layer: the loop calls ``connection_made``,
``data_received`` and ``connection_lost``; the protocol answers with
``transport.write``.  When the transport's write buffer fills, the loop calls
``pause_writing`` and the protocol stops reading until ``resume_writing``.

Run::

    uv run python examples/echo_protocol.py [--port 8803]   # 0 = any free port

The first line logged is ``listening on 127.0.0.1:PORT``; then one line per
client that connects or leaves.  Try ``nc 127.0.0.1 PORT``.  Ctrl-C or
SIGTERM closes the server and every connection and exits with status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import Any, cast

import loopy

log = logging.getLogger("echo")
open_transports: set[asyncio.Transport] = set()


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        host, port = transport.get_extra_info("peername")
        self.peer = f"{host}:{port}"
        open_transports.add(self.transport)
        log.info("connected %s", self.peer)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def pause_writing(self) -> None:  # the peer is not reading fast enough
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()

    def connection_lost(self, exc: Any) -> None:
        open_transports.discard(self.transport)
        log.info("closed %s", self.peer)


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
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, "127.0.0.1", port)
    log.info("listening on 127.0.0.1:%d", server.sockets[0].getsockname()[1])
    log.info("got %s, shutting down", await wait_for_signal())
    server.close()  # stop accepting...
    for transport in list(open_transports):  # ...and hang up on everyone
        transport.close()
    await server.wait_closed()
    await asyncio.sleep(0)  # let the connection_lost callbacks run


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8803, help="0 picks a free port")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    loopy.run(main(parser.parse_args().port))
