"""Solutions to the exercises of chapter 22, "Edges: blocking calls, threads and child processes"
    (docs/tour.md).

Exercise 22.1: :func:`ticks_around_a_blocking_step` -- one blocking step delays every timer.
Exercise 22.2: :func:`cancel_a_thread_job` -- cancelling ``run_in_executor`` does not stop the
    thread.
Exercise 22.3: :func:`wait_without_reading` -- ``Process.wait()`` with an unread pipe never returns.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from typing import Any


async def ticks_around_a_blocking_step(clock: Any) -> list[float]:
    """Exercise 22.1: a ticker every 0.1 s, and one task step that blocks for 0.5 s.

    ``clock`` is the loop's virtual clock: ``clock.advance(0.5)`` inside a
    step is what ``time.sleep(0.5)`` would do to a real one.  Nothing else
    runs during a step, so the tick due at 0.2 s runs at 0.65 s, when the
    step returns, and the ticker's later deadlines count from there.
    Returns the tick times.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    ticks: list[float] = []

    async def ticker() -> None:
        while len(ticks) < 4:
            await asyncio.sleep(0.1)
            ticks.append(round(loop.time() - start, 6))

    async def blocker() -> None:
        await asyncio.sleep(0.15)
        clock.advance(0.5)  # time.sleep(0.5): the whole loop waits

    await asyncio.gather(ticker(), blocker())
    return ticks


async def cancel_a_thread_job() -> list[str]:
    """Exercise 22.2: cancel a task awaiting ``run_in_executor`` while the job runs.

    The loop's future is cancelled, and so is the task; the thread is not:
    Python cannot stop a thread, and ``concurrent.futures.Future.cancel()``
    fails once the job runs.  The job finishes when it finishes, its result
    thrown away, and ``shutdown_default_executor()`` (which ``asyncio.run``
    calls) waits for it.  Returns a log.
    """
    loop = asyncio.get_running_loop()
    started, release = threading.Event(), threading.Event()
    log: list[str] = []

    def job() -> str:
        started.set()
        release.wait()
        log.append("job finished in its thread")
        return "thrown away"

    waiting = asyncio.ensure_future(loop.run_in_executor(None, job))
    while not started.is_set():  # the thread picks the job up
        await asyncio.sleep(0.001)
    waiting.cancel()
    try:
        await waiting
    except asyncio.CancelledError:
        log.append("awaiting task cancelled")
    log.append(f"job still running: {not release.is_set()}")
    release.set()
    await loop.shutdown_default_executor()
    log.append("shutdown_default_executor returned")
    return log


async def wait_without_reading(size: int, limit: int) -> dict[str, Any]:
    """Exercise 22.3: a child writes ``size`` bytes to a pipe; the parent only awaits ``wait()``.

    The stream reader takes what arrives until it holds more than twice its
    ``limit``, then pauses the pipe's transport (``pause_reading``: the loop
    stops watching the pipe).  The kernel's pipe buffer fills, the child
    blocks in ``write()`` and never exits, and ``wait()`` never returns.
    Here, once reading is paused, the child is still running; it is then
    killed.  ``communicate()`` reads while it waits, and gets everything.
    Returns what was observed.
    """
    code = f"import sys; sys.stdout.buffer.write(b'x' * {size})"
    argv = [sys.executable, "-c", code]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, limit=limit)
    waiting = asyncio.ensure_future(proc.wait())
    transport = proc._transport  # type: ignore[attr-defined]
    pipe = transport.get_pipe_transport(1)
    for _ in range(5000):  # a bound, not a timing: reading pauses once enough arrived
        if not pipe.is_reading():
            break
        await asyncio.sleep(0.001)
    outcome: dict[str, Any] = {
        "reading paused": not pipe.is_reading(),
        "buffered": len(proc.stdout._buffer),  # type: ignore[union-attr]
        "child running": proc.returncode is None and not waiting.done(),
    }
    proc.kill()
    # asyncio's wait() also waits for the pipes to close (chapter 15), so read
    # to the end of the data; loopy's returns once the child is gone.
    await proc.stdout.read()  # type: ignore[union-attr]
    outcome["returncode after kill"] = await waiting
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, limit=limit)
    out, _ = await proc.communicate()
    outcome["communicate read"] = len(out)
    return outcome
