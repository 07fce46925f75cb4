"""Asking the kernel what is ready, cheaply: a leaner ``selectors.EpollSelector``.

The loop asks once per iteration, and a busy server iterates once for every
few messages, so the Python code around the ``epoll_wait`` system call is
paid again and again.  The standard library's ``select()`` spends about half
a microsecond there per call, and more per ready descriptor: it computes
``max()`` of the registration count, calls a method to look up each
descriptor's key, works out each event mask bit by bit and builds a
``(key, events)`` tuple for each.

:class:`EpollSelector` keeps everything of :class:`selectors.EpollSelector`
(registration, ``get_key``, ``get_map``, ``close``, and ``select()`` with the
same contract) and adds :meth:`EpollSelector.poll_fds`, which returns
epoll's own ``(fd, event bits)`` pairs untouched.  The loop keeps its own
table of descriptors (``Loop._watches``), so that is all it needs; which
bits mean "readable" and "writable" comes with them from
:func:`readiness_of`, which also serves any other selector (a fake one in
the tests, ``kqueue`` on macOS) through its standard ``select()``.

:class:`EpollSelector` reads the two attributes its parent keeps, the
``epoll`` object (``_selector``) and the descriptor-to-key table
(``_fd_to_key``); ``tests/test_epoll.py`` checks that they are still there,
and :func:`default_selector` falls back to the standard selector if not.
"""

from __future__ import annotations

import functools
import math
import select
import selectors
from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = ["EpollSelector", "Readiness", "default_selector", "readiness_of"]

_EVENT_READ = selectors.EVENT_READ
_EVENT_WRITE = selectors.EVENT_WRITE


#: epoll's bits that make a descriptor count as readable (anything but "writable":
#: an error or hang-up wakes a reader too) and as writable, as the standard selector counts.
EPOLL_READABLE = ~select.EPOLLOUT
EPOLL_WRITABLE = ~select.EPOLLIN


class _EventMasks(dict[int, int]):
    """epoll's event bits -> the selectors mask, worked out once per distinct value.

    Like the standard selector, an error or hang-up (``EPOLLERR``,
    ``EPOLLHUP``) counts as both readable and writable, so that whichever
    callback is waiting gets to see the error.  A server sees only a few
    distinct values, so after the first of each the lookup is one dict access.
    """

    def __missing__(self, events: int) -> int:
        mask = (_EVENT_READ if events & EPOLL_READABLE else 0) | (
            _EVENT_WRITE if events & EPOLL_WRITABLE else 0
        )
        self[events] = mask
        return mask


class EpollSelector(selectors.EpollSelector):
    """``selectors.EpollSelector`` that can also report readiness without building keys."""

    _masks = _EventMasks()

    def poll_fds(self, timeout: float | None = None) -> list[tuple[int, int]]:
        """Wait up to ``timeout`` seconds (None: forever); return epoll's ``(fd, bits)`` pairs."""
        if timeout is None:
            timeout = -1
        elif timeout <= 0:
            timeout = 0
        else:
            # epoll counts whole milliseconds: round up, or a timer due in
            # 0.4 ms would make the loop spin without waiting.
            timeout = math.ceil(timeout * 1e3) * 1e-3
        # (The parent's attributes, which typeshed does not declare.)
        epoll: select.epoll = self._selector  # type: ignore[attr-defined]
        try:
            # At most as many events as descriptors (at least 1: epoll refuses 0).
            return epoll.poll(timeout, len(self._fd_to_key) or 1)  # type: ignore[attr-defined]
        except InterruptedError:  # a signal arrived: report nothing, the loop will look
            return []

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        """Wait up to ``timeout`` seconds (None: forever); return the ready keys and events."""
        keys: dict[int, selectors.SelectorKey] = self._fd_to_key  # type: ignore[attr-defined]
        masks = self._masks
        ready = []
        for fd, events in self.poll_fds(timeout):
            key = keys.get(fd)
            if key is not None:  # (defensive, as the standard selector is)
                ready.append((key, masks[events] & key.events))
        return ready


class Readiness(NamedTuple):
    """How a loop asks a selector what is ready (see :func:`readiness_of`)."""

    poll: Callable[[float | None], list[tuple[int, int]]]  # timeout -> [(fd, events)]
    readable: int  # the bits of ``events`` that mean "readable"
    writable: int  # and "writable"


def readiness_of(selector: selectors.BaseSelector) -> Readiness:
    """How to ask ``selector`` for ``(fd, events)`` pairs, and what their bits mean."""
    if isinstance(selector, EpollSelector):
        return Readiness(selector.poll_fds, EPOLL_READABLE, EPOLL_WRITABLE)

    def select_fds(timeout: float | None) -> list[tuple[int, int]]:
        return [(key.fd, events) for key, events in selector.select(timeout)]

    return Readiness(select_fds, selectors.EVENT_READ, selectors.EVENT_WRITE)


@functools.cache
def _has_expected_internals() -> bool:
    probe: Any = selectors.EpollSelector()
    try:
        return isinstance(getattr(probe, "_fd_to_key", None), dict) and hasattr(
            getattr(probe, "_selector", None), "poll"
        )
    finally:
        probe.close()


def default_selector() -> selectors.BaseSelector:
    """The selector a loop uses when given none: the lean epoll one where it can."""
    if hasattr(selectors, "EpollSelector") and _has_expected_internals():
        return EpollSelector()
    return selectors.DefaultSelector()
