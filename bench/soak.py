"""Soak test: minutes of mixed churn against a loopy server, watching for leaks.

Run it with::

    uv run python -m bench.soak --minutes 10        # the default length
    uv run python -m bench.soak --minutes 0.2       # a quick check (12 s)
    uv run python -m bench.soak --tasks loopy       # loopy's own Future and Task

The **server** is a child process (``python -m bench.soak --serve``) running
loopy's loop with:

* a protocol echo server and a streams echo server (a task per connection),
  each connection with an idle timeout: a timer re-armed on every read,
  cancelled when the connection ends, firing for clients that go silent;
* a ticker, a ``call_later(0.05)`` re-arming itself, recording how late it
  fires;
* a stream of short-lived tasks (sleeps of 0-10 ms, a third of them
  cancelled).

The **driver** (this process, on asyncio's own loop) keeps ``--workers``
clients busy, each picking at random: an echo exchange closed cleanly, the
same ended with a reset, a reset in the middle of a 1 MiB write the server
is echoing, a half-close, a short idle hold, or a silence long enough for
the server's idle timeout to close the connection.  Every echoed byte is
checked.

It samples the server's open descriptors (``/proc/PID/fd``), resident set
(``VmRSS``) and timer lateness at the start (after a warm-up), a few times
in between and at the end.  The start and end samples are taken with the
churn stopped and every connection gone, so they compare like with like.

Exit status 1 (``FAIL``) when, between start and end, the descriptor count
grew at all (``FD_TOLERANCE``), the RSS grew by more than ``RSS_TOLERANCE``,
an echo came back wrong, or the server reported an error; 0 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import struct
import sys
import time
from typing import Any

from bench.proc import die_with_parent, rss_bytes

#: Descriptors the server may have gained between start and end: none.
FD_TOLERANCE = 0
#: RSS the server may have gained between start and end (after the warm-up,
#: Python's allocator has reached its working size; a leak of one small
#: object per connection would pass this within minutes).
RSS_TOLERANCE = 8 * 1024 * 1024
TICK = 0.05  # seconds between the server's ticker firings
IDLE_TIMEOUT = 0.5  # seconds of silence before the server closes a connection
SAMPLES_BETWEEN = 4  # samples taken during the churn, between start and end


# ======================================================================
# The server (child process)
# ======================================================================


class _Server:
    """What the server child keeps count of, and its echo protocols."""

    def __init__(self, loop: Any) -> None:
        self.loop = loop
        self.open = 0  # connections now open
        self.made = 0
        self.timeouts = 0  # connections closed for idling
        self.errors: list[str] = []
        self.lateness: list[float] = []  # since the last STAT
        self.ticks = 0
        self.tasks_spawned = 0

    def stat(self) -> dict[str, Any]:
        late = sorted(self.lateness) or [0.0]
        self.lateness = []
        return {
            "open": self.open,
            "made": self.made,
            "timeouts": self.timeouts,
            "errors": len(self.errors),
            "first_error": self.errors[0] if self.errors else None,
            "ticks": self.ticks,
            "late_max_ms": round(late[-1] * 1000, 2),
            "late_p99_ms": round(late[int(0.99 * (len(late) - 1))] * 1000, 2),
            "tasks": len(asyncio.all_tasks(self.loop)),
            "tasks_spawned": self.tasks_spawned,
        }


class _Echo(asyncio.Protocol):
    def __init__(self, server: _Server) -> None:
        self.server = server
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.server.open += 1
        self.server.made += 1
        self._rearm()

    def _rearm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.server.loop.call_later(IDLE_TIMEOUT, self._idle)

    def _idle(self) -> None:
        self.server.timeouts += 1
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        self._rearm()
        self.transport.write(data)

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.server.open -= 1


async def _stream_echo(
    server: _Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    server.open += 1
    server.made += 1
    try:
        while True:
            try:
                data = await asyncio.wait_for(reader.read(65536), IDLE_TIMEOUT)
            except TimeoutError:
                server.timeouts += 1
                break
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass  # the client reset the connection: part of the churn
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        server.open -= 1


async def _spawn_tasks(server: _Server) -> None:
    """Short-lived tasks, all the time: some finish, some are cancelled."""
    rng = random.Random(1)
    pending: set[asyncio.Task[None]] = set()
    while True:
        for _ in range(10):
            task = asyncio.ensure_future(asyncio.sleep(rng.uniform(0, 0.01)))
            server.tasks_spawned += 1
            pending.add(task)
            task.add_done_callback(pending.discard)
            if rng.random() < 1 / 3:
                server.loop.call_later(rng.uniform(0, 0.005), task.cancel)
        await asyncio.sleep(0.05)


async def _serve(server: _Server) -> None:
    loop = server.loop
    last = [loop.time()]

    def tick() -> None:
        now = loop.time()
        server.lateness.append(max(0.0, now - (last[0] + TICK)))
        last[0] = now
        server.ticks += 1
        loop.call_later(TICK, tick)

    loop.call_later(TICK, tick)
    spawner = loop.create_task(_spawn_tasks(server))
    echo: Any = await loop.create_server(lambda: _Echo(server), "127.0.0.1", 0, backlog=1024)
    streams: Any = await asyncio.start_server(
        lambda r, w: _stream_echo(server, r, w), "127.0.0.1", 0, backlog=1024
    )
    ports = [echo.sockets[0].getsockname()[1], streams.sockets[0].getsockname()[1]]
    print("PORTS", *ports, flush=True)

    # Commands on stdin, one a line: "stat" (answered with STAT {json}), "quit".
    quit_ = loop.create_future()
    pending = bytearray()

    def on_stdin() -> None:
        data = os.read(0, 4096)
        if not data:
            if not quit_.done():
                quit_.set_result(None)
            return
        pending.extend(data)
        while b"\n" in pending:
            line, _, rest = bytes(pending).partition(b"\n")
            pending[:] = rest
            if line == b"stat":
                print("STAT", json.dumps(server.stat()), flush=True)
            elif line == b"quit" and not quit_.done():
                quit_.set_result(None)

    loop.add_reader(0, on_stdin)
    await quit_
    loop.remove_reader(0)
    spawner.cancel()
    echo.close()
    streams.close()
    echo.close_clients()
    streams.close_clients()
    await echo.wait_closed()
    await streams.wait_closed()


def serve(tasks: str) -> int:
    import loopy  # noqa: PLC0415 (only the server child runs loopy)

    die_with_parent()
    loop = loopy.new_event_loop(tasks=tasks)
    asyncio.set_event_loop(loop)
    server = _Server(loop)

    def handler(_loop: Any, context: dict[str, Any]) -> None:
        server.errors.append(f"{context.get('message')}: {context.get('exception')!r}")

    loop.set_exception_handler(handler)
    try:
        loop.run_until_complete(_serve(server))
    finally:
        loop.close()
    return 0


# ======================================================================
# The driver (this process)
# ======================================================================


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class _Churn:
    """Workers that connect, talk and disconnect in every way, until stopped."""

    ACTIONS = (
        ("echo", 40),
        ("echo-reset", 15),
        ("reset-mid-write", 10),
        ("half-close", 15),
        ("hold", 15),
        ("idle-timeout", 5),
    )

    def __init__(self, ports: list[int], workers: int, seed: int) -> None:
        self.ports = ports
        self.workers = workers
        self.rng = random.Random(seed)
        self.counts = {name: 0 for name, _ in self.ACTIONS}
        self.verified = 0  # bytes echoed back and checked
        self.failures: list[str] = []
        self._running = False
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._running = True
        self._tasks = [asyncio.ensure_future(self._work()) for _ in range(self.workers)]

    async def stop(self) -> None:
        self._running = False
        await asyncio.gather(*self._tasks)

    async def _work(self) -> None:
        names = [name for name, _ in self.ACTIONS]
        weights = [weight for _, weight in self.ACTIONS]
        while self._running:
            action = self.rng.choices(names, weights)[0]
            port = self.rng.choice(self.ports)
            try:
                await asyncio.wait_for(self._act(action, port), 30)
            except Exception as exc:
                self.failures.append(f"{action} on port {port}: {exc!r}")
            self.counts[action] += 1

    async def _act(self, action: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        rng = self.rng
        sock = socket.socket()
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", port))
            if action in ("echo", "echo-reset", "half-close"):
                for _ in range(rng.randint(1, 5)):
                    message = rng.randbytes(rng.randint(1, 16384))
                    await loop.sock_sendall(sock, message)
                    await self._expect(sock, message)
                if action == "half-close":
                    sock.shutdown(socket.SHUT_WR)
                    if await loop.sock_recv(sock, 1) != b"":
                        raise AssertionError("data after the echo")
            elif action == "reset-mid-write":
                sending = asyncio.ensure_future(loop.sock_sendall(sock, rng.randbytes(1 << 20)))
                await loop.sock_recv(sock, 65536)  # the echo has started
                sending.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await sending
                _reset(sock)
            elif action == "hold":
                await asyncio.sleep(rng.uniform(0, 0.2))
            elif action == "idle-timeout" and await loop.sock_recv(sock, 1) != b"":
                # Silent: the server's idle timeout closes the connection.
                raise AssertionError("data from a silent connection")
        finally:
            if action == "echo-reset":
                _reset(sock)
            else:
                sock.close()

    async def _expect(self, sock: socket.socket, message: bytes) -> None:
        loop = asyncio.get_running_loop()
        got = bytearray()
        while len(got) < len(message):
            data = await loop.sock_recv(sock, len(message) - len(got))
            if not data:
                raise AssertionError("EOF in the middle of an echo")
            got += data
        if got != message:
            raise AssertionError("the echo differs from what was sent")
        self.verified += len(message)


class _ServerProcess:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, tasks: str) -> tuple[_ServerProcess, list[int]]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.soak",
            "--serve",
            "--tasks",
            tasks,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        server = cls(proc)
        line = await server._line("PORTS")
        return server, [int(port) for port in line.split()]

    async def _line(self, prefix: str) -> str:
        assert self.proc.stdout is not None
        line = (await asyncio.wait_for(self.proc.stdout.readline(), 10)).decode()
        if not line.startswith(prefix):
            raise RuntimeError(f"the server said {line!r}, expected {prefix}")
        return line[len(prefix) :].strip()

    async def stat(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"stat\n")
        await self.proc.stdin.drain()
        stat: dict[str, Any] = json.loads(await self._line("STAT"))
        stat["fds"] = len(os.listdir(f"/proc/{self.proc.pid}/fd"))
        stat["rss"] = rss_bytes(self.proc.pid)
        return stat

    async def quiet(self) -> dict[str, Any]:
        """Wait until the server has no connection open (10 s at most); its stat then.

        The stat's ``late_max_ms`` covers the whole wait.
        """
        deadline = time.monotonic() + 10
        late = 0.0
        while True:
            stat = await self.stat()
            late = max(late, stat["late_max_ms"])
            if stat["open"] == 0 or time.monotonic() > deadline:
                stat["late_max_ms"] = late
                return stat
            await asyncio.sleep(0.05)

    async def quit(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"quit\n")
        await self.proc.stdin.drain()
        try:
            return await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            return -9


HEADER = (
    f"{'time':>7}  {'phase':<7} {'open':>5} {'fds':>5} {'rss MiB':>8} "
    f"{'late max ms':>11} {'late p99 ms':>11} {'conns':>8} {'conns/s':>8} {'tasks':>6}"
)


def _row(elapsed: float, phase: str, stat: dict[str, Any], made_before: int, dt: float) -> str:
    rate = (stat["made"] - made_before) / dt if dt > 0 else 0.0
    return (
        f"{int(elapsed // 60):>2}:{elapsed % 60:04.1f}  {phase:<7} {stat['open']:>5} "
        f"{stat['fds']:>5} {stat['rss'] / 2**20:>8.1f} {stat['late_max_ms']:>11.1f} "
        f"{stat['late_p99_ms']:>11.1f} {stat['made']:>8} {rate:>8.0f} {stat['tasks']:>6}"
    )


async def drive(minutes: float, workers: int, tasks: str, seed: int) -> int:
    duration = minutes * 60
    warmup = min(5.0, 0.1 * duration)
    server, ports = await _ServerProcess.start(tasks)
    print(
        f"soak: loopy server (tasks={tasks}, pid {server.proc.pid}) on ports {ports}, "
        f"{workers} clients, {minutes:g} min (warm-up {warmup:.1f} s)"
    )
    print(HEADER)
    churn = _Churn(ports, workers, seed)
    began = time.monotonic()

    # Warm up, then the start sample: churn stopped, every connection gone.
    churn.start()
    await asyncio.sleep(warmup)
    await churn.stop()
    await server.stat()  # resets the lateness window
    first = await server.quiet()
    print(_row(time.monotonic() - began, "start", first, 0, 0))

    churn.start()
    previous, previous_at = first, time.monotonic()
    between = (duration - warmup) / (SAMPLES_BETWEEN + 1)
    worst_late = first["late_max_ms"]
    for _ in range(SAMPLES_BETWEEN):
        await asyncio.sleep(between)
        stat = await server.stat()
        now = time.monotonic()
        print(_row(now - began, "churn", stat, previous["made"], now - previous_at), flush=True)
        worst_late = max(worst_late, stat["late_max_ms"])
        previous, previous_at = stat, now
    await asyncio.sleep(between)
    await churn.stop()
    last = await server.quiet()
    now = time.monotonic()
    worst_late = max(worst_late, last["late_max_ms"])
    print(_row(now - began, "end", last, previous["made"], now - previous_at))
    code = await server.quit()

    fd_growth = last["fds"] - first["fds"]
    rss_growth = last["rss"] - first["rss"]
    problems = []
    if fd_growth > FD_TOLERANCE:
        problems.append(f"descriptors grew by {fd_growth} (tolerance {FD_TOLERANCE})")
    if rss_growth > RSS_TOLERANCE:
        problems.append(
            f"RSS grew by {rss_growth / 2**20:.1f} MiB (tolerance {RSS_TOLERANCE / 2**20:.0f} MiB)"
        )
    if last["open"]:
        problems.append(f"{last['open']} connections still open at the end")
    if last["errors"]:
        problems.append(f"the server reported {last['errors']} errors: {last['first_error']}")
    if churn.failures:
        problems.append(f"{len(churn.failures)} client failures, first: {churn.failures[0]}")
    if code != 0:
        problems.append(f"the server exited with {code}")

    print(
        f"clients: {sum(churn.counts.values())} connections "
        + ", ".join(f"{name} {count}" for name, count in churn.counts.items())
        + f"; {churn.verified / 2**20:.1f} MiB echoed and checked"
    )
    print(
        f"server: {last['made']} connections accepted, {last['timeouts']} idle timeouts, "
        f"{last['tasks_spawned']} short tasks, {last['ticks']} ticks, "
        f"worst timer lateness {worst_late:.1f} ms"
    )
    print(
        f"fds {first['fds']} -> {last['fds']} ({fd_growth:+d}, tolerance +{FD_TOLERANCE}); "
        f"RSS {first['rss'] / 2**20:.1f} -> {last['rss'] / 2**20:.1f} MiB "
        f"({rss_growth / 2**20:+.1f}, tolerance +{RSS_TOLERANCE / 2**20:.0f} MiB)"
    )
    if problems:
        for problem in problems:
            print(f"FAIL: {problem}")
        return 1
    print("PASS")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="length (default 10)")
    parser.add_argument("--workers", type=int, default=32, help="concurrent clients (32)")
    parser.add_argument(
        "--tasks", choices=("asyncio", "loopy"), default="asyncio", help="loopy's task mode"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the clients' choices")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args.tasks)
    if args.minutes <= 0:
        parser.error("--minutes must be positive")
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return asyncio.run(drive(args.minutes, args.workers, args.tasks, args.seed))


if __name__ == "__main__":
    raise SystemExit(main())
