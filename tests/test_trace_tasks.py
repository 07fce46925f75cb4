"""Which tasks a trace sees, and from when: create_task, built directly, eager.

The rules (README, "Seeing the loop work"): a task made by ``create_task``
(any task factory, eager or not) enters the trace at its creation, with its
parent; a task built directly (``asyncio.Task(coro, loop=loop)``, as aiohttp
does) enters at the first step or wake-up the loop runs for it, marked
``first_sight``, parent unknown; a directly built eager task that finishes
inside its first step never reaches the loop, and is not in the trace at all.
Every task seen is either finished or unfinished: the counts always agree.

Each case runs on loopy in both task modes; the eager cases with asyncio's
Task where it has ``eager_start`` (3.12+) and with loopy's Task (which has
it on every version).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import pytest

from loopy.tasks import Task as LoopyTask
from loopy.trace import TraceRecorder, format_summary, summarize, to_chrome_trace

# Task classes that take eager_start: loopy's always, asyncio's from 3.12.
EAGER_TASK_CLASSES: list[Any] = [LoopyTask]
if sys.version_info >= (3, 12):
    EAGER_TASK_CLASSES.insert(0, asyncio.Task)
EAGER_IDS = [f"{cls.__module__}.Task" for cls in EAGER_TASK_CLASSES]


def record(vloop: Any, main: Callable[[], Any]) -> TraceRecorder:
    recorder = TraceRecorder()
    recorder.attach(vloop)
    vloop.run_until_complete(vloop.create_task(main(), name="main"))
    recorder.detach()
    return recorder


def created(recorder: TraceRecorder) -> dict[str, tuple[float, dict[str, Any]]]:
    """The task-created events by task name: (time, args)."""
    return {
        e.name.split()[1]: (e.start, e.args) for e in recorder.events if e.type == "task-created"
    }


def begins(recorder: TraceRecorder) -> dict[str, dict[str, Any]]:
    """The exported task spans' ``b`` events, by task name."""
    trace = to_chrome_trace(recorder)
    return {e["name"].split()[1]: e for e in trace["traceEvents"] if e["ph"] == "b"}


def assert_counts_agree(recorder: TraceRecorder) -> Any:
    summary = summarize(to_chrome_trace(recorder))
    assert summary.tasks_seen == summary.tasks_finished + summary.tasks_unfinished
    return summary


def test_a_task_built_directly_enters_at_its_first_step(vloop: Any) -> None:
    async def child() -> int:
        await asyncio.sleep(0.5)
        return 1

    async def main() -> int:
        await asyncio.sleep(1)
        task = asyncio.Task(child(), loop=asyncio.get_running_loop(), name="direct")
        return await task

    recorder = record(vloop, main)
    seen = created(recorder)
    assert seen["main"] == (0.0, {"task": 1, "parent": None, "first_sight": False})
    # Built at 1.0 s inside main's step; its first step runs in the next
    # iteration, at the same virtual time: first sight, parent unknown.
    assert seen["direct"] == (1.0, {"task": 2, "parent": None, "first_sight": True})
    finishes = [e for e in recorder.events if e.type == "task-finished"]
    assert [(e.name.split()[1], e.start) for e in finishes] == [("direct", 1.5), ("main", 1.5)]
    assert begins(recorder)["direct"]["args"] == {
        "task": 2,
        "origin": "first_sight",
        "parent": None,
    }
    summary = assert_counts_agree(recorder)
    assert (summary.tasks_created, summary.tasks_first_seen, summary.tasks_finished) == (1, 1, 2)
    text = format_summary(summary)
    assert "2 seen: created 1, first seen running 1; finished 2 " in text
    assert "they count from their first step, parent unknown" in text


@pytest.mark.parametrize("task_class", EAGER_TASK_CLASSES, ids=EAGER_IDS)
def test_a_direct_eager_task_that_suspends_enters_at_its_wake_up(
    vloop: Any, task_class: Any
) -> None:
    """aiohttp's connection handler: eager, then waiting for data."""

    async def child() -> int:
        await asyncio.sleep(0.5)  # the eager first step ends here, inside main's step
        return 1

    async def main() -> int:
        task = task_class(child(), loop=asyncio.get_running_loop(), name="eager", eager_start=True)
        return await task  # type: ignore[no-any-return]

    recorder = record(vloop, main)
    # Its first step ran at 0.0 inside main's: the loop first meets it at its wake-up.
    assert created(recorder)["eager"] == (0.5, {"task": 2, "parent": None, "first_sight": True})
    summary = assert_counts_agree(recorder)
    assert (summary.tasks_first_seen, summary.tasks_finished, summary.tasks_unfinished) == (1, 2, 0)


@pytest.mark.parametrize("task_class", EAGER_TASK_CLASSES, ids=EAGER_IDS)
def test_a_direct_eager_task_finished_in_its_first_step_is_not_in_the_trace(
    vloop: Any, task_class: Any
) -> None:
    """aiohttp's request handler for a quick response: done before the loop hears of it."""

    async def quick() -> int:
        return 1

    async def main() -> int:
        loop = asyncio.get_running_loop()
        tasks = [task_class(quick(), loop=loop, eager_start=True) for _ in range(3)]
        assert all(task.done() for task in tasks)
        await asyncio.sleep(0)
        return sum(task.result() for task in tasks)

    recorder = record(vloop, main)
    assert set(created(recorder)) == {"main"}
    summary = assert_counts_agree(recorder)
    assert (summary.tasks_created, summary.tasks_first_seen, summary.tasks_finished) == (1, 0, 1)


def eager_factories() -> list[Any]:
    """Eager task factories: a custom one for loopy's Task, and asyncio's (3.12+)."""

    def loopy_eager(loop: Any, coro: Any, **kwargs: Any) -> Any:
        return LoopyTask(coro, loop=loop, eager_start=True, **kwargs)

    factories: list[Any] = [loopy_eager]
    if sys.version_info >= (3, 12):
        factories.insert(0, asyncio.eager_task_factory)
    return factories


@pytest.mark.parametrize("factory", eager_factories(), ids=lambda f: f.__name__)
def test_create_task_with_an_eager_factory_records_creation_and_parent(
    vloop: Any, factory: Any
) -> None:
    async def quick() -> int:
        return 1

    async def slow() -> int:
        await asyncio.sleep(1)
        return 2

    async def main() -> int:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(factory)
        try:
            done = loop.create_task(quick(), name="quick")
            assert done.done()  # finished inside create_task
            pending = loop.create_task(slow(), name="slow")
            assert not pending.done()
        finally:
            loop.set_task_factory(None)
        return done.result() + await pending

    recorder = record(vloop, main)
    seen = created(recorder)
    assert seen["quick"] == (0.0, {"task": 2, "parent": 1, "first_sight": False})
    assert seen["slow"] == (0.0, {"task": 3, "parent": 1, "first_sight": False})
    # The finished eager task's label comes without its coroutine (released).
    names = {e.name for e in recorder.events if e.type == "task-created"}
    assert names & {"Task quick", "Task quick (coro: quick)"}
    summary = assert_counts_agree(recorder)
    assert (summary.tasks_created, summary.tasks_first_seen, summary.tasks_finished) == (3, 0, 3)


def test_a_plain_task_factory_is_recorded_like_create_task(vloop: Any) -> None:
    made: list[Any] = []

    def factory(loop: Any, coro: Any, **kwargs: Any) -> Any:
        made.append(asyncio.Task(coro, loop=loop, **kwargs))
        return made[-1]

    async def child() -> None:
        await asyncio.sleep(0)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(factory)
        await loop.create_task(child(), name="child")
        loop.set_task_factory(None)

    recorder = record(vloop, main)
    assert len(made) == 1
    assert created(recorder)["child"] == (0.0, {"task": 2, "parent": 1, "first_sight": False})
    assert_counts_agree(recorder)


def test_a_task_first_mentioned_as_a_parent_is_announced_once(vloop: Any) -> None:
    """The parent of a task created in the parent's eager first step is named before it enters."""

    async def grandchild() -> None:
        await asyncio.sleep(0.25)

    async def child() -> None:
        # Runs eagerly inside main's step: the loop has not met this task yet.
        await asyncio.get_running_loop().create_task(grandchild(), name="grandchild")

    async def main() -> None:
        task = LoopyTask(child(), loop=asyncio.get_running_loop(), name="child", eager_start=True)
        await task

    recorder = record(vloop, main)
    seen = created(recorder)
    parent_number = seen["grandchild"][1]["parent"]
    assert seen["child"][1] == {"task": parent_number, "parent": None, "first_sight": True}
    assert [e.name for e in recorder.events if e.type == "task-created"].count(
        "Task child (coro: child)"
    ) == 1
    assert_counts_agree(recorder)


# ----------------------------------------------------------------------
# get_coro() on a task that finished eagerly: SIGSEGV on CPython 3.12.0/3.12.1
# ----------------------------------------------------------------------

EAGER_DONE_PROGRAM = textwrap.dedent(
    """
    import asyncio, sys
    import loopy
    from loopy.tasks import Task as LoopyTask
    from loopy.trace import StallDetector, TraceRecorder, describe
    from loopy.trace.describe import task_coroutine, task_label, task_stack

    task_classes = [LoopyTask]
    if sys.version_info >= (3, 12):
        task_classes.insert(0, asyncio.Task)

    async def quick():
        return 1

    async def main():
        loop = asyncio.get_running_loop()
        for task_class in task_classes:
            task = task_class(quick(), loop=loop, eager_start=True)
            assert task.done()
            print(task_label(task), task_stack(task), task_coroutine(task) is None)
            def factory(loop, coro, **kwargs):
                return task_class(coro, loop=loop, eager_start=True, **kwargs)
            loop.set_task_factory(factory)
            made = loop.create_task(quick(), name="made")  # the recorder labels it, done
            loop.set_task_factory(None)
            assert made.done()
            describe(loop)
            await asyncio.sleep(0)  # its task_finished hook, the detector, the recorder
        print("survived")

    for tasks in ("asyncio", "loopy"):
        loop = loopy.new_event_loop(tasks=tasks)
        recorder = TraceRecorder()
        recorder.attach(loop)
        StallDetector(threshold=0, log=False).attach(loop)
        loop.run_until_complete(main())
        loop.close()
        assert any(e.name.startswith("Task made") for e in recorder.events)
    """
)


def test_tasks_finished_in_their_eager_first_step_do_not_crash_the_interpreter() -> None:
    """On CPython 3.12.1 (installed here) ``get_coro()`` of such a task is a SIGSEGV.

    ``describe``, the recorder and the stall detector ask through
    ``task_coroutine`` instead.  In a child process, so a crash fails this
    test instead of killing the test run.
    """
    done = subprocess.run(
        [sys.executable, "-c", EAGER_DONE_PROGRAM],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    lines = done.stdout.splitlines()
    assert lines[-1] == "survived"
    if sys.version_info >= (3, 12):
        # asyncio's C Task let go of its coroutine: labelled by name alone.
        assert lines[0].startswith("Task Task-")
        assert lines[0].endswith("[] True")
        assert "(coro:" not in lines[0]
    # loopy's Task keeps it.
    assert "(coro: quick)" in lines[-2]


ALL_TASK_CLASSES = [asyncio.Task, asyncio.tasks._PyTask, LoopyTask]  # type: ignore[attr-defined]


@pytest.mark.parametrize("task_class", ALL_TASK_CLASSES, ids=["C", "Python", "loopy"])
def test_only_steps_and_wake_ups_count_as_a_task_running(vloop: Any, task_class: Any) -> None:
    """``call_soon(task.cancel)`` is a callback about a task, not the task running.

    Every Task class's step and wake-up are recognised (asyncio's C and
    pure-Python ones, loopy's): their names are CPython's internals, so a
    new version that renames them fails here.
    """

    async def sleeper() -> None:
        await asyncio.sleep(10)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = task_class(sleeper(), loop=loop, name="sleeper")  # built directly
        await asyncio.sleep(0)
        loop.call_soon(task.cancel)
        await asyncio.gather(task, return_exceptions=True)

    recorder = record(vloop, main)
    kinds = {(e.type, e.name) for e in recorder.events if e.type in ("callback", "task-step")}
    assert ("callback", "Task.cancel") in kinds
    steps = [e for e in recorder.events if e.type == "task-step" and "sleeper" in e.name]
    assert len(steps) == 2  # its first step, and the wake-up that raised CancelledError
    assert created(recorder)["sleeper"][1]["first_sight"] is True
    assert_counts_agree(recorder)
