"""The loop and other threads: ``call_soon_threadsafe`` and the default executor.

The loop's data structures belong to the loop's thread.  Other threads reach
it two ways:

* ``call_soon_threadsafe(cb)`` appends a handle to the ready queue (a
  ``deque.append`` is atomic under the GIL, so no lock is needed) and then
  wakes the loop through its wake-up socket (``wakeup.py``), because the loop
  may be asleep in ``select()`` and would not look at the queue until then.
* ``run_in_executor(executor, fn)`` is the other direction: the loop hands
  blocking work to a thread pool and gets back an asyncio future that the pool
  thread completes with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar, TypeVarTuple, Unpack

from .contract import LoopMixin
from .handles import Handle, check_callable

if TYPE_CHECKING:
    pass

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")


class ThreadMethods(LoopMixin):
    """The thread part of the loop (a mixin of :class:`loopy.loop.Loop`).

    What it uses of the rest of the loop is in ``contract.py``.
    """

    def _setup_threads(self) -> None:
        """Part of ``Loop.__init__``: no executor until one is needed."""
        self._default_executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._executor_shutdown_called = False

    def call_soon_threadsafe(
        self,
        callback: Callable[[Unpack[_Ts]], object],
        *args: *_Ts,
        context: contextvars.Context | None = None,
    ) -> Handle:
        """Like ``call_soon``, but safe from any thread: also wakes the loop.

        It always writes to the wake-up socket, even from the loop's own
        thread: ``asyncio.Runner``'s Ctrl-C handler calls it from a signal
        handler that may interrupt ``select()``.
        """
        self._check_closed()
        if self._debug:
            check_callable(callback, "call_soon_threadsafe")
        handle = Handle(callback, args, self, context)
        self._ready.append(handle)
        self._waker.wake()
        return handle

    def run_in_executor(
        self,
        executor: concurrent.futures.Executor | None,
        func: Callable[[Unpack[_Ts]], _T],
        *args: *_Ts,
    ) -> asyncio.Future[_T]:
        """Run ``func(*args)`` in ``executor`` (None: a default thread pool); await the result."""
        self._check_closed()
        if self._debug:
            check_callable(func, "run_in_executor")
        if executor is None:
            if self._executor_shutdown_called:
                raise RuntimeError("Executor shutdown has been called")
            executor = self._default_executor
            if executor is None:
                executor = self._default_executor = concurrent.futures.ThreadPoolExecutor(
                    thread_name_prefix="loopy"
                )
        return asyncio.wrap_future(executor.submit(func, *args), loop=self)  # type: ignore[arg-type]

    def set_default_executor(self, executor: concurrent.futures.Executor) -> None:
        """Use ``executor`` for ``run_in_executor(None, ...)``; it must be a ThreadPoolExecutor."""
        if not isinstance(executor, concurrent.futures.ThreadPoolExecutor):
            raise TypeError("executor must be ThreadPoolExecutor")
        self._default_executor = executor

    async def shutdown_default_executor(self, timeout: float | None = None) -> None:
        """Wait for the default executor's threads to finish, without blocking the loop."""
        self._executor_shutdown_called = True
        executor = self._default_executor
        if executor is None:
            return
        done: asyncio.Future[None] = self.create_future()

        def shut_down() -> None:
            try:
                executor.shutdown(wait=True)
            finally:
                try:
                    self.call_soon_threadsafe(_set_result_unless_done, done)
                except RuntimeError:
                    pass  # the loop was closed meanwhile: nobody is waiting any more

        thread = threading.Thread(target=shut_down, name="loopy-executor-shutdown")
        thread.start()
        try:
            await asyncio.wait_for(asyncio.shield(done), timeout)
        except TimeoutError:
            warnings.warn(
                f"The executor did not finish joining its threads within {timeout} seconds.",
                RuntimeWarning,
                stacklevel=2,
            )
            executor.shutdown(wait=False)

    def _close_threads(self) -> None:
        """Release the default executor (part of ``Loop.close``)."""
        executor, self._default_executor = self._default_executor, None
        self._executor_shutdown_called = True
        if executor is not None:
            executor.shutdown(wait=False)


def _set_result_unless_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
