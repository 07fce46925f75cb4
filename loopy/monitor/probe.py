"""Reading a running loop from another thread: its state, its thread's stack, its tasks.

Everything here runs in the monitor thread (``server.py``), never in the
loop's, so that it answers while the loop is stuck in a callback.  It only
reads, and only what one step of the interpreter reads atomically under
the GIL: ``len()`` of the ready queue, ``list()`` of a dict's items, an
attribute.  The loop thread may change anything between two such reads,
so a snapshot is a set of figures each true at its own instant, not one
consistent picture; that is the price of not stopping the loop.

What the loop is doing right now comes from its thread's frame stack
(``sys._current_frames()``), not from bookkeeping in the loop:

* no ``Loop._run_once`` frame on the stack: the loop is not iterating
  (between iterations, or not running);
* a ``_run_once`` frame whose local ``handle`` is unbound: the iteration
  is in its steps 1-3, which means waiting in the selector for all but an
  instant;
* ``handle`` bound: step 4, running that handle's callback (each
  iteration is a new frame, so a bound ``handle`` is this iteration's).

Whether that callback *blocks* the loop is decided by the sampler in
``server.py``: the loop's iteration counter (``Loop._iterations``, the only
thing the loop does for the monitor) not moving across samples.

Tasks are read from asyncio's registry of scheduled tasks, never from its
set of tasks in their eager first step: ``get_coro()`` on a task that
finished during that step crashes CPython 3.12.0/3.12.1, and from another
thread a task cannot be checked and read in one atomic step.  A task that
has been scheduled once has a coroutine until it is collected.
"""

from __future__ import annotations

import asyncio
import contextlib
import linecache
import os
import socket
import sys
import threading
from types import FrameType
from typing import Any

from ..loop import Loop
from ..trace.describe import (
    callback_task,
    coroutine_stack,
    handle_label,
    task_coroutine,
)

__all__ = ["current_step", "describe_fds", "pending_tasks", "thread_stack"]

_RUN_ONCE = Loop._run_once.__code__

#: At most this many frames, descriptors and tasks go into one answer.
MAX_FRAMES = 40
MAX_FDS = 64
MAX_TASKS_LISTED = 10
#: Above this many tasks, only their number is reported (reading where
#: each one is would hold the GIL, hence the loop, too long).
MAX_TASKS_INSPECTED = 20_000

# asyncio's registry of tasks that were scheduled, i.e. not in an eager
# first step (3.12+); before 3.12 every task is in _all_tasks.
_SCHEDULED: Any = getattr(asyncio.tasks, "_scheduled_tasks", None)
if _SCHEDULED is None:  # pragma: no cover - Python 3.11
    _SCHEDULED = getattr(asyncio.tasks, "_all_tasks")  # noqa: B009 - not in the 3.12+ stubs


def loop_frame(thread_id: int | None) -> tuple[FrameType | None, FrameType | None]:
    """The innermost frame of the loop's thread, and its ``_run_once`` frame (or None)."""
    if thread_id is None:
        return None, None
    top = sys._current_frames().get(thread_id)
    frame = top
    while frame is not None and frame.f_code is not _RUN_ONCE:
        frame = frame.f_back
    return top, frame


def current_step(run_once: FrameType | None) -> tuple[str, str | None, Any]:
    """``(phase, what, task)``: what the iteration in ``run_once`` is doing.

    ``phase`` is ``"outside"`` (no iteration on the stack), ``"waiting"``
    (steps 1-3: the selector) or ``"callback"`` (step 4); ``what`` names the
    callback or task being run, and ``task`` is that task or None.
    """
    if run_once is None:
        return "outside", None, None
    handle = run_once.f_locals.get("handle")
    if handle is None:
        return "waiting", None, None
    callback = getattr(handle, "_callback", None)
    task = callback_task(callback) if callback is not None else None
    return "callback", handle_label(handle), task


def thread_stack(top: FrameType | None, stop: FrameType | None) -> list[dict[str, Any]]:
    """The frames from ``stop`` (or the outermost) to ``top``, outermost first, with lines."""
    frames: list[FrameType] = []
    frame = top
    while frame is not None:
        frames.append(frame)
        if frame is stop:
            break
        frame = frame.f_back
    frames = frames[:MAX_FRAMES]
    frames.reverse()
    return [_frame_entry(f.f_code.co_filename, f.f_lineno, f.f_code.co_name) for f in frames]


def _frame_entry(filename: str, lineno: int | None, function: str) -> dict[str, Any]:
    line = linecache.getline(filename, lineno).strip() if lineno else ""
    return {"file": filename, "line": lineno, "function": function, "source": line}


def pending_tasks(loop: Loop) -> list[Any]:
    """The loop's tasks that are not done (see the module docstring for which registry)."""
    for _ in range(100):  # the loop thread may add a task while we copy: try again
        try:
            scheduled = list(_SCHEDULED)
            break
        except RuntimeError:
            continue
    else:  # pragma: no cover - a loop creating tasks faster than 100 copies
        return []
    return [task for task in scheduled if _task_loop(task) is loop and not task.done()]


def _task_loop(task: Any) -> Any:
    get_loop = getattr(task, "get_loop", None)
    return get_loop() if get_loop is not None else getattr(task, "_loop", None)


def task_position(task: Any) -> tuple[tuple[str, int, str], ...]:
    """Where a pending task is suspended: its await chain, outermost first."""
    if task.done():
        return ()
    stack = coroutine_stack(task_coroutine(task))
    return tuple((loc.filename, loc.lineno, loc.function) for loc in stack)


def describe_fds(loop: Loop) -> tuple[int, list[dict[str, Any]]]:
    """How many descriptors the loop watches, and the first :data:`MAX_FDS` of them described."""
    watches = list(loop._watches.items())
    transports = dict(loop._transports.items())
    described = []
    for fd, watch in sorted(watches)[:MAX_FDS]:
        entry: dict[str, Any] = {"fd": fd}
        entry.update(_socket_addresses(fd))
        if fd in transports:
            entry["transport"] = type(transports[fd]).__name__
        reader, writer = watch.reader, watch.writer
        entry["reader"] = handle_label(reader) if reader is not None else None
        entry["writer"] = handle_label(writer) if writer is not None else None
        described.append(entry)
    return len(watches), described


def _socket_addresses(fd: int) -> dict[str, Any]:
    """The kind and addresses of ``fd`` if it is a socket (a duplicate is asked, then closed).

    Asking on a duplicate leaves the loop's descriptor alone; if the loop
    closed it meanwhile, ``dup`` fails and the descriptor is reported bare.
    """
    try:
        dup = os.dup(fd)
    except OSError:
        return {}
    try:
        sock = socket.socket(fileno=dup)
    except OSError:
        os.close(dup)
        return {"kind": "file"}
    with sock:
        kind = {socket.AF_INET: "tcp", socket.AF_INET6: "tcp6", socket.AF_UNIX: "unix"}.get(
            sock.family, str(sock.family)
        )
        if sock.type == socket.SOCK_DGRAM:
            kind = {"tcp": "udp", "tcp6": "udp6"}.get(kind, kind)
        result: dict[str, Any] = {"kind": kind, "local": _address(sock.getsockname)}
        result["peer"] = _address(sock.getpeername)
        with contextlib.suppress(OSError):
            result["listening"] = bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
        return result


def _address(get: Any) -> str | None:
    try:
        address = get()
    except OSError:
        return None  # not connected (a listener, an unconnected datagram socket)
    if isinstance(address, tuple):
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(address, bytes):
        address = address.decode(errors="replace")
    return str(address) or None


def thread_name(thread_id: int | None) -> str | None:
    """The name of the thread ``thread_id``, if Python knows it."""
    if thread_id is None:
        return None
    thread = threading._active.get(thread_id)  # type: ignore[attr-defined]
    return thread.name if thread is not None else str(thread_id)
