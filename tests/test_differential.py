"""Differential testing: random asyncio programs run the same on asyncio's loop and on loopy's.

Hypothesis generates small programs (``tests/programs.py``: callbacks,
timers, futures, tasks, cancellation, ``shield``, ``gather``, ``wait_for``,
``timeout``, ``TaskGroup``, errors in callbacks, ``loop.stop()``, socket
reads and writes, callbacks that hold the loop), in debug mode or not, with
an exception handler or with asyncio's default one, runs each on asyncio's
loop and on loopy's in both task modes, all on a virtual clock, and requires
the same trace of events from all three -- the records of the ``asyncio``
(and ``loopy``) loggers included -- once normalised: timers due at the same instant may run in any
order (asyncio's heap does not keep scheduling order, loopy does), so those
are compared as a multiset; everything else must match exactly.  A failure
prints the program as pseudo-code and the difference between the traces.

CI runs a fixed set of 1,000 programs (``derandomize``: the same on every
run, about 3 seconds here).  To explore further, set ``LOOPY_DIFF_EXAMPLES``
to run that many programs, new random ones on each run::

    LOOPY_DIFF_EXAMPLES=5000 uv run pytest tests/test_differential.py -k random

(about 3 seconds per thousand; add ``--hypothesis-seed=N`` to repeat a run.
A failure is shrunk to a small program, printed, and comes with a
``@reproduce_failure`` line that replays it.)  The hand-written programs
below pin down orderings that are easy to get wrong; a program found by
exploring makes a good new one.
"""

from __future__ import annotations

import difflib
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from tests.helpers import LOOPY_KINDS
from tests.programs import (
    Await,
    Block,
    CallLater,
    CallSoon,
    Cancel,
    Cancelling,
    FutureRef,
    Gather,
    Group,
    Inline,
    Note,
    Outcome,
    Program,
    Raise,
    Recv,
    Resolve,
    Send,
    Sendall,
    Shield,
    Sleep,
    Spawn,
    Stop,
    TaskRef,
    Timeout,
    Try,
    Unwatch,
    WaitFor,
    Watch,
    normalise,
    programs,
    run_program,
)

#: Random programs per run when exploring; unset (or 0) in CI.
EXPLORE = int(os.environ.get("LOOPY_DIFF_EXAMPLES", "0"))
#: Programs per CI run: each takes about a millisecond on each of the three loops.
CI_EXAMPLES = 1000


def assert_same_as_asyncio(
    program: Program, kinds: tuple[str, ...] = LOOPY_KINDS
) -> dict[str, Outcome]:
    """Run ``program`` on asyncio's loop and on each of ``kinds``; the traces must agree.

    Returns every loop's outcome, by kind, for tests that check more.
    """
    reference = run_program(program, "asyncio")
    # An exception type the program cannot raise comes from the interpreter.
    assert not reference.unexpected, f"interpreter bug: {reference.unexpected}"
    outcomes = {"asyncio": reference}
    for kind in kinds:
        outcome = outcomes[kind] = run_program(program, kind)
        if outcome.normalised() != reference.normalised():
            raise AssertionError(_explain(program, reference, kind, outcome))
    return outcomes


def _explain(program: Program, reference: Outcome, kind: str, outcome: Outcome) -> str:
    """The failure message: the program, and how the traces differ."""
    diff = difflib.unified_diff(_lines(reference), _lines(outcome), "asyncio", kind, lineterm="")
    return "\n".join(
        [
            f"{kind} differs from asyncio on this program:",
            "",
            program.render(),
            "",
            "normalised traces:",
            *diff,
            "",
            "raw traces (@: a timer's event, and the timer's deadline in seconds from the start):",
            "asyncio:",
            *(f"    {line}" for line in reference.lines()),
            f"{kind}:",
            *(f"    {line}" for line in outcome.lines()),
        ]
    )


def _lines(outcome: Outcome) -> list[str]:
    trace, reports = outcome.normalised()
    return [repr(event) for event in trace] + [f"report: {report}" for report in reports]


@settings(
    max_examples=EXPLORE or CI_EXAMPLES,
    derandomize=not EXPLORE,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(programs())
def test_random_programs_agree(program: Program) -> None:
    assert_same_as_asyncio(program)


# ----------------------------------------------------------------------
# The normalisation itself
# ----------------------------------------------------------------------


def test_normalise_compares_timers_with_equal_deadlines_as_a_multiset() -> None:
    one = [
        (None, ("cb", "root")),
        ((1.0, 1), ("timer", 1)),
        ((1.0, 2), ("timer", 2)),
        ((1.0, 2), ("callback-error", ("Boom", ("x3",)))),
        ((2.0, 4), ("timer", 4)),
        (None, ("note", 5)),
    ]
    swapped = [one[0], one[2], one[3], one[1], *one[4:]]
    assert normalise(swapped) == normalise(one)
    assert normalise(one) == [
        ("cb", "root"),
        ("timers", ((("timer", 1),), (("timer", 2), ("callback-error", ("Boom", ("x3",)))))),
        ("timers", ((("timer", 4),),)),
        ("note", 5),
    ]


def test_normalise_keeps_the_order_of_everything_else() -> None:
    trace = [((1.0, 1), ("timer", 1)), ((2.0, 2), ("timer", 2)), (None, ("note", 3))]
    # Distinct deadlines: earliest first, always.
    assert normalise([trace[1], trace[0], trace[2]]) != normalise(trace)
    # Untimed events keep their exact position.
    assert normalise([trace[2], *trace[:2]]) != normalise(trace)
    # A timer's own events stay with it: moving one to another timer is a difference.
    moved = [((1.0, 1), ("timer", 1)), ((1.0, 1), ("note", 9)), ((1.0, 2), ("timer", 2))]
    other = [((1.0, 1), ("timer", 1)), ((1.0, 2), ("timer", 2)), ((1.0, 2), ("note", 9))]
    assert normalise(moved) != normalise(other)


# ----------------------------------------------------------------------
# Hand-written programs: orderings that are easy to get wrong
# ----------------------------------------------------------------------


def _events(outcome: Outcome) -> list[tuple[Any, ...]]:
    return [event for _, event in outcome.trace]


@pytest.mark.parametrize("kind", LOOPY_KINDS)
def test_equal_deadline_timers(kind: str) -> None:
    program = Program(
        futures=1,
        io="none",
        root=(
            CallLater(1, 1, (Note(2),)),
            CallLater(3, 1, (Raise(4, "Boom"),)),
            CallLater(5, 1, (Stop(),)),
            CallLater(6, 0, (Note(7),)),
            CallLater(8, 2, (Note(9),)),
            # Not a leaf: it gets an offset, and fires just after the others at 1.
            CallLater(10, 1, (Resolve(11, 0, "result"), CallSoon(12, (Note(13),)))),
            CallLater(14, 1, (Note(15),)),
        ),
    )
    outcome = assert_same_as_asyncio(program, (kind,))[kind]
    ties = [
        {block[0][1] for block in entry[1]}
        for entry in normalise(outcome.trace)
        if entry[0] == "timers" and len(entry[1]) > 1
    ]
    assert ties == [{1, 3, 5, 14}]
    # loopy, unlike asyncio, runs equal deadlines in the order they were scheduled.
    timers = [event[1] for event in _events(outcome) if event[0] == "timer"]
    assert timers == [6, 1, 3, 5, 14, 10, 8]


@pytest.mark.parametrize("kind", LOOPY_KINDS)
def test_cancel_while_awaiting_an_already_cancelled_future(kind: str) -> None:
    program = Program(
        futures=3,
        io="none",
        root=(
            Spawn(0, (Try(1, (Await(2, FutureRef(0)),), False), Cancelling(0), Note(3))),
            Spawn(1, (Try(4, (Await(5, FutureRef(1)),), True), Cancelling(1), Note(6))),
            Spawn(2, (Try(13, (Await(14, FutureRef(2)),), False), Cancelling(2))),
            # Runs after the tasks started waiting: each future is cancelled,
            # and then, before the task woke up, the task too (twice for T0).
            # T2's future is still pending when T2 is cancelled.
            CallSoon(
                7,
                (
                    Resolve(8, 0, "cancel-msg"),
                    Cancel(9, 0, True),
                    Cancel(10, 0, False),
                    Resolve(11, 1, "cancel"),
                    Cancel(12, 1, True),
                    Cancel(15, 2, True),
                ),
            ),
        ),
    )
    events = _events(assert_same_as_asyncio(program, (kind,))[kind])
    # The task wakes with the future's CancelledError, not with its own
    # request; that request is used up and the task carries on.
    assert ("caught", 1, ("CancelledError", ("m8",))) in events
    assert ("cancelling", 0, 2) in events
    assert ("done", "T0", "result", 0) in events
    assert ("try-uncancel", 4, 0) in events
    assert ("done", "T1", "result", 1) in events
    # Cancelling a task cancels the future it awaits, with the message.
    assert ("done", "F2", "cancelled") in events
    assert ("caught", 13, ("CancelledError", ("m15",))) in events
    assert ("cancelling", 2, 1) in events


@pytest.mark.parametrize("kind", LOOPY_KINDS)
def test_stop_inside_a_callback(kind: str) -> None:
    program = Program(
        futures=1,
        io="none",
        root=(
            CallSoon(1, (Stop(), CallSoon(2, (Note(3),)))),
            Note(4),
            Spawn(0, (Sleep(5, 0), Sleep(6, 0), Sleep(7, 1), Note(8))),
            CallLater(9, 1, (Stop(),)),
            CallLater(10, 1, (Note(11),)),
            CallLater(12, 2, (Stop(), Stop())),
        ),
    )
    events = _events(assert_same_as_asyncio(program, (kind,))[kind])
    runs: list[list[Any]] = []
    for event in events:
        if event == ("run_forever",):
            runs.append([])
        elif event[0] != "phase":
            runs[-1].append(event)
    assert runs == [
        # stop() ends the run after the current iteration: T0's first step,
        # queued behind the stopping callback, still runs (and yields); #2,
        # which the stopping callback scheduled, waits for the next run.
        [("cb", "root"), ("note", 4), ("cb", 1), ("stop",)],
        [
            ("cb", 2),
            ("note", 3),
            ("ok", 5, None),
            ("ok", 6, None),
            ("timer", 9, 1.0),
            ("stop",),
            ("timer", 10, 1.0),
            ("note", 11),
        ],
        # T0's sleep(1) ends just after the two timers (its offset).
        [
            ("ok", 7, None),
            ("note", 8),
            ("done", "T0", "result", 0),
            ("timer", 12, 2.0),
            ("stop",),
            ("stop",),
        ],
        [],  # until the end of the phase
    ]


@pytest.mark.parametrize("kind", LOOPY_KINDS)
def test_task_groups_timeouts_and_gathering(kind: str) -> None:
    program = Program(
        futures=3,
        io="none",
        root=(
            Spawn(
                0,
                (
                    Try(
                        1,
                        (
                            Group(
                                2,
                                (
                                    (Sleep(3, 1), Raise(4, "Boom")),
                                    (Await(5, FutureRef(0)),),
                                    (Try(6, (Sleep(7, 2),), True), Note(8)),
                                    (Raise(9, "Boom"),),
                                ),
                            ),
                        ),
                        False,
                    ),
                    Try(10, (Timeout(11, 1, (Await(12, FutureRef(1)),)),), False),
                    WaitFor(13, FutureRef(2), 2),
                    Try(14, (WaitFor(15, FutureRef(1), 0),), False),
                ),
            ),
            Spawn(
                1,
                (
                    Gather(16, (TaskRef(0), Inline(17, (Raise(18, "Halt"),))), True),
                    Shield(19, FutureRef(0)),
                ),
            ),
            CallLater(20, 1, (Resolve(21, 2, "result"),)),
        ),
    )
    events = _events(assert_same_as_asyncio(program, (kind,))[kind])
    # G2.3 fails at once: the group cancels the others; G2.2 swallows it.
    assert ("done", "G2.2", "result", 2) in events
    group_error = ("ExceptionGroup", "unhandled errors in a TaskGroup", (("Boom", ("x9",)),))
    assert ("caught", 1, group_error) in events
    # The timeout expires (and cancels F1); wait_for(F2) does not.
    assert ("timeout-exit", 11, True) in events
    assert ("caught", 10, ("TimeoutError", (), "from", ("CancelledError", ()))) in events
    assert ("ok", 13, 21) in events
    # gather(return_exceptions=True) returns Halt, a BaseException, as a value.
    assert ("ok", 16, (0, ("raised", ("Halt", ("x18",))))) in events
    # shield() of the cancelled F0 raises CancelledError at once.
    assert events[-1] == ("done", "T1", "cancelled")


@pytest.mark.parametrize("kind", LOOPY_KINDS)
def test_socket_reads_by_sock_recv(kind: str) -> None:
    program = Program(
        futures=1,
        io="recv",
        root=(
            Spawn(0, (Recv(1, 2), Recv(2, 100), Recv(3, 100))),
            Send(4),
            CallLater(5, 1, (Send(6), Send(7))),
            Spawn(1, (Sleep(8, 2), Sendall(9))),
            Spawn(2, (Sleep(10, 0), Sleep(11, 0))),
        ),
    )
    events = _events(assert_same_as_asyncio(program, (kind,))[kind])
    assert [event for event in events if event[0] == "ok"] == [
        # Data already there: sock_recv returns without waiting, twice.
        ("ok", 1, b"d4"),
        ("ok", 2, b";"),
        ("ok", 10, None),
        ("ok", 11, None),
        ("ok", 3, b"d6;d7;"),
        ("ok", 8, None),
        ("ok", 9, None),
    ]


@pytest.mark.parametrize("kind", LOOPY_KINDS)
def test_socket_reads_by_a_reader_callback(kind: str) -> None:
    program = Program(
        futures=1,
        io="reader",
        root=(
            Watch(3),
            Send(1),
            CallLater(2, 0, (Note(3),)),
            CallLater(4, 1, (Send(5), CallSoon(6, (Unwatch(),)))),
            CallLater(7, 2, (Watch(100),)),
        ),
    )
    events = _events(assert_same_as_asyncio(program, (kind,))[kind])
    assert [event for event in events if event[0] in ("read", "remove_reader", "timer")] == [
        # In one iteration, callbacks of ready descriptors run before due timers.
        ("read", b"d1;"),
        ("timer", 2, 0.0),
        ("timer", 4, 1.0625),  # whole ticks and its offset: it is not a leaf timer
        # The reader, queued in the iteration after this timer, comes after
        # the callback the timer scheduled, which removes it.
        ("remove_reader", True),
        ("timer", 7, 2.03125),
        ("read", b"d5;"),
    ]


@pytest.mark.parametrize("kind", LOOPY_KINDS)
def test_logged_errors_and_slow_callbacks(kind: str) -> None:
    program = Program(
        futures=1,
        io="none",
        root=(
            CallSoon(1, (Block(2), Raise(3, "Boom"))),
            CallLater(4, 1, (Block(5), Note(6))),
            Spawn(0, (Sleep(7, 0), Block(8), Raise(9, "Boom"))),
        ),
        debug=True,
        handler=False,
    )
    events = _events(assert_same_as_asyncio(program, (kind,))[kind])
    logged = [event[1:] for event in events if event[0] == "logged"]
    assert logged == [
        # Each on asyncio's logger, right after the callback, as asyncio logs
        # it: the error while the callback is still the current one, then
        # how long it took.
        (
            "asyncio",
            "ERROR",
            "Exception in callback _Interpreter.callback"
            "(1, (Block(id=2), Raise(id=3, error='Boom')))",
            ("Boom", ("x3",)),
        ),
        ("asyncio", "WARNING", "slow", "callback", "1", "0.125 seconds"),
        ("asyncio", "WARNING", "slow", "task", "T0", "0.125 seconds"),
        ("asyncio", "WARNING", "slow", "timer", 4, "0.125 seconds"),
    ]
