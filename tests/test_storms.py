"""Storms: the loop's three stores changed from everywhere user code can run.

User code runs not only in callbacks: an instrument hook runs inside an
iteration, a ``__del__`` runs wherever the garbage collector does (with
``gc.set_threshold(1)``, at nearly every allocation), a ``signal.signal``
handler between any two bytecodes that check for one, and a
``sys.setprofile`` hook at every C call (here: the k-th one made by the
loop's own code, a deterministic way to reach every point of an iteration).
Each random program hands out operations to those agents -- schedule or
cancel a timer, ``call_soon`` or cancel a handle, watch, unwatch or close a
socket -- and checks, after each iteration, the invariants of the timer store
(``tests.helpers.check_timer_store``) and of the table of watched
descriptors, and at the end a model of what must have run:

* a cancelled timer or handle never runs; the others run exactly once;
* timers run no earlier than their deadline; in one iteration, earliest
  deadline first, ties in scheduling order; ``call_soon`` callbacks in the
  order they were scheduled;
* a reader never runs once a callback or a hook unwatched its descriptor.

Example counts are small so the suite stays fast (a few seconds).
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import signal
import socket
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopy.instruments import HOOK_NAMES
from tests.helpers import LOOPY_KINDS, catch_errors, check_timer_store, make_loop

#: Who performs an operation: the first two are deterministic, the rest run anywhere.
AGENTS = ("callback", "hook", "finalizer", "signal", "profile")
STORM = settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,
)

#: An operation: (agent, what, a number: deadline offset or which one).
Operation = tuple[str, str, int]


def operations(kinds: tuple[str, ...]) -> st.SearchStrategy[list[Operation]]:
    return st.lists(
        st.tuples(st.sampled_from(AGENTS), st.sampled_from(kinds), st.integers(0, 40)),
        min_size=1,
        max_size=40,
    )


class Storm:
    """Runs a program's operations from its agents on a loop with a virtual clock."""

    def __init__(self, loop: Any, program: list[Operation], every: int) -> None:
        self.loop = loop
        self.errors = catch_errors(loop)  # the loop reports none: nothing crashed
        self.start = loop.time()
        self.queues: dict[str, list[tuple[str, int]]] = {agent: [] for agent in AGENTS}
        for agent, what, number in program:
            self.queues[agent].append((what, number))
        self.every = every  # the profile agent acts on every `every`-th C call
        self.calls = 0
        self.quiet = False  # set while checking: the agents hold still
        self.order = itertools.count()
        self.timers: list[tuple[Any, int, bool]] = []  # (handle, seq, deterministic)
        self.soon: list[tuple[Any, int, bool]] = []
        # Seqs of what was cancelled before it ran: by callbacks and hooks,
        # which run at known points; the other agents race with the callback
        # they cancel (it may have just started), so theirs may have run.
        self.cancelled: set[int] = set()
        self.maybe_cancelled: set[int] = set()
        self.started: set[int] = set()  # seqs whose callback started (its first line)
        self.ran: list[tuple[str, int, bool]] = []  # ("timer" | "soon", seq, deterministic)
        self.iteration = 0
        self.batches: list[list[tuple[float, int]]] = []  # deterministic timers per iteration
        self.sockets: list[tuple[socket.socket, socket.socket]] = []
        # Sockets (by index) unwatched by a callback or a hook, whose reader
        # must not run again; and those unwatched or closed by anyone.
        self.unwatched: set[int] = set()
        self.gone: set[int] = set()
        self.read_after_unwatch: list[int] = []

    # -- the agents -----------------------------------------------------------

    def act(self, agent: str) -> None:
        """Perform the agent's next operation, unless checks are running."""
        if self.quiet:
            return
        try:
            what, number = self.queues[agent].pop(0)
        except IndexError:  # (another agent may have taken the last one meanwhile)
            return
        deterministic = agent in ("callback", "hook")
        getattr(self, what)(number, deterministic)

    def finalizer(self) -> None:
        """Leave garbage in a cycle whose ``__del__`` acts as the finalizer agent."""
        storm = self

        class Garbage:
            def __init__(self) -> None:
                self.cycle = self

            def __del__(self) -> None:
                storm.act("finalizer")

        Garbage()

    def profile(self, frame: Any, event: str, _arg: Any) -> None:
        if event == "c_call" and frame.f_code.co_filename.endswith(("loop.py", "timers.py")):
            self.calls += 1
            if self.calls % self.every == 0:
                self.act("profile")

    # -- the operations ---------------------------------------------------------

    def schedule(self, number: int, deterministic: bool) -> None:
        seq = next(self.order)
        handle = self.loop.call_at(self.start + number % 6, self.timer_fired, seq)
        self.timers.append((handle, seq, deterministic))

    def cancel(self, number: int, deterministic: bool) -> None:
        if self.timers:
            handle, seq, _ = self.timers[number % len(self.timers)]
            self.cancelled_now(handle, seq, deterministic)

    def cancelled_now(self, handle: Any, seq: int, deterministic: bool) -> None:
        handle.cancel()
        if not deterministic:
            self.maybe_cancelled.add(seq)
        elif seq not in self.started:
            self.cancelled.add(seq)

    def call_soon(self, _number: int, deterministic: bool) -> None:
        seq = next(self.order)
        self.soon.append((self.loop.call_soon(self.soon_ran, seq), seq, deterministic))

    def cancel_soon(self, number: int, deterministic: bool) -> None:
        if self.soon:
            handle, seq, _ = self.soon[number % len(self.soon)]
            self.cancelled_now(handle, seq, deterministic)

    def watch(self, _number: int, _deterministic: bool) -> None:
        a, b = socket.socketpair()
        # Non-blocking: a reader may be called when there is nothing to read
        # (the descriptor's number passed to a new socket since the poll).
        a.setblocking(False)
        index = len(self.sockets)
        self.sockets.append((a, b))
        self.loop.add_reader(a, self.readable, index)
        with contextlib.suppress(OSError):  # (another agent may have closed it already)
            b.send(b"x")

    def unwatch(self, number: int, deterministic: bool) -> None:
        if self.sockets:
            index = number % len(self.sockets)
            if index not in self.gone:  # (a closed socket no longer watched has no number)
                self.gone.add(index)
                self.loop.remove_reader(self.sockets[index][0])
                if deterministic:
                    self.unwatched.add(index)

    def close(self, number: int, _deterministic: bool) -> None:
        """Close a watched socket without unwatching it first."""
        if self.sockets:
            index = number % len(self.sockets)
            self.gone.add(index)
            self.sockets[index][0].close()

    # -- what runs --------------------------------------------------------------

    def timer_fired(self, seq: int) -> None:
        self.started.add(seq)
        handle, _, deterministic = next(t for t in self.timers if t[1] == seq)
        assert self.loop.time() >= handle.when() - self.loop._clock_resolution
        self.ran.append(("timer", seq, deterministic))
        if deterministic and self.batches:
            self.batches[-1].append((handle.when(), seq))
        self.act("callback")
        self.finalizer()

    def soon_ran(self, seq: int) -> None:
        self.started.add(seq)
        self.ran.append(("soon", seq, next(s[2] for s in self.soon if s[1] == seq)))
        self.act("callback")

    def readable(self, index: int) -> None:
        if index in self.unwatched:
            self.read_after_unwatch.append(index)
        sock = self.sockets[index][0]
        if sock.fileno() != -1:  # (closed since the poll reported it: the loop cannot know)
            with contextlib.suppress(BlockingIOError):
                sock.recv(1)
        self.act("callback")

    # -- checks -------------------------------------------------------------------

    def iteration_started(self, _loop: Any) -> None:
        self.batches.append([])
        self.act("hook")

    def iteration_finished(self, _loop: Any) -> None:
        self.act("hook")
        self.quiet = True
        try:
            check_timer_store(self.loop._timers)
            check_watches(self.loop)
        finally:
            self.quiet = False

    def run(self) -> None:
        loop = self.loop

        instrument = storm_instrument(self)
        loop.add_instrument(instrument)
        for _ in range(3):
            self.act("callback")  # a start
        loop.call_at(self.start + 10, loop.stop)
        old_handler = signal.signal(signal.SIGALRM, lambda *_args: self.act("signal"))
        thresholds = gc.get_threshold()
        try:
            gc.set_threshold(1)
            signal.setitimer(signal.ITIMER_REAL, 1e-4, 1e-4)
            sys.setprofile(self.profile)
            self.finalizer()
            loop.run_forever()
        finally:
            sys.setprofile(None)
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old_handler)
            gc.set_threshold(*thresholds)
        # The agents hold still; what is still pending must now run.
        self.quiet = True
        for _ in range(20):
            if not loop._timers.count and not loop._ready:
                break
            loop.call_at(loop.time() + 10, loop.stop)
            loop.run_forever()
        loop.remove_instrument(instrument)
        for a, _ in self.sockets:
            if a.fileno() != -1:
                loop.remove_reader(a)

    def check_model(self) -> None:
        ran = [seq for _, seq, _ in self.ran]
        assert len(ran) == len(set(ran))  # nothing ran twice
        assert not self.cancelled & set(ran)  # nothing cancelled ran
        scheduled = {seq for _, seq, _ in self.timers + self.soon}
        assert scheduled - self.cancelled - self.maybe_cancelled <= set(ran)
        assert set(ran) <= scheduled - self.cancelled
        for batch in self.batches:
            assert batch == sorted(batch)  # earliest first, ties in scheduling order
        soon = [seq for kind, seq, deterministic in self.ran if kind == "soon" and deterministic]
        assert soon == sorted(soon)
        assert self.read_after_unwatch == []
        assert self.errors == []

    def close_sockets(self) -> None:
        for a, b in self.sockets:
            a.close()
            b.close()


def storm_instrument(storm: Storm) -> object:
    """An instrument with every hook: each acts as the hook agent; two also check."""

    def hook(instrument: Any, *_args: Any) -> None:
        instrument.storm.act("hook")

    namespace: dict[str, Any] = dict.fromkeys(HOOK_NAMES, hook)
    namespace["iteration_started"] = lambda instrument, loop: storm.iteration_started(loop)
    namespace["iteration_finished"] = lambda instrument, loop: storm.iteration_finished(loop)
    instrument: Any = type("StormInstrument", (), namespace)()
    instrument.storm = storm
    return instrument


def check_watches(loop: Any) -> None:
    """The table of watched descriptors and the selector agree (see ``Loop._watches``)."""
    registered = loop._selector.get_map()
    assert len(registered) == len(loop._watches)
    for fd, watch in loop._watches.items():
        key = registered[fd]
        assert key.data is watch
        assert key.events == watch.events
        assert (watch.reader is not None) == bool(watch.events & 1)
        assert (watch.writer is not None) == bool(watch.events & 2)


@pytest.fixture(params=LOOPY_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def storm(kind: str, program: list[Operation], every: int) -> Iterator[Storm]:
    loop = make_loop(kind, virtual=True)
    state = Storm(loop, program, every)
    try:
        yield state
    finally:
        state.quiet = True
        gc.collect()  # the garbage left behind acts no more
        state.close_sockets()
        loop.close()


def run_storm(kind: str, program: list[Operation], every: int) -> None:
    for state in storm(kind, program, every):
        state.run()
        state.check_model()


@STORM
@given(program=operations(("schedule", "cancel")), every=st.integers(1, 40))
def test_timer_storm(kind: str, program: list[Operation], every: int) -> None:
    run_storm(kind, program, every)


@STORM
@given(program=operations(("call_soon", "cancel_soon", "schedule")), every=st.integers(1, 40))
def test_ready_queue_storm(kind: str, program: list[Operation], every: int) -> None:
    run_storm(kind, program, every)


@STORM
@given(program=operations(("watch", "unwatch", "close", "schedule")), every=st.integers(1, 40))
def test_watched_descriptor_storm(kind: str, program: list[Operation], every: int) -> None:
    run_storm(kind, program, every)


# -- the points the storms found, one deterministic test each --------------------


def test_a_wait_finished_hook_may_unwatch_a_descriptor_the_poll_reported(
    loop: Any, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    ran: list[str] = []

    class Unwatcher:
        def wait_finished(self, loop: Any, events: list[tuple[int, int]]) -> None:
            if events:
                loop.remove_reader(a)

    errors = catch_errors(loop)
    loop.add_reader(a, ran.append, "reader")
    b.send(b"x")
    loop.add_instrument(Unwatcher())
    loop.call_later(0.01, loop.stop)
    loop.run_forever()  # (the descriptor's lookup used to raise KeyError)
    assert ran == []
    assert errors == []


def test_a_callback_started_hook_may_cancel_the_callback_it_announces(loop: Any) -> None:
    ran: list[str] = []

    class Canceller:
        def callback_started(self, _loop: Any, handle: Any) -> None:
            if handle is victim:
                handle.cancel()

    errors = catch_errors(loop)
    loop.add_instrument(Canceller())
    victim = loop.call_soon(ran.append, "victim")
    loop.call_soon(ran.append, "other")
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert ran == ["other"]
    assert errors == []  # (calling its cleared callback used to raise TypeError)


def test_a_cancel_interrupted_by_another_cancel_of_the_same_timer_counts_it_once(
    vloop: Any,
) -> None:
    handle = vloop.call_later(10.0, print)
    calls = 0

    def profile(_frame: Any, event: str, _arg: Any) -> None:
        # At the first call made inside cancel() (the first event is the call
        # of cancel() itself): a signal handler could run there too.
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1
            if calls == 2:
                handle.cancel()

    sys.setprofile(profile)
    try:
        handle.cancel()
    finally:
        sys.setprofile(None)
    assert vloop._timers.cancelled == 1
    check_timer_store(vloop._timers)


def test_a_descriptor_unwatched_right_after_the_poll_is_left_out_of_wait_finished(
    vloop: Any, pair: tuple[socket.socket, socket.socket]
) -> None:
    # A profile hook stands in for a finalizer or a signal handler that runs
    # as the poll returns, before the instruments are told what it reported.
    a, b = pair
    reported: list[list[tuple[int, int]]] = []

    class Watcher:
        def wait_finished(self, _loop: Any, events: list[tuple[int, int]]) -> None:
            reported.append(events)

    def profile(frame: Any, event: str, _arg: Any) -> None:
        if event == "return" and frame.f_code.co_name == "select_fds":
            vloop.remove_reader(a)

    errors = catch_errors(vloop)
    vloop.add_reader(a, print)
    b.send(b"x")
    vloop.add_instrument(Watcher())
    vloop.call_soon(vloop.stop)
    sys.setprofile(profile)
    try:
        vloop.run_forever()  # (the masks for the instruments used to raise KeyError)
    finally:
        sys.setprofile(None)
    assert reported == [[]]
    assert errors == []


def test_a_finalizer_cannot_split_the_callback_being_called_from_its_arguments(
    loop: Any,
) -> None:
    # On 3.11 the collector runs at the allocation step 4 makes for *args,
    # between reading the callback and reading its arguments.
    ran: list[str] = []

    class Cleanup:
        def __init__(self) -> None:
            self.cycle = self

        def __del__(self) -> None:
            victim.cancel()

    def make_garbage() -> None:
        Cleanup()
        gc.set_threshold(1)

    errors = catch_errors(loop)
    thresholds = gc.get_threshold()
    loop.call_soon(make_garbage)
    victim = loop.call_soon(ran.append, "victim")
    loop.call_soon(loop.stop)
    try:
        loop.run_forever()
    finally:
        gc.set_threshold(*thresholds)
    assert errors == []  # (it used to be called with no arguments)
    assert ran in ([], ["victim"])
