"""The timer store (loopy/timers.py): cancelled from anywhere, tidied at one point.

The first two tests are the reproductions of the crash the store's design
fixes: a ``cancel()`` that ran while ``_run_once`` was moving due timers used
to rebuild the heap under its feet, and the next iteration died with
``KeyError``.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest

from loopy.timers import MIN_CANCELLED_TO_COMPACT
from tests.helpers import check_timer_store, pending_timers


@pytest.fixture
def collector() -> Iterator[None]:
    """The garbage collector as a test left it: enabled, default thresholds."""
    thresholds = gc.get_threshold()
    was_enabled = gc.isenabled()
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        if was_enabled:
            gc.enable()


def test_a_timer_fired_hook_may_cancel_most_timers(loop: Any) -> None:
    far = [loop.call_later(100.0, lambda: None) for _ in range(300)]
    fired: list[str] = []

    class Canceller:
        def timer_fired(self, _loop: Any, _handle: Any, _lateness: float) -> None:
            if not fired:
                fired.append("hook")
                for handle in far[:250]:
                    handle.cancel()

    loop.add_instrument(Canceller())
    loop.call_later(0.001, fired.append, "first")
    loop.call_later(0.001, fired.append, "second")
    loop.call_later(0.002, loop.stop)
    loop.run_forever()  # (the next iteration used to raise KeyError)
    assert fired == ["hook", "first", "second"]
    assert [h for h in pending_timers(loop) if not h.cancelled()] == far[250:]


def test_a_finalizer_may_cancel_most_timers_in_the_middle_of_an_iteration(
    loop: Any, collector: None
) -> None:
    far = [loop.call_later(100.0, lambda: None) for _ in range(300)]
    finalized: list[bool] = []

    class Cleanup:
        """Cancels its timeouts when collected, a common clean-up pattern."""

        def __init__(self) -> None:
            self.cycle = self

        def __del__(self) -> None:
            for handle in far[:250]:
                handle.cancel()
            finalized.append(True)

    def make_garbage() -> None:
        Cleanup()  # unreachable at once, but in a cycle: only the collector frees it
        gc.set_threshold(1)  # ...at the next allocation (3.11) or bytecode check (3.12+)

    fired: list[str] = []
    loop.call_soon(make_garbage)
    loop.call_later(0.001, fired.append, "first")
    loop.call_later(0.002, fired.append, "second")
    loop.call_later(0.003, loop.stop)
    loop.run_forever()
    gc.set_threshold(700)
    assert finalized == [True]
    assert fired == ["first", "second"]
    assert [h for h in pending_timers(loop) if not h.cancelled()] == far[250:]


def test_cancel_only_marks_and_counts(vloop: Any) -> None:
    handles = [vloop.call_later(10.0, print) for _ in range(3 * MIN_CANCELLED_TO_COMPACT)]
    store = vloop._timers
    deadlines, by_deadline = list(store.deadlines), dict(store.by_deadline)
    for handle in handles:
        handle.cancel()
    assert (store.deadlines, store.by_deadline) == (deadlines, by_deadline)  # untouched
    assert (store.count, store.cancelled) == (len(handles), len(handles))
    vloop.call_soon(vloop.stop)
    vloop.run_forever()  # the loop tidies its store: every cancelled timer goes
    assert pending_timers(vloop) == []
    assert not any(handle._scheduled for handle in handles)


def test_a_timer_scheduled_while_the_store_is_busy_waits_in_incoming(vloop: Any) -> None:
    # As when a finalizer schedules one while the loop is in pop_due().
    store = vloop._timers
    when = vloop.time() + 1.0
    store.busy = True
    first = vloop.call_at(when, print)
    store.busy = False
    second = vloop.call_at(when, print)  # must not overtake the first
    assert list(store.incoming) == [first, second]
    assert store.by_deadline == {}
    vloop.call_soon(vloop.stop)
    vloop.run_forever()
    assert store.by_deadline == {when: [first, second]}
    assert pending_timers(vloop) == [first, second]


def test_a_timer_cancelled_before_the_next_iteration_leaves_the_heap_then(
    vloop: Any,
) -> None:
    vloop.call_later(1.0, print).cancel()
    vloop.call_soon(vloop.stop)
    vloop.run_forever()
    assert vloop._timers.deadlines == []
    assert pending_timers(vloop) == []


def test_a_cancelled_head_is_dropped_but_a_live_timer_behind_it_is_kept(vloop: Any) -> None:
    start = vloop.time()
    first = vloop.call_at(start + 1.0, print)
    same = [vloop.call_at(start + 2.0, print) for _ in range(2)]
    vloop.call_soon(vloop.stop)
    vloop.run_forever()
    first.cancel()
    same[0].cancel()
    vloop.call_soon(vloop.stop)
    vloop.run_forever()
    assert pending_timers(vloop) == same  # a group with a live timer stays whole
    assert vloop._timers.deadlines == [start + 2.0]


def test_pending_lists_filed_timers_before_incoming_ones_with_the_same_deadline(
    vloop: Any,
) -> None:
    when = vloop.time() + 5.0
    filed = vloop.call_at(when, print)
    vloop.call_soon(vloop.stop)
    vloop.run_forever()
    later = vloop.call_at(when - 1.0, print)
    incoming = vloop.call_at(when, print)
    assert vloop._timers.pending() == [later, filed, incoming]
    check_timer_store(vloop._timers)


def test_closing_the_loop_lets_every_timer_go(loop: Any) -> None:
    filed = loop.call_later(10.0, print)
    loop.call_soon(loop.stop)
    loop.run_forever()
    incoming = loop.call_later(10.0, print)
    loop.close()
    assert not filed._scheduled
    assert not incoming._scheduled
    incoming.cancel()  # a cancel after close counts nothing
    assert (loop._timers.count, loop._timers.cancelled) == (0, 0)


def test_a_timer_cancelled_after_the_tidy_up_is_dropped_when_due(vloop: Any) -> None:
    # Cancelled by a hook between step 1 and step 3: pop_due meets it.
    fired: list[str] = []
    start = vloop.time()
    lone = vloop.call_later(1.0, fired.append, "lone")
    pair = [vloop.call_later(2.0, fired.append, name) for name in ("a", "b")]

    class Canceller:
        def wait_started(self, loop: Any, _timeout: float | None) -> None:
            # First wait: for the lone timer; the next: for the pair.
            (lone if loop.time() < 1.0 + start else pair[0]).cancel()

    vloop.add_instrument(Canceller())
    vloop.call_later(3.0, vloop.stop)
    vloop.run_forever()
    assert fired == ["b"]
    assert pending_timers(vloop) == []
