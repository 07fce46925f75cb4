"""What is the loop doing right now?  Names for what it runs, and a snapshot of its state.

Two kinds of things live here:

* **Names.**  A trace, a stall report and a snapshot all have to say *what*
  a callback is.  :func:`handle_label` names a handle the way a person
  thinks of it: a task step is ``Task main (coro: main)``, not
  ``<TaskStepMethWrapper object at 0x7f...>``.  :func:`coroutine_stack`
  says *where* a task is: the chain of ``await`` s from its coroutine down
  to the innermost one, as ``file:line in function``.
* **A snapshot.**  :func:`describe` (and :func:`snapshot`, its structured
  form) lists the ready queue, the pending timers, the watched file
  descriptors and the tasks with where each one is suspended: the loop's
  whole to-do list, readable in a log line or a debugger.

The rest of ``loopy.trace`` (the recorder, the stall detector) uses the
names; :func:`describe` reads the loop's private state (``_ready``,
``_timers``, ``_selector``), which is fine for a package that ships with it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from ..handles import callback_name

if TYPE_CHECKING:
    from ..contract import LoopContract

__all__ = [
    "FdInfo",
    "Location",
    "LoopSnapshot",
    "TaskInfo",
    "TimerInfo",
    "coroutine_stack",
    "describe",
    "handle_label",
    "is_task",
    "snapshot",
    "task_coroutine",
    "task_label",
]


# ----------------------------------------------------------------------
# Names
# ----------------------------------------------------------------------


def is_task(obj: object) -> bool:
    """Whether ``obj`` looks like a Task: asyncio's (C or Python) or loopy's.

    Duck typing rather than ``isinstance``: loopy's Task does not subclass
    asyncio's, and neither does asyncio's pure-Python ``_PyTask``.
    """
    return callable(getattr(obj, "get_coro", None)) and callable(getattr(obj, "get_name", None))


def task_coroutine(task: Any) -> Any:
    """The coroutine ``task`` drives, or None when the task no longer holds it.

    Everything in ``loopy.trace`` asks through here, never ``task.get_coro()``
    directly, for one reason: a C Task that finished during its eager first
    step (``eager_start=True``, ``asyncio.eager_task_factory``; Python 3.12+)
    has already let go of its coroutine, and on CPython 3.12.0 and 3.12.1
    ``get_coro()`` then dereferences a NULL pointer and the interpreter dies
    with SIGSEGV.  A pending task still holds its coroutine, so asking it is
    safe; a done one is read through its ``_coro`` attribute, which every
    Task loopy meets has (asyncio's C and Python Tasks, loopy's) and which
    reads None for a released coroutine instead of crashing.
    """
    if not task.done():
        return task.get_coro()
    return getattr(task, "_coro", None)


def coroutine_name(coro: Any) -> str | None:
    """The name of a coroutine (or generator-based one); None for None."""
    if coro is None:
        return None
    return str(getattr(coro, "__name__", None) or type(coro).__name__)


def task_label(task: Any) -> str:
    """``Task main (coro: main)``: the task's name and its coroutine's.

    Just ``Task main`` when the coroutine is gone (see :func:`task_coroutine`).
    """
    name = coroutine_name(task_coroutine(task))
    if name is None:
        return f"Task {task.get_name()}"
    return f"Task {task.get_name()} (coro: {name})"


# The names of the methods a task schedules to run itself: its step and the
# wake-up it leaves on the future it awaits.  asyncio's C Task: a
# TaskStepMethWrapper (no name) and ``task_wakeup``; its pure-Python Task:
# ``__step`` and ``__wakeup``; loopy's: ``_step`` and ``_wakeup``.
_STEP_NAMES = frozenset({"task_wakeup", "__step", "__wakeup", "_step", "_wakeup"})


def callback_task(callback: object) -> Any:
    """The task a callback steps or wakes up, or None.

    A task step is a method bound to its task (``Task._step``, or asyncio's C
    ``TaskStepMethWrapper``), and so is the wake-up a task leaves on the
    future it awaits: both have the task as ``__self__``.  Other methods of
    a task (``loop.call_later(5, task.cancel)``) are plain callbacks: they
    do not run the task's coroutine.
    """
    owner = getattr(callback, "__self__", None)
    if not is_task(owner):
        return None
    if type(callback).__name__ == "TaskStepMethWrapper" or (
        getattr(callback, "__name__", None) in _STEP_NAMES
    ):
        return owner
    return None


def handle_label(handle: Any) -> str:
    """A readable name for what ``handle`` runs (``<cancelled>`` once cancelled)."""
    callback = handle._callback
    if callback is None:
        return "<cancelled>"
    task = callback_task(callback)
    return task_label(task) if task is not None else callback_name(callback)


class Location(NamedTuple):
    """One frame: where a coroutine (or function) is."""

    filename: str
    lineno: int
    function: str

    def __str__(self) -> str:
        return f"{self.filename}:{self.lineno} in {self.function}"


def coroutine_stack(coro: Any) -> list[Location]:
    """Where ``coro`` is, outermost first: one entry per ``await`` in the chain.

    ``task.get_stack()`` gives only the task's own coroutine frame: a
    suspended coroutine's frame has no ``f_back``.  The chain of what it
    awaits is in ``cr_await`` (``gi_yieldfrom`` for generators), so walking
    that finds ``main`` awaiting ``fetch`` awaiting ``asyncio.sleep``.
    The ``__await__`` frames of futures are skipped: they are plumbing.
    """
    stack: list[Location] = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        code = frame.f_code
        if code.co_name not in ("__await__", "__iter__"):
            stack.append(Location(code.co_filename, frame.f_lineno, code.co_name))
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return stack


def task_stack(task: Any) -> list[Location]:
    """Where ``task`` is: its await chain, or for a finished task its traceback."""
    stack = coroutine_stack(task_coroutine(task))
    if stack:
        return stack
    return [
        Location(frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name)
        for frame in task.get_stack()
    ]


# ----------------------------------------------------------------------
# A snapshot of the loop
# ----------------------------------------------------------------------


@dataclass(frozen=True)
class TimerInfo:
    """A pending timer: seconds until it is due (negative: overdue) and what it runs."""

    due_in: float
    name: str


@dataclass(frozen=True)
class FdInfo:
    """A watched file descriptor and the callbacks waiting for it (None: nobody)."""

    fd: int
    reader: str | None
    writer: str | None


@dataclass(frozen=True)
class TaskInfo:
    """A pending task and where it is (outermost frame first)."""

    name: str
    stack: tuple[Location, ...]


@dataclass(frozen=True)
class LoopSnapshot:
    """The loop's to-do list at one moment; ``str()`` gives the readable form."""

    time: float
    running: bool
    ready: tuple[str, ...]
    timers: tuple[TimerInfo, ...]
    fds: tuple[FdInfo, ...]
    tasks: tuple[TaskInfo, ...]

    def format(self) -> str:
        """The snapshot as text: ready queue, timers, descriptors, and where each task waits."""
        state = "running" if self.running else "not running"
        lines = [f"loop at time {self.time:.3f} ({state})"]
        lines.append(f"ready queue ({len(self.ready)}):")
        lines += [f"  {name}" for name in self.ready]
        lines.append(f"timers ({len(self.timers)}):")
        lines += [f"  {_due(timer.due_in)}  {timer.name}" for timer in self.timers]
        lines.append(f"file descriptors ({len(self.fds)}):")
        lines += [
            f"  fd {fd.fd}  reader: {fd.reader or '-'}  writer: {fd.writer or '-'}"
            for fd in self.fds
        ]
        lines.append(f"tasks ({len(self.tasks)}):")
        for task in self.tasks:
            lines.append(f"  {task.name}" + (", at:" if task.stack else ", no stack"))
            lines += [f"    {location}" for location in task.stack]
        return "\n".join(lines)

    __str__ = format


def _due(due_in: float) -> str:
    if due_in >= 0:
        return f"in {due_in:.3f} s"
    return f"overdue by {-due_in:.3f} s"


def snapshot(loop: LoopContract) -> LoopSnapshot:
    """The state of a loopy loop, as data (see :func:`describe` for text)."""
    now = loop.time()
    ready = tuple(handle_label(h) for h in loop._ready if not h.cancelled())
    timers = tuple(
        TimerInfo(handle.when() - now, handle_label(handle))
        for handle in loop._timers.pending()
        if not handle.cancelled()
    )
    return LoopSnapshot(
        time=now,
        running=loop.is_running(),
        ready=ready,
        timers=timers,
        fds=_watched_fds(loop),
        tasks=_pending_tasks(loop),
    )


def _watched_fds(loop: LoopContract) -> tuple[FdInfo, ...]:
    """Each watched descriptor, with the handles waiting for it to be readable or writable."""
    if loop.is_closed():
        return ()
    return tuple(
        FdInfo(
            fd,
            handle_label(watch.reader) if watch.reader else None,
            handle_label(watch.writer) if watch.writer else None,
        )
        for fd, watch in sorted(loop._watches.items())
    )


def _name(task: asyncio.Task[Any]) -> str:
    return task.get_name()


def _pending_tasks(loop: LoopContract) -> tuple[TaskInfo, ...]:
    tasks = sorted(asyncio.all_tasks(cast(asyncio.AbstractEventLoop, loop)), key=_name)
    return tuple(TaskInfo(task_label(task), tuple(task_stack(task))) for task in tasks)


def describe(loop: LoopContract) -> str:
    """A readable, multi-line snapshot of ``loop``: ready queue, timers, fds, tasks.

    Safe to call from inside a callback (the loop is then running) or
    between runs; it only reads.
    """
    return snapshot(loop).format()
