"""loopy's lean EpollSelector answers exactly as the standard one does."""

from __future__ import annotations

import errno
import os
import selectors
import socket
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import loopy
from loopy import epoll

pytestmark = pytest.mark.skipif(
    not hasattr(selectors, "EpollSelector"), reason="epoll is Linux-only"
)

PAIRS = 4


def answers(selector: selectors.BaseSelector) -> set[tuple[int, int, Any]]:
    return {(key.fd, events, key.data) for key, events in selector.select(0)}


# One step of a random program: (which pair, what to do).
STEPS = st.lists(
    st.tuples(
        st.integers(0, PAIRS - 1),
        st.sampled_from(["read", "write", "both", "forget", "send", "drain", "hang-up"]),
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(steps=STEPS)
def test_select_answers_as_the_standard_selector(steps: list[tuple[int, str]]) -> None:
    made = [socket.socketpair() for _ in range(PAIRS)]
    ours, theirs = epoll.EpollSelector(), selectors.EpollSelector()
    try:
        for a, _ in made:
            a.setblocking(False)
        events_of = {"read": 1, "write": 2, "both": 3}
        for index, action in steps:
            a, b = made[index]
            if b.fileno() == -1 and action in ("send", "hang-up"):
                continue
            if action in events_of:
                for selector in (ours, theirs):
                    if a.fileno() in selector.get_map():
                        selector.modify(a, events_of[action], action)
                    else:
                        selector.register(a, events_of[action], action)
            elif action == "forget":
                for selector in (ours, theirs):
                    if a.fileno() in selector.get_map():
                        selector.unregister(a)
            elif action == "send":
                b.send(b"x")
            elif action == "drain":
                try:
                    a.recv(1024)
                except BlockingIOError:
                    pass
            else:
                b.close()  # the peer hangs up: readable (EOF), and an error/hang-up
            assert answers(ours) == answers(theirs)
    finally:
        ours.close()
        theirs.close()
        for a, b in made:
            a.close()
            b.close()


def test_a_hang_up_wakes_both_directions() -> None:
    # A pipe's reading end whose writer closed reports EPOLLHUP alone: no
    # EPOLLIN, no EPOLLOUT.  Whichever callback waits must see it.
    read_end, write_end = os.pipe()
    selector = epoll.EpollSelector()
    try:
        selector.register(read_end, selectors.EVENT_READ | selectors.EVENT_WRITE)
        os.close(write_end)
        assert [events for _, events in selector.select(0)] == [
            selectors.EVENT_READ | selectors.EVENT_WRITE
        ]
        # Watching one direction only, the mask stays within it.
        selector.modify(read_end, selectors.EVENT_WRITE)
        assert [events for _, events in selector.select(0)] == [selectors.EVENT_WRITE]
    finally:
        selector.close()
        os.close(read_end)


def test_a_signal_during_the_wait_reports_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    selector = epoll.EpollSelector()

    class Interrupted:
        def poll(self, timeout: float, maxevents: int) -> list[tuple[int, int]]:
            raise InterruptedError(errno.EINTR, "interrupted")

        def close(self) -> None:
            pass

    real = selector._selector  # type: ignore[attr-defined]
    monkeypatch.setattr(selector, "_selector", Interrupted())
    try:
        assert selector.select(None) == []
    finally:
        monkeypatch.setattr(selector, "_selector", real)
        selector.close()


@pytest.mark.parametrize(
    ("timeout", "expected"),
    [(None, -1), (-5.0, 0), (0, 0), (0.0004, 0.001), (0.001, 0.001), (2.5, 2.5)],
)
def test_timeouts_become_whole_milliseconds_rounded_up(
    timeout: float | None, expected: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """epoll counts milliseconds: rounding down would wake the loop before a timer is due."""
    selector = epoll.EpollSelector()
    seen: list[float] = []

    class Recording:
        def poll(self, timeout: float, maxevents: int) -> list[tuple[int, int]]:
            seen.append(timeout)
            return []

    real = selector._selector  # type: ignore[attr-defined]
    monkeypatch.setattr(selector, "_selector", Recording())
    try:
        selector.select(timeout)
    finally:
        monkeypatch.setattr(selector, "_selector", real)
        selector.close()
    assert seen == [pytest.approx(expected)]


def test_loops_use_it_by_default() -> None:
    loop = loopy.new_event_loop()
    try:
        assert type(loop._selector) is epoll.EpollSelector
    finally:
        loop.close()


def test_without_the_expected_internals_the_standard_selector_is_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Reshaped(selectors.EpollSelector):
        """A future standard library whose selector keeps its table elsewhere."""

        def __init__(self) -> None:
            super().__init__()
            del self._fd_to_key  # type: ignore[attr-defined]

        def close(self) -> None:
            self._fd_to_key: dict[int, Any] = {}
            super().close()

    monkeypatch.setattr(selectors, "EpollSelector", Reshaped)
    epoll._has_expected_internals.cache_clear()
    try:
        selector = epoll.default_selector()
        assert type(selector) is selectors.DefaultSelector
        selector.close()
    finally:
        monkeypatch.undo()
        epoll._has_expected_internals.cache_clear()
    selector = epoll.default_selector()
    assert type(selector) is epoll.EpollSelector
    selector.close()


def test_loops_read_epolls_own_bits_and_other_selectors_through_select() -> None:
    ours = epoll.EpollSelector()
    theirs = selectors.PollSelector()
    try:
        fast = epoll.readiness_of(ours)
        assert fast.poll == ours.poll_fds
        assert (fast.readable, fast.writable) == (epoll.EPOLL_READABLE, epoll.EPOLL_WRITABLE)
        generic = epoll.readiness_of(theirs)
        assert (generic.readable, generic.writable) == (selectors.EVENT_READ, selectors.EVENT_WRITE)
        a, b = socket.socketpair()
        try:
            theirs.register(a, selectors.EVENT_READ)
            assert generic.poll(0) == []
            b.send(b"x")
            assert generic.poll(0) == [(a.fileno(), selectors.EVENT_READ)]
        finally:
            a.close()
            b.close()
    finally:
        ours.close()
        theirs.close()


def test_a_hang_up_on_a_descriptor_watched_one_way_runs_only_that_callback() -> None:
    # epoll reports the hang-up as readable and writable; only the reader is there.
    read_end, write_end = os.pipe()
    loop = loopy.new_event_loop()
    try:
        called: list[str] = []
        loop.add_reader(read_end, called.append, "reader")
        os.close(write_end)
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert called == ["reader"]
    finally:
        loop.close()
        os.close(read_end)
