"""Reliability, part 5: fuzzing the ``loopy`` program's input.

Twenty clients at once send the program (``--max-log-bytes 0``: every read
logged whole) random bytes -- binary noise, text with quotes, backslashes
and line breaks, runs of one byte -- cut into random chunks at a random
pace, and disconnect at a random point: a clean ``close()``, a
``shutdown(SHUT_WR)`` then waiting for the program to close, or a reset.

The program must never crash, must keep ticking, and its ``Recvd`` lines,
read back with ``ast.literal_eval`` and joined per client, must be exactly
what the client sent: every byte once, in order.  A reset may make the
kernel drop bytes the program had not read yet, so for a client that reset
the log must be a prefix of what it sent.

The inputs come from a seeded generator: set ``LOOPY_FUZZ_SEED`` to try
others (the seed is in the test's output when it fails).
"""

from __future__ import annotations

import ast
import itertools
import os
import random
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.test_cli import Loopy, log_time
from tests.test_reliability import KiB, log_size, reset

CLIENTS = 20
ROUNDS = 5  # rounds of CLIENTS clients against the same program
SEED = int(os.environ.get("LOOPY_FUZZ_SEED", "1234"))
MAX_TICK_GAP = 1.0  # seconds between two Count lines (the interval is 0.1 s)
ENDINGS = ("close", "shutdown", "reset")


def fuzz_bytes(rng: random.Random, size: int) -> bytes:
    """``size`` bytes made of pieces of random kinds."""
    out = bytearray()
    while len(out) < size:
        kind = rng.randrange(4)
        n = log_size(rng, 2 * KiB)
        if kind == 0:  # noise: any byte
            out += rng.randbytes(n)
        elif kind == 1:  # what repr() has to escape
            out += bytes(rng.choice(b"\\'\"\n\r\t\x00\x7f\x80\xff ") for _ in range(n))
        elif kind == 2:  # text
            out += bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz .,\n") for _ in range(n))
        else:  # a run of one byte
            out += bytes([rng.randrange(256)]) * n
    return bytes(out[:size])


@dataclass
class Plan:
    """What one client does: the bytes, how they are cut, how it ends."""

    data: bytes
    chunks: list[int]
    ending: str
    pause: float  # seconds to pause between chunks, sometimes
    sent: bytearray = field(default_factory=bytearray)  # what the kernel accepted
    address: str = ""
    error: BaseException | None = None

    @classmethod
    def draw(cls, rng: random.Random) -> Plan:
        size = rng.choice(
            (0, rng.randrange(1, 64), log_size(rng, 256 * KiB), rng.randrange(64 * KiB, 256 * KiB))
        )
        data = fuzz_bytes(rng, size)
        ending = rng.choice(ENDINGS)
        if ending == "reset":
            data = data[: rng.randrange(len(data) + 1)]  # disconnect mid-stream
        chunks = []
        left = len(data)
        while left:
            chunks.append(min(left, log_size(rng, 8 * KiB)))
            left -= chunks[-1]
        return cls(data, chunks, ending, rng.choice((0.0, 0.0, 0.001)))


def play(plan: Plan, sock: socket.socket, loopy: Loopy, everyone: threading.Barrier) -> None:
    """Send the plan's chunks and end the connection its way (in a thread of its own)."""
    try:
        everyone.wait()  # all connected before anyone ends: no address is reused
        offset = 0
        accepted = False
        for number, size in enumerate(plan.chunks):
            chunk = plan.data[offset : offset + size]
            sock.sendall(chunk)
            plan.sent += chunk
            offset += size
            if number == len(plan.chunks) // 2:
                # Midway, make sure the program has the connection: a reset
                # before the accept would leave it nothing to log, not even
                # the end of the connection, which the test waits for.
                loopy.wait_for(re.escape(f"Accept from {plan.address}"))
                accepted = True
            if plan.pause:
                time.sleep(plan.pause)
        if not accepted:
            loopy.wait_for(re.escape(f"Accept from {plan.address}"))
        if plan.ending == "reset":
            reset(sock)
        elif plan.ending == "shutdown":
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(1) == b""  # the program closes its end in turn
            sock.close()
        else:
            sock.close()
    except BaseException as exc:
        plan.error = exc
        sock.close()


@pytest.fixture
def program() -> Iterator[list[Loopy]]:
    started: list[Loopy] = []
    yield started
    for process in started:
        process.close()


def logged_bytes(loopy: Loopy) -> dict[str, bytes]:
    """Every client's bytes as the program logged them, joined in log order."""
    received: dict[str, bytearray] = {}
    for match in loopy.messages_matching(r"Recvd \(from (\(.*?\))\): (b.*)"):
        value = ast.literal_eval(match[2])
        assert isinstance(value, bytes)
        assert value, "an empty read is logged as Closed, never as Recvd"
        received.setdefault(match[1], bytearray()).extend(value)
    return {address: bytes(data) for address, data in received.items()}


@pytest.mark.parametrize("tasks", ["asyncio", "loopy"])
def test_random_input_is_logged_exactly_once_and_the_program_keeps_ticking(
    program: list[Loopy], tasks: str, record_property: Any
) -> None:
    rng = random.Random(SEED)
    print(f"\nLOOPY_FUZZ_SEED={SEED}")
    program.append(Loopy("--interval", "0.1", "--max-log-bytes", "0", "--tasks", tasks))
    loopy = program[0]
    plans: list[Plan] = []
    started = time.monotonic()
    for _ in range(ROUNDS):
        batch = [Plan.draw(rng) for _ in range(CLIENTS)]
        sockets = []
        for plan in batch:
            sock = socket.create_connection(("127.0.0.1", loopy.port), timeout=10)
            plan.address = str(sock.getsockname())
            sockets.append(sock)
        everyone = threading.Barrier(CLIENTS, timeout=10)
        threads = [
            threading.Thread(target=play, args=(plan, sock, loopy, everyone))
            for plan, sock in zip(batch, sockets, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        assert not any(thread.is_alive() for thread in threads)
        for plan in batch:
            assert plan.error is None, f"{plan.ending} client {plan.address}: {plan.error!r}"
            ended = "Closed" if plan.ending != "reset" else "(?:Closed|Reset)"
            loopy.wait_for(f"{ended} {re.escape(plan.address)}")
            assert loopy.proc.poll() is None, "the program died"
        plans += batch
    loopy.wait_for_ticks(2)  # and it still ticks
    fuzz_seconds = time.monotonic() - started
    assert loopy.stop() == 0

    logged = logged_bytes(loopy)
    assert set(logged) <= {plan.address for plan in plans}
    lost_to_resets = 0
    for plan in plans:
        got = logged.get(plan.address, b"")
        if plan.ending == "reset":
            assert plan.sent.startswith(got), f"reset client {plan.address}: not a prefix"
            lost_to_resets += len(plan.sent) - len(got)
        else:
            assert got == plan.sent, f"{plan.ending} client {plan.address}: log differs"
    # Each connection ends exactly once in the log.
    messages = loopy.messages()
    for plan in plans:
        endings = [m for m in messages if m in (f"Closed {plan.address}", f"Reset {plan.address}")]
        assert len(endings) == 1, endings
    times = [log_time(line) for line in loopy.lines if " Count: " in line]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) < MAX_TICK_GAP
    assert "Traceback" not in "\n".join(loopy.lines)
    assert not any(" WARNING " in line or " ERROR " in line for line in loopy.lines)

    figures = {
        "clients": len(plans),
        "bytes_sent": sum(len(plan.sent) for plan in plans),
        "recvd_lines": len(loopy.messages_matching(r"Recvd .*")),
        "endings": {e: sum(plan.ending == e for plan in plans) for e in ENDINGS},
        "bytes_lost_to_resets": lost_to_resets,
        "max_tick_gap_s": round(max(gaps), 3),
        "fuzz_s": round(fuzz_seconds, 2),
    }
    for name, value in figures.items():
        record_property(name, value)
    print(f"fuzz ({tasks} tasks): {figures}")
