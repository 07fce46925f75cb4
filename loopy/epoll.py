"""A leaner ``selectors.EpollSelector``: the same interface, a cheaper ``select()``.

The loop calls ``select()`` once per iteration, and a busy server iterates
once for every few messages, so the Python code around the ``epoll_wait``
system call is paid again and again.  The standard library's version spends
about half a microsecond there per call, and a little more per ready
descriptor: it computes ``max()`` of the registration count, calls a method to
look up each descriptor's key, and works out each event mask bit by bit.

This subclass keeps everything else of :class:`selectors.EpollSelector`
(registration, ``get_key``, ``get_map``, ``close``) and replaces only
``select()``, with the same contract: a list of ``(SelectorKey, events)``.
It reads the two attributes its parent keeps for exactly this purpose, the
``epoll`` object (``_selector``) and the descriptor-to-key table
(``_fd_to_key``); ``tests/test_epoll.py`` checks that they are still there,
and :func:`default_selector` falls back to the standard selector if not.

On systems without epoll the loop uses ``selectors.DefaultSelector`` as it is.
"""

from __future__ import annotations

import functools
import math
import select
import selectors
from typing import Any

__all__ = ["EpollSelector", "default_selector"]

_EVENT_READ = selectors.EVENT_READ
_EVENT_WRITE = selectors.EVENT_WRITE


class _EventMasks(dict[int, int]):
    """epoll's event bits -> the selectors mask, worked out once per distinct value.

    Like the standard selector, an error or hang-up (``EPOLLERR``,
    ``EPOLLHUP``) counts as both readable and writable, so that whichever
    callback is waiting gets to see the error.  A server sees only a few
    distinct values, so after the first of each the lookup is one dict access.
    """

    def __missing__(self, events: int) -> int:
        mask = (_EVENT_READ if events & ~select.EPOLLOUT else 0) | (
            _EVENT_WRITE if events & ~select.EPOLLIN else 0
        )
        self[events] = mask
        return mask


class EpollSelector(selectors.EpollSelector):
    """``selectors.EpollSelector`` whose ``select()`` does less work per call."""

    _masks = _EventMasks()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        """Wait up to ``timeout`` seconds (None: forever); return the ready keys and events."""
        if timeout is None:
            timeout = -1
        elif timeout <= 0:
            timeout = 0
        else:
            # epoll counts whole milliseconds: round up, or a timer due in
            # 0.4 ms would make the loop spin without waiting.
            timeout = math.ceil(timeout * 1e3) * 1e-3
        # (The parent's attributes, which typeshed does not declare.)
        keys: dict[int, selectors.SelectorKey] = self._fd_to_key  # type: ignore[attr-defined]
        epoll: select.epoll = self._selector  # type: ignore[attr-defined]
        try:
            # At most as many events as descriptors (at least 1: epoll refuses 0).
            polled = epoll.poll(timeout, len(keys) or 1)
        except InterruptedError:  # a signal arrived: report nothing, the loop will look
            return []
        masks = self._masks
        ready = []
        for fd, events in polled:
            key = keys.get(fd)
            if key is not None:  # (defensive, as the standard selector is)
                ready.append((key, masks[events] & key.events))
        return ready


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
