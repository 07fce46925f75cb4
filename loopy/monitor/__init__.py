"""Watching a running program from outside: ``loopy ps``, ``loopy top``, ``loopy trace dump``.

A watchable process listens on a private Unix socket (``paths.py``).  When
``loopy ps`` or ``loopy top`` (``client.py``) connects, a thread of the
target (``server.py``, started by the client's signal, gone when nobody
watches) reads its loops' state and its loop threads' frame stacks
(``probe.py``).  The loop itself does nothing for it but count its
iterations (``Loop._iterations``), so being watchable costs next to nothing
while nobody watches, and the answer comes even while the loop is stuck in
a callback.

How a process becomes watchable:

* ``LOOPY_MONITOR=1`` in its environment: every loop ``loopy.new_event_loop``
  makes (``loopy.run``, ``asyncio.run`` after ``loopy.install()``, uvicorn's
  ``--loop loopy:new_event_loop``, the ``loopy`` program) is watched.
  ``0`` or an empty value leave it off; anything else too, with one warning
  on the ``loopy`` logger naming the variable.
* ``LOOPY_FLIGHT_RECORDER=SECONDS`` or ``LOOPY_DUMP_ON_STALL=SECONDS``:
  the recorder implies the monitor (``new_event_loop`` watches a loop
  whose recorder its environment started), and so do the seed program's
  ``--flight-recorder`` and ``--dump-on-stall``;
* ``loopy.run(main(), monitor=True)``, or :func:`watch` on any loopy loop
  (``loop.start_flight_recorder`` alone does not make a loop watchable);
* ``loopy --monitor`` for the seed program.

With a flight recorder (``trace/flight.py``), ``top`` and ``ps`` also show
the loop's utilisation, callbacks per second, slowest steps, busiest tasks
and stalls (read from the newest part of the ring, on the monitor's
thread), and ``loopy trace dump PID -o FILE`` fetches the recorder's
window and writes it as a trace (the client encodes it, not the target).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..loop import Loop

__all__ = ["MONITOR_ENV", "monitor_requested", "watch", "watch_if_requested"]

logger = logging.getLogger("loopy")

#: The environment variable that makes every new loopy loop watchable.
MONITOR_ENV = "LOOPY_MONITOR"

# Values already warned about: one warning per bad value and process, not one per loop.
_warned: set[str] = set()


def monitor_requested() -> bool:
    """Whether ``$LOOPY_MONITOR`` asks for monitoring: ``1`` yes; unset, empty or ``0`` no.

    Any other value is a mistake: one warning (per value and process)
    names the variable, and the monitor stays off.
    """
    value = os.environ.get(MONITOR_ENV, "").strip()
    if value in ("", "0"):
        return False
    if value == "1":
        return True
    if value not in _warned:
        _warned.add(value)
        logger.warning("%s=%r is not 1 (on) or 0 (off): monitor off", MONITOR_ENV, value)
    return False


def watch(loop: Loop) -> bool:
    """Make ``loop`` watchable with ``loopy top`` (the first call starts the process's socket).

    Returns whether it is.  A socket that cannot be made (an unsafe
    directory, a full disk) is one warning on the ``loopy`` logger, not an
    error: the program runs on, unwatched.
    """
    from . import paths, server  # noqa: PLC0415 - the thread and socket code, only when asked

    try:
        server.register(loop)
    except (OSError, paths.MonitorDirError) as exc:
        logger.warning("loopy monitor off: cannot make its socket: %s", exc)
        return False
    return True


def watch_if_requested(loop: Loop) -> None:
    """:func:`watch` ``loop`` if ``$LOOPY_MONITOR`` asks for it (``new_event_loop`` calls this)."""
    if monitor_requested():
        watch(loop)
