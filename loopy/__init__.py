"""loopy: a readable, single-threaded asyncio event loop built on :mod:`selectors`.

Start reading at ``loop.py``.  The package's files are its architecture:

* ``loop.py``     the run loop: scheduling, timers, watching file descriptors
* ``handles.py``  a scheduled callback and how it is cancelled
* ``timers.py``   the timer store: a heap of deadlines the loop tidies once per iteration
* ``contract.py`` what transports, servers, pipes... and trace use of the loop
* ``futures.py``  loopy's own Future: a result that is not there yet
* ``tasks.py``    loopy's own Task: drives a coroutine, one step per callback
* ``sockets.py``  ``sock_recv``, ``sock_sendall``... as coroutines
* ``transports.py`` a connected socket as protocol callbacks (streams build on it)
* ``connections.py`` name resolution, ``create_connection``, TLS
* ``servers.py``  ``create_server`` and the Server it returns
* ``datagrams.py`` UDP and Unix datagram endpoints, ``sock_recvfrom``/``sock_sendto``
* ``pipes.py``    ``connect_read_pipe``/``connect_write_pipe``: pipes and ptys as transports
* ``subprocesses.py`` child processes: their pipes as transports, their exit via a pidfd
* ``wakeup.py``   the socketpair that lets threads and signals wake the loop
* ``threads.py``  ``call_soon_threadsafe`` and the default executor
* ``signals.py``  ``add_signal_handler``
* ``demo.py``     the program: a ticking counter and a TCP logger on one thread
* ``runners.py``  ``loopy.run``, ``loopy.install`` and the event loop policy
* ``instruments.py`` hooks that watch the loop work, free when unused
* ``trace/``      record, view and summarize what the loop did
* ``monitor/``    watch a running program from outside: ``loopy ps``, ``loopy top``
* ``cli.py``      the ``loopy`` command
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .futures import Future
from .loop import TASK_MODES, Loop, new_event_loop
from .runners import EventLoopPolicy, install, run
from .servers import Server
from .tasks import Task

if TYPE_CHECKING:
    from . import trace as trace
    from .trace import tracing
    from .trace.describe import describe

__all__ = [
    "TASK_MODES",
    "EventLoopPolicy",
    "Future",
    "Loop",
    "Server",
    "Task",
    "describe",
    "install",
    "new_event_loop",
    "run",
    "tracing",
]
__version__ = "0.1.0"

#: Names this package lends from ``loopy.trace``.
_FROM_TRACE = ("describe", "tracing")


def __getattr__(name: str) -> Any:
    """``loopy.trace`` and the names it lends, imported the first time they are asked for.

    The trace package (recorder, exporter, HTML viewer) is a quarter of the
    package's import time, and a program that never traces should not pay
    it; ``LOOPY_TRACE`` imports it from ``new_event_loop`` when set.
    """
    if name == "trace" or name in _FROM_TRACE:
        trace = importlib.import_module(".trace", __name__)
        value = trace if name == "trace" else getattr(trace, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
