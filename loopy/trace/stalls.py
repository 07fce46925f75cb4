"""Stalls and load: which callback blocked the loop, and how busy the loop is.

A single-threaded loop has one failure mode that matters more than any
other: a callback (or a task step) that does not return quickly.  While it
runs, no socket is read, no timer fires, no other task moves.
:class:`StallDetector` is an instrument that times every callback and, when
one holds the loop longer than its threshold, says *which* one: the task
and its coroutine, where the step resumed and where it suspended again
(the blocking code is between the two), as ``file:line in function``.
It logs a warning on the ``loopy`` logger and keeps a :class:`Stall`
record.

:class:`LoadMonitor` answers "how busy is the loop?" at any moment: the
share of loop time spent running callbacks rather than waiting in
``select()``, and how many iterations it does per second, over the whole
run and over the last few seconds.

Both only watch; neither changes what the loop does.  The detector sees a
stall when it is over (there is no second thread to look while the loop is
stuck), which is enough to find the culprit.
"""

from __future__ import annotations

import collections
import functools
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..instruments import Instrument
from .describe import Location, callback_task, handle_label, task_label, task_stack

if TYPE_CHECKING:
    from ..contract import LoopContract

__all__ = ["DEFAULT_THRESHOLD", "Load", "LoadMonitor", "Stall", "StallDetector"]

logger = logging.getLogger("loopy")

#: Seconds a callback may hold the loop before it counts as a stall
#: (the same default as asyncio's ``slow_callback_duration``).
DEFAULT_THRESHOLD = 0.1


class _Attachable(Instrument):
    """``attach(loop)``/``detach()``: sugar over ``loop.add_instrument``."""

    loop: Any = None

    def attach(self, loop: LoopContract) -> None:
        if self.loop is not None:
            raise RuntimeError(f"{type(self).__name__} is already attached to a loop")
        self.loop = loop
        self._attached(loop)
        loop.add_instrument(self)

    def _attached(self, loop: LoopContract) -> None:
        """Reset what a new loop needs reset (subclasses)."""

    def detach(self) -> None:
        loop, self.loop = self.loop, None
        if loop is not None and self in loop.instruments:
            loop.remove_instrument(self)


# ----------------------------------------------------------------------
# Stalls
# ----------------------------------------------------------------------


@dataclass(frozen=True)
class Stall:
    """A callback that held the loop for ``duration`` seconds from ``started`` (loop time).

    For a task step, ``task`` names the task, ``resumed_at`` is where its
    coroutine stood when the step began and ``stack`` where it stood when
    the step ended; if the step finished the task (``task_done``), ``stack``
    is where it raised, or empty.  For a plain callback, ``stack`` is where
    the callback is defined.
    """

    name: str
    duration: float
    started: float
    task: str | None
    resumed_at: tuple[Location, ...]
    stack: tuple[Location, ...]
    task_done: bool = False

    def format(self, threshold: float | None = None) -> str:
        """The stall as a few lines of text: what blocked, for how long, and where."""
        limit = f" (threshold {threshold:.3f} s)" if threshold is not None else ""
        lines = [f"Loop blocked for {self.duration:.3f} s{limit} by {self.name}"]
        if self.task is None:
            return "\n".join([*lines, "  defined at:", *_frames(self.stack)])
        lines += ["  resumed at:", *_frames(self.resumed_at)]
        if not self.task_done:
            lines += ["  then suspended at:", *_frames(self.stack)]
        elif self.stack:
            lines += ["  then failed, raising at:", *_frames(self.stack)]
        else:
            lines.append("  then finished")
        return "\n".join(lines)

    __str__ = format


def _frames(stack: tuple[Location, ...]) -> list[str]:
    return [f"    {location}" for location in stack] or ["    (unknown)"]


def _defined_at(callback: Any) -> tuple[Location, ...]:
    """Where a plain function or method was defined, if it has Python code."""
    while isinstance(callback, functools.partial):
        callback = callback.func
    code = getattr(getattr(callback, "__func__", callback), "__code__", None)
    if code is None:
        return ()
    return (Location(code.co_filename, code.co_firstlineno, code.co_name),)


class StallDetector(_Attachable):
    """Reports every callback that holds the loop longer than ``threshold`` seconds.

    Reports go to the ``loopy`` logger (a warning each, unless ``log`` is
    false) and to ``stalls``, which keeps the most recent ``max_stalls``.
    """

    def __init__(
        self, threshold: float = DEFAULT_THRESHOLD, *, log: bool = True, max_stalls: int = 1000
    ) -> None:
        self.threshold = threshold
        self.log = log
        self.stalls: collections.deque[Stall] = collections.deque(maxlen=max_stalls)
        # (handle, its callback, start time, task or None, where the task resumed, label)
        self._running: tuple[Any, Any, float, Any, tuple[Location, ...], str] | None = None

    def callback_started(self, loop: LoopContract, handle: Any) -> None:
        """Note the callback and, for a task step, where the task resumes."""
        # The callback is kept now: one that cancels its own handle (a reader
        # removing itself) leaves ``handle._callback`` None.
        callback = handle._callback
        task = callback_task(callback)
        # Where the task's coroutine resumes from: the frames move on as it runs.
        resumed = tuple(task_stack(task)) if task is not None else ()
        self._running = (handle, callback, loop.time(), task, resumed, handle_label(handle))

    def callback_finished(self, loop: LoopContract, handle: Any) -> None:
        """Report the callback if it ran longer than ``threshold``."""
        running, self._running = self._running, None
        if running is None or running[0] is not handle:
            return
        _, callback, started, task, resumed, name = running
        took = loop.time() - started
        if took <= self.threshold:
            return
        if task is None:
            stall = Stall(name, took, started, None, (), _defined_at(callback))
        else:
            stack = tuple(task_stack(task))
            stall = Stall(name, took, started, task_label(task), resumed, stack, task.done())
        self._report(stall)

    def _report(self, stall: Stall) -> None:
        self.stalls.append(stall)
        if self.log:
            logger.warning("%s", stall.format(self.threshold))


# ----------------------------------------------------------------------
# Load
# ----------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    """How busy the loop was over ``seconds`` of loop time.

    ``busy_fraction`` + ``idle_fraction`` is 1 (both 0 before any
    iteration); ``iterations_per_second`` is per second of clock time.
    """

    seconds: float
    iterations: int
    busy_fraction: float
    idle_fraction: float
    iterations_per_second: float


def _load(loop_time: float, idle: float, iterations: int, elapsed: float) -> Load:
    if loop_time <= 0:
        return Load(0.0, iterations, 0.0, 0.0, 0.0)
    busy = max(0.0, loop_time - idle)
    rate = iterations / elapsed if elapsed > 0 else 0.0
    return Load(loop_time, iterations, busy / loop_time, idle / loop_time, rate)


def _overlap(start: float, end: float, low: float, high: float) -> float:
    """How much of [start, end] lies within [low, high]."""
    return max(0.0, min(end, high) - max(start, low))


class LoadMonitor(_Attachable):
    """Busy and idle shares of loop time, and iterations per second, readable any time.

    The properties cover the whole run since :meth:`attach`; :meth:`recent`
    covers the last ``window`` seconds.  An iteration still running counts
    up to now, so a coroutine can read its own loop's load.  Memory: one
    small tuple per iteration in the window, at most ``max_samples``.
    """

    def __init__(self, window: float = 1.0, *, max_samples: int = 100_000) -> None:
        self.window = window
        # (start, wait start, wait end, end) of each iteration in the window.
        self._samples: collections.deque[tuple[float, float, float, float]] = collections.deque(
            maxlen=max_samples
        )
        self._clock: Any = None
        self._reset(0.0)

    def _attached(self, loop: LoopContract) -> None:
        self._clock = loop.time
        self._reset(loop.time())

    def _reset(self, now: float) -> None:
        self._since = now
        self._loop_time = 0.0
        self._idle = 0.0
        self._iterations = 0
        self._samples.clear()
        self._iteration_start: float | None = None
        self._wait_start: float | None = None
        self._wait_end: float | None = None

    # The hooks

    def iteration_started(self, loop: LoopContract) -> None:
        """Start timing an iteration."""
        self._iteration_start = loop.time()
        self._wait_start = self._wait_end = None

    def wait_started(self, loop: LoopContract, timeout: float | None) -> None:
        """The idle part of the iteration begins."""
        self._wait_start = loop.time()

    def wait_finished(self, loop: LoopContract, events: list[tuple[int, int]]) -> None:
        """The idle part of the iteration ends."""
        self._wait_end = loop.time()

    def iteration_finished(self, loop: LoopContract) -> None:
        """Add the iteration to the totals and the window; drop samples older than ``window``."""
        start = self._iteration_start
        if start is None:  # attached mid-iteration
            return
        end = loop.time()
        wait_start, wait_end = self._wait_bounds(end)
        self._iteration_start = None
        self._loop_time += end - start
        self._idle += wait_end - wait_start
        self._iterations += 1
        self._samples.append((start, wait_start, wait_end, end))
        while self._samples and self._samples[0][3] <= end - self.window:
            self._samples.popleft()

    def _wait_bounds(self, now: float) -> tuple[float, float]:
        """The current iteration's wait so far: (start, end), empty if none yet."""
        if self._wait_start is None:
            return now, now
        return self._wait_start, self._wait_end if self._wait_end is not None else now

    def _current(self, now: float) -> tuple[float, float, float, float] | None:
        if self._iteration_start is None:
            return None
        return (self._iteration_start, *self._wait_bounds(now), now)

    # The figures

    def overall(self) -> Load:
        """The load since attach, including the iteration in progress."""
        now = self._now()
        loop_time, idle = self._loop_time, self._idle
        current = self._current(now)
        if current is not None:
            loop_time += current[3] - current[0]
            idle += current[2] - current[1]
        return _load(loop_time, idle, self._iterations, now - self._since)

    def recent(self) -> Load:
        """The load over the last ``window`` seconds (less, right after attach)."""
        now = self._now()
        low = now - self.window
        samples = list(self._samples)
        current = self._current(now)
        loop_time = idle = 0.0
        for start, wait_start, wait_end, end in [*samples, *([current] if current else [])]:
            loop_time += _overlap(start, end, low, now)
            idle += _overlap(wait_start, wait_end, low, now)
        iterations = sum(1 for sample in samples if sample[3] > low)
        return _load(loop_time, idle, iterations, now - max(low, self._since))

    def _now(self) -> float:
        return float(self._clock()) if self._clock is not None else self._since

    @property
    def busy_fraction(self) -> float:
        """Share of loop time spent running callbacks, since attach."""
        return self.overall().busy_fraction

    @property
    def idle_fraction(self) -> float:
        """Share of loop time spent waiting in ``select()``, since attach."""
        return self.overall().idle_fraction

    @property
    def iterations_per_second(self) -> float:
        """Iterations per second of clock time, since attach."""
        return self.overall().iterations_per_second
