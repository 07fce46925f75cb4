"""Solutions to the exercises of chapter 18, "Ctrl-C, three ways" (docs/tour.md).

Exercise 18.1: :func:`interrupt_under_runner` -- the Runner's handler cancels the main task, then
    raises KeyboardInterrupt.
Exercise 18.2: :func:`interrupt_with_handler` and :func:`interrupt_without_handler` -- a loop's
    handler, or none.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Any


def interrupt_under_runner(loop_factory: Callable[[], Any]) -> list[str]:
    """Exercise 18.1: Ctrl-C (a SIGINT sent to ourselves) under ``asyncio.Runner``.

    ``Runner.run`` installs its own SIGINT handler when it runs in the main
    thread and nobody replaced Python's default one.  The handler cancels the
    main task (and wakes the loop with ``call_soon_threadsafe``); the main
    coroutine sees ``CancelledError`` at its ``await`` and may clean up; then
    ``Runner.run`` turns that cancellation into ``KeyboardInterrupt``.
    Returns what happened, in order.
    """
    log: list[str] = []

    async def main() -> None:
        asyncio.get_running_loop().call_soon(signal.raise_signal, signal.SIGINT)
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            log.append("main task cancelled")
            raise

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        try:
            runner.run(main())
        except KeyboardInterrupt:
            log.append("Runner.run raised KeyboardInterrupt")
    log.append(f"handler restored: {signal.getsignal(signal.SIGINT) is signal.default_int_handler}")
    return log


def interrupt_with_handler(loop: Any) -> list[str]:
    """Exercise 18.2, first half: ``loop.add_signal_handler(SIGINT, ...)``.

    The signal is only noted (a byte on the loop's wake-up socket); the
    handler runs as an ordinary callback in a later iteration, and nothing
    is raised.  Returns what happened, in order.
    """
    log: list[str] = []

    def on_sigint() -> None:
        log.append("handler runs as a callback")
        loop.stop()

    def send() -> None:
        signal.raise_signal(signal.SIGINT)
        log.append("raise_signal returned")

    loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        loop.call_soon(send)
        loop.run_forever()
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    return log


def interrupt_without_handler(loop: Any) -> list[str]:
    """Exercise 18.2, second half: no handler but Python's default one.

    Python raises ``KeyboardInterrupt`` in whatever code runs when the
    signal arrives: here, the callback that sent it.  The loop lets it
    through (as it does ``SystemExit``) and leaves ``run_until_complete``;
    nothing is cancelled, and the sleeping task is still pending, ready to
    go on when the loop runs again.  Returns what happened, in order.
    """
    log: list[str] = []
    sleeper = loop.create_task(asyncio.sleep(1))

    def send() -> None:
        signal.raise_signal(signal.SIGINT)
        log.append("never reached")

    loop.call_soon(send)
    try:
        loop.run_until_complete(sleeper)
    except KeyboardInterrupt:
        log.append("KeyboardInterrupt out of run_until_complete")
    log.append(f"sleeper pending: {not sleeper.done()}")
    loop.run_until_complete(sleeper)
    log.append(f"sleeper finished later: {sleeper.done() and not sleeper.cancelled()}")
    return log
