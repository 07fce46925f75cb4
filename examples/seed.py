"""The seed: a counter ticking every second and a TCP logger, on one thread.

This is the toy loopy grew from, in one page: a task logs ``Count: N`` every
second while the program accepts TCP connections and logs what each client
sends.  There are no threads: every ``await`` hands the one thread back to
the loop, which runs whatever is ready (a tick, an accept, a read).  The full
program, with drift-free ticks and care for floods and running out of file
descriptors, is ``loopy/demo.py`` (``uv run loopy``).

Run::

    uv run python examples/seed.py [--port 1234] [--interval 1.0]   # port 0: any free one

The first line logged is ``listening on 127.0.0.1:PORT``, then ``Count: 0``,
``Count: 1``... each ``interval`` seconds.  In another shell, run ``nc
127.0.0.1 1234`` and type a line: the program logs ``accept 127.0.0.1:N``,
then ``127.0.0.1:N sent b'hello\\n'`` for each read, between the ticks and
all from ``MainThread``; ``closed 127.0.0.1:N`` when the client leaves.
Ctrl-C cancels everything, closes every socket, logs ``bye`` and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket

import loopy

log = logging.getLogger("seed")


async def tick(interval: float) -> None:
    """Log ``Count: N`` every ``interval`` seconds, forever."""
    count = 0
    while True:
        log.info("Count: %d", count)
        count += 1
        await asyncio.sleep(interval)  # a timer: the loop runs others meanwhile


async def log_client(conn: socket.socket, addr: tuple[str, int]) -> None:
    """Log everything one client sends, until it closes the connection."""
    loop = asyncio.get_running_loop()
    with conn:
        log.info("accept %s:%d", *addr)
        # sock_recv waits (without blocking the thread) until the client sends.
        while data := await loop.sock_recv(conn, 1024):
            log.info("%s:%d sent %r", *addr, data)
        log.info("closed %s:%d", *addr)


async def main(port: int, interval: float) -> None:
    loop = asyncio.get_running_loop()
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen()
        listener.setblocking(False)  # the loop's sock_* coroutines need this
        log.info("listening on 127.0.0.1:%d", listener.getsockname()[1])
        # The group owns the ticker and one task per client: when main() is
        # cancelled (Ctrl-C), it cancels them all and waits for them.
        async with asyncio.TaskGroup() as group:
            group.create_task(tick(interval))
            while True:
                conn, addr = await loop.sock_accept(listener)
                group.create_task(log_client(conn, addr))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=1234, help="0 picks a free port")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between ticks")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(threadName)s %(message)s")
    try:
        loopy.run(main(args.port, args.interval))
    except KeyboardInterrupt:  # loopy.run cancelled main() and waited for it
        log.info("bye")
