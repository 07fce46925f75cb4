"""Solutions to the exercises of chapter 17, "asyncio's own code, run by loopy" (docs/tour.md).

Exercise 17.1: :func:`watch_sleep` -- ``asyncio.sleep`` iteration by iteration, and what a cancel
    leaves.
Exercise 17.2: :func:`first_failure` -- ``gather`` lets the siblings of a failed child run;
    ``TaskGroup`` does not.
Exercise 17.3: :func:`staggered` -- the staggered race behind happy eyeballs, on a virtual clock.
"""

from __future__ import annotations

import asyncio
from asyncio.staggered import staggered_race
from collections.abc import Callable
from typing import Any


def watch_sleep(loop: Any, delay: float, cancel_after: int | None = None) -> dict[str, Any]:
    """Exercise 17.1: run a task that awaits ``asyncio.sleep(delay)``, recording each iteration.

    Two wrappers on the loop instance (both loops look these up on
    ``self``): ``_run_once`` counts iterations, and ``call_later`` records
    the timer ``sleep`` asks for and wraps its callback to note when it runs.
    With ``cancel_after``, a callback cancels the task in that iteration.
    Returns ``{"events": [(iteration, what), ...], "timer": the TimerHandle,
    "cancelled": whether the task ended cancelled}``.
    """
    iteration = 0
    events: list[tuple[int, str]] = []
    timers: list[asyncio.TimerHandle] = []
    run_once, call_later = loop._run_once, loop.call_later

    def counting_run_once() -> None:
        nonlocal iteration
        iteration += 1
        run_once()

    def recording_call_later(when: float, callback: Callable[..., Any], *args: Any) -> Any:
        def fired(*args: Any) -> None:
            events.append((iteration, f"timer runs {callback.__name__}"))
            callback(*args)

        events.append((iteration, f"call_later({when}, {callback.__name__})"))
        timers.append(call_later(when, fired, *args))
        return timers[-1]

    async def sleeper() -> None:
        events.append((iteration, "sleep starts"))
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            events.append((iteration, "sleep cancelled"))
            raise
        events.append((iteration, "sleep returned"))

    loop._run_once, loop.call_later = counting_run_once, recording_call_later
    try:
        task = loop.create_task(sleeper())
        if cancel_after is not None:

            def cancel_in(n: int) -> None:
                if n > 1:
                    loop.call_soon(cancel_in, n - 1)
                else:
                    task.cancel()

            loop.call_soon(cancel_in, cancel_after)
        try:
            loop.run_until_complete(task)
        except asyncio.CancelledError:
            pass
    finally:
        del loop._run_once, loop.call_later
    return {"events": events, "timer": timers[0], "cancelled": task.cancelled()}


async def first_failure(use_taskgroup: bool) -> list[str]:
    """Exercise 17.2: three children, one fails at 1 s; what happens to the other two?

    ``gather`` hands the first exception to its awaiter at once and leaves
    the other children running (they finish at 2 s and 3 s, unwatched);
    ``TaskGroup`` cancels them and raises an ``ExceptionGroup`` once they
    are done.  Returns a log of ``"<time> <what>"`` lines.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    log: list[str] = []

    def note(what: str) -> None:
        log.append(f"{loop.time() - start:g} {what}")

    async def child(name: str, seconds: float, fail: bool = False) -> str:
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            note(f"{name} cancelled")
            raise
        if fail:
            note(f"{name} fails")
            raise ValueError(name)
        note(f"{name} done")
        return name

    if use_taskgroup:
        try:
            async with asyncio.TaskGroup() as group:
                for name, seconds, fail in (("a", 1, True), ("b", 2, False), ("c", 3, False)):
                    group.create_task(child(name, seconds, fail))
        except* ValueError:
            note("awaiter sees ExceptionGroup")
    else:
        children = [
            asyncio.ensure_future(child(n, s, f))
            for n, s, f in (("a", 1, True), ("b", 2, False), ("c", 3, False))
        ]
        try:
            await asyncio.gather(*children)
        except ValueError:
            note("awaiter sees ValueError")
        await asyncio.wait(children)  # only to watch them end; gather no longer does
    return log


async def staggered(durations: list[float], delay: float) -> tuple[Any, Any, list[str]]:
    """Exercise 17.3: ``staggered_race`` over attempts that take ``durations`` seconds.

    Attempt *i* starts when attempt *i - 1* has had ``delay`` seconds (or
    failed); the first to finish wins and the others are cancelled.  Returns
    ``(winner's result, winner's index, log)``.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    log: list[str] = []

    def attempt(i: int, seconds: float) -> Callable[[], Any]:
        async def run() -> str:
            log.append(f"{loop.time() - start:g} start {i}")
            try:
                await asyncio.sleep(seconds)
            except asyncio.CancelledError:
                log.append(f"{loop.time() - start:g} cancel {i}")
                raise
            log.append(f"{loop.time() - start:g} done {i}")
            return f"attempt {i}"

        return run

    result, index, _errors = await staggered_race(
        [attempt(i, s) for i, s in enumerate(durations)], delay
    )
    return result, index, log
