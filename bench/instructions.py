"""Instructions per echo message, counted by valgrind: ``uv run python -m bench.instructions``.

The main suite measures user-space CPU per message from the kernel's
accounting, which is sampled at the clock tick and wobbles by ±10-15 % from
round to round on a VM.  This tool counts instead: it runs each echo server
under ``valgrind --tool=callgrind``, which executes the process on a
simulated CPU and counts every user-space instruction it runs (system calls
run natively and are not counted), and reports instructions per message and
the ratio against asyncio.  The count is steady to about 2 % between runs.

Each server runs twice, for N and for 4N request/response messages after a
warm-up, and the figure is the difference divided by 3N, so start-up and
shutdown cancel out.  Caveats: an instruction count is not time (cache
misses and branch mispredictions count for nothing); under valgrind the
server runs some fifty times slower, so with several connections more
requests arrive per ``select()`` than in a real run (1 connection measures
the loop's full per-iteration cost); and ``sock`` mode is left out because
there ``sock_recv`` usually finds the next request already waiting, a
different path from a real run's.

Needs valgrind (Debian: ``apt-get install valgrind``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.loops import VARIANTS

ROOT = Path(__file__).resolve().parent.parent
MODES = ("protocol", "buffered", "streams")
SIZES = {"100": 100, "1k": 1024, "10k": 10240}
WARMUP_MESSAGES = 200
STALL_SECONDS = 60.0


def exchange(socks: list[socket.socket], message: bytes, count: int) -> None:
    """Send ``count`` requests over ``socks``, one in flight per socket; read each echo."""
    pending = {sock: len(message) for sock in socks}
    sent = len(socks)
    for sock in socks:
        sock.sendall(message)
    while pending:
        readable, _, _ = select.select(list(pending), [], [], STALL_SECONDS)
        if not readable:
            raise RuntimeError("the server stopped answering")
        for sock in readable:
            received = sock.recv(65536)
            if not received:
                raise RuntimeError("the server closed a connection")
            pending[sock] -= len(received)
            if pending[sock] == 0:
                if sent < count:
                    sock.sendall(message)
                    pending[sock] = len(message)
                    sent += 1
                else:
                    del pending[sock]


def count_instructions(loop: str, mode: str, connections: int, size: int, messages: int) -> int:
    """User-space instructions the server ran over its whole life, with ``messages`` echoed."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "callgrind.out"
        server = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-m",
                "bench.servers",
                "--loop",
                loop,
                "--mode",
                mode,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            assert server.stdout is not None
            line = server.stdout.readline()
            if not line.startswith("PORT "):
                raise RuntimeError(f"the {loop} server did not start: {line!r}")
            port = int(line.split()[1])
            socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(connections)]
            try:
                exchange(socks, b"x" * size, WARMUP_MESSAGES)
                exchange(socks, b"x" * size, messages)
            finally:
                for sock in socks:
                    sock.close()
            server.terminate()  # the server stops on SIGTERM; callgrind then writes its counts
            server.wait(timeout=120)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
        totals = re.search(r"^totals: (\d+)", out.read_text(), re.MULTILINE)
        if totals is None:
            raise RuntimeError("callgrind wrote no totals")
        return int(totals.group(1))


def per_message(loop: str, mode: str, connections: int, size: int, messages: int) -> float:
    """Instructions per message: the difference between a run of 4N and one of N messages."""
    few = count_instructions(loop, mode, connections, size, messages)
    many = count_instructions(loop, mode, connections, size, 4 * messages)
    return (many - few) / (3 * messages)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument(
        "--loops", default="asyncio,uvloop,loopy", help="from " + ",".join(VARIANTS)
    )
    parser.add_argument("--modes", default="protocol", help="from " + ",".join(MODES))
    parser.add_argument("--sizes", default="100,1k,10k", help="from " + ",".join(SIZES))
    parser.add_argument("--connections", default="1,10", help="comma-separated counts")
    parser.add_argument("--messages", type=int, default=1000, help="N (1000)")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("bench.instructions: valgrind is not installed (apt-get install valgrind)")
        return 1
    loops = ["asyncio", *(name for name in args.loops.split(",") if name != "asyncio")]
    print(f"{'benchmark':<32} " + " ".join(f"{name:>18}" for name in loops))
    for mode in args.modes.split(","):
        for size_name in args.sizes.split(","):
            for connections in map(int, args.connections.split(",")):
                figures = {
                    name: per_message(name, mode, connections, SIZES[size_name], args.messages)
                    for name in loops
                }
                cells = []
                for name in loops:
                    ratio = figures["asyncio"] / figures[name]
                    cells.append(
                        f"{figures[name]:>9,.0f}"
                        + (f" \u00d7{ratio:4.2f}" if name != "asyncio" else " " * 6)
                    )
                label = f"{mode} {SIZES[size_name]} B, {connections} conn"
                print(f"{label:<32} " + " ".join(f"{cell:>18}" for cell in cells), flush=True)
    print("(instructions per message, user space; \u00d7ratio = asyncio's count / this loop's)")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
