"""Instruments: hooks that let you watch the loop work, at no cost when none is attached.

An *instrument* is any object with some of the methods of :class:`Instrument`.
``loop.add_instrument(obj)`` attaches it, and from then on the loop calls the
methods it has at each point of its work:

* ``iteration_started(loop)``: at the top of every iteration of ``_run_once``
* ``wait_started(loop, timeout)``: right before ``select(timeout)``
* ``wait_finished(loop, events)``: right after it, with ``[(fd, mask), ...]``
  (``mask``: ``selectors.EVENT_READ``/``EVENT_WRITE``)
* ``timer_fired(loop, handle, lateness)``: when a due timer moves to the ready
  queue; ``lateness`` is seconds past its deadline
* ``callback_started(loop, handle)``: before each callback (a task step is one)
* ``callback_finished(loop, handle)``: after it
* ``iteration_finished(loop)``: at the end of every iteration
* ``timer_scheduled(loop, handle)``: from ``call_at``/``call_later``
* ``task_created(loop, task, parent)``: from ``create_task``; ``parent`` is the
  task that was running, or None
* ``task_finished(loop, task)``: when a task created by ``create_task`` is done
* ``signal_received(loop, signum)``: when a signal with a handler arrives
* ``exception_reported(loop, context)``: from ``call_exception_handler``
* ``loop_closed(loop)``: from ``close()``, before anything is released

Cost: the loop keeps ``None`` instead of a hook table while no instrument is
attached, and checks it a few times per iteration; attaching one switches the
loop to a path that calls the hooks.  Only the methods an instrument actually
defines are called.  An instrument whose hook raises is detached and the error
logged: a broken observer must not break what it observes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .contract import LoopContract

logger = logging.getLogger("loopy")

#: Every hook the loop calls, in the order they occur within an iteration first.
HOOK_NAMES = (
    "iteration_started",
    "wait_started",
    "wait_finished",
    "timer_fired",
    "callback_started",
    "callback_finished",
    "iteration_finished",
    "timer_scheduled",
    "task_created",
    "task_finished",
    "signal_received",
    "exception_reported",
    "loop_closed",
)


class Instrument:
    """A base class with every hook doing nothing: subclass it and override what you need.

    Subclassing is optional; any object with some of these methods works.
    """

    def iteration_started(self, loop: LoopContract) -> None:
        """At the top of every iteration of ``_run_once``."""

    def wait_started(self, loop: LoopContract, timeout: float | None) -> None:
        """Right before ``select(timeout)``; ``timeout`` None means no limit."""

    def wait_finished(self, loop: LoopContract, events: list[tuple[int, int]]) -> None:
        """Right after ``select()``, with the descriptors it reported: ``[(fd, mask), ...]``.

        ``mask`` is ``selectors.EVENT_READ``, ``EVENT_WRITE`` or both.
        """

    def timer_fired(self, loop: LoopContract, handle: Any, lateness: float) -> None:
        """A due timer moved to the ready queue, ``lateness`` seconds past its deadline."""

    def callback_started(self, loop: LoopContract, handle: Any) -> None:
        """Before each callback of the ready queue (a task step is one)."""

    def callback_finished(self, loop: LoopContract, handle: Any) -> None:
        """After that callback has run."""

    def iteration_finished(self, loop: LoopContract) -> None:
        """At the end of every iteration."""

    def timer_scheduled(self, loop: LoopContract, handle: Any) -> None:
        """From ``call_at``/``call_later``, with the new timer's handle."""

    def task_created(self, loop: LoopContract, task: Any, parent: Any) -> None:
        """From ``create_task``; ``parent`` is the task that was running, or None."""

    def task_finished(self, loop: LoopContract, task: Any) -> None:
        """When a task created by ``create_task`` is done."""

    def signal_received(self, loop: LoopContract, signum: int) -> None:
        """When a signal with a handler (``add_signal_handler``) arrives."""

    def exception_reported(self, loop: LoopContract, context: dict[str, Any]) -> None:
        """From ``call_exception_handler``, with its context dict."""

    def loop_closed(self, loop: LoopContract) -> None:
        """From ``close()``, before anything is released."""


def _defines(instrument: object, name: str) -> bool:
    """Whether ``instrument`` has hook ``name`` of its own (not Instrument's no-op)."""
    method = getattr(type(instrument), name, None)
    return callable(method) and method is not getattr(Instrument, name)


class Hooks:
    """The instruments attached to one loop, filed by the hooks each defines.

    Each attribute named after a hook is a tuple of bound methods, so a hook
    no instrument defines costs one empty-tuple check.  Tuples, not lists:
    an instrument removed while a hook runs must not disturb that loop.
    """

    iteration_started: tuple[Callable[..., None], ...]
    wait_started: tuple[Callable[..., None], ...]
    wait_finished: tuple[Callable[..., None], ...]
    timer_fired: tuple[Callable[..., None], ...]
    callback_started: tuple[Callable[..., None], ...]
    callback_finished: tuple[Callable[..., None], ...]
    iteration_finished: tuple[Callable[..., None], ...]
    timer_scheduled: tuple[Callable[..., None], ...]
    task_created: tuple[Callable[..., None], ...]
    task_finished: tuple[Callable[..., None], ...]
    signal_received: tuple[Callable[..., None], ...]
    exception_reported: tuple[Callable[..., None], ...]
    loop_closed: tuple[Callable[..., None], ...]

    def __init__(self) -> None:
        self.instruments: list[object] = []
        for name in HOOK_NAMES:
            setattr(self, name, ())
        # Whether any instrument watches single callbacks: only then does the
        # loop take its slower, observed path for each one.
        self.watches_callbacks = False

    def add(self, instrument: object) -> None:
        """Attach ``instrument``: file each hook it defines (attaching it twice does nothing)."""
        if instrument in self.instruments:
            return
        self.instruments.append(instrument)
        for name in HOOK_NAMES:
            if _defines(instrument, name):
                setattr(self, name, (*getattr(self, name), getattr(instrument, name)))
        self.watches_callbacks = bool(self.callback_started or self.callback_finished)

    def remove(self, instrument: object) -> None:
        """Detach ``instrument``; ValueError if it is not attached."""
        self.instruments.remove(instrument)
        for name in HOOK_NAMES:
            methods: tuple[Callable[..., None], ...] = getattr(self, name)
            kept = tuple(m for m in methods if getattr(m, "__self__", None) is not instrument)
            setattr(self, name, kept)
        self.watches_callbacks = bool(self.callback_started or self.callback_finished)

    def call(self, name: str, *args: Any) -> None:
        """Call hook ``name`` of every instrument that has it."""
        for method in getattr(self, name):
            try:
                method(*args)
            except Exception:
                instrument = method.__self__
                logger.exception("Instrument %r raised in %s(); detaching it", instrument, name)
                if instrument in self.instruments:
                    self.remove(instrument)
