"""Reliability, part 2: a flood of 2,000 concurrent connections to one loopy server.

The server and the clients each run in a child process of their own, so that
pytest's process keeps its file descriptor limit and the server's memory is
measured alone.  Both children raise their ``RLIMIT_NOFILE`` soft limit (up
to the hard limit) when 2,000 connections need it, and the test is skipped
when the hard limit is too low.

* the **server** (``python -m tests.test_reliability_flood server TASKS``) is
  a loopy loop in task mode TASKS with a protocol-based echo server
  (listen backlog 2,048) and a timer that re-arms itself with
  ``call_later(0.05)`` and records how late each firing is;
* the **clients** (``... clients PORT``) run on asyncio's own loop: they open
  2,000 connections at once, exchange a few messages of random sizes on each,
  check every echoed byte, then hold the connections open and idle while the
  test measures the server, and close them when told.

Children talk to the test one line at a time on stdout (``PORT n``,
``IDLE {...}``, ``DONE {...}``, ``STATS {...}``); the test waits for each
line with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import random
import resource
import signal
import sys
import time
from typing import Any

import pytest

from tests.test_reliability import Child, needs_proc, open_fds, rss

pytestmark = needs_proc

CONNECTIONS = 2000
BACKLOG = 2048
ROUNDS = 3  # messages each connection sends and gets back
TICK = 0.05  # seconds between the server's timer firings
#: Tolerance for the timer: however busy the server is, no firing is later
#: than this (seconds past its due time).  A loaded two-core machine
#: accepting 2,000 connections in pure Python stays well under it.
MAX_LATENESS = 1.0
#: A generous sanity bound on the server's memory per idle connection.
MAX_BYTES_PER_CONNECTION = 64 * 1024
FD_MARGIN = 64  # descriptors a child needs besides its connections


def _raise_fd_limit(needed: int) -> bool:
    """Raise the soft RLIMIT_NOFILE towards ``needed`` (never past the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return True
    if hard != resource.RLIM_INFINITY and hard < needed:
        return False
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return True


# ----------------------------------------------------------------------
# The server child
# ----------------------------------------------------------------------


class _FloodEcho(asyncio.Protocol):
    def __init__(self, stats: dict[str, Any]) -> None:
        self.stats = stats

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.stats["made"] += 1
        self.stats["open"] += 1
        self.stats["most_open"] = max(self.stats["most_open"], self.stats["open"])

    def data_received(self, data: bytes) -> None:
        self.stats["echoed"] += len(data)
        self.transport.write(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.stats["open"] -= 1
        self.stats["lost"] += 1
        if exc is not None:
            self.stats["lost_with_error"] += 1


def serve(tasks: str) -> int:
    """Run the echo server until SIGTERM; then print ``STATS {json}``."""
    if not _raise_fd_limit(CONNECTIONS + FD_MARGIN):
        print("SKIP the hard RLIMIT_NOFILE is below", CONNECTIONS + FD_MARGIN, flush=True)
        return 0
    import loopy  # noqa: PLC0415  (only the server child needs it)

    loop = loopy.new_event_loop(tasks=tasks)
    errors: list[str] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(repr(context)))
    stats: dict[str, Any] = dict.fromkeys(
        ("made", "lost", "lost_with_error", "open", "most_open", "echoed", "ticks"), 0
    )
    lateness: list[float] = []

    async def main() -> None:
        last = [loop.time()]

        def tick() -> None:
            now = loop.time()
            lateness.append(now - (last[0] + TICK))
            last[0] = now
            stats["ticks"] += 1
            timer[0] = loop.call_later(TICK, tick)

        timer = [loop.call_later(TICK, tick)]
        stop = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
        server = await loop.create_server(
            lambda: _FloodEcho(stats), "127.0.0.1", 0, backlog=BACKLOG
        )
        print("PORT", server.sockets[0].getsockname()[1], flush=True)
        await stop
        # The time since the last firing counts too: a timer that stopped
        # firing altogether must not pass.
        lateness.append(loop.time() - (last[0] + TICK))
        timer[0].cancel()
        loop.remove_signal_handler(signal.SIGTERM)
        server.close()
        await server.wait_closed()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    stats["max_lateness"] = max(lateness)
    stats["errors"] = errors
    print("STATS", json.dumps(stats), flush=True)
    return 0


# ----------------------------------------------------------------------
# The clients child
# ----------------------------------------------------------------------


async def _clients(port: int) -> None:
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    # Every connection opened at once: the server's accept queue takes them all.
    opened = await asyncio.gather(
        *(asyncio.open_connection("127.0.0.1", port) for _ in range(CONNECTIONS))
    )
    connected = time.monotonic()

    async def exchange(number: int, reader: asyncio.StreamReader, writer: Any) -> int:
        rng = random.Random(number)
        verified = 0
        for _ in range(ROUNDS):
            message = rng.randbytes(rng.randint(1, 4096))
            writer.write(message)
            echoed = await reader.readexactly(len(message))
            if echoed != message:
                raise AssertionError(f"connection {number}: the echo differs")
            verified += len(echoed)
        return verified

    verified = await asyncio.gather(
        *(exchange(number, *pair) for number, pair in enumerate(opened))
    )
    exchanged = time.monotonic()
    report = {
        "connections": len(opened),
        "bytes_verified": sum(verified),
        "connect_s": round(connected - started, 3),
        "exchange_s": round(exchanged - connected, 3),
    }
    print("IDLE", json.dumps(report), flush=True)
    # Hold every connection, idle, until the test has measured the server.
    await loop.run_in_executor(None, sys.stdin.readline)
    for _, writer in opened:
        writer.close()
    await asyncio.gather(*(writer.wait_closed() for _, writer in opened))
    print("DONE", flush=True)


def clients(port: int) -> int:
    if not _raise_fd_limit(CONNECTIONS + FD_MARGIN):
        print("SKIP the hard RLIMIT_NOFILE is below", CONNECTIONS + FD_MARGIN, flush=True)
        return 0
    asyncio.run(asyncio.wait_for(_clients(port), 60))
    return 0


# ----------------------------------------------------------------------
# The test
# ----------------------------------------------------------------------


def _started(child: Child, prefix: str, timeout: float = 20) -> str:
    """The child's first line: ``prefix ...`` (the rest returned), or ``SKIP ...`` (skips)."""
    first = child.expect("", timeout=timeout)
    if first.startswith("SKIP"):
        pytest.skip(first)
    assert first.startswith(prefix), first
    return first[len(prefix) :].strip()


@pytest.mark.parametrize("tasks", ["asyncio", "loopy"])
def test_2000_concurrent_connections_are_echoed_exactly_and_ticks_go_on(
    tasks: str, record_property: Any
) -> None:
    module = "tests.test_reliability_flood"
    server = Child("-m", module, "server", tasks, stdin=None)
    client: Child | None = None
    try:
        port = _started(server, "PORT")
        baseline_rss = rss(server.proc.pid)
        baseline_fds = len(open_fds(server.proc.pid))

        started = time.monotonic()
        client = Child("-m", module, "clients", port)
        # Tolerance: opening 2,000 connections and echoing 6,000 messages
        # takes a few seconds on a loaded two-core machine; 40 s is a failure.
        idle = json.loads(_started(client, "IDLE", 40))
        busy_seconds = time.monotonic() - started
        # The connections are open and idle: measure the server now.
        held_fds = len(open_fds(server.proc.pid)) - baseline_fds
        idle_rss = rss(server.proc.pid)
        client.send("close")
        client.expect("DONE", timeout=20)
        server.proc.send_signal(signal.SIGTERM)
        stats = json.loads(server.expect("STATS", timeout=20))
        assert server.proc.wait(20) == 0
        assert client.proc.wait(20) == 0
    finally:
        server.close()
        if client is not None:
            client.close()

    per_connection = (idle_rss - baseline_rss) / CONNECTIONS
    figures = {
        "connections_held": held_fds,
        "rss_per_idle_connection_bytes": round(per_connection),
        "server_rss_idle_mib": round(idle_rss / 2**20, 1),
        "bytes_verified": idle["bytes_verified"],
        "connect_s": idle["connect_s"],
        "exchange_s": idle["exchange_s"],
        "busy_s": round(busy_seconds, 2),
        "max_timer_lateness_s": round(stats["max_lateness"], 4),
        "ticks": stats["ticks"],
    }
    for name, value in figures.items():
        record_property(name, value)
    print(f"\nflood ({tasks} tasks): {figures}")

    assert idle["connections"] == CONNECTIONS
    assert held_fds >= CONNECTIONS  # all held by the server at once
    assert stats["made"] == stats["lost"] == stats["most_open"] == CONNECTIONS
    assert stats["lost_with_error"] == 0
    assert stats["echoed"] == idle["bytes_verified"]
    assert stats["errors"] == []
    assert stats["max_lateness"] < MAX_LATENESS
    assert 0 < per_connection < MAX_BYTES_PER_CONNECTION


if __name__ == "__main__":
    role = sys.argv[1]
    if role == "server":
        sys.exit(serve(sys.argv[2]))
    sys.exit(clients(int(sys.argv[2])))
