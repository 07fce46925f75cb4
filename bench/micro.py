"""Micro benchmarks of one loop, run in a subprocess of their own: ``python -m bench.micro``.

Each benchmark builds a fresh loop, times its work in CPU time of this
process (``time.process_time``, so other programs on the machine and idle
waits for timer deadlines do not count) and reports operations per CPU
second.  The process prints one JSON object: benchmark name to figures, or to
``{"error": ...}`` if that benchmark failed.

========================  ==================================================
benchmark                 one operation is
========================  ==================================================
``call_soon``             one link of a chain of callbacks, each scheduling
                          the next with ``call_soon``
``timers``                one ``call_later`` with a random delay (0 to 100 ms),
                          scheduled up front, then run when due
``tasks``                 spawning a task of a trivial coroutine and awaiting
                          it, 100 at a time
``future_wakeup``         a task awaiting a future that a ``call_soon``
                          callback resolves
``futures``               ``create_future()``, ``set_result``, ``await``: the
                          loop's cost of a future that is already done
``sleep0``                ``await asyncio.sleep(0)`` in a task
``timer_memory``          (not timed) RSS growth per pending ``call_later``
========================  ==================================================
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.loops import VARIANTS, new_loop
from bench.proc import pin, rss_bytes

#: Operations per benchmark at scale 1.0 (the full run); ``--scale`` multiplies.
SIZES = {
    "call_soon": 500_000,
    "timers": 200_000,
    "tasks": 200_000,
    "future_wakeup": 300_000,
    "futures": 500_000,
    "sleep0": 300_000,
    "timer_memory": 100_000,
}
BENCHMARKS = tuple(SIZES)
TASK_BATCH = 100


def timed(loop: asyncio.AbstractEventLoop, run: Callable[[], Any], n: int) -> dict[str, float]:
    gc.collect()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    run()
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    return {"ops_per_s": n / max(cpu, 1e-9), "n": n, "cpu_s": cpu, "wall_s": wall}


def bench_call_soon(loop: asyncio.AbstractEventLoop, n: int) -> dict[str, float]:
    remaining = n

    def link() -> None:
        nonlocal remaining
        remaining -= 1
        if remaining:
            loop.call_soon(link)
        else:
            loop.stop()

    loop.call_soon(link)
    return timed(loop, loop.run_forever, n)


def bench_timers(loop: asyncio.AbstractEventLoop, n: int) -> dict[str, float]:
    rng = random.Random(1234)
    delays = [rng.random() * 0.1 for _ in range(n)]
    fired = 0

    def fire() -> None:
        nonlocal fired
        fired += 1
        if fired == n:
            loop.stop()

    def run() -> None:
        call_later = loop.call_later
        for delay in delays:
            call_later(delay, fire)
        loop.run_forever()

    return timed(loop, run, n)


async def _noop() -> None:
    pass


def bench_tasks(loop: asyncio.AbstractEventLoop, n: int) -> dict[str, float]:
    async def main() -> None:
        create_task = loop.create_task
        for _ in range(n // TASK_BATCH):
            tasks = [create_task(_noop()) for _ in range(TASK_BATCH)]
            for task in tasks:
                await task

    n = n // TASK_BATCH * TASK_BATCH
    return timed(loop, lambda: loop.run_until_complete(main()), n)


def bench_future_wakeup(loop: asyncio.AbstractEventLoop, n: int) -> dict[str, float]:
    async def main() -> None:
        create_future, call_soon = loop.create_future, loop.call_soon
        for _ in range(n):
            future = create_future()
            call_soon(future.set_result, None)
            await future

    return timed(loop, lambda: loop.run_until_complete(main()), n)


def bench_futures(loop: asyncio.AbstractEventLoop, n: int) -> dict[str, float]:
    async def main() -> None:
        create_future = loop.create_future
        for _ in range(n):
            future = create_future()
            future.set_result(None)
            await future

    return timed(loop, lambda: loop.run_until_complete(main()), n)


def bench_sleep0(loop: asyncio.AbstractEventLoop, n: int) -> dict[str, float]:
    async def main() -> None:
        sleep = asyncio.sleep
        for _ in range(n):
            await sleep(0)

    return timed(loop, lambda: loop.run_until_complete(main()), n)


def bench_timer_memory(loop: asyncio.AbstractEventLoop, n: int) -> dict[str, float]:
    pid = os.getpid()

    def nothing() -> None:
        pass

    gc.collect()
    before = rss_bytes(pid)
    handles = [loop.call_later(3600.0 + i, nothing) for i in range(n)]
    # The list of handles is the caller's, not the loop's: do not count it.
    list_bytes = sys.getsizeof(handles)
    after = rss_bytes(pid)
    for handle in handles:
        handle.cancel()
    return {"bytes_per_timer": (after - before - list_bytes) / n, "n": n}


RUNNERS: dict[str, Callable[[asyncio.AbstractEventLoop, int], dict[str, float]]] = {
    "call_soon": bench_call_soon,
    "timers": bench_timers,
    "tasks": bench_tasks,
    "future_wakeup": bench_future_wakeup,
    "futures": bench_futures,
    "sleep0": bench_sleep0,
    "timer_memory": bench_timer_memory,
}


def run_one(loop_name: str, name: str, n: int) -> dict[str, Any]:
    loop = new_loop(loop_name)
    try:
        return RUNNERS[name](loop, n)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        loop.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.micro", description=__doc__)
    parser.add_argument("--loop", choices=VARIANTS, required=True)
    parser.add_argument("--benchmarks", default=",".join(BENCHMARKS), help="comma-separated")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the sizes")
    parser.add_argument(
        "--timer-memory-count", type=int, default=SIZES["timer_memory"], help="not scaled"
    )
    parser.add_argument("--core", type=int, default=None, help="CPU core to run on")
    args = parser.parse_args(argv)
    names = [name for name in args.benchmarks.split(",") if name]
    for name in names:
        if name not in RUNNERS:
            parser.error(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    pin(args.core)
    results = {}
    for name in names:
        n = max(TASK_BATCH, int(SIZES[name] * args.scale))
        if name == "timer_memory":
            n = args.timer_memory_count
        results[name] = run_one(args.loop, name, n)
    json.dump(results, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
