"""Small random asyncio programs: a language, a generator, and an interpreter that traces them.

``test_differential.py`` runs every generated program on asyncio's loop and
on loopy's and compares what happened.  This module holds the pieces:

* **The language**: a program is a tree of frozen dataclasses.  Its root is
  the body of one callback; a body is a tuple of steps.  *Actions* run
  synchronously and may appear anywhere (in a callback, a timer or a task);
  *awaits* suspend, so they only appear in task bodies.  ``Program.render()``
  prints a program as indented pseudo-code.
* **The generator**: :func:`programs`, a Hypothesis strategy.  Every
  reference a step makes (to a future, a task, a callback's handle) is
  drawn among those the program holds at that point, so shrinking keeps
  programs meaningful.
* **The interpreter**: :func:`run_program` builds the program on a loop of
  a given kind (``tests.helpers.make_loop``, on a virtual clock) and runs it
  to the end, recording a trace of events such as ``("cb", 3)``,
  ``("ok", 7, 12)`` or ``("done", "T1", "cancelled")``.
* **The normalisation**: :func:`normalise` turns a trace into what two
  correct loops must agree on (see there).

Determinism
-----------
Both loops run on a virtual clock whose selector jumps straight to the next
deadline, so a program's timing is exact and nothing depends on the machine.
A few things would still let two correct loops differ -- or one loop differ
from itself -- and the language is built so that none of them can:

* **Timers due at the same instant.**  asyncio keeps its timers in a heap
  ordered by deadline alone, so equal deadlines come out in an order of the
  heap's choosing; loopy keeps them in scheduling order.  Both are correct.
  A timer whose body only records (``Note``), raises or stops the loop -- a
  *leaf* timer -- changes nothing that a tie could reorder, and leaf timers
  are scheduled whole ticks ahead, so they tie freely; the normaliser
  compares the timers firing at one instant as a multiset.  Every other
  timer (one that resolves a future, wakes a task, schedules a callback, and
  those of ``sleep``, ``wait_for`` and ``timeout``) gets a unique tiny offset
  on top of its ticks, a distinct power of two (see :func:`timer_offsets`),
  and with it a deadline no other timer can share.  Time only ever jumps to
  a deadline, so every deadline is the start, plus whole ticks, plus the sum
  of the offsets of the non-leaf timers that led to it, itself last; two
  such timers with the same deadline would have led to each other.  (Each
  step of a program runs at most once, so an offset belongs to one timer.)
* **Sets in asyncio's own code.**  A TaskGroup cancels its children in the
  order of a ``set``, that is of their addresses, which changes from run to
  run on asyncio's loop too; the interpreter gives each group an ordered set
  (see :class:`_CreationOrder`).
* **Several descriptors ready at once.**  The order in which ``epoll``
  reports them is not the loop's to choose: a program uses one socket pair,
  writes to one end and reads the other, by a reader callback or by
  ``sock_recv``, never both.
* **Garbage collection.**  Reports of exceptions nobody retrieved depend on
  when objects die; the interpreter retrieves every outcome itself, and the
  few reports left are compared as a multiset, apart from the trace.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import socket
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from tests.helpers import make_loop


class Boom(Exception):
    """The error programs raise and set on futures."""


class Halt(BaseException):
    """An error that is not an ``Exception``: TaskGroup and Task treat those apart."""


ERRORS: dict[str, type[BaseException]] = {"Boom": Boom, "Halt": Halt}


# ======================================================================
# The language
# ======================================================================
#
# Identifiers: every step that needs one has an ``id`` (unique in the
# program; the trace names steps by it).  Futures F0, F1... exist from the
# start.  Tasks T0, T1... are numbered by their Spawn step, children before
# parents, and a task only awaits tasks with smaller numbers, so waiting (and
# cancellation, which follows waiting) can never go round in a circle.
# Inline tasks ("I<id>") and TaskGroup children ("G<id>.<k>") cannot be
# referred to.  A step that names a task that does not exist (yet), or the
# handle of a callback not scheduled (yet), records "missing" and does
# nothing else.

# -- actions: synchronous, allowed anywhere --------------------------------


@dataclass(frozen=True)
class Note:
    """Record ``("note", id)``."""

    id: int


@dataclass(frozen=True)
class CallSoon:
    """``loop.call_soon`` a callback running ``body``."""

    id: int
    body: Body


@dataclass(frozen=True)
class CallLater:
    """``loop.call_later`` a timer running ``body``, ``ticks`` seconds from now.

    A non-leaf timer also gets its unique offset (see the module docstring).
    """

    id: int
    ticks: int
    body: Body

    @property
    def leaf(self) -> bool:
        """Its body only records, raises or stops: nothing a tie could reorder."""
        return all(isinstance(step, Note | Raise | Stop) for step in self.body)


@dataclass(frozen=True)
class Resolve:
    """Complete future F<future>: ``result`` (the step's id), ``error`` (Boom),
    ``cancel``, or ``cancel-msg`` (with message ``m<id>``)."""

    id: int
    future: int
    how: str


@dataclass(frozen=True)
class Cancel:
    """``T<task>.cancel()``, with message ``m<id>`` if ``message``; records the result."""

    id: int
    task: int
    message: bool


@dataclass(frozen=True)
class Uncancel:
    """``T<task>.uncancel()``; records the count it returns."""

    task: int


@dataclass(frozen=True)
class Cancelling:
    """Record ``T<task>.cancelling()``."""

    task: int


@dataclass(frozen=True)
class Spawn:
    """``loop.create_task``: task T<task> runs ``body`` and returns its number."""

    task: int
    body: Body


@dataclass(frozen=True)
class Raise:
    """Raise ``Boom`` or ``Halt`` with message ``x<id>``; always a body's last step."""

    id: int
    error: str


@dataclass(frozen=True)
class Stop:
    """``loop.stop()``: the current ``run_forever`` ends after this iteration."""


@dataclass(frozen=True)
class CancelHandle:
    """Cancel the handle returned by ``CallSoon`` or ``CallLater`` step ``handle``."""

    handle: int


@dataclass(frozen=True)
class Churn:
    """Schedule 120 timers and cancel them at once: loopy compacts its heap past 100."""


@dataclass(frozen=True)
class Send:
    """Write ``d<id>;`` into the socket pair (``socket.send``)."""

    id: int


@dataclass(frozen=True)
class Watch:
    """``add_reader`` on the reading end: each readiness reads ``nbytes`` and records them."""

    nbytes: int


@dataclass(frozen=True)
class Unwatch:
    """``remove_reader`` on the reading end; records whether a reader was there."""


@dataclass(frozen=True)
class Block:
    """Hold the loop for 1/8 tick (the virtual clock jumps): a slow callback in debug mode."""

    id: int


# -- what gather, shield, wait_for and await act on -------------------------


@dataclass(frozen=True)
class FutureRef:
    future: int


@dataclass(frozen=True)
class TaskRef:
    task: int


@dataclass(frozen=True)
class Inline:
    """A new task I<id> running ``body`` (and returning ``id``), created where it is used."""

    id: int
    body: Body


Target = FutureRef | TaskRef | Inline

# -- awaits: only in task bodies; each records ("ok", id, value) on success --


@dataclass(frozen=True)
class Await:
    """``await`` the target."""

    id: int
    target: Target


@dataclass(frozen=True)
class Sleep:
    """``asyncio.sleep(0)`` if ``ticks`` is 0, else sleep that long (plus the offset)."""

    id: int
    ticks: int


@dataclass(frozen=True)
class Shield:
    """``await asyncio.shield(target)``."""

    id: int
    target: Target


@dataclass(frozen=True)
class Gather:
    """``await asyncio.gather(*targets, return_exceptions=...)``."""

    id: int
    targets: tuple[Target, ...]
    return_exceptions: bool


@dataclass(frozen=True)
class WaitFor:
    """``await asyncio.wait_for(target, timeout)``: 0 if ``ticks`` is 0, else ticks + offset."""

    id: int
    target: Target
    ticks: int


@dataclass(frozen=True)
class Timeout:
    """``async with asyncio.timeout(...)`` around ``body``; records ``expired()`` on exit."""

    id: int
    ticks: int
    body: Body


@dataclass(frozen=True)
class Group:
    """``async with asyncio.TaskGroup()`` running one child task G<id>.<k> per body."""

    id: int
    children: tuple[Body, ...]


@dataclass(frozen=True)
class Try:
    """Run ``body``; catch and record any error; if it is a cancellation and
    ``uncancel``, call ``uncancel()`` on the current task."""

    id: int
    body: Body
    uncancel: bool


@dataclass(frozen=True)
class Recv:
    """``await loop.sock_recv(reading end, nbytes)``."""

    id: int
    nbytes: int


@dataclass(frozen=True)
class Sendall:
    """``await loop.sock_sendall(writing end, b"s<id>;")``."""

    id: int


Action = (
    Note
    | CallSoon
    | CallLater
    | Resolve
    | Cancel
    | Uncancel
    | Cancelling
    | Spawn
    | Raise
    | Stop
    | CancelHandle
    | Churn
    | Send
    | Watch
    | Unwatch
    | Block
)
AwaitStep = Await | Sleep | Shield | Gather | WaitFor | Timeout | Group | Try | Recv | Sendall
AWAIT_STEPS = (Await, Sleep, Shield, Gather, WaitFor, Timeout, Group, Try, Recv, Sendall)
Step = Action | AwaitStep
Body = tuple[Step, ...]


@dataclass(frozen=True)
class Program:
    """Futures F0..F<futures-1>, an I/O mode, and the body of the first callback.

    ``io`` is ``"none"``, ``"reader"`` (Watch/Unwatch read the socket pair)
    or ``"recv"`` (tasks read it with ``sock_recv``).  Writes are allowed in
    both I/O modes.
    """

    futures: int
    io: str
    root: Body
    #: Run in debug mode: slow callbacks (``Block``) are logged.
    debug: bool = False
    #: Install the interpreter's exception handler; without it errors in
    #: callbacks reach asyncio's logger through the default handler.
    handler: bool = True

    def render(self) -> str:
        """The program as indented pseudo-code."""
        lines = [
            f"program: {self.futures} future(s), io={self.io}, debug={self.debug}, "
            f"exception handler={self.handler}",
            "callback root:",
        ]
        _render_body(self.root, 1, lines)
        return "\n".join(lines)


def walk(body: Body) -> Iterator[Step]:
    """Every step of ``body``, nested ones included, in program order."""
    for step in body:
        yield step
        for target in _targets(step):
            if isinstance(target, Inline):
                yield from walk(target.body)
        if isinstance(step, CallSoon | CallLater | Spawn | Timeout | Try):
            yield from walk(step.body)
        elif isinstance(step, Group):
            for child in step.children:
                yield from walk(child)


def _targets(step: Step) -> tuple[Target, ...]:
    if isinstance(step, Await | Shield | WaitFor):
        return (step.target,)
    if isinstance(step, Gather):
        return step.targets
    return ()


# -- rendering ---------------------------------------------------------------


def _render_target(target: Target) -> str:
    if isinstance(target, FutureRef):
        return f"F{target.future}"
    if isinstance(target, TaskRef):
        return f"T{target.task}"
    return f"new task I{target.id}"


def _render_body(body: Body, depth: int, lines: list[str]) -> None:
    pad = "    " * depth
    if not body:
        lines.append(f"{pad}pass")
    for step in body:
        lines.append(pad + _render_step(step))
        for target in _targets(step):
            if isinstance(target, Inline):
                lines.append(f"{pad}    task I{target.id}:")
                _render_body(target.body, depth + 2, lines)
        if isinstance(step, CallSoon | CallLater | Spawn | Timeout | Try):
            _render_body(step.body, depth + 1, lines)
        elif isinstance(step, Group):
            for k, child in enumerate(step.children):
                lines.append(f"{pad}    task G{step.id}.{k}:")
                _render_body(child, depth + 2, lines)


def _ticks(ticks: int) -> str:
    return f"{ticks} tick" + ("" if ticks == 1 else "s")


def _render_step(step: Step) -> str:
    match step:
        case Note(id=i):
            return f"#{i} note"
        case CallSoon(id=i):
            return f"#{i} call_soon:"
        case CallLater(id=i, ticks=ticks):
            kind = "leaf timer" if step.leaf else "timer"
            return f"#{i} call_later {_ticks(ticks)} ({kind}):"
        case Resolve(id=i, future=f, how=how):
            call = {
                "result": f"set_result({i})",
                "error": f'set_exception(Boom("e{i}"))',
                "cancel": "cancel()",
                "cancel-msg": f'cancel("m{i}")',
            }[how]
            return f"#{i} F{f}.{call}"
        case Cancel(id=i, task=t, message=message):
            return f"#{i} T{t}.cancel(" + (f'"m{i}")' if message else ")")
        case Uncancel(task=t):
            return f"T{t}.uncancel()"
        case Cancelling(task=t):
            return f"T{t}.cancelling()"
        case Spawn(task=t):
            return f"spawn T{t}:"
        case Raise(id=i, error=error):
            return f'#{i} raise {error}("x{i}")'
        case Stop():
            return "loop.stop()"
        case CancelHandle(handle=h):
            return f"cancel the handle of #{h}"
        case Churn():
            return "schedule and cancel 120 timers"
        case Send(id=i):
            return f'#{i} send b"d{i};"'
        case Watch(nbytes=n):
            return f"add_reader (reads {n} bytes)"
        case Unwatch():
            return "remove_reader"
        case Block(id=i):
            return f"#{i} block the loop for 1/8 tick"
        case Await(id=i, target=target):
            return f"#{i} await {_render_target(target)}"
        case Sleep(id=i, ticks=ticks):
            return f"#{i} sleep {_ticks(ticks)}"
        case Shield(id=i, target=target):
            return f"#{i} await shield({_render_target(target)})"
        case Gather(id=i, targets=targets, return_exceptions=return_exceptions):
            names = ", ".join(_render_target(t) for t in targets)
            return f"#{i} await gather({names}, return_exceptions={return_exceptions})"
        case WaitFor(id=i, target=target, ticks=ticks):
            return f"#{i} await wait_for({_render_target(target)}, {_ticks(ticks)})"
        case Timeout(id=i, ticks=ticks):
            return f"#{i} async with timeout({_ticks(ticks)}):"
        case Group(id=i):
            return f"#{i} async with TaskGroup():"
        case Try(id=i, uncancel=uncancel):
            return f"#{i} try (on error: record" + (", uncancel)" if uncancel else ")") + ":"
        case Recv(id=i, nbytes=n):
            return f"#{i} await sock_recv({n})"
        case Sendall(id=i):
            return f'#{i} await sock_sendall(b"s{i};")'
    raise TypeError(step)


# ======================================================================
# The generator
# ======================================================================

#: Nesting deeper than this gets only simple steps.
MAX_DEPTH = 3
#: Steps in a whole program, at most: keeps programs small and readable.
MAX_STEPS = 24

# Step kinds and how often each is drawn, relative to the others (shrinking
# goes towards the first kinds of a list).
_ACTIONS = {
    "note": 1,
    "resolve": 2,
    "call_soon": 1,
    "call_later": 2,
    "leaf_timer": 1,  # a CallLater that only notes, raises or stops: these may tie
    "spawn": 2,
    "cancel": 2,
    "uncancel": 1,
    "cancelling": 1,
    "raise": 1,
    "stop": 1,
    "cancel_handle": 1,
    "churn": 1,
    "block": 1,
}
_ROOT_EXTRA = {"spawn": 3, "call_later": 1, "leaf_timer": 2}  # the root sets the scene
_AWAITS = {
    "await": 6,
    "sleep": 4,
    "shield": 2,
    "gather": 2,
    "wait_for": 2,
    "timeout": 2,
    "group": 2,
    "try": 4,
}
_IO = {
    "none": {},
    "reader": {"send": 2, "watch": 2, "unwatch": 1},
    "recv": {"send": 2},
}
_IO_AWAITS = {"none": {}, "reader": {"sendall": 1}, "recv": {"recv": 4, "sendall": 1}}
_NESTING = frozenset({"call_soon", "call_later", "spawn", "timeout", "group", "try"})


class _Builder:
    """Draws one program; tracks what exists so that references are valid."""

    def __init__(self, draw: Callable[[Any], Any], futures: int, io: str) -> None:
        self.draw = draw
        self.futures = futures
        self.io = io
        self.budget = MAX_STEPS
        self.next_id = 0
        self.tasks = 0  # T0..T<tasks-1> have been drawn
        self.handles: list[int] = []  # ids of the CallSoon and CallLater steps drawn so far

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def body(self, *, in_task: bool, depth: int, min_size: int = 0, max_size: int = 3) -> Body:
        size = self.draw(st.integers(min_size, max_size))
        steps: list[Step] = []
        for _ in range(size):
            if self.budget <= 0:
                break
            self.budget -= 1
            step = self.step(in_task=in_task, depth=depth)
            steps.append(step)
            if isinstance(step, Raise):
                break  # anything after it would never run
        return tuple(steps)

    def step(self, *, in_task: bool, depth: int) -> Step:
        weights = Counter(_ACTIONS)
        weights.update(_IO[self.io])
        if depth == 0:
            weights.update(_ROOT_EXTRA)
        if in_task:
            weights.update(_AWAITS)
            weights.update(_IO_AWAITS[self.io])
        if not self.handles:
            del weights["cancel_handle"]
        if depth >= MAX_DEPTH:
            for kind in _NESTING:
                weights.pop(kind, None)
        kinds = [kind for kind, weight in weights.items() for _ in range(weight)]
        kind = self.draw(st.sampled_from(kinds))
        return getattr(self, f"_{kind}")(in_task=in_task, depth=depth)

    # Drawing each kind of step.  The body of a nested step is drawn before
    # the step is assembled, and a Spawn takes its number only after its body:
    # tasks spawned inside a task get smaller numbers than it, so it may wait
    # for them.

    def _note(self, **_: Any) -> Step:
        return Note(self.new_id())

    def _call_soon(self, *, depth: int, **_: Any) -> Step:
        i = self.new_id()
        step = CallSoon(i, self.body(in_task=False, depth=depth + 1))
        self.handles.append(i)
        return step

    def _call_later(self, *, depth: int, **_: Any) -> Step:
        i = self.new_id()
        ticks = self.draw(st.integers(0, 2))
        step = CallLater(i, ticks, self.body(in_task=False, depth=depth + 1, min_size=1))
        self.handles.append(i)
        return step

    def _leaf_timer(self, **_: Any) -> Step:
        i = self.new_id()
        ticks = self.draw(st.integers(0, 2))
        kind = self.draw(st.sampled_from(["note", "raise", "stop"]))
        body: Body = (Note(self.new_id()),) if kind == "note" else (getattr(self, f"_{kind}")(),)
        self.handles.append(i)
        return CallLater(i, ticks, body)

    def _resolve(self, **_: Any) -> Step:
        future = self.draw(st.integers(0, self.futures - 1))
        how = self.draw(st.sampled_from(["result", "error", "cancel", "cancel-msg"]))
        return Resolve(self.new_id(), future, how)

    def _task_number(self) -> int:
        # One past the last task drawn is often the task being drawn.
        return self.draw(st.integers(0, self.tasks))

    def _cancel(self, **_: Any) -> Step:
        return Cancel(self.new_id(), self._task_number(), self.draw(st.booleans()))

    def _uncancel(self, **_: Any) -> Step:
        return Uncancel(self._task_number())

    def _cancelling(self, **_: Any) -> Step:
        return Cancelling(self._task_number())

    def _spawn(self, *, depth: int, **_: Any) -> Step:
        body = self.body(in_task=True, depth=depth + 1, min_size=1, max_size=4)
        self.tasks += 1
        return Spawn(self.tasks - 1, body)

    def _raise(self, **_: Any) -> Step:
        return Raise(self.new_id(), self.draw(st.sampled_from(["Boom", "Halt"])))

    def _stop(self, **_: Any) -> Step:
        return Stop()

    def _cancel_handle(self, **_: Any) -> Step:
        return CancelHandle(self.draw(st.sampled_from(self.handles)))

    def _churn(self, **_: Any) -> Step:
        return Churn()

    def _send(self, **_: Any) -> Step:
        return Send(self.new_id())

    def _watch(self, **_: Any) -> Step:
        return Watch(self.draw(st.sampled_from([3, 100])))

    def _unwatch(self, **_: Any) -> Step:
        return Unwatch()

    def _block(self, **_: Any) -> Step:
        return Block(self.new_id())

    def target(self, depth: int) -> Target:
        kinds = ["future"]
        if self.tasks:
            kinds.append("task")
        if depth < MAX_DEPTH:
            kinds.append("inline")
        kind = self.draw(st.sampled_from(kinds))
        if kind == "future":
            return FutureRef(self.draw(st.integers(0, self.futures - 1)))
        if kind == "task":
            return TaskRef(self.draw(st.integers(0, self.tasks - 1)))
        i = self.new_id()
        return Inline(i, self.body(in_task=True, depth=depth + 1))

    def _await(self, *, depth: int, **_: Any) -> Step:
        i = self.new_id()
        return Await(i, self.target(depth))

    def _sleep(self, **_: Any) -> Step:
        return Sleep(self.new_id(), self.draw(st.integers(0, 2)))

    def _shield(self, *, depth: int, **_: Any) -> Step:
        i = self.new_id()
        return Shield(i, self.target(depth))

    def _gather(self, *, depth: int, **_: Any) -> Step:
        i = self.new_id()
        count = self.draw(st.integers(1, 3))
        targets = tuple(self.target(depth) for _ in range(count))
        return Gather(i, targets, self.draw(st.booleans()))

    def _wait_for(self, *, depth: int, **_: Any) -> Step:
        i = self.new_id()
        target = self.target(depth)
        return WaitFor(i, target, self.draw(st.integers(0, 2)))

    def _timeout(self, *, depth: int, **_: Any) -> Step:
        i = self.new_id()
        ticks = self.draw(st.integers(0, 2))
        return Timeout(i, ticks, self.body(in_task=True, depth=depth + 1, min_size=1))

    def _group(self, *, depth: int, **_: Any) -> Step:
        i = self.new_id()
        count = self.draw(st.integers(1, 3))
        children = tuple(self.body(in_task=True, depth=depth + 1) for _ in range(count))
        return Group(i, children)

    def _try(self, *, depth: int, **_: Any) -> Step:
        i = self.new_id()
        body = self.body(in_task=True, depth=depth + 1, min_size=1)
        return Try(i, body, self.draw(st.booleans()))

    def _recv(self, **_: Any) -> Step:
        return Recv(self.new_id(), self.draw(st.sampled_from([2, 100])))

    def _sendall(self, **_: Any) -> Step:
        return Sendall(self.new_id())


@st.composite
def programs(draw: Callable[[Any], Any]) -> Program:
    """A Hypothesis strategy for small random programs."""
    futures = draw(st.integers(1, 3))
    io = draw(st.sampled_from(["none", "recv", "reader"]))
    builder = _Builder(draw, futures, io)
    root = builder.body(in_task=False, depth=0, min_size=1, max_size=8)
    return Program(futures, io, root, debug=draw(st.booleans()), handler=draw(st.booleans()))


# ======================================================================
# The interpreter
# ======================================================================

#: How far ahead each phase's end is: beyond every deadline a program can reach
#: (a chain of at most MAX_STEPS timers of at most 2 ticks and an offset each).
PHASE_TICKS = 100
#: Rounds of "cancel every unfinished task" after the program ran.
CLEANUP_ROUNDS = 30


def timer_offsets(program: Program) -> dict[int, float]:
    """The unique offset of every step that schedules a timer which is not a leaf.

    Offset k is 2**-(4+k): exact in binary, distinct, and no sum of several
    equals another (see the module docstring).  Steps with 0 ticks that do
    not make a timer at all (sleep(0), timeout(0), wait_for(..., 0)) get none.
    """
    ids = []
    for step in walk(program.root):
        if (isinstance(step, CallLater) and not step.leaf) or (
            isinstance(step, Sleep | WaitFor | Timeout) and step.ticks > 0
        ):
            ids.append(step.id)
    # The clock stays below 2**13 (it starts at 1000, and there are at most
    # 1 + CLEANUP_ROUNDS phases), where a double still counts in steps of 2**-40.
    assert len(ids) <= 32, "too many timers for distinct offsets"
    return {i: 2.0 ** -(4 + k) for k, i in enumerate(ids)}


#: Where the virtual clock starts (``tests.helpers.VirtualClock``).
START = 1000.0

#: A trace event's tag: (deadline, timer id) for events of a timer, else None.
Tag = tuple[float, int] | None


@dataclass
class Outcome:
    """What a run of a program produced."""

    trace: list[tuple[Tag, tuple[Any, ...]]] = field(default_factory=list)
    #: Reports to the exception handler other than errors in callbacks.
    reports: list[tuple[str, Any]] = field(default_factory=list)
    #: Exception types the program cannot raise: a bug in the interpreter.
    unexpected: list[str] = field(default_factory=list)

    def normalised(self) -> tuple[list[Any], list[str]]:
        return normalise(self.trace), sorted(repr(report) for report in self.reports)

    def lines(self) -> list[str]:
        """The trace, one event per line, timer events marked with their deadline."""
        return [
            (f"@{tag[0] - START:.9g} " if tag is not None else "") + repr(event)
            for tag, event in self.trace
        ]


def run_program(program: Program, kind: str) -> Outcome:
    """Run ``program`` on a new virtual-clock loop of ``kind`` and return what happened."""
    interpreter = _Interpreter(program, make_loop(kind, virtual=True))
    try:
        interpreter.run()
    finally:
        interpreter.close()
    return interpreter.outcome


def normalise(trace: list[tuple[Tag, tuple[Any, ...]]]) -> list[Any]:
    """The events of ``trace`` that any two correct loops must agree on, in order.

    Timers that fire in the same iteration run one after the other, earliest
    deadline first; those with *equal* deadlines may run in any order (see
    the module docstring).  Each timer's events are contiguous -- its own, and
    the handler's report if it raised -- and carry its tag.  So each maximal
    run of timer events sharing one deadline becomes a single entry,
    ``("timers", blocks)``, with one block of events per timer, sorted: a
    multiset.  Everything else keeps its exact position.
    """
    out: list[Any] = []
    i = 0
    while i < len(trace):
        tag, event = trace[i]
        if tag is None:
            out.append(event)
            i += 1
            continue
        deadline = tag[0]
        blocks = []
        while i < len(trace) and (tag := trace[i][0]) is not None and tag[0] == deadline:
            block = []
            while i < len(trace) and trace[i][0] == tag:
                block.append(trace[i][1])
                i += 1
            blocks.append(tuple(block))
        out.append(("timers", tuple(sorted(blocks, key=repr))))
    return out


_NOT_GIVEN: Any = object()


def _never() -> None:
    raise AssertionError("a cancelled timer fired")


class _Records(logging.Handler):
    """Hands each log record to a function (the interpreter's ``on_log``)."""

    def __init__(self, sink: Callable[[logging.LogRecord], None]) -> None:
        super().__init__(logging.DEBUG)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink(record)


class _CreationOrder(dict[Any, None]):
    """A set that iterates in insertion order, for ``TaskGroup._tasks``.

    A TaskGroup that aborts cancels its unfinished children by iterating
    over a ``set`` of tasks, that is in an order that depends on their
    addresses, which differs from run to run even on asyncio's own loop.
    The children then wake up in that order.  The interpreter gives every
    group this ordered set instead, on every loop alike: the children are
    cancelled in the order they were created.
    """

    def add(self, task: Any) -> None:
        self[task] = None

    def discard(self, task: Any) -> None:
        self.pop(task, None)


class _Interpreter:
    """Builds one program on one loop, runs it, and records the trace."""

    def __init__(self, program: Program, loop: Any) -> None:
        self.program = program
        self.loop = loop
        self.outcome = Outcome()
        self.started_at = loop.time()
        self.offsets = timer_offsets(program)
        self.futures: list[Any] = []
        self.tasks: list[Any] = []  # every task the program made, in creation order
        self.numbered: dict[int, Any] = {}  # T<n> -> task
        self.handles: dict[int, Any] = {}  # CallSoon/CallLater id -> its handle
        self.tag: Tag = None  # the running timer's tag
        self.raising_tag: Tag = None  # the tag of a timer that just raised
        # The tag of each timer that ran, by deadline (a timer that blocks is
        # no leaf: its deadline is its own).
        self.finished_timers: dict[float, Tag] = {}
        self.writer: socket.socket | None = None
        self.reader: socket.socket | None = None

    # -- recording -------------------------------------------------------

    def emit(self, event: tuple[Any, ...], tag: Tag = _NOT_GIVEN) -> None:
        self.outcome.trace.append((self.tag if tag is _NOT_GIVEN else tag, event))

    def describe(self, error: BaseException) -> tuple[Any, ...]:
        """An exception as (type name, args[, causes]): no reprs, no addresses."""
        name = type(error).__name__
        if isinstance(error, BaseExceptionGroup):
            about: tuple[Any, ...] = (
                name,
                error.message,
                tuple(map(self.describe, error.exceptions)),
            )
        elif isinstance(error, Boom | Halt | asyncio.CancelledError | TimeoutError):
            about = (name, error.args)
        else:
            # InvalidStateError and the like: their messages hold reprs.
            about = (name,)
            if not isinstance(error, asyncio.InvalidStateError):
                self.outcome.unexpected.append(name)
        if error.__cause__ is not None:
            about += ("from", self.describe(error.__cause__))
        return about

    def value(self, value: Any) -> Any:
        if isinstance(value, BaseException):
            return ("raised", self.describe(value))
        if isinstance(value, list):
            return tuple(map(self.value, value))
        return value

    def on_done(self, label: str, future: Any) -> None:
        """Done callback of every future and task: record how it ended."""
        if future.cancelled():
            # Not future.result(): the first caller takes a task's saved
            # CancelledError, and the program's awaiters should see it.
            self.emit(("done", label, "cancelled"))
        elif (error := future.exception()) is not None:
            self.emit(("done", label, "error", self.describe(error)))
        else:
            self.emit(("done", label, "result", self.value(future.result())))

    def on_error(self, loop: Any, context: dict[str, Any]) -> None:
        """The loop's exception handler."""
        error = context.get("exception")
        message = str(context.get("message"))
        about = self.describe(error) if isinstance(error, BaseException) else None
        if message.startswith("Exception in callback"):
            # Right after the callback that raised: a timer's report joins its events.
            self.emit(("callback-error", about), tag=self.raising_tag)
            self.raising_tag = None
        else:
            self.outcome.reports.append((message, about))

    # -- running ---------------------------------------------------------

    def on_log(self, record: logging.LogRecord) -> None:
        """A record of the ``asyncio`` or ``loopy`` logger, while the program runs.

        What follows a callback at once (its error, when no handler is set;
        a slow callback, in debug mode) joins the trace, with the timer's
        tag if a timer ran it; anything else, such as an error found when
        an object is collected, goes with the reports.
        """
        message = record.getMessage()
        error = record.exc_info[1] if record.exc_info else None
        about = self.describe(error) if isinstance(error, BaseException) else None
        if message.startswith("Exception in callback"):
            first_line = re.sub(r"0x[0-9a-f]+", "0x…", message.splitlines()[0])
            event = ("logged", record.name, record.levelname, first_line, about)
            self.emit(event, tag=self.raising_tag)
            self.raising_tag = None
        elif message.startswith("Executing "):
            slow, tag = self.slow(message)
            self.emit(("logged", record.name, record.levelname, *slow), tag=tag)
        else:
            first_line = re.sub(r"0x[0-9a-f]+", "0x…", message.splitlines()[0])
            self.outcome.reports.append((f"{record.name} {record.levelname} {first_line}", about))

    def slow(self, message: str) -> tuple[tuple[Any, ...], Tag]:
        """Debug mode's slow-callback warning, as what was slow, and its tag.

        A task's step is named by the task (whose repr differs between the
        task modes), a callback by its step; the duration is kept.
        """
        took = message.rsplit(" took ", 1)[-1]
        if task := re.match(r"Executing <Task \w+ name='([^']*)'", message):
            return ("slow", "task", task.group(1), took), None
        if timer := re.match(r"Executing <TimerHandle when=(\S+) _Interpreter\.timer\(", message):
            tag = self.finished_timers.get(float(timer.group(1)))
            return ("slow", "timer", tag[1] if tag else None, took), tag
        if callback := re.match(r"Executing <Handle _Interpreter\.callback\(('?\w+'?)", message):
            return ("slow", "callback", callback.group(1), took), None
        return ("slow", re.sub(r"0x[0-9a-f]+", "0x…", message)), None

    def run(self) -> None:
        loop = self.loop
        loop.set_debug(self.program.debug)
        log = _Records(self.on_log)
        for name in ("asyncio", "loopy"):
            logging.getLogger(name).addHandler(log)
        try:
            self.run_program()
        finally:
            for name in ("asyncio", "loopy"):
                logging.getLogger(name).removeHandler(log)

    def run_program(self) -> None:
        loop = self.loop
        if self.program.handler:
            loop.set_exception_handler(self.on_error)
        if self.program.io != "none":
            self.writer, self.reader = socket.socketpair()
            self.writer.setblocking(False)
            self.reader.setblocking(False)
        for i in range(self.program.futures):
            future = loop.create_future()
            future.add_done_callback(functools.partial(self.on_done, f"F{i}"))
            self.futures.append(future)
        loop.call_soon(self.callback, "root", self.program.root)
        self.phase("main")
        for _ in range(CLEANUP_ROUNDS):
            pending = [task for task in self.tasks if not task.done()]
            if not pending:
                return
            # Cancel what is left, in creation order, and let it finish.
            for task in pending:
                task.cancel()
            self.phase("cleanup", *(task.get_name() for task in pending))
        self.emit(("stuck", *(task.get_name() for task in self.tasks if not task.done())))

    def phase(self, *about: str) -> None:
        """Run the loop until a timer far beyond every deadline of the program fires.

        The program may stop the loop before: each ``run_forever`` is recorded.
        """
        self.emit(("phase", *about))
        finished: list[bool] = []

        def finish() -> None:
            finished.append(True)
            self.loop.stop()

        self.loop.call_later(PHASE_TICKS, finish)
        while not finished:
            self.emit(("run_forever",))
            self.loop.run_forever()

    def close(self) -> None:
        # Retrieve every outcome, so that none is reported when garbage-collected.
        for future in [*self.futures, *self.tasks]:
            if future.done() and not future.cancelled():
                future.exception()
        self.loop.close()
        for sock in (self.writer, self.reader):
            if sock is not None:
                sock.close()

    # -- callbacks and actions -------------------------------------------

    def callback(self, label: object, body: Body) -> None:
        self.emit(("cb", label))
        for step in body:
            self.act(step)

    def timer(self, step: CallLater) -> None:
        self.tag = (self.handles[step.id].when(), step.id)
        try:
            # When it fired, too: a loop that slept too long would fire it late.
            self.emit(("timer", step.id, self.loop.time() - self.started_at))
            for action in step.body:
                self.act(action)
        except BaseException:
            self.raising_tag = self.tag
            raise
        finally:
            self.finished_timers[self.handles[step.id].when()] = self.tag
            self.tag = None

    def readable(self, nbytes: int) -> None:
        assert self.reader is not None
        try:
            data: bytes | None = self.reader.recv(nbytes)
        except BlockingIOError:
            data = None
        self.emit(("read", data))

    def act(self, step: Step) -> None:
        loop = self.loop
        match step:
            case Note(id=i):
                self.emit(("note", i))
            case CallSoon(id=i, body=body):
                self.handles[i] = loop.call_soon(self.callback, i, body)
            case CallLater(id=i, ticks=ticks):
                delay = ticks + self.offsets.get(i, 0.0)
                self.handles[i] = loop.call_later(delay, self.timer, step)
            case Resolve(id=i, future=f, how=how):
                future = self.futures[f]
                try:
                    if how == "result":
                        future.set_result(i)
                    elif how == "error":
                        future.set_exception(Boom(f"e{i}"))
                    else:
                        message = f"m{i}" if how == "cancel-msg" else None
                        self.emit(("cancel-future", f, future.cancel(message)))
                except asyncio.InvalidStateError:
                    self.emit(("invalid-state", f))
            case Cancel(id=i, task=t, message=message):
                task = self.numbered.get(t)
                done = "missing" if task is None else task.cancel(f"m{i}" if message else None)
                self.emit(("cancel", t, done))
            case Uncancel(task=t):
                task = self.numbered.get(t)
                self.emit(("uncancel", t, "missing" if task is None else task.uncancel()))
            case Cancelling(task=t):
                task = self.numbered.get(t)
                self.emit(("cancelling", t, "missing" if task is None else task.cancelling()))
            case Spawn(task=t, body=body):
                self.numbered[t] = self.start(f"T{t}", body, t)
            case Raise(id=i, error=error):
                raise ERRORS[error](f"x{i}")
            case Stop():
                loop.stop()
                self.emit(("stop",))
            case CancelHandle(handle=h):
                handle = self.handles.get(h)
                if handle is not None:
                    handle.cancel()
                self.emit(("cancel-handle", h, "missing" if handle is None else "ok"))
            case Churn():
                for k in range(120):
                    loop.call_later(k % 5, _never).cancel()
            case Send(id=i):
                assert self.writer is not None
                self.writer.send(f"d{i};".encode())
            case Watch(nbytes=n):
                loop.add_reader(self.reader, self.readable, n)
            case Unwatch():
                self.emit(("remove_reader", loop.remove_reader(self.reader)))
            case Block(id=i):
                self.emit(("block", i))
                loop.virtual_clock.advance(0.125)
            case _:
                raise TypeError(step)

    # -- tasks -----------------------------------------------------------

    def start(self, name: str, body: Body, result: int) -> Any:
        task = self.loop.create_task(self.steps(body, result), name=name)
        self.adopt(task)
        return task

    def adopt(self, task: Any) -> None:
        self.tasks.append(task)
        task.add_done_callback(functools.partial(self.on_done, task.get_name()))

    async def steps(self, body: Body, result: Any = None) -> Any:
        for step in body:
            if isinstance(step, AWAIT_STEPS):
                await self.wait(step)
            else:
                self.act(step)
        return result

    def target(self, target: Target) -> Any:
        """The future or task a target names (None for a task not spawned)."""
        if isinstance(target, FutureRef):
            return self.futures[target.future]
        if isinstance(target, TaskRef):
            return self.numbered.get(target.task)
        return self.start(f"I{target.id}", target.body, target.id)

    def delay(self, step: Sleep | WaitFor | Timeout) -> float:
        return step.ticks + self.offsets[step.id] if step.ticks else 0

    async def wait(self, step: AwaitStep) -> None:
        loop = self.loop
        match step:
            case Await(id=i, target=target):
                awaitable = self.target(target)
                if awaitable is None:
                    self.emit(("missing", i))
                    return
                self.emit(("ok", i, self.value(await awaitable)))
            case Sleep(id=i):
                self.emit(("ok", i, await asyncio.sleep(self.delay(step))))
            case Shield(id=i, target=target):
                awaitable = self.target(target)
                if awaitable is None:
                    self.emit(("missing", i))
                    return
                self.emit(("ok", i, self.value(await asyncio.shield(awaitable))))
            case Gather(id=i, targets=targets, return_exceptions=return_exceptions):
                awaitables = [self.target(target) for target in targets]
                if None in awaitables:
                    self.emit(("missing", i))
                    awaitables = [a for a in awaitables if a is not None]
                gathered = asyncio.gather(*awaitables, return_exceptions=return_exceptions)
                self.emit(("ok", i, self.value(await gathered)))
            case WaitFor(id=i, target=target):
                awaitable = self.target(target)
                if awaitable is None:
                    self.emit(("missing", i))
                    return
                waited = await asyncio.wait_for(awaitable, self.delay(step))
                self.emit(("ok", i, self.value(waited)))
            case Timeout(id=i, body=body):
                timeout = asyncio.timeout(self.delay(step))
                try:
                    async with timeout:
                        await self.steps(body)
                finally:
                    self.emit(("timeout-exit", i, timeout.expired()))
            case Group(id=i, children=children):
                async with asyncio.TaskGroup() as group:
                    group._tasks = _CreationOrder()  # type: ignore[attr-defined]
                    for k, child in enumerate(children):
                        self.adopt(group.create_task(self.steps(child, k), name=f"G{i}.{k}"))
                self.emit(("ok", i, None))
            case Try(id=i, body=body, uncancel=uncancel):
                try:
                    await self.steps(body)
                except GeneratorExit:
                    raise
                except BaseException as error:
                    self.emit(("caught", i, self.describe(error)))
                    if uncancel and isinstance(error, asyncio.CancelledError):
                        task = asyncio.current_task()
                        self.emit(("try-uncancel", i, task.uncancel() if task else "no task"))
            case Recv(id=i, nbytes=n):
                self.emit(("ok", i, await loop.sock_recv(self.reader, n)))
            case Sendall(id=i):
                self.emit(("ok", i, await loop.sock_sendall(self.writer, f"s{i};".encode())))
            case _:
                raise TypeError(step)
