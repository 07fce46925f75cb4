"""Solutions to the exercises of chapter 4, "A future, and what await really does" (docs/tour.md).

Exercise 4.1: :func:`when_callbacks_run` -- a done callback runs later, from the loop.
Exercise 4.2: :class:`Box` and :func:`drive` -- drive a coroutine by hand with
              ``send`` and ``throw``.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Generator
from typing import Any

from loopy.futures import Future


def when_callbacks_run(loop: Any) -> list[str]:
    """Exercise 4.1: what happens first, the done callback or the line after ``set_result``?

    The line after: ``Future.set_result`` hands the callbacks to
    ``loop.call_soon`` and returns; they run in the loop's next round of
    callbacks.  Uses loopy's own Future whatever the loop's task mode.
    """
    events: list[str] = []
    future: Future[int] = Future(loop=loop)
    future.add_done_callback(lambda done: events.append(f"callback sees {done.result()}"))
    future.set_result(42)
    events.append("set_result returned")
    loop.call_soon(loop.stop)
    loop.run_forever()
    return events


class Box:
    """Exercise 4.2: something a coroutine can await; whoever drives the coroutine fills it.

    ``__await__`` is a generator: its ``yield`` hands the box up to the
    driver (through every ``await`` in between), and the value the driver
    sends back is what the ``yield`` -- and so the ``await`` -- evaluates to.
    asyncio's futures do the same, except that the Task sends ``None`` and
    the future returns its stored result instead.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def __await__(self) -> Generator[Box, Any, Any]:
        answer = yield self
        return answer


def drive(coro: Coroutine[Any, Any, Any], answer: Callable[[Box], Any]) -> Any:
    """Exercise 4.2: run ``coro`` to the end, answering each box it awaits with ``answer(box)``.

    If ``answer`` raises, the exception is thrown into the coroutine at its
    ``await`` (``coro.throw``), where the coroutine may catch it.  Returns
    the coroutine's return value, which arrives as ``StopIteration.value``.
    """
    to_send: Any = None
    to_throw: BaseException | None = None
    while True:
        try:
            box = coro.send(to_send) if to_throw is None else coro.throw(to_throw)
        except StopIteration as stop:
            return stop.value
        try:
            to_send, to_throw = answer(box), None
        except Exception as error:
            to_send, to_throw = None, error
