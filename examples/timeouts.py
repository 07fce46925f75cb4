"""Timeouts and cancellation: ``asyncio.timeout``, ``wait_for``, ``cancel`` and ``shield``.

Each section runs one small scenario on loopy and prints its outcome:

1. ``asyncio.timeout`` gives up on a slow sleep and raises ``TimeoutError``;
2. ``wait_for`` returns a fast result, and cancels a slow one on timeout;
3. ``task.cancel()`` raises ``CancelledError`` inside the task, which cleans up;
4. ``shield`` protects inner work: the waiter times out, the work finishes.

Run::

    uv run python examples/timeouts.py

It prints one ``N. ...`` line (or a few) per section, then ``done``, and exits
0 after well under a second.
"""

from __future__ import annotations

import asyncio

import loopy


async def slow(name: str, seconds: float) -> str:
    try:
        await asyncio.sleep(seconds)
        return f"{name} finished"
    except asyncio.CancelledError:
        print(f"   {name} was cancelled")
        raise  # a cancelled coroutine must let the cancellation through


async def main() -> None:
    loop = asyncio.get_running_loop()

    start = loop.time()
    try:
        async with asyncio.timeout(0.05):
            await slow("sleep(1)", 1)
    except TimeoutError:
        print(f"1. asyncio.timeout: gave up after {loop.time() - start:.2f} s")

    print(f"2. wait_for, fast: {await asyncio.wait_for(slow('fast', 0.01), timeout=1)}")
    try:
        await asyncio.wait_for(slow("slow", 1), timeout=0.05)
    except TimeoutError:
        print("2. wait_for, slow: TimeoutError")

    task = asyncio.create_task(slow("task", 1))
    await asyncio.sleep(0.01)  # let it start
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        print(f"3. cancel: task.cancelled() is {task.cancelled()}")

    work = asyncio.create_task(slow("shielded work", 0.1))
    try:
        await asyncio.wait_for(asyncio.shield(work), timeout=0.02)
    except TimeoutError:
        print(f"4. shield: the wait timed out, work.done() is {work.done()}")
    print(f"4. shield: the work went on: {await work}")
    print("done")


if __name__ == "__main__":
    loopy.run(main())
