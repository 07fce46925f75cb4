"""Solutions to the exercises of chapter 7, "Stepping through loopy's own Future and Task
in a debugger" (docs/tour.md).

Exercise 7.1: :func:`step_calls` -- how often a debugger would stop in ``Task._step``.
Exercise 7.2: :func:`classes_handed_out` -- which Future and Task a loop hands
              out, and what ``isinstance`` says about them.
"""

from __future__ import annotations

import asyncio
import sys
from types import FrameType
from typing import Any

import loopy
from loopy.tasks import Task


async def three_yields() -> str:
    """The program of exercise 7.1: three bare yields, then a result."""
    for _ in range(3):
        await asyncio.sleep(0)
    return "done"


def step_calls(mode: str) -> int:
    """Exercise 7.1: run :func:`three_yields` in task mode ``mode``; count ``Task._step`` calls.

    ``sys.setprofile`` sees every Python function call, as ``sys.settrace``
    (what pdb uses) does: each call counted here is a place where a
    breakpoint on ``loopy/tasks.py`` ``Task._step`` would stop.  In the
    ``loopy`` mode that is 4 (the first step, then one per yield); in the
    ``asyncio`` mode 0, because asyncio's C Task steps the coroutine in C.
    """
    step_code = Task._step.__code__
    calls = 0

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        nonlocal calls
        if event == "call" and frame.f_code is step_code:
            calls += 1

    loop = loopy.new_event_loop(tasks=mode)
    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        assert loop.run_until_complete(three_yields()) == "done"
    finally:
        sys.setprofile(previous)
        loop.close()
    return calls


def classes_handed_out(mode: str) -> dict[str, Any]:
    """Exercise 7.2: the classes behind ``create_future``/``create_task`` in task mode ``mode``.

    In the ``loopy`` mode ``type()`` names loopy's classes, yet ``__class__``
    reports asyncio's and ``isinstance`` agrees with it: the classes define
    ``__class__`` as a property, which ``isinstance`` consults.
    """
    loop = loopy.new_event_loop(tasks=mode)
    try:
        future = loop.create_future()
        task = loop.create_task(asyncio.sleep(0))
        loop.run_until_complete(task)
        return {
            "future type": type(future),
            "future __class__": future.__class__,
            "isinstance(future, asyncio.Future)": isinstance(future, asyncio.Future),
            "task type": type(task),
            "isinstance(task, asyncio.Task)": isinstance(task, asyncio.Task),
        }
    finally:
        loop.close()
