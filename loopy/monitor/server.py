"""The monitor thread: one Unix socket per process, answering ``ps``, ``top``, ``trace dump``.

**Nobody watching, no thread.**  A watchable process listens on its socket
from the start, but the thread that answers is started only when a client
comes, and ends :data:`IDLE_EXIT` seconds after the last one left.  Not
for the thread's own work (it would sleep in ``select()``), but because a
second live thread made an echo server use 2% more CPU per message, and a
thread that had started and ended did not (see the README).  Our guess,
not verified: the kernel skips reference counting of descriptors in a
single-threaded process only.

**Waking it: SIGURG.**  A client connects, then sends the process
``SIGURG``, whose handler (installed by :func:`register`, in the main
thread) starts the thread, which accepts the waiting connection.
``SIGURG``'s default action is to ignore it (Go's runtime uses it for
the same reason), so a stray one harms no program; the client sends it
again every :data:`client.NUDGE_EVERY` seconds until answered.  A Python
signal handler runs between two bytecodes of the main thread, also while
that thread sleeps or waits for I/O or a lock (the call is interrupted and
retried, PEP 475): so the thread starts, and answers, while the loop is
blocked in Python code or in such a call.  When the main thread is not
where the handler can be installed (the first watched loop is made in
another thread, or the program has its own ``SIGURG`` handler), the
thread is started at once and stays: the 2% then apply.

While at least one client is attached, the thread wakes every
:data:`SAMPLE_PERIOD` to read each loop's iteration counter (the one
thing ``Loop._run_once`` does for the monitor: ``_iterations += 1``); a
counter that stops moving while the loop's thread is in step 4 means a
callback is holding the loop, and the first sample that saw the counter at
its current value tells since when (at least).

Requests and answers are single JSON lines, but for a dump (``"op":
"dump"``, for ``loopy trace dump``): its line says how many bytes of
recording follow it.  The thread copies the window of the loop's flight
recorder a chunk at a time (the loop runs between two chunks and is held
for one chunk's copy only: ``trace.flight.copy_recent``) and sends it as
it is, numbers and names (within :data:`DUMP_SEND_TIMEOUT`; other clients
wait).  The client turns it into a trace file and writes it: this process
neither spends its time encoding nor writes a path it was sent.  With a
recorder, each ``top`` frame also reads the ring's newest part (see
``trace.flight.recent_activity``).

The thread protects the target from its clients:

* a peer that is not this user (nor root) is disconnected at once
  (``SO_PEERCRED``), before anything is read;
* at most :data:`MAX_CLIENTS` at once; one more is told so and disconnected;
* a request longer than :data:`MAX_REQUEST` bytes, or not a JSON object
  with a known ``op``, gets one error line and is disconnected;
* a client must send each request within :data:`REQUEST_TIMEOUT` seconds
  (of connecting, or of its previous answer) and read each answer within
  :data:`SEND_TIMEOUT`, else it is disconnected.

Forks: the child inherits the parent's memory but not its threads, and must
not answer on (or remove) the parent's socket.  ``os.register_at_fork``
closes the inherited copy in the child and, if the child still has open
loops that can run there (idle ones, and those of the thread that forked),
starts the child's own server for them, under the child's PID.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import selectors
import signal
import socket
import struct
import sys
import threading
import time
import weakref
from collections import deque
from pathlib import Path
from typing import Any

from ..loop import Loop
from ..trace import flight
from ..trace.describe import task_label
from . import paths, probe

__all__ = ["MonitorServer", "register"]

logger = logging.getLogger("loopy")

MAX_CLIENTS = 8
MAX_REQUEST = 4096  # bytes, newline included
REQUEST_TIMEOUT = 5.0  # seconds
SEND_TIMEOUT = 2.0  # seconds
SAMPLE_PERIOD = 0.05  # seconds between two readings of the counters, while watched
IDLE_EXIT = 10.0  # seconds the thread stays after the last client left
#: The signal a client sends to start the thread (ignored by default: harmless).
WAKE_SIGNAL = signal.SIGURG
#: A snapshot needs counters read this far apart to tell "blocked" from "busy".
MIN_HISTORY = 0.1
#: A loop whose counter has not moved for this long, in a callback, is blocked.
BLOCKED_AFTER = 0.1

#: Seconds of the recorder's past that top's utilisation and callbacks/s cover.
ACTIVITY_SECONDS = 1.0
#: Seconds a dump's header and trace may take to send (it may be tens of MB).
DUMP_SEND_TIMEOUT = 30.0

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class _Watched:
    """A loop being watched, and what the sampler has seen of it."""

    __slots__ = (
        "history",
        "index",
        "last_at",
        "last_count",
        "loop",
        "progress_at",
        "progress_exact",
        "tasks",
    )

    def __init__(self, index: int, loop: Loop) -> None:
        self.index = index
        self.loop: weakref.ref[Loop] = weakref.ref(loop)
        # (time, iterations) readings, the newest last, about two seconds' worth.
        self.history: deque[tuple[float, int]] = deque(maxlen=int(2 / SAMPLE_PERIOD) + 1)
        # When the counter was first seen at its current value (the iteration
        # now running began before that); progress_exact: to within a sample period.
        self.progress_at = time.monotonic()
        self.progress_exact = False
        self.last_count = -1  # the counter at the last reading, -1 before the first
        self.last_at = float("-inf")  # the time of that reading
        # id(task) -> (weak reference, where it was suspended, first seen there):
        # how long each task has waited at the same place, across snapshots.
        self.tasks: dict[int, tuple[Any, tuple[Any, ...], float]] = {}

    def sample(self, now: float) -> None:
        loop = self.loop()
        if loop is None:
            return
        count = loop._iterations
        # The counter only grows: the same value as at the last reading, even
        # one from an earlier client's session, means no iteration since.
        if count != self.last_count:
            previous = self.last_at
            self.progress_at = now
            # The iteration began between the previous reading and this one:
            # exact to a sample period if that reading is recent.
            self.progress_exact = now - previous <= 2 * SAMPLE_PERIOD
            self.last_count = count
        self.last_at = now
        self.history.append((now, count))

    def rate(self) -> float | None:
        if len(self.history) < 2:
            return None
        (t0, n0), (t1, n1) = self.history[0], self.history[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else None


class _Client:
    __slots__ = ("buffer", "deadline", "sock")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.deadline = deadline


class MonitorServer:
    """This process's socket and the thread that answers on it.

    Invariant: ``pid`` is the process that created the socket; only that
    process serves it or removes it.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.started = time.time()
        self._lock = threading.Lock()  # guards _watched, which any thread may extend
        self._watched: list[_Watched] = []
        self._next_index = 0
        self._clients: dict[int, _Client] = {}
        self._selector = selectors.DefaultSelector()
        self._stop_r, self._stop_w = socket.socketpair()
        self.path: Path | None = None
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        # True while the thread is started on demand (by WAKE_SIGNAL) and
        # leaves when idle; False when it had to be started for good.
        self.lazy = True

    # -- set-up and tear-down -------------------------------------------

    def start(self) -> None:
        """Create the socket (atomically, under its final name) and start the thread."""
        directory = paths.private_dir(create=True)
        assert directory is not None  # created above
        paths.live_pids(directory)  # cleans the sockets of dead processes
        path = paths.socket_path(directory, self.pid)
        # Bound under a temporary name, then renamed: the final name appears
        # only once something listens there, and replaces any stale socket
        # left by an earlier process with this PID.
        temporary = directory / f"{self.pid}.{os.urandom(6).hex()}.tmp"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(temporary))
            os.chmod(temporary, 0o600)
            listener.listen(MAX_CLIENTS)
            os.replace(temporary, path)
        except BaseException:
            listener.close()
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        listener.setblocking(False)
        self.path, self._listener = path, listener
        self._selector.register(listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._stop_r, selectors.EVENT_READ, "stop")
        if not _claim_wake_signal(self):
            self.lazy = False
            self.wake()

    def wake(self) -> None:
        """Start the thread unless it runs (the signal's handler calls this, maybe twice)."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            return
        self._thread = threading.Thread(target=self._serve, name="loopy-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop answering, close everything and remove the socket (at exit)."""
        if self.pid != os.getpid() or self.path is None:
            return
        _release_wake_signal(self)
        if self._thread is not None:
            with contextlib.suppress(OSError):
                self._stop_w.send(b"x")
            self._thread.join(1.0)
            self._thread = None
        if self.path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            self.path = None
        self.abandon()

    def abandon(self) -> None:
        """Close the descriptors, not the socket's name (a forked child leaves the parent's)."""
        for sock in (self._listener, self._stop_r, self._stop_w):
            if sock is not None:
                sock.close()
        for client in self._clients.values():
            client.sock.close()
        self._selector.close()

    def add(self, loop: Loop) -> None:
        """Watch ``loop`` too (any thread)."""
        with self._lock:
            if any(w.loop() is loop for w in self._watched):
                return
            self._watched.append(_Watched(self._next_index, loop))
            self._next_index += 1

    def open_loops(self) -> list[Loop]:
        """The watched loops that are not closed."""
        with self._lock:
            loops = [w.loop() for w in self._watched]
        return [loop for loop in loops if loop is not None and not loop.is_closed()]

    def _live(self) -> list[tuple[_Watched, Loop]]:
        with self._lock:
            pairs = [(w, w.loop()) for w in self._watched]
            self._watched = [w for w, loop in pairs if loop is not None and not loop.is_closed()]
        return [(w, loop) for w, loop in pairs if loop is not None and not loop.is_closed()]

    # -- the thread -----------------------------------------------------

    def _serve(self) -> None:
        idle_since = time.monotonic()
        while True:
            now = time.monotonic()
            if self._clients:
                deadline = min(c.deadline for c in self._clients.values())
                timeout: float | None = max(0.0, min(SAMPLE_PERIOD, deadline - now))
            elif self.lazy:
                timeout = max(0.0, idle_since + IDLE_EXIT - now)
            else:
                timeout = None
            events = self._selector.select(timeout)
            idle = not events and not self._clients and self.lazy
            if idle and time.monotonic() >= idle_since + IDLE_EXIT:
                return  # nobody for a while: the next client's signal starts a new thread
            for key, _ in events:
                if key.data == "stop":
                    return
                if key.data == "accept":
                    self._accept()
                else:
                    self._read(key.data)
            now = time.monotonic()
            for client in [c for c in self._clients.values() if c.deadline <= now]:
                self._drop(client)
            if self._clients:
                idle_since = now
                for watched, _loop in self._live():
                    watched.sample(now)

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            sock, _ = self._listener.accept()
        except OSError:
            return
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
            _pid, uid, _gid = _UCRED.unpack(creds)
        except OSError:
            sock.close()
            return
        if uid not in (os.geteuid(), 0):
            sock.close()  # another user: not a word
            return
        if len(self._clients) >= MAX_CLIENTS:
            self._send_and_close(sock, {"error": f"too many clients (at most {MAX_CLIENTS})"})
            return
        sock.setblocking(False)
        now = time.monotonic()
        for watched, _loop in self._live():
            if not self._clients:
                watched.history.clear()  # a new session: rates over its own readings
            watched.sample(now)
        client = _Client(sock, time.monotonic() + REQUEST_TIMEOUT)
        self._clients[sock.fileno()] = client
        self._selector.register(sock, selectors.EVENT_READ, client)

    def _read(self, client: _Client) -> None:
        try:
            data = client.sock.recv(MAX_REQUEST)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        client.buffer += data
        while True:
            line, newline, rest = client.buffer.partition(b"\n")
            if not newline:
                if len(client.buffer) >= MAX_REQUEST:
                    self._drop(client, {"error": f"request longer than {MAX_REQUEST} bytes"})
                return
            if len(line) >= MAX_REQUEST:
                self._drop(client, {"error": f"request longer than {MAX_REQUEST} bytes"})
                return
            client.buffer = bytearray(rest)
            answer, keep = self._answer(bytes(line))
            if not keep:
                self._drop(client, answer)
                return
            payload = answer.pop("payload", None)
            if payload is not None:
                sent = self._send_dump(client.sock, answer, payload)
                # (Encoding and sending took a while: the others' requests
                # waited for this thread, not they for us.)
                now = time.monotonic()
                for other in self._clients.values():
                    other.deadline = max(other.deadline, now + REQUEST_TIMEOUT)
            else:
                sent = self._send(client.sock, answer)
            if not sent:
                self._drop(client)
                return
            client.deadline = time.monotonic() + REQUEST_TIMEOUT

    def _drop(self, client: _Client, last: dict[str, Any] | None = None) -> None:
        self._clients.pop(client.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(client.sock)
        if last is not None:
            self._send(client.sock, last)
        client.sock.close()

    def _send_and_close(self, sock: socket.socket, message: dict[str, Any]) -> None:
        self._send(sock, message)
        sock.close()

    @staticmethod
    def _send(sock: socket.socket, message: dict[str, Any]) -> bool:
        data = json.dumps(message, separators=(",", ":"), default=str).encode() + b"\n"
        try:
            sock.settimeout(SEND_TIMEOUT)
            sock.sendall(data)
            sock.setblocking(False)
        except OSError:
            return False
        return True

    @staticmethod
    def _send_dump(sock: socket.socket, header: dict[str, Any], payload: list[Any]) -> bool:
        """Send a dump: its header line (which says how many bytes follow), then the bytes.

        A length prefix rather than a line: the recording is binary, and may
        be tens of MB.  All of it within :data:`DUMP_SEND_TIMEOUT` (a client
        that stops reading is dropped).
        """
        data = json.dumps(header, separators=(",", ":"), default=str).encode() + b"\n"
        try:
            sock.settimeout(DUMP_SEND_TIMEOUT)
            sock.sendall(data)
            for piece in payload:
                sock.sendall(piece)
            sock.setblocking(False)
        except OSError:
            return False
        return True

    # -- requests -------------------------------------------------------

    def _answer(self, line: bytes) -> tuple[dict[str, Any], bool]:
        """The answer to one request line, and whether to keep the connection."""
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return {"error": "malformed request: not JSON"}, False
        if not isinstance(request, dict):
            return {"error": "malformed request: not a JSON object"}, False
        op = request.get("op")
        if op == "hello":
            return self._hello(), True
        if op == "snapshot":
            index = request.get("loop")
            if index is not None and (not isinstance(index, int) or isinstance(index, bool)):
                return {"error": "malformed request: loop must be an integer"}, False
            return self._snapshot(index), True
        if op == "dump":
            index = request.get("loop")
            if index is not None and (not isinstance(index, int) or isinstance(index, bool)):
                return {"error": "malformed request: loop must be an integer"}, False
            return self._dump(index), True
        return {"error": f"unknown request {str(op)[:40]!r}"}, False

    def _hello(self, *, busy: bool = True) -> dict[str, Any]:
        """Who answers, and its loops (with ``busy``, each one's utilisation, for ``ps``)."""
        return {
            "pid": self.pid,
            "argv": _command_line(),
            "uptime": time.time() - self.started,
            "python": sys.version.split()[0],
            "loops": [self._summary(w, loop, busy=busy) for w, loop in self._live()],
        }

    def _summary(self, watched: _Watched, loop: Loop, *, busy: bool = False) -> dict[str, Any]:
        """A loop in a line; with ``busy``, its utilisation (None without a recorder)."""
        thread_id = loop._thread_id
        summary = {
            "index": watched.index,
            "running": thread_id is not None,
            "thread": probe.thread_name(thread_id),
            "tasks_mode": loop.task_mode,
            "recorder": getattr(loop, "_flight", None) is not None,
        }
        if busy:
            activity = flight.recent_activity(loop, ACTIVITY_SECONDS)
            summary["utilisation"] = activity["utilisation"] if activity is not None else None
        return summary

    def _snapshot(self, index: int | None) -> dict[str, Any]:
        live = self._live()
        answer = self._hello(busy=False)  # (the chosen loop's figures come in its detail)
        if not live:
            answer["loop"] = None
            return answer
        chosen = [(w, loop) for w, loop in live if w.index == index] if index is not None else live
        if not chosen:
            indexes = ", ".join(str(w.index) for w, _ in live)
            answer["error"] = f"no loop #{index} (loops: {indexes})"
            return answer
        watched, loop = chosen[0]
        # A fresh client: read the counter twice, far enough apart to tell a
        # loop that stands still from one that moves.
        if watched.history:
            wait = MIN_HISTORY - (time.monotonic() - watched.history[0][0])
            if wait > 0:
                time.sleep(wait)
        watched.sample(time.monotonic())
        answer["loop"] = self._detail(watched, loop)
        return answer

    def _dump(self, index: int | None) -> dict[str, Any]:
        """The recorder's window of loop ``index`` (the first if None), for the client to encode.

        The answer's ``payload`` (sent after the header, see
        :meth:`_send_dump`) is the recording as
        :meth:`~loopy.trace.flight.FlightRecorder.wire_snapshot` gives it: a
        JSON part of ``facts`` bytes, then ``slots`` bytes of slots.  The
        loop is held only while a chunk of the ring is copied: ``held_ms``
        is the longest such moment, ``copy_ms`` the whole copy's time
        (the loop ran between the chunks).  No trace is encoded here.
        """
        live = self._live()
        if not live:
            return {"error": "no loop open"}
        chosen = [(w, loop) for w, loop in live if w.index == index] if index is not None else live
        if not chosen:
            indexes = ", ".join(str(w.index) for w, _ in live)
            return {"error": f"no loop #{index} (loops: {indexes})"}
        watched, loop = chosen[0]
        recorder = loop.flight_recorder
        if recorder is None:
            return {
                "error": f"loop #{watched.index} has no flight recorder "
                "(start the program with LOOPY_FLIGHT_RECORDER=SECONDS)",
                "no_recorder": True,
            }
        holds: list[float] = []
        began = time.perf_counter()
        facts, slots = recorder.wire_snapshot(holds)
        return {
            "loop": watched.index,
            "facts": len(facts),
            "slots": sum(len(part) for part in slots) * 8,
            "copy_ms": (time.perf_counter() - began) * 1e3,
            "held_ms": max(holds, default=0.0) * 1e3,
            "chunks": len(holds),
            "payload": [facts, *slots],
        }

    def _detail(self, watched: _Watched, loop: Loop) -> dict[str, Any]:
        now = time.monotonic()
        thread_id = loop._thread_id
        top, run_once = probe.loop_frame(thread_id)
        phase, what, task = probe.current_step(run_once)
        still = now - watched.progress_at
        blocked = phase == "callback" and still >= BLOCKED_AFTER
        state: dict[str, Any] = {
            **self._summary(watched, loop),
            "iterations": loop._iterations,
            "iterations_per_s": watched.rate(),
            "phase": phase,
            "blocked": blocked,
            "blocked_for": still if blocked else None,
            "blocked_for_exact": watched.progress_exact,
            "step": what,
            "ready": len(loop._ready),
            "timers": loop._timers.count - loop._timers.cancelled,
            "stack": probe.thread_stack(top, run_once if phase == "callback" else None),
            "activity": flight.recent_activity(loop, ACTIVITY_SECONDS),
        }
        state["descriptors"], state["fds"] = probe.describe_fds(loop)
        state["tasks"], state["waiting"] = self._tasks(watched, loop, now, task)
        return state

    def _tasks(
        self, watched: _Watched, loop: Loop, now: float, running: Any
    ) -> tuple[int, list[dict[str, Any]]]:
        """How many tasks, and the ones waiting longest at the same place (as far as seen)."""
        tasks = probe.pending_tasks(loop)
        if len(tasks) > probe.MAX_TASKS_INSPECTED:
            watched.tasks.clear()
            return len(tasks), []
        seen: dict[int, tuple[Any, tuple[Any, ...], float]] = {}
        rows = []
        for task in tasks:
            if task is running:
                continue  # it is running, not waiting
            where = probe.task_position(task)
            old = watched.tasks.get(id(task))
            since = old[2] if old is not None and old[0]() is task and old[1] == where else now
            seen[id(task)] = (weakref.ref(task), where, since)
            rows.append((since, task, where))
        watched.tasks = seen
        rows.sort(key=lambda row: row[0])
        return len(tasks), [
            {
                "task": task_label(task),
                "waiting": now - since,
                "at": [list(location) for location in where],
            }
            for since, task, where in rows[: probe.MAX_TASKS_LISTED]
        ]


def _command_line() -> list[str]:
    try:
        with open(f"/proc/{os.getpid()}/cmdline", "rb") as file:
            raw = file.read()
        return [part.decode(errors="replace") for part in raw.split(b"\0") if part]
    except OSError:  # pragma: no cover - no /proc
        return [sys.executable, *sys.argv]


# ----------------------------------------------------------------------
# The wake-up signal
# ----------------------------------------------------------------------


def _on_wake_signal(signum: int, frame: object) -> None:
    """WAKE_SIGNAL's handler: start this process's thread (after a fork: the child's)."""
    server = _server
    if server is not None:
        server.wake()


def _claim_wake_signal(server: MonitorServer) -> bool:
    """Install :func:`_on_wake_signal`; False where it cannot be."""
    current = signal.getsignal(WAKE_SIGNAL)
    if current is _on_wake_signal:
        return True  # a forked child's: inherited, and it finds the child's server
    if threading.current_thread() is not threading.main_thread():
        return False  # signal.signal works in the main thread only
    if current is not signal.SIG_DFL:
        return False  # the program's own (or a C library's): not ours to replace
    signal.signal(WAKE_SIGNAL, _on_wake_signal)
    return True


def _release_wake_signal(server: MonitorServer) -> None:
    """Put back the default action, if the handler is still ours (and we may)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(WAKE_SIGNAL) is _on_wake_signal:
        signal.signal(WAKE_SIGNAL, signal.SIG_DFL)


# ----------------------------------------------------------------------
# The process's server
# ----------------------------------------------------------------------

_server: MonitorServer | None = None
_server_lock = threading.Lock()


def register(loop: Loop) -> None:
    """Make ``loop`` watchable, starting this process's server on first use.

    Raises :class:`OSError` or :class:`paths.MonitorDirError` when the
    socket cannot be made; the caller reports it.
    """
    global _server
    with _server_lock:
        if _server is None:
            server = MonitorServer()
            try:
                server.start()
            except BaseException:
                server.abandon()
                raise
            _server = server
            atexit.register(server.stop)
        _server.add(loop)


def _after_fork_in_child() -> None:
    global _server, _server_lock
    _server_lock = threading.Lock()  # the parent may have held it while forking
    server, _server = _server, None
    if server is None:
        return
    # Only the forking thread lives on in the child: loops that other
    # threads were running will never iterate again there.
    here = threading.get_ident()
    loops = [loop for loop in server.open_loops() if loop._thread_id in (None, here)]
    server.abandon()
    for loop in loops:
        try:
            register(loop)
        except (OSError, paths.MonitorDirError) as exc:  # pragma: no cover - as in the parent
            logger.warning("loopy monitor: cannot watch the forked process: %s", exc)
            return


os.register_at_fork(after_in_child=_after_fork_in_child)
