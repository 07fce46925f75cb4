"""``LOOPY_TRACE=FILE``: trace every loop loopy makes, and never lose the file.

``loopy.new_event_loop()`` calls :func:`trace_from_environment` when the
variable is set.  The rules, for a program that knows nothing of tracing:

* **A bad path fails at once.**  If FILE cannot be written (no such
  directory, a directory, a read-only place), ``new_event_loop()`` raises
  ``ValueError`` naming the variable and the path, before the program runs:
  better than recording for an hour and failing at exit.  (The other
  choice, a warning and an untraced run, is too easy to miss in a log.)
* **The file is written however the program ends**, short of SIGKILL and
  ``os._exit``, which no process can see coming: when the loop closes
  (``asyncio.run`` and ``asyncio.Runner`` close theirs, after an exception
  or Ctrl-C too), at interpreter exit for a loop never closed, and on
  SIGHUP or SIGTERM.
* **Tracing does not change how the program reacts to a signal.**  SIGHUP
  and SIGTERM kill a process that does not handle them; under tracing,
  loopy writes the trace first and then lets the signal take its default
  action, so the process still dies of it (exit status 129 or 143 in a
  shell).  loopy installs its handler only where the program has none of
  its own (the signal's disposition is the default, and we are in the main
  thread); a handler the program installs later replaces it, and the
  trace is then written when the loop closes.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import TYPE_CHECKING

from ..loop import TRACE_ENV
from .export import FileRecorder, save_all, trace_to_file

if TYPE_CHECKING:
    from ..contract import LoopContract

__all__ = ["EXIT_SIGNALS", "trace_from_environment"]

#: Signals that end a process by default and that a service is commonly sent.
EXIT_SIGNALS = (signal.SIGHUP, signal.SIGTERM)

# The signals our handler is installed for (never uninstalled while a trace
# may be unwritten; after that it is harmless: it writes nothing and dies).
_installed: set[int] = set()


def trace_from_environment(loop: LoopContract) -> FileRecorder | None:
    """Trace ``loop`` into ``$LOOPY_TRACE`` if it is set; the recorder, or None.

    Raises ``ValueError`` if the file cannot be written there, after closing
    ``loop`` (nobody else holds it yet).
    """
    path = os.environ.get(TRACE_ENV)
    if not path:
        return None
    try:
        recorder = trace_to_file(loop, path)
    except OSError as exc:
        loop.close()
        reason = exc.strerror or str(exc)
        raise ValueError(f"${TRACE_ENV}={path}: cannot write a trace there: {reason}") from None
    _install_handlers()
    return recorder


def _install_handlers() -> None:
    """Write the traces if an exit signal comes before the loops close (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return  # signal.signal() works only there; close() and atexit still write
    for sig in EXIT_SIGNALS:
        if sig not in _installed and signal.getsignal(sig) == signal.SIG_DFL:
            signal.signal(sig, _write_then_die)
            _installed.add(sig)


def _write_then_die(signum: int, frame: FrameType | None) -> None:
    """Write every trace not written yet, then let the signal take its default action: death."""
    save_all()
    for sig in _installed:
        if signal.getsignal(sig) is _write_then_die:
            signal.signal(sig, signal.SIG_DFL)
    _installed.clear()
    signal.raise_signal(signum)
