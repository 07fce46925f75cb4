"""Producers and consumers sharing a bounded ``asyncio.Queue``.

Shows ``Queue.put`` waiting while the queue is full (back-pressure on the
producers), ``Queue.get`` waiting while it is empty, ``task_done``/``join``
to know when every item has been handled, and cancelling the idle consumers
at the end.

Run::

    uv run python examples/producer_consumer.py

It prints one line per item put and per item handled, then a summary such as
``summary: 12 produced, 12 consumed`` with each consumer's share, and exits 0
after well under a second.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import loopy

PRODUCERS, ITEMS_EACH, CONSUMERS, QUEUE_SIZE = 3, 4, 2, 2


async def producer(name: str, queue: asyncio.Queue[str]) -> int:
    for i in range(ITEMS_EACH):
        item = f"{name}-{i}"
        await queue.put(item)  # waits while the queue is full
        print(f"{name} put {item} (queue size {queue.qsize()})")
        await asyncio.sleep(0.005)
    return ITEMS_EACH


async def consumer(name: str, queue: asyncio.Queue[str], handled: Counter[str]) -> None:
    while True:
        item = await queue.get()  # waits while the queue is empty
        await asyncio.sleep(0.01)  # "work" on the item
        handled[name] += 1
        print(f"{name} handled {item}")
        queue.task_done()


async def main() -> None:
    queue: asyncio.Queue[str] = asyncio.Queue(maxsize=QUEUE_SIZE)
    handled: Counter[str] = Counter()
    consumers = [
        asyncio.create_task(consumer(f"consumer{i}", queue, handled)) for i in range(CONSUMERS)
    ]
    produced = await asyncio.gather(*(producer(f"p{i}", queue) for i in range(PRODUCERS)))
    await queue.join()  # every item put has been marked done
    for task in consumers:  # they wait forever on an empty queue: stop them
        task.cancel()
    await asyncio.gather(*consumers, return_exceptions=True)
    shares = ", ".join(f"{name} {count}" for name, count in sorted(handled.items()))
    print(f"summary: {sum(produced)} produced, {handled.total()} consumed ({shares})")


if __name__ == "__main__":
    loopy.run(main())
