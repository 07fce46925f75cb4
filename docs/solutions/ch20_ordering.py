"""Solutions to the exercises of chapter 20, "Edges: tasks nobody holds, threads, stopping"
    (docs/tour.md).

Exercise 20.1: :func:`forgotten_task` -- a task nobody references is garbage, even while it waits.
Exercise 20.2: :class:`ThreadWhileWaiting` and :func:`when_thread_callback_runs` -- ``call_soon``
    from a thread does not wake the loop.
Exercise 20.3: :func:`stop_then_run` -- what ``stop()`` lets run, and what waits for the next run.
"""

from __future__ import annotations

import asyncio
import gc
import selectors
import threading
from collections.abc import Callable
from typing import Any


def forgotten_task(loop: Any, keep: bool) -> list[str]:
    """Exercise 20.1: start a task that waits on a future only it knows, and drop it.

    The loop's registry of tasks holds them weakly, and a waiting task is
    held only by the done callback of the future it waits on: if nobody
    holds that future either, task and future are a cycle of garbage.  The
    collector closes the coroutine (``GeneratorExit`` at its ``await``) and
    the task's ``__del__`` reports "Task was destroyed but it is pending!".
    With ``keep``, a set of background tasks holds it, as asyncio's
    documentation advises.  Returns a log.
    """
    log: list[str] = []
    background: set[asyncio.Task[None]] = set()
    loop.set_exception_handler(lambda _loop, context: log.append(context["message"]))

    async def waits_forever() -> None:
        try:
            await loop.create_future()
        except GeneratorExit:
            log.append("coroutine closed by the collector")
            raise

    task = loop.create_task(waits_forever())
    if keep:
        background.add(task)
        task.add_done_callback(background.discard)
    del task
    loop.run_until_complete(asyncio.sleep(0))
    gc.collect()
    log.append(f"tasks left: {len(background)}")
    for task in background:
        task.cancel()
    background.clear()
    loop.run_until_complete(asyncio.sleep(0))
    loop.set_exception_handler(None)
    return log


class ThreadWhileWaiting(selectors.DefaultSelector):
    """Exercise 20.2: a selector on a virtual clock that lets a thread act while the loop waits.

    The first time the loop asks to wait (a timeout other than 0), it runs
    ``action`` in a new thread and joins it, then polls: if the thread's
    action made a descriptor readable, ``select`` returns at once; otherwise
    the clock jumps by the whole timeout, as if the loop had slept.
    """

    def __init__(self, clock: Any) -> None:
        super().__init__()
        self.clock = clock
        self.action: Callable[[], object] | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if self.action is not None and timeout != 0:
            thread = threading.Thread(target=self.action)
            self.action = None
            thread.start()
            thread.join()
        events = super().select(0)
        if not events and timeout:
            self.clock.advance(timeout)
        return events


def when_thread_callback_runs(loop: Any, selector: ThreadWhileWaiting, threadsafe: bool) -> float:
    """Exercise 20.2: how late a callback a thread schedules runs, with or without ``_threadsafe``.

    The loop has nothing to do but a timer 10 s away, so it waits.  A thread
    calls ``loop.call_soon`` (or ``call_soon_threadsafe``) meanwhile.  Both
    append to the ready queue; only ``call_soon_threadsafe`` also writes to
    the loop's wake-up socket, so that the wait ends.  Returns the seconds
    between the start and the callback.
    """
    start = loop.time()
    ran_at: list[float] = []

    def callback() -> None:
        ran_at.append(loop.time() - start)

    schedule = loop.call_soon_threadsafe if threadsafe else loop.call_soon
    selector.action = lambda: schedule(callback)
    loop.call_later(10, loop.stop)
    loop.run_forever()
    return ran_at[0]


def stop_then_run(loop: Any) -> list[str]:
    """Exercise 20.3: ``stop()`` inside a callback, and ``stop()`` before ``run_forever``.

    ``stop()`` only sets a flag that ``run_forever`` checks after each
    iteration: the rest of the iteration's callbacks still run, and what they
    schedule waits for the next run.  Called while the loop is not running,
    it makes the next ``run_forever`` return after one iteration, in which
    the ready callbacks run but no timer that is not yet due.
    """
    log: list[str] = []

    def a() -> None:
        log.append("a calls stop()")
        loop.stop()
        loop.call_soon(log.append, "b, scheduled by a")

    loop.call_soon(a)
    loop.call_soon(log.append, "c, queued after a")
    loop.run_forever()
    log.append("run_forever returned")
    loop.call_later(5, log.append, "timer in 5 s")
    loop.stop()
    loop.run_forever()
    log.append("run_forever returned")
    return log
