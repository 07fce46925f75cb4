"""loopy's Future, against asyncio's.

Tests taking ``any_loop`` use ``loop.create_future()``: asyncio's C Future
on the first two kinds, loopy's own on "loopy-own", so one test states the
behaviour both must share.  Tests building ``Future(loop=...)`` directly pin
down loopy's class wherever it runs, including on asyncio's own loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import sys
import types
import weakref
from typing import Any

import pytest

import loopy
from loopy.futures import Future
from tests.helpers import make_loop

CancelledError = asyncio.CancelledError
InvalidStateError = asyncio.InvalidStateError

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def run_ready(loop: Any) -> None:
    """Run the callbacks that are ready now (and only those) on a stopped loop."""
    loop.call_soon(loop.stop)
    loop.run_forever()


def collect_reports(loop: Any) -> list[dict[str, Any]]:
    """Route the loop's error reports into a list, and return it."""
    reports: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reports.append(context))
    return reports


@pytest.fixture
def own_loop() -> Any:
    """A loopy loop handing out loopy's own Future and Task."""
    loop = make_loop("loopy-own")
    yield loop
    loop.close()


# ----------------------------------------------------------------------
# Results, exceptions, states
# ----------------------------------------------------------------------


def test_result_once_set(any_loop: Any) -> None:
    fut = any_loop.create_future()
    assert not fut.done()
    assert not fut.cancelled()
    fut.set_result(42)
    assert fut.done()
    assert not fut.cancelled()
    assert fut.result() == 42
    assert fut.exception() is None


def test_pending_future_has_neither_result_nor_exception(any_loop: Any) -> None:
    fut = any_loop.create_future()
    with pytest.raises(InvalidStateError):
        fut.result()
    with pytest.raises(InvalidStateError):
        fut.exception()


def test_a_future_completes_only_once(any_loop: Any) -> None:
    fut = any_loop.create_future()
    fut.set_result(1)
    with pytest.raises(InvalidStateError):
        fut.set_result(2)
    with pytest.raises(InvalidStateError):
        fut.set_exception(ValueError())
    assert fut.result() == 1

    cancelled = any_loop.create_future()
    cancelled.cancel()
    with pytest.raises(InvalidStateError):
        cancelled.set_result(3)


def test_exception_is_raised_by_result(any_loop: Any) -> None:
    fut = any_loop.create_future()
    error = ValueError("boom")
    fut.set_exception(error)
    assert fut.done()
    assert fut.exception() is error
    with pytest.raises(ValueError, match="boom") as info:
        fut.result()
    assert info.value is error


def test_exception_class_is_instantiated(any_loop: Any) -> None:
    fut = any_loop.create_future()
    fut.set_exception(KeyError)
    assert type(fut.exception()) is KeyError


def test_exception_must_be_an_exception(any_loop: Any) -> None:
    fut = any_loop.create_future()
    with pytest.raises(TypeError):
        fut.set_exception(42)
    assert not fut.done()


def test_stop_iteration_is_refused_before_3_13_and_wrapped_from_3_13(any_loop: Any) -> None:
    fut = any_loop.create_future()
    stop = StopIteration(1)
    if sys.version_info < (3, 13):
        with pytest.raises(TypeError, match="StopIteration"):
            fut.set_exception(stop)
        assert not fut.done()
    else:  # 3.13 stores a RuntimeError caused by it
        fut.set_exception(stop)
        assert type(fut.exception()) is RuntimeError
        assert fut.exception().__cause__ is stop

    class Stop(StopIteration):
        pass

    # Before 3.13 only exactly StopIteration is refused; 3.13 wraps subclasses too.
    other = any_loop.create_future()
    other.set_exception(Stop())
    assert type(other.exception()) is (Stop if sys.version_info < (3, 13) else RuntimeError)


def test_result_does_not_grow_the_traceback(any_loop: Any) -> None:
    def depth(tb: types.TracebackType | None) -> int:
        return 0 if tb is None else 1 + depth(tb.tb_next)

    fut = Future(loop=any_loop)
    try:
        raise ValueError("once")
    except ValueError as error:
        fut.set_exception(error)
    depths = []
    for _ in range(3):
        with pytest.raises(ValueError) as info:
            fut.result()
        depths.append(depth(info.value.__traceback__))
    assert depths[0] == depths[1] == depths[2]


# ----------------------------------------------------------------------
# Cancellation
# ----------------------------------------------------------------------


def test_cancel_with_message(any_loop: Any) -> None:
    fut = any_loop.create_future()
    assert fut.cancel("shutting down")
    assert fut.cancelled()
    assert fut.done()
    with pytest.raises(CancelledError) as info:
        fut.result()
    assert info.value.args == ("shutting down",)
    with pytest.raises(CancelledError, match="shutting down"):
        fut.exception()


def test_cancel_without_message(any_loop: Any) -> None:
    fut = any_loop.create_future()
    fut.cancel()
    with pytest.raises(CancelledError) as info:
        fut.result()
    assert info.value.args == ()


def test_cancel_message_may_be_positional(any_loop: Any) -> None:
    # asyncio's C Task passes the message positionally to a foreign future.
    fut = Future(loop=any_loop)
    assert fut.cancel("why")
    with pytest.raises(CancelledError, match="why"):
        fut.result()


def test_cancelling_a_done_future_does_nothing(any_loop: Any) -> None:
    fut = any_loop.create_future()
    fut.set_result(1)
    assert not fut.cancel()
    assert not fut.cancelled()
    assert fut.result() == 1
    cancelled = any_loop.create_future()
    assert cancelled.cancel()
    assert not cancelled.cancel()


# ----------------------------------------------------------------------
# Done callbacks
# ----------------------------------------------------------------------


def test_done_callbacks_run_from_the_loop_in_order(any_loop: Any) -> None:
    fut = any_loop.create_future()
    calls: list[tuple[str, Any]] = []
    for name in "abc":
        fut.add_done_callback(lambda f, name=name: calls.append((name, f)))
    fut.set_result(None)
    assert calls == []  # never from inside set_result()
    run_ready(any_loop)
    assert calls == [("a", fut), ("b", fut), ("c", fut)]


def test_done_callbacks_run_once(any_loop: Any) -> None:
    fut = any_loop.create_future()
    calls: list[Any] = []
    fut.add_done_callback(calls.append)
    fut.cancel()
    run_ready(any_loop)
    run_ready(any_loop)
    assert calls == [fut]


def test_callback_added_to_a_done_future_is_scheduled(any_loop: Any) -> None:
    fut = any_loop.create_future()
    fut.set_exception(ValueError())
    fut.exception()
    calls: list[Any] = []
    fut.add_done_callback(calls.append)
    assert calls == []
    run_ready(any_loop)
    assert calls == [fut]


def test_remove_done_callback_counts_every_registration(any_loop: Any) -> None:
    fut = any_loop.create_future()
    calls: list[str] = []

    def first(_: Any) -> None:
        calls.append("first")

    def second(_: Any) -> None:
        calls.append("second")

    fut.add_done_callback(first)
    fut.add_done_callback(second)
    fut.add_done_callback(first)
    assert fut.remove_done_callback(first) == 2
    assert fut.remove_done_callback(first) == 0
    fut.set_result(None)
    run_ready(any_loop)
    assert calls == ["second"]


def test_remove_done_callback_compares_with_equality(any_loop: Any) -> None:
    # A bound method is a new object each time it is looked up, but equal.
    class Listener:
        def on_done(self, _: Any) -> None:
            raise AssertionError("removed")

    listener = Listener()
    fut = any_loop.create_future()
    fut.add_done_callback(listener.on_done)
    assert fut.remove_done_callback(listener.on_done) == 1
    fut.set_result(None)
    run_ready(any_loop)


def test_callback_runs_in_the_context_of_add_done_callback(any_loop: Any) -> None:
    fut = any_loop.create_future()
    seen: list[str] = []
    token = request_id.set("when added")
    try:
        fut.add_done_callback(lambda _: seen.append(request_id.get()))
        request_id.set("when completed")
        fut.set_result(None)
    finally:
        request_id.reset(token)
    run_ready(any_loop)
    assert seen == ["when added"]


def test_callback_runs_in_the_given_context(any_loop: Any) -> None:
    context = contextvars.copy_context()
    context.run(request_id.set, "given")
    fut = any_loop.create_future()
    seen: list[str] = []
    fut.add_done_callback(lambda _: seen.append(request_id.get()), context=context)
    fut.set_result(None)
    fut.add_done_callback(lambda _: seen.append(request_id.get()), context=context)
    run_ready(any_loop)
    assert seen == ["given", "given"]


def test_explicit_none_context_copies_the_callers_context(own_loop: Any) -> None:
    # The pure-Python convention (asyncio's C Future differs here: it uses
    # the context current when the future completes).
    fut = Future(loop=own_loop)
    seen: list[str] = []
    token = request_id.set("when added")
    try:
        fut.add_done_callback(lambda _: seen.append(request_id.get()), context=None)
        request_id.set("when completed")
        fut.set_result(None)
    finally:
        request_id.reset(token)
    run_ready(own_loop)
    assert seen == ["when added"]


# ----------------------------------------------------------------------
# Awaiting
# ----------------------------------------------------------------------


def test_await_returns_the_result(any_loop: Any) -> None:
    async def main() -> Any:
        fut = Future(loop=any_loop)
        any_loop.call_soon(fut.set_result, "value")
        return await fut

    assert any_loop.run_until_complete(main()) == "value"


def test_await_raises_the_exception(any_loop: Any) -> None:
    async def main() -> None:
        fut = Future(loop=any_loop)
        any_loop.call_soon(fut.set_exception, ValueError("bad"))
        await fut

    with pytest.raises(ValueError, match="bad"):
        any_loop.run_until_complete(main())


def test_await_a_done_future_does_not_suspend(any_loop: Any) -> None:
    fut = Future(loop=any_loop)
    fut.set_result(5)
    steps = fut.__await__()
    with pytest.raises(StopIteration) as info:
        next(steps)
    assert info.value.value == 5


def test_await_protocol_yields_the_future_flagged(any_loop: Any) -> None:
    fut = any_loop.create_future()
    steps = fut.__await__()
    assert next(steps) is fut
    assert fut._asyncio_future_blocking is True
    # Resumed while still pending: nobody waited for the done callback.
    with pytest.raises(RuntimeError, match="await wasn't used with future"):
        steps.send(None)


def test_yield_from_uses_iter(any_loop: Any) -> None:
    @types.coroutine
    def old_style(fut: Any) -> Any:
        return (yield from fut)

    async def main() -> Any:
        fut = Future(loop=any_loop)
        any_loop.call_soon(fut.set_result, "old")
        return await old_style(fut)

    assert any_loop.run_until_complete(main()) == "old"


# ----------------------------------------------------------------------
# Identity: what asyncio and libraries check
# ----------------------------------------------------------------------


def test_is_a_future_for_asyncio(any_loop: Any) -> None:
    fut = Future(loop=any_loop)
    assert asyncio.isfuture(fut)
    assert Future._asyncio_future_blocking is not None
    assert fut._asyncio_future_blocking is False
    assert loopy.Future is Future
    assert Future[int] is not None  # generic, as asyncio.Future is


def test_can_be_weakly_referenced(any_loop: Any) -> None:
    fut = Future(loop=any_loop)
    ref = weakref.ref(fut)
    assert ref() is fut
    del fut
    assert ref() is None


def test_get_loop(any_loop: Any) -> None:
    assert Future(loop=any_loop).get_loop() is any_loop
    assert any_loop.create_future().get_loop() is any_loop


def test_without_a_loop_uses_the_current_one(any_loop: Any) -> None:
    asyncio.set_event_loop(any_loop)
    assert Future().get_loop() is any_loop

    async def main() -> Any:
        return Future().get_loop()

    asyncio.set_event_loop(None)
    assert any_loop.run_until_complete(main()) is any_loop


def test_ensure_future_and_wrap_future_keep_it(any_loop: Any) -> None:
    fut = Future(loop=any_loop)
    assert asyncio.ensure_future(fut, loop=any_loop) is fut
    assert asyncio.wrap_future(fut) is fut


def test_repr(own_loop: Any) -> None:
    fut = Future(loop=own_loop)
    assert repr(fut) == "<Future pending>"

    def on_done(_: Any) -> None:
        pass

    fut.add_done_callback(on_done)
    where = f"{__file__}:{on_done.__code__.co_firstlineno}"
    assert repr(fut) == f"<Future pending cb=[test_repr.<locals>.on_done() at {where}]>"
    # Callbacks as asyncio lists them: the first, how many more, the last.
    reference = asyncio.futures._PyFuture(loop=own_loop)  # type: ignore[attr-defined]
    reference.add_done_callback(on_done)
    for callback in (print, on_done, len):
        fut.add_done_callback(callback)
        reference.add_done_callback(callback)
        assert repr(fut) == repr(reference)
    assert "<2 more>" in repr(fut)
    fut.set_result("x" * 100)
    assert repr(fut).startswith("<Future finished result='xxxxx")
    assert len(repr(fut)) < 80  # long results are shortened
    failed = Future(loop=own_loop)
    failed.set_exception(ValueError("no"))
    assert repr(failed) == "<Future finished exception=ValueError('no')>"
    failed.exception()
    cancelled = Future(loop=own_loop)
    cancelled.cancel()
    assert repr(cancelled) == "<Future cancelled>"


def test_repr_states_agree_with_asyncio(any_loop: Any) -> None:
    fut = any_loop.create_future()
    assert repr(fut).startswith("<Future pending")
    fut.set_result(7)
    assert repr(fut) == "<Future finished result=7>"


# ----------------------------------------------------------------------
# Exceptions nobody retrieved
# ----------------------------------------------------------------------


def _fail_and_forget(loop: Any, future_class: Any = None) -> None:
    fut = loop.create_future() if future_class is None else future_class(loop=loop)
    fut.set_exception(ValueError("lost"))


def test_unretrieved_exception_is_reported_when_collected(any_loop: Any) -> None:
    reports = collect_reports(any_loop)
    _fail_and_forget(any_loop)
    gc.collect()
    assert len(reports) == 1
    assert reports[0]["message"] == "Future exception was never retrieved"
    assert repr(reports[0]["exception"]) == "ValueError('lost')"
    assert asyncio.isfuture(reports[0]["future"])


def test_report_names_the_subclass(any_loop: Any) -> None:
    class MyFuture(Future[Any]):
        pass

    reports = collect_reports(any_loop)
    _fail_and_forget(any_loop, MyFuture)
    gc.collect()
    assert [r["message"] for r in reports] == ["MyFuture exception was never retrieved"]


@pytest.mark.parametrize("retrieve", ["result", "exception", "cancel"])
def test_retrieved_exception_is_not_reported(any_loop: Any, retrieve: str) -> None:
    reports = collect_reports(any_loop)

    def fail_and_look() -> None:
        fut = any_loop.create_future()
        fut.set_exception(ValueError("seen"))
        if retrieve == "result":
            with pytest.raises(ValueError):
                fut.result()
        elif retrieve == "exception":
            fut.exception()
        else:
            assert not fut.cancel()  # too late, but counts as looking

    fail_and_look()
    gc.collect()
    assert reports == []


def test_results_and_cancellations_are_never_reported(any_loop: Any) -> None:
    reports = collect_reports(any_loop)
    any_loop.create_future().set_result(1)
    any_loop.create_future().cancel()
    Future(loop=any_loop)
    gc.collect()
    assert reports == []


def test_failed_init_does_not_break_del(own_loop: Any) -> None:
    # No loop anywhere: __init__ raises, and __del__ must still be quiet.
    asyncio.set_event_loop(None)
    policy = asyncio.get_event_loop_policy()

    class NoLoop(asyncio.DefaultEventLoopPolicy):
        def get_event_loop(self) -> asyncio.AbstractEventLoop:
            raise RuntimeError("no loop here")

    asyncio.set_event_loop_policy(NoLoop())
    try:
        with pytest.raises(RuntimeError, match="no loop here"):
            Future()
    finally:
        asyncio.set_event_loop_policy(policy)
    gc.collect()


def test_loopy_futures_and_tasks_pass_asyncios_isinstance_checks() -> None:
    """Libraries (anyio) check isinstance(x, asyncio.Future); type() still tells the truth."""
    loop = loopy.Loop(tasks="loopy")
    try:
        future = loop.create_future()

        async def noop() -> None:
            pass

        task = loop.create_task(noop())
        assert isinstance(future, asyncio.Future)
        assert isinstance(task, asyncio.Task)
        assert isinstance(task, asyncio.Future)
        assert not isinstance(future, asyncio.Task)
        assert type(future) is loopy.Future
        assert type(task) is loopy.Task
        assert repr(task).startswith("<Task pending")
        loop.run_until_complete(task)
        future.cancel()
    finally:
        loop.close()
