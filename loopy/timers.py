"""The timer store: every pending ``call_later``/``call_at``, earliest deadline first.

The loop keeps its timers in one :class:`TimerStore` (``Loop._timers``).  Its
operations are the four a timer needs -- schedule, cancel, pop what is due,
say when the next one is due (``deadlines[0]``) -- plus
:meth:`TimerStore.tidy`, the one place where cancelled timers leave the
store before they are due.

**Who may touch what.**  A timer is cancelled, and often scheduled, by code
the loop does not control the timing of: a callback, an instrument hook, a
``__del__`` the garbage collector runs in the middle of anything, a Python
signal handler (which runs between any two bytecodes that check for one), a
profiler hook.  Any of these can run while the loop is half-way through
moving due timers to the ready queue.  So the work is split:

* ``TimerHandle.cancel()`` only sets the handle's flag and counts it
  (``cancelled += 1``); it never touches the heap or the dict.
* ``deadlines`` and ``by_deadline`` change only while ``busy`` is set: in
  :meth:`TimerStore.schedule`, which files the handle at once;
  :meth:`TimerStore.tidy`, which the loop calls at the start of step 1 to
  rebuild the store without its cancelled timers when they are most of it
  and to drop cancelled ones from the head; and
  :meth:`TimerStore.pop_due`, which takes out the due ones in step 3.  A
  ``schedule()`` that finds ``busy`` set was called by code that interrupted
  one of those: it only appends the handle to ``incoming``, and the next
  ``tidy()`` files it (so do the ones after it, until then: none may
  overtake it).  Filing reads the entry for a deadline and writes it back:
  a second filing run in between, by a finalizer, would be lost.  The
  containers are changed in place, never replaced, so a reference held
  across an interruption stays good.

**Counting.**  ``count`` and ``cancelled`` are exact (the tests check them
after every iteration), and each ``+=``/``-=`` on them is a read, an integer
operation and a write with no call in between: nothing can run in the
middle of one and have its own update lost.  A handle is counted as
cancelled if ``cancel()`` found ``_scheduled`` true, and it is un-counted
when the store lets it go: the store first clears ``_scheduled``, then looks
at ``_cancelled``.  No Python code can run between those two attribute
accesses (no call, no allocation, no backward jump: nothing at which CPython
runs a finalizer, a signal handler or a profile hook), so a ``cancel()``
either came before both, and was counted and is un-counted, or after both,
and is neither.  (A line tracer, a debugger stepping through this file, can
run code anywhere: cancelling timers from one is not supported.)
"""

from __future__ import annotations

import collections
import heapq
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .handles import TimerHandle

__all__ = ["MIN_CANCELLED_TO_COMPACT", "TimerStore"]

# Cancelled timers stay in the store until they reach its head.  When more
# than this many, and more than half of the store, are cancelled, tidy()
# rebuilds it without them, so that a program that keeps rescheduling
# timeouts (every read with a deadline does) does not grow it without bound.
MIN_CANCELLED_TO_COMPACT = 100


class TimerStore:
    """The loop's pending timers: a heap of deadlines and what is due at each.

    Invariants, true whenever ``_run_once`` is between iterations (the test
    helper ``tests.helpers.pending_timers`` checks them all):

    * ``deadlines`` is a heap holding each key of ``by_deadline`` exactly once.
    * ``by_deadline[when]`` is the one handle due at ``when``, or a list of two
      or more, in the order they were scheduled; each has ``_when == when``.
    * ``count`` is the number of handles in ``incoming`` and ``by_deadline``;
      every one of them has ``_scheduled`` set, and no other handle has.
    * ``cancelled`` is how many of those are cancelled.
    * ``busy`` is false.
    """

    __slots__ = ("busy", "by_deadline", "cancelled", "count", "deadlines", "incoming")

    def __init__(self) -> None:
        # Deadlines, floats, each once: the heap compares them in C.
        self.deadlines: list[float] = []
        # Deadline -> the timer due then, or a list of them in scheduling
        # order when several share it (one object per timer, its handle: the
        # garbage collector's work grows with every object it tracks).
        self.by_deadline: dict[float, TimerHandle | list[TimerHandle]] = {}
        # Scheduled while the store was busy, in scheduling order: the next
        # tidy() files them.
        self.incoming: collections.deque[TimerHandle] = collections.deque()
        self.count = 0  # handles in incoming and by_deadline, cancelled ones included
        self.cancelled = 0  # of those, how many are cancelled
        self.busy = False  # deadlines and by_deadline are being changed

    def schedule(self, handle: TimerHandle) -> None:
        """Add ``handle``: filed at once, unless the store is busy (see above)."""
        handle._scheduled = True
        self.count += 1
        if self.busy or self.incoming:
            self.incoming.append(handle)
            return
        # _file(handle), inline: this is call_at's path, once per timer.
        # (No try/finally: should this raise, the next tidy() clears busy.)
        self.busy = True
        by_deadline = self.by_deadline
        when = handle._when
        due = by_deadline.get(when)
        if due is None:
            by_deadline[when] = handle
            heapq.heappush(self.deadlines, when)
        elif isinstance(due, list):
            due.append(handle)
        else:
            by_deadline[when] = [due, handle]
        self.busy = False

    def tidy(self) -> None:
        """File the incoming timers, compact if worth it, drop cancelled ones at the head.

        The loop calls it at the start of step 1 whenever ``incoming`` or
        ``cancelled`` is not empty: the one point where cancelled timers
        leave the store before they are due.
        """
        self.busy = True
        try:
            incoming = self.incoming
            while incoming:
                handle = incoming.popleft()
                if handle._cancelled:
                    self._release_cancelled(handle)
                else:
                    self._file(handle)
            if self.cancelled > MIN_CANCELLED_TO_COMPACT and self.cancelled * 2 > self.count:
                self._compact()
            self._drop_cancelled_head()
        finally:
            self.busy = False

    def _file(self, handle: TimerHandle) -> None:
        """Put ``handle`` in the heap and the dict (the store is busy)."""
        when = handle._when
        due = self.by_deadline.get(when)
        if due is None:
            self.by_deadline[when] = handle
            heapq.heappush(self.deadlines, when)
        elif isinstance(due, list):
            due.append(handle)
        else:
            self.by_deadline[when] = [due, handle]

    def _drop_cancelled_head(self) -> None:
        """Drop the earliest deadlines whose timers are all cancelled (the store is busy)."""
        deadlines, by_deadline = self.deadlines, self.by_deadline
        while self.cancelled and deadlines:
            due = by_deadline[deadlines[0]]
            group = due if isinstance(due, list) else (due,)
            if not all(timer._cancelled for timer in group):
                return
            del by_deadline[heapq.heappop(deadlines)]
            for timer in group:
                self._release_cancelled(timer)

    def pop_due(self, end: float) -> list[TimerHandle]:
        """Take out every timer due before ``end``; return the live ones, earliest first."""
        deadlines, by_deadline, heappop = self.deadlines, self.by_deadline, heapq.heappop
        fired = []
        self.busy = True
        try:
            while deadlines and deadlines[0] < end:
                due = by_deadline.pop(heappop(deadlines))
                if not isinstance(due, list):  # one timer, the common case
                    self.count -= 1
                    due._scheduled = False
                    if due._cancelled:  # (nothing runs between these lines: see "Counting")
                        self.cancelled -= 1
                    else:
                        fired.append(due)
                    continue
                taken = len(due)
                self.count -= taken
                for timer in due:
                    timer._scheduled = False
                    if timer._cancelled:  # (as above)
                        self.cancelled -= 1
                    else:
                        fired.append(timer)
        finally:
            self.busy = False
        return fired

    def pending(self) -> list[TimerHandle]:
        """Every handle in the store, cancelled ones included: earliest first, ties in order."""
        filed = [
            handle
            for _, due in sorted(self.by_deadline.items())
            for handle in (due if isinstance(due, list) else [due])
        ]
        # (sorted() is stable: filed timers were scheduled before incoming ones.)
        return sorted([*filed, *self.incoming], key=lambda handle: handle._when)

    def clear(self) -> None:
        """Let every timer go (the loop is closing)."""
        for handle in self.pending():
            handle._scheduled = False
        self.deadlines.clear()
        self.by_deadline.clear()
        self.incoming.clear()
        self.count = self.cancelled = 0

    def _release_cancelled(self, handle: TimerHandle) -> None:
        """Let go of a cancelled handle (it was counted when it was cancelled)."""
        handle._scheduled = False
        self.count -= 1
        self.cancelled -= 1

    def _compact(self) -> None:
        """Rebuild the store without its cancelled timers, in place."""
        live: dict[float, TimerHandle | list[TimerHandle]] = {}
        dropped = 0
        for when, due in self.by_deadline.items():
            kept = []
            for timer in due if isinstance(due, list) else (due,):
                if timer._cancelled:
                    timer._scheduled = False
                    dropped += 1
                else:
                    kept.append(timer)
            if kept:
                live[when] = kept[0] if len(kept) == 1 else kept
        self.by_deadline.clear()
        self.by_deadline.update(live)
        self.deadlines[:] = live
        heapq.heapify(self.deadlines)
        self.count -= dropped
        self.cancelled -= dropped
