"""Solutions to the exercises of chapter 14, "Waking the loop: threads and signals" (docs/tour.md).

Exercise 14.1: :func:`signal_between_callbacks` -- a signal's handler never runs
               in the middle of a callback.
Exercise 14.2: :func:`run_in_thread` -- your own ``run_in_executor``, on
               ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Callable
from typing import Any


class _Iterations:
    def __init__(self) -> None:
        self.count = 0

    def iteration_started(self, loop: Any) -> None:
        self.count += 1


def signal_between_callbacks(loop: Any) -> list[tuple[str, int]]:
    """Exercise 14.1: a callback sends SIGUSR1 to its own process; when does the handler run?

    Returns ``(event, iteration)`` pairs.  The handler runs after the callback
    finished, two iterations later: the next ``select()`` sees the signal's
    number on the wake-up socket, whose reader (``Loop._on_wakeup``) queues
    the handler, which runs in the iteration after that.  Main thread only.
    """
    iterations = _Iterations()
    loop.add_instrument(iterations)
    events: list[tuple[str, int]] = []

    def on_signal() -> None:
        events.append(("handler", iterations.count))
        loop.stop()

    def sender() -> None:
        events.append(("before kill", iterations.count))
        os.kill(os.getpid(), signal.SIGUSR1)  # the C-level handler runs during this call
        events.append(("after kill", iterations.count))

    loop.add_signal_handler(signal.SIGUSR1, on_signal)
    try:
        loop.call_soon(sender)
        loop.run_forever()
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
        loop.remove_instrument(iterations)
    return events


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return  # cancelled while the thread worked
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


def run_in_thread(func: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
    """Exercise 14.2: run ``func(*args)`` in a new thread; await the returned future for its result.

    The thread must not touch the future itself: futures belong to the
    loop's thread.  It hands the outcome over with ``call_soon_threadsafe``,
    which queues :func:`_settle` and writes a byte to the wake-up socket, so
    a loop asleep in ``select()`` wakes up to run it.
    """
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def work() -> None:
        try:
            result = func(*args)
        except BaseException as error:
            loop.call_soon_threadsafe(_settle, future, None, error)
        else:
            loop.call_soon_threadsafe(_settle, future, result, None)

    threading.Thread(target=work, name="run_in_thread", daemon=True).start()
    return future
