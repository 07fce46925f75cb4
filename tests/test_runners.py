"""Running programs on loopy: ``loopy.run``, ``asyncio.Runner`` with loopy, ``loopy.install``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

import loopy


@pytest.fixture(autouse=True)
def default_task_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    # The environment may pick the task mode; these tests pick it themselves.
    monkeypatch.delenv("LOOPY_TASKS", raising=False)


@pytest.fixture
def restore_policy() -> Iterator[None]:
    yield
    asyncio.set_event_loop_policy(None)


async def where_am_i() -> tuple[Any, Any]:
    """The running loop and the running task's class."""
    await asyncio.sleep(0)
    return asyncio.get_running_loop(), type(asyncio.current_task())


def test_run_returns_the_result_on_a_loopy_loop() -> None:
    loop, task_class = loopy.run(where_am_i())
    assert isinstance(loop, loopy.Loop)
    assert loop.task_mode == "asyncio"
    assert task_class is asyncio.Task
    assert loop.is_closed()  # run() closes its loop


def test_run_with_loopys_own_tasks() -> None:
    loop, task_class = loopy.run(where_am_i(), tasks="loopy")
    assert loop.task_mode == "loopy"
    assert task_class is loopy.Task


def test_run_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOPY_TASKS", "loopy")
    _loop, task_class = loopy.run(where_am_i())
    assert task_class is loopy.Task


def test_run_debug() -> None:
    async def debug() -> bool:
        return asyncio.get_running_loop().get_debug()

    assert loopy.run(debug(), debug=True) is True
    assert loopy.run(debug(), debug=False) is False


def test_run_propagates_exceptions() -> None:
    async def fail() -> None:
        await asyncio.sleep(0)
        raise ZeroDivisionError("from main")

    with pytest.raises(ZeroDivisionError, match="from main"):
        loopy.run(fail())


def test_run_cancels_what_main_left_behind() -> None:
    cancelled = []

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main() -> asyncio.Task[None]:
        task = asyncio.ensure_future(forever())
        await asyncio.sleep(0)
        return task

    task = loopy.run(main())
    assert task.cancelled()
    assert cancelled == [True]


def test_asyncio_runner_with_a_loopy_factory() -> None:
    with asyncio.Runner(loop_factory=loopy.new_event_loop) as runner:
        loop, _ = runner.run(where_am_i())
        assert runner.get_loop() is loop
        assert isinstance(loop, loopy.Loop)
        again, _ = runner.run(where_am_i())  # the same loop, run again
        assert again is loop
    assert loop.is_closed()


def test_install_makes_asyncio_use_loopy(restore_policy: None) -> None:
    loopy.install()
    assert isinstance(asyncio.get_event_loop_policy(), loopy.EventLoopPolicy)
    loop, task_class = asyncio.run(where_am_i())
    assert isinstance(loop, loopy.Loop)
    assert task_class is asyncio.Task
    new = asyncio.new_event_loop()
    try:
        assert isinstance(new, loopy.Loop)
    finally:
        new.close()


def test_policy_restored() -> None:
    # (after test_install_makes_asyncio_use_loopy, or on its own)
    assert not isinstance(asyncio.get_event_loop_policy(), loopy.EventLoopPolicy)
    loop, _ = asyncio.run(where_am_i())
    assert not isinstance(loop, loopy.Loop)


def test_policy_without_installing() -> None:
    policy = loopy.EventLoopPolicy()
    loop = policy.new_event_loop()
    try:
        assert isinstance(loop, loopy.Loop)
        assert loop.run_until_complete(where_am_i())[0] is loop
    finally:
        loop.close()
