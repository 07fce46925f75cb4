"""loopy's Task, against asyncio's.

Tests taking ``any_loop``/``any_vloop`` make tasks with ``loop.create_task``:
asyncio's C Task on the first two kinds, loopy's own on "loopy-own", so
each such test states behaviour all three share.  Tests building
``Task(...)`` directly pin down loopy's class wherever it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import io
import sys
import types
import weakref
from typing import Any

import pytest

import loopy
from loopy.futures import Future
from loopy.tasks import Task
from tests.helpers import make_loop
from tests.test_futures import collect_reports, run_ready

CancelledError = asyncio.CancelledError

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

UNCANCEL_CLEARS_MUST_CANCEL = sys.version_info >= (3, 13)


@pytest.fixture
def own_loop() -> Any:
    """A loopy loop handing out loopy's own Future and Task."""
    loop = make_loop("loopy-own")
    yield loop
    loop.close()


async def forever(loop: Any) -> None:
    """Wait for a future nobody will complete."""
    await loop.create_future()


# ----------------------------------------------------------------------
# Results and exceptions
# ----------------------------------------------------------------------


def test_task_result_is_the_coroutine_return_value(any_loop: Any) -> None:
    async def double(n: int) -> int:
        await asyncio.sleep(0)
        return n * 2

    task = any_loop.create_task(double(21))
    assert not task.done()
    assert any_loop.run_until_complete(task) == 42
    assert task.result() == 42


def test_task_exception_is_the_coroutine_exception(any_loop: Any) -> None:
    async def fail() -> None:
        await asyncio.sleep(0)
        raise ValueError("inside")

    task = any_loop.create_task(fail())
    with pytest.raises(ValueError, match="inside"):
        any_loop.run_until_complete(task)
    assert isinstance(task.exception(), ValueError)


def test_keyboard_interrupt_escapes_the_loop(any_loop: Any) -> None:
    async def interrupted() -> None:
        raise KeyboardInterrupt

    task = any_loop.create_task(interrupted())
    with pytest.raises(KeyboardInterrupt):
        any_loop.run_until_complete(task)
    assert task.done()
    assert isinstance(task.exception(), KeyboardInterrupt)


def test_first_step_runs_in_the_next_iteration(any_loop: Any) -> None:
    started: list[str] = []

    async def body() -> None:
        started.append("body")

    task = any_loop.create_task(body())
    assert started == []
    run_ready(any_loop)
    assert started == ["body"]
    assert task.done()


def test_not_a_coroutine_is_refused(any_loop: Any) -> None:
    reports = collect_reports(any_loop)

    def make() -> None:
        with pytest.raises(TypeError, match="coroutine"):
            any_loop.create_task(lambda: None)
        with pytest.raises(TypeError, match="coroutine"):
            Task(42, loop=any_loop)  # type: ignore[arg-type]

    make()
    gc.collect()
    assert reports == []  # no "destroyed but pending" for a task never made


def test_set_result_and_set_exception_are_not_for_tasks(any_loop: Any) -> None:
    async def noop() -> None:
        pass

    task = any_loop.create_task(noop())
    with pytest.raises(RuntimeError, match="set_result"):
        task.set_result(1)
    with pytest.raises(RuntimeError, match="set_exception"):
        task.set_exception(ValueError())
    any_loop.run_until_complete(task)


def test_step_of_a_done_task_is_refused(own_loop: Any) -> None:
    async def noop() -> None:
        pass

    task = Task(noop(), loop=own_loop)
    own_loop.run_until_complete(task)
    with pytest.raises(asyncio.InvalidStateError, match="already done"):
        task._step()


# ----------------------------------------------------------------------
# What a coroutine may yield
# ----------------------------------------------------------------------


@types.coroutine
def raw_yield(value: Any) -> Any:
    """Yield ``value`` to the task as is, bypassing any __await__."""
    return (yield value)


def test_bad_yield_is_thrown_back(any_loop: Any) -> None:
    async def main() -> None:
        await raw_yield(42)

    with pytest.raises(RuntimeError, match="Task got bad yield: 42"):
        any_loop.run_until_complete(main())


def test_yielding_a_future_without_await_is_refused(any_loop: Any) -> None:
    async def main() -> None:
        fut = any_loop.create_future()
        await raw_yield(fut)  # the blocking flag was never set

    with pytest.raises(RuntimeError, match="yield was used instead of yield from"):
        any_loop.run_until_complete(main())


def test_awaiting_itself_is_refused(any_loop: Any) -> None:
    async def main() -> None:
        await asyncio.current_task()  # type: ignore[misc]

    with pytest.raises(RuntimeError, match="cannot await on itself"):
        any_loop.run_until_complete(main())


def test_future_of_another_loop_is_refused(any_loop: Any) -> None:
    other = make_loop("loopy-own")
    try:

        async def main() -> None:
            await other.create_future()

        with pytest.raises(RuntimeError, match="attached to a different loop"):
            any_loop.run_until_complete(main())
    finally:
        other.close()


def test_bare_yield_gives_the_others_one_turn(any_loop: Any) -> None:
    order: list[str] = []

    async def polite() -> None:
        order.append("polite 1")
        await raw_yield(None)
        order.append("polite 2")

    async def main() -> None:
        task = any_loop.create_task(polite())
        any_loop.call_soon(order.append, "callback")
        await task

    any_loop.run_until_complete(main())
    assert order == ["polite 1", "callback", "polite 2"]


# ----------------------------------------------------------------------
# Cross-awaiting: every task can await every future
# ----------------------------------------------------------------------


def test_any_task_awaits_a_loopy_future(any_loop: Any) -> None:
    # On "loopy" this is asyncio's C Task awaiting loopy's Future.
    fut = Future(loop=any_loop)

    async def main() -> Any:
        return await fut

    task = any_loop.create_task(main())
    run_ready(any_loop)
    assert fut._asyncio_future_blocking is False  # the task took it
    fut.set_result("from loopy")
    assert any_loop.run_until_complete(task) == "from loopy"


def test_cancelling_any_task_cancels_the_loopy_future_it_awaits(any_loop: Any) -> None:
    fut = Future(loop=any_loop)

    async def main() -> None:
        await fut

    task = any_loop.create_task(main())
    run_ready(any_loop)
    assert task.cancel("stop it")
    assert fut.cancelled()
    with pytest.raises(CancelledError, match="stop it"):
        any_loop.run_until_complete(task)
    assert task.cancelled()


def test_loopy_task_awaits_asyncio_future(any_loop: Any) -> None:
    fut: asyncio.Future[str] = asyncio.Future(loop=any_loop)

    async def main() -> str:
        return await fut

    task = Task(main(), loop=any_loop)
    run_ready(any_loop)
    assert task._fut_waiter is fut
    assert fut._asyncio_future_blocking is False  # the task took it
    fut.set_result("from asyncio")
    assert any_loop.run_until_complete(task) == "from asyncio"


def test_cancelling_loopy_task_cancels_the_asyncio_future_it_awaits(any_loop: Any) -> None:
    fut: asyncio.Future[None] = asyncio.Future(loop=any_loop)

    async def main() -> None:
        await fut

    task = Task(main(), loop=any_loop)
    run_ready(any_loop)
    assert task.cancel("bye")
    assert fut.cancelled()
    with pytest.raises(CancelledError, match="bye"):
        any_loop.run_until_complete(task)


def test_loopy_and_asyncio_tasks_await_each_other(any_loop: Any) -> None:
    async def leaf() -> str:
        await asyncio.sleep(0)
        return "leaf"

    async def via_asyncio() -> str:
        return await asyncio.Task(leaf(), loop=any_loop)

    async def via_loopy() -> str:
        return await Task(via_asyncio(), loop=any_loop)

    assert any_loop.run_until_complete(Task(via_loopy(), loop=any_loop)) == "leaf"


# ----------------------------------------------------------------------
# Cancellation
# ----------------------------------------------------------------------


def test_cancel_before_the_first_step(any_loop: Any) -> None:
    ran: list[str] = []

    async def body() -> None:
        ran.append("body")

    task = any_loop.create_task(body())
    assert task.cancel("early")
    assert task.cancelling() == 1
    assert not task.cancelled()  # only once the coroutine let it through
    with pytest.raises(CancelledError, match="early"):
        any_loop.run_until_complete(task)
    assert task.cancelled()
    assert ran == []


def test_cancelling_a_task_cancels_the_future_it_awaits(any_loop: Any) -> None:
    async def main(fut: Any) -> None:
        await fut

    fut = any_loop.create_future()
    task = any_loop.create_task(main(fut))
    run_ready(any_loop)
    assert not fut.done()
    assert task.cancel("msg")
    assert fut.cancelled()
    with pytest.raises(CancelledError, match="msg"):
        any_loop.run_until_complete(task)


def test_cancel_after_the_awaited_future_was_cancelled(any_loop: Any) -> None:
    # The wake-up is already on its way with the future's CancelledError;
    # the task's own request must not replace it.
    fut = any_loop.create_future()

    async def main() -> None:
        await fut

    task = any_loop.create_task(main())
    run_ready(any_loop)
    fut.cancel("by the future")
    assert task.cancel("by the task")
    with pytest.raises(CancelledError, match="by the future"):
        any_loop.run_until_complete(task)


def test_cancel_propagates_through_awaited_tasks(any_loop: Any) -> None:
    inner = any_loop.create_task(forever(any_loop))

    async def outer_body() -> None:
        await inner

    outer = any_loop.create_task(outer_body())
    run_ready(any_loop)
    outer.cancel()
    with pytest.raises(CancelledError):
        any_loop.run_until_complete(outer)
    assert inner.cancelled()
    assert outer.cancelled()


def test_cancel_requested_during_a_step_reaches_the_next_await(any_loop: Any) -> None:
    fut = any_loop.create_future()

    async def main() -> None:
        asyncio.current_task().cancel("self")  # type: ignore[union-attr]
        await fut

    task = any_loop.create_task(main())
    with pytest.raises(CancelledError, match="self"):
        any_loop.run_until_complete(task)
    assert fut.cancelled()
    assert task.cancelled()


def test_cancel_requested_just_before_returning_wins(any_loop: Any) -> None:
    async def main() -> str:
        asyncio.current_task().cancel()  # type: ignore[union-attr]
        return "too late"

    task = any_loop.create_task(main())
    with pytest.raises(CancelledError):
        any_loop.run_until_complete(task)
    assert task.cancelled()


def test_coroutine_may_refuse_cancellation(any_loop: Any) -> None:
    async def stubborn() -> str:
        try:
            await forever(any_loop)
        except CancelledError:
            return "survived"
        return "not cancelled"

    task = any_loop.create_task(stubborn())
    run_ready(any_loop)
    task.cancel()
    assert any_loop.run_until_complete(task) == "survived"
    assert not task.cancelled()
    assert task.cancelling() == 1
    assert task.uncancel() == 0
    assert task.uncancel() == 0  # never below zero


def test_refused_cancellation_of_awaited_task_can_be_repeated(any_loop: Any) -> None:
    log: list[str] = []

    async def refuses_once() -> None:
        try:
            await forever(any_loop)
        except CancelledError:
            log.append("refused")
        await forever(any_loop)

    inner = any_loop.create_task(refuses_once())

    async def outer_body() -> None:
        await inner

    outer = any_loop.create_task(outer_body())
    run_ready(any_loop)
    assert outer.cancel()
    run_ready(any_loop)
    assert log == ["refused"]
    assert not outer.done()
    assert outer.cancel()  # still waits for inner: cancels it again
    with pytest.raises(CancelledError):
        any_loop.run_until_complete(outer)
    assert inner.cancelled()
    assert outer.cancelling() == 2


def test_cancelling_a_done_task_returns_false(any_loop: Any) -> None:
    async def noop() -> int:
        return 1

    task = any_loop.create_task(noop())
    any_loop.run_until_complete(task)
    assert not task.cancel()
    assert task.cancelling() == 0
    assert task.result() == 1


def test_uncancel_before_the_step(any_loop: Any) -> None:
    ran: list[str] = []

    async def body() -> None:
        ran.append("body")

    task = any_loop.create_task(body())
    task.cancel()
    assert task.cancelling() == 1
    assert task.uncancel() == 0
    if UNCANCEL_CLEARS_MUST_CANCEL:
        # Python 3.13+: taking back the last request calls the cancellation off.
        any_loop.run_until_complete(task)
        assert ran == ["body"]
    else:
        with pytest.raises(CancelledError):
            any_loop.run_until_complete(task)
        assert ran == []


def test_uncancel_keeps_the_cancellation_while_requests_remain(any_loop: Any) -> None:
    async def body() -> None:
        await asyncio.sleep(0)

    task = any_loop.create_task(body())
    task.cancel()
    task.cancel()
    assert task.cancelling() == 2
    assert task.uncancel() == 1
    with pytest.raises(CancelledError):
        any_loop.run_until_complete(task)


def test_the_coroutines_cancelled_error_is_raised_once(any_loop: Any) -> None:
    raised: list[BaseException] = []

    async def main() -> None:
        try:
            await forever(any_loop)
        except CancelledError as cancel:
            raised.append(cancel)
            raise

    task = any_loop.create_task(main())
    run_ready(any_loop)
    task.cancel()
    run_ready(any_loop)
    assert task.cancelled()
    with pytest.raises(CancelledError) as first:
        task.result()
    with pytest.raises(CancelledError) as second:
        task.result()
    assert first.value is raised[0]
    assert second.value is not raised[0]


def test_cancelled_error_chains_to_where_it_surfaced(any_loop: Any) -> None:
    async def main() -> None:
        try:
            await forever(any_loop)
        except CancelledError as cancel:
            raise CancelledError("rethrown") from cancel

    task = any_loop.create_task(main())
    run_ready(any_loop)
    task.cancel("first")
    with pytest.raises(CancelledError, match="rethrown") as info:
        any_loop.run_until_complete(task)
    assert info.value.__cause__.args == ("first",)


# ----------------------------------------------------------------------
# asyncio's toolbox on every kind of task
# ----------------------------------------------------------------------


def test_task_group_with_a_failing_child(any_loop: Any) -> None:
    async def fail() -> None:
        await asyncio.sleep(0)
        raise ValueError("child failed")

    async def main() -> tuple[Any, int]:
        sibling = None
        try:
            async with asyncio.TaskGroup() as group:
                sibling = group.create_task(forever(any_loop))
                group.create_task(fail())
        except* ValueError as errors:
            caught = errors
        return (caught, sibling), asyncio.current_task().cancelling()  # type: ignore[union-attr,return-value]

    (errors, sibling), cancelling = any_loop.run_until_complete(main())
    assert [str(e) for e in errors.exceptions] == ["child failed"]
    assert sibling.cancelled()
    # The group cancels its parent to wake it up; from 3.13 on it takes that
    # request back when it is done (3.11 and 3.12 leave it counted).
    assert cancelling == (0 if sys.version_info >= (3, 13) else 1)


def test_timeout_expires(any_vloop: Any) -> None:
    async def main() -> tuple[float, int]:
        start = any_vloop.time()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(5):
                await asyncio.sleep(10)
        return any_vloop.time() - start, asyncio.current_task().cancelling()  # type: ignore[union-attr]

    waited, cancelling = any_vloop.run_until_complete(main())
    assert waited == pytest.approx(5)
    assert cancelling == 0


def test_timeout_does_not_swallow_outside_cancellation(any_vloop: Any) -> None:
    async def main() -> None:
        async with asyncio.timeout(5):
            await asyncio.sleep(10)

    task = any_vloop.create_task(main())
    any_vloop.call_later(1, task.cancel)
    with pytest.raises(CancelledError):
        any_vloop.run_until_complete(task)


def test_wait_for_times_out_and_cancels(any_vloop: Any) -> None:
    async def main() -> Any:
        inner = any_vloop.create_task(asyncio.sleep(10))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(inner, 1)
        return inner

    assert any_vloop.run_until_complete(main()).cancelled()


def test_shield_protects_the_inner_task(any_loop: Any) -> None:
    async def work() -> str:
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return "done"

    async def main() -> str:
        inner = any_loop.create_task(work())
        outer = asyncio.shield(inner)
        await asyncio.sleep(0)
        outer.cancel()
        with pytest.raises(CancelledError):
            await outer
        return await inner

    assert any_loop.run_until_complete(main()) == "done"


def test_gather_with_return_exceptions(any_loop: Any) -> None:
    async def ok() -> str:
        await asyncio.sleep(0)
        return "ok"

    async def fail() -> None:
        raise ValueError("failed")

    async def main() -> list[Any]:
        cancelled = any_loop.create_task(forever(any_loop))
        any_loop.call_soon(cancelled.cancel, "gone")
        return await asyncio.gather(ok(), fail(), cancelled, return_exceptions=True)

    ok_result, failure, cancellation = any_loop.run_until_complete(main())
    assert ok_result == "ok"
    assert repr(failure) == "ValueError('failed')"
    assert isinstance(cancellation, CancelledError)


def test_gather_fails_with_the_first_exception(any_loop: Any) -> None:
    async def fail() -> None:
        await asyncio.sleep(0)
        raise ValueError("first")

    async def main() -> None:
        await asyncio.gather(fail(), asyncio.sleep(0))

    with pytest.raises(ValueError, match="first"):
        any_loop.run_until_complete(main())


def test_wait_and_as_completed(any_vloop: Any) -> None:
    async def nap(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    async def main() -> tuple[list[float], list[float]]:
        tasks = [any_vloop.create_task(nap(s)) for s in (3, 1, 2)]
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        first = [t.result() for t in done]
        order = [await f for f in asyncio.as_completed(pending)]
        return first, order

    assert any_vloop.run_until_complete(main()) == ([1], [2, 3])


def test_queue_lock_event_semaphore(any_loop: Any) -> None:
    async def main() -> list[str]:
        log: list[str] = []
        queue: asyncio.Queue[int | None] = asyncio.Queue(maxsize=1)
        lock, event, semaphore = asyncio.Lock(), asyncio.Event(), asyncio.Semaphore(1)

        async def producer() -> None:
            for i in range(3):
                await queue.put(i)
            await queue.put(None)

        async def consumer() -> None:
            while (item := await queue.get()) is not None:
                log.append(f"got {item}")
            event.set()

        async def locked(name: str) -> None:
            async with lock, semaphore:
                log.append(f"{name} in")
                await asyncio.sleep(0)
                log.append(f"{name} out")

        await asyncio.gather(producer(), consumer(), event.wait())
        await asyncio.gather(locked("a"), locked("b"))
        return log

    assert any_loop.run_until_complete(main()) == [
        "got 0",
        "got 1",
        "got 2",
        "a in",
        "a out",
        "b in",
        "b out",
    ]


# ----------------------------------------------------------------------
# Scheduling order: identical on every loop
# ----------------------------------------------------------------------


def test_interleaving_matches_asyncio(any_loop: Any) -> None:
    trace: list[str] = []

    async def worker(name: str, turns: int) -> str:
        for turn in range(turns):
            trace.append(f"{name}{turn}")
            await asyncio.sleep(0)
        return name

    async def waiter(fut: Any) -> None:
        trace.append("wait")
        trace.append(f"got {await fut}")

    async def main() -> None:
        fut = any_loop.create_future()
        fut.add_done_callback(lambda _: trace.append("cb1"))
        a = any_loop.create_task(worker("a", 3))
        b = any_loop.create_task(worker("b", 2))
        w = any_loop.create_task(waiter(fut))
        any_loop.call_soon(trace.append, "soon")
        await asyncio.sleep(0)
        trace.append("main")
        fut.set_result(1)
        fut.add_done_callback(lambda _: trace.append("cb2"))
        trace.append(f"gathered {await asyncio.gather(a, b, w)}")

    any_loop.run_until_complete(main())
    assert trace == [
        "a0",
        "b0",
        "wait",
        "soon",
        "main",
        "a1",
        "b1",
        "cb1",
        "got 1",
        "cb2",
        "a2",
        "gathered ['a', 'b', None]",
    ]


# ----------------------------------------------------------------------
# Being seen by asyncio: current_task, all_tasks, contexts
# ----------------------------------------------------------------------


def test_current_task_and_all_tasks(any_loop: Any) -> None:
    async def child() -> Any:
        await asyncio.sleep(0)
        return asyncio.current_task()

    async def main() -> None:
        me = asyncio.current_task()
        assert me is not None
        kid = any_loop.create_task(child())
        assert asyncio.all_tasks() == {me, kid}
        assert await kid is kid
        assert asyncio.all_tasks() == {me}
        assert asyncio.current_task() is me

    task = any_loop.create_task(main())
    assert asyncio.all_tasks(any_loop) == {task}
    any_loop.run_until_complete(task)
    assert asyncio.current_task(any_loop) is None
    assert asyncio.all_tasks(any_loop) == set()


def test_own_tasks_are_loopy_tasks(own_loop: Any) -> None:
    async def main() -> Any:
        return type(asyncio.current_task()), type(own_loop.create_future())

    assert own_loop.run_until_complete(main()) == (loopy.Task, loopy.Future)


def test_each_task_keeps_its_own_context(any_loop: Any) -> None:
    async def handle(name: str) -> list[str]:
        seen = [request_id.get()]
        request_id.set(name)
        await asyncio.sleep(0)
        seen.append(request_id.get())
        return seen

    async def main() -> list[Any]:
        request_id.set("parent")
        results = await asyncio.gather(handle("a"), handle("b"))
        return [*results, request_id.get()]

    assert any_loop.run_until_complete(main()) == [["parent", "a"], ["parent", "b"], "parent"]


def test_task_runs_in_the_given_context(any_loop: Any) -> None:
    context = contextvars.copy_context()
    context.run(request_id.set, "given")

    async def body() -> str:
        request_id.set(request_id.get() + " and changed")
        await asyncio.sleep(0)
        fut = any_loop.create_future()
        any_loop.call_soon(fut.set_result, None)
        await fut  # resumed by a done callback: still in the same context
        request_id.set(request_id.get() + " twice")
        return request_id.get()

    task = any_loop.create_task(body(), context=context)
    assert any_loop.run_until_complete(task) == "given and changed twice"
    assert context[request_id] == "given and changed twice"
    assert request_id.get() == "-"
    assert Task(asyncio.sleep(0), loop=any_loop, context=context).get_context() is context
    run_ready(any_loop)


# ----------------------------------------------------------------------
# Names, repr, stacks
# ----------------------------------------------------------------------


def test_names(any_loop: Any) -> None:
    async def noop() -> None:
        pass

    coro = noop()
    task = any_loop.create_task(coro, name="worker")
    assert task.get_name() == "worker"
    assert task.get_coro() is coro
    task.set_name(7)
    assert task.get_name() == "7"
    unnamed = any_loop.create_task(noop())
    assert unnamed.get_name().startswith("Task-")
    any_loop.run_until_complete(asyncio.gather(task, unnamed))


def test_default_names_count_up(own_loop: Any) -> None:
    first = Task(asyncio.sleep(0), loop=own_loop)
    second = Task(asyncio.sleep(0), loop=own_loop)
    number = int(first.get_name().removeprefix("Task-"))
    assert second.get_name() == f"Task-{number + 1}"
    own_loop.run_until_complete(asyncio.gather(first, second))


def test_repr(own_loop: Any) -> None:
    fut = own_loop.create_future()

    async def sleeper() -> str:
        await fut
        return "ok"

    task = Task(sleeper(), loop=own_loop, name="napper")
    assert repr(task).startswith(
        "<Task pending name='napper' coro=<test_repr.<locals>.sleeper() running at "
    )
    run_ready(own_loop)
    assert "wait_for=<Future pending cb=[Task._wakeup()]>" in repr(task)
    task.cancel()
    assert repr(task).startswith("<Task cancelling name='napper'")
    with pytest.raises(CancelledError):
        own_loop.run_until_complete(task)
    defined = f"{__file__}:{sleeper.__code__.co_firstlineno}"
    assert repr(task) == (
        "<Task cancelled name='napper' coro=<test_repr.<locals>.sleeper() done, "
        f"defined at {defined}>>"
    )


def test_repr_of_a_finished_task(any_loop: Any) -> None:
    async def answer() -> int:
        return 42

    task = any_loop.create_task(answer(), name="answer")
    any_loop.run_until_complete(task)
    assert repr(task).startswith("<Task finished name='answer' coro=<")
    assert repr(task).endswith("result=42>")


def test_get_stack_of_a_suspended_task(any_loop: Any) -> None:
    async def suspended() -> None:
        await forever(any_loop)

    task = any_loop.create_task(suspended())
    run_ready(any_loop)
    frames = task.get_stack()
    assert [f.f_code.co_name for f in frames] == ["suspended"]
    out = io.StringIO()
    task.print_stack(file=out)
    assert out.getvalue().startswith(f"Stack for {task!r} (most recent call last):\n")
    assert "in suspended" in out.getvalue()
    task.cancel()
    with pytest.raises(CancelledError):
        any_loop.run_until_complete(task)
    assert task.get_stack() == []


def test_get_stack_while_running_keeps_the_newest_frames(any_loop: Any) -> None:
    async def running() -> list[str]:
        task = asyncio.current_task()
        assert task is not None
        assert len(task.get_stack()) > 2  # the loop's frames are below it
        newest_two = [f.f_code.co_name for f in task.get_stack(limit=2)]
        assert len(newest_two) == 2
        return newest_two[-1:]  # oldest first: the coroutine comes last

    assert any_loop.run_until_complete(running()) == ["running"]


def test_get_stack_of_a_failed_task_is_its_traceback(any_loop: Any) -> None:
    def deeper() -> None:
        raise ValueError("deep")

    async def failing() -> None:
        deeper()

    task = any_loop.create_task(failing())
    with pytest.raises(ValueError):
        any_loop.run_until_complete(task)
    names = [f.f_code.co_name for f in task.get_stack()]
    assert names[-2:] == ["failing", "deeper"]
    assert len(task.get_stack(limit=1)) == 1
    out = io.StringIO()
    task.print_stack(file=out)
    text = out.getvalue()
    assert text.startswith("Traceback for")
    assert "in deeper" in text
    assert text.endswith("ValueError: deep\n")


def test_print_stack_of_a_finished_task(any_loop: Any) -> None:
    async def noop() -> None:
        pass

    task = any_loop.create_task(noop())
    any_loop.run_until_complete(task)
    out = io.StringIO()
    task.print_stack(file=out)
    assert out.getvalue() == f"No stack for {task!r}\n"


def test_print_stack_writes_to_stderr(own_loop: Any, capsys: pytest.CaptureFixture[str]) -> None:
    # As documented.  (asyncio's own prints its first line to stdout.)
    async def failing() -> None:
        raise ValueError("to stderr")

    task = Task(failing(), loop=own_loop)
    with pytest.raises(ValueError):
        own_loop.run_until_complete(task)
    task.print_stack()
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("Traceback for")
    assert captured.err.endswith("ValueError: to stderr\n")


# ----------------------------------------------------------------------
# Eager start (3.12 semantics; loopy's Task accepts it on every version)
# ----------------------------------------------------------------------


def eager_factory(loop: Any, coro: Any, **kwargs: Any) -> Task[Any]:
    return Task(coro, loop=loop, eager_start=True, **kwargs)


def test_eager_task_runs_its_first_step_inside_create_task(own_loop: Any) -> None:
    own_loop.set_task_factory(eager_factory)
    log: list[Any] = []

    async def child() -> str:
        log.append(("child starts in", asyncio.current_task()))
        await asyncio.sleep(0)
        return "child"

    async def main() -> None:
        me = asyncio.current_task()
        task = own_loop.create_task(child())
        log.append(("after create_task", asyncio.current_task() is me))
        assert task in asyncio.all_tasks()
        assert await task == "child"
        log.append(("child was current", log[0][1] is task))

    own_loop.run_until_complete(main())
    assert [entry[0] for entry in log] == [
        "child starts in",
        "after create_task",
        "child was current",
    ]
    assert log[1][1] is True
    assert log[2][1] is True


def test_eager_task_may_finish_inside_create_task(own_loop: Any) -> None:
    own_loop.set_task_factory(eager_factory)

    async def quick() -> str:
        return "quick"

    async def main() -> Any:
        task = own_loop.create_task(quick())
        assert task.done()
        assert task not in asyncio.all_tasks()
        return task.result()

    assert own_loop.run_until_complete(main()) == "quick"


def test_eager_task_outside_a_task_and_a_running_loop(own_loop: Any) -> None:
    ran: list[str] = []

    async def body() -> None:
        ran.append("body")

    task = Task(body(), loop=own_loop, eager_start=True)
    assert ran == []  # the loop is not running: scheduled as usual
    own_loop.run_until_complete(task)

    def from_a_callback() -> None:
        Task(body(), loop=own_loop, eager_start=True)
        ran.append("after")

    own_loop.call_soon(from_a_callback)
    run_ready(own_loop)
    assert ran == ["body", "body", "after"]


@pytest.mark.skipif(sys.version_info < (3, 12), reason="asyncio's eager tasks are 3.12+")
def test_asyncio_eager_task_factory_with_loopy_tasks(own_loop: Any) -> None:
    own_loop.set_task_factory(asyncio.create_eager_task_factory(Task))  # type: ignore[attr-defined]
    log: list[str] = []

    async def child() -> None:
        log.append("child")

    async def main() -> None:
        task = own_loop.create_task(child())
        log.append("parent")
        await task

    own_loop.run_until_complete(main())
    assert log == ["child", "parent"]


# ----------------------------------------------------------------------
# Reports when a task is garbage-collected
# ----------------------------------------------------------------------


def test_unretrieved_task_exception_is_reported(any_loop: Any) -> None:
    reports = collect_reports(any_loop)

    async def fail() -> None:
        raise ValueError("nobody looked")

    def start_and_forget() -> None:
        any_loop.create_task(fail())

    start_and_forget()
    run_ready(any_loop)
    gc.collect()
    assert [r["message"] for r in reports] == ["Task exception was never retrieved"]
    assert repr(reports[0]["exception"]) == "ValueError('nobody looked')"


def test_cancelling_a_failed_task_counts_as_retrieving(any_loop: Any) -> None:
    reports = collect_reports(any_loop)

    async def fail() -> None:
        raise ValueError("seen")

    def fail_then_cancel() -> None:
        task = any_loop.create_task(fail())
        run_ready(any_loop)
        assert not task.cancel()

    fail_then_cancel()
    gc.collect()
    assert reports == []


def test_destroyed_pending_task_is_reported(any_loop: Any) -> None:
    reports = collect_reports(any_loop)

    def start_and_abandon() -> None:
        any_loop.create_task(forever(any_loop))
        run_ready(any_loop)  # suspended on a future nobody will complete

    start_and_abandon()
    gc.collect()
    assert [r["message"] for r in reports] == ["Task was destroyed but it is pending!"]
    assert asyncio.isfuture(reports[0]["task"])


def test_pending_task_of_run_until_complete_is_not_reported(own_loop: Any) -> None:
    reports = collect_reports(own_loop)

    def interrupted() -> None:
        async def main() -> None:
            own_loop.call_soon(own_loop.stop)
            await forever(own_loop)

        with pytest.raises(RuntimeError, match="stopped before Future completed"):
            own_loop.run_until_complete(main())

    interrupted()
    gc.collect()
    assert reports == []


@pytest.mark.parametrize("ending", ["cancelled"])
def test_a_finished_task_frees_its_frames_without_the_garbage_collector(
    any_loop: Any, ending: str
) -> None:
    """No reference cycle task -> exception -> traceback -> step frame -> task.

    (A task that raises is another matter: awaiting it re-raises the very
    exception in the awaiting frame, which then refers back to the task, on
    asyncio's own loop as well.)
    """

    class Witness:
        pass

    witness_ref: list[Any] = []

    async def body() -> None:
        witness = Witness()  # lives in this coroutine's frame, kept by the traceback
        witness_ref.append(weakref.ref(witness))
        if ending == "raises":
            raise ValueError("boom")
        await asyncio.sleep(10)

    async def main() -> None:
        task = any_loop.create_task(body())
        await asyncio.sleep(0)
        if ending == "cancelled":
            task.cancel()
        with contextlib.suppress(ValueError, asyncio.CancelledError):
            await task

    gc.disable()
    try:
        any_loop.run_until_complete(main())
        assert witness_ref[0]() is None
    finally:
        gc.enable()
