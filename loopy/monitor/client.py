"""The watching side: ``loopy ps``, ``loopy top PID`` and ``loopy trace dump PID``.

All talk to a target's monitor thread (``server.py``) over its Unix socket
(``paths.py``), one JSON line each way (a dump's trace follows its line,
length-prefixed: see :func:`dump`).  ``top`` keeps one connection and
asks for a snapshot every second; an answer that takes longer than
:data:`ANSWER_TIMEOUT` means the target holds the GIL in a C call (its
monitor thread cannot run), which ``top`` reports while it keeps waiting.

Exit codes: 0 after a frame (``--once``), after ``q`` or Ctrl-C, or when
the target exits while watched; 1 when there is no such process, it
cannot be watched, or (``--once``) it does not answer in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import select
import socket
import sys
import time
from array import array
from collections.abc import Iterator
from typing import Any, TextIO

from ..trace.fileformat import check_writable
from ..trace.flight import FlightSnapshot
from . import paths
from .server import WAKE_SIGNAL

__all__ = ["Connection", "Unwatchable", "dump", "format_frame", "ps", "top"]

#: Seconds to wait for an answer before saying the target does not answer.
ANSWER_TIMEOUT = 2.0
#: Seconds between two frames of ``top``.
REFRESH = 1.0
#: Until the first answer, the target is sent WAKE_SIGNAL this often: its
#: thread starts on the signal (see server.py), and one may come too early.
NUDGE_EVERY = 0.25
MAX_ANSWER = 16 * 1024 * 1024  # bytes: a bigger answer is not from a loopy monitor
#: Seconds a dump's header may take: the target copies its ring's window
#: (a few ms per million events, the loop running between the chunks).
DUMP_TIMEOUT = 30.0
#: Seconds without a byte of the dump's recording before giving up on it.
DUMP_STALL_TIMEOUT = 10.0
#: A bigger part is not from a loopy recorder (its ring is 64 MiB by default).
MAX_DUMP = 2 * 1024 * 1024 * 1024

NEEDS_RECORDER = "need the flight recorder (start the target with LOOPY_FLIGHT_RECORDER=SECONDS)"
_CLEAR = "\x1b[H\x1b[2J"
_ASYNCIO_DIR = os.path.dirname(asyncio.__file__) + os.sep


class Unwatchable(Exception):
    """The process cannot be watched; the message says why, for the user."""


class Gone(Exception):
    """The target closed the connection (it exited, or stopped its monitor)."""


def not_watchable(pid: int) -> Unwatchable:
    """The error for a process that exists but has no monitor socket."""
    return Unwatchable(
        f"process {pid} is not watchable (not a loopy program, or started without "
        "LOOPY_MONITOR / LOOPY_FLIGHT_RECORDER)"
    )


class Connection:
    """One connection to a target's monitor: send a request, read its one-line answer."""

    def __init__(self, pid: int) -> None:
        if not paths.process_exists(pid):
            raise Unwatchable(f"no process {pid}")
        try:
            directory = paths.private_dir(create=False)
        except (OSError, paths.MonitorDirError) as exc:
            raise Unwatchable(f"cannot watch process {pid}: {exc}") from None
        if directory is None:
            raise not_watchable(pid)
        path = paths.socket_path(directory, pid)
        self.pid = pid
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(ANSWER_TIMEOUT)
        try:
            self.sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            self.sock.close()
            if path.exists() and not paths.process_exists(pid):
                paths.remove_stale(path)
            raise not_watchable(pid) from None
        except OSError as exc:
            self.sock.close()
            raise Unwatchable(f"cannot watch process {pid}: {exc}") from None
        self.buffer = b""
        self.answered = False  # once it has, its thread runs as long as we are connected
        self.nudge()

    def nudge(self) -> None:
        """Ask the target to start its monitor thread (harmless if it runs)."""
        with contextlib.suppress(OSError):
            os.kill(self.pid, WAKE_SIGNAL)

    def close(self) -> None:
        """Hang up (the target's thread leaves once no client is left for a while)."""
        self.sock.close()

    def send(self, request: dict[str, Any]) -> None:
        """Send ``request``; if the target already hung up, what it said first is still read."""
        try:
            self.sock.sendall(json.dumps(request).encode() + b"\n")
        except OSError:
            pass  # receive() reads the answer it may have left (a refusal), then says Gone

    def receive(self, timeout: float) -> dict[str, Any] | None:
        """The next answer, or None if none came within ``timeout`` (ask nothing new meanwhile)."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left if self.answered else min(left, NUDGE_EVERY))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                if not self.answered:
                    self.nudge()
                continue
            except OSError:
                raise Gone from None
            if not data:
                raise Gone
            self.buffer += data
            if len(self.buffer) > MAX_ANSWER:
                raise Gone
        line, _, self.buffer = self.buffer.partition(b"\n")
        self.answered = True
        answer: dict[str, Any] = json.loads(line)
        return answer

    def receive_bytes(self, size: int, into: Any, stall: float) -> None:
        """Copy the next ``size`` bytes to the file ``into``; Gone after ``stall`` s silent."""
        chunk, self.buffer = self.buffer[:size], self.buffer[size:]
        into.write(chunk)
        left = size - len(chunk)
        self.sock.settimeout(stall)
        while left:
            try:
                data = self.sock.recv(min(left, 1 << 20))
            except OSError:  # (TimeoutError too)
                raise Gone from None
            if not data:
                raise Gone
            into.write(data)
            left -= len(data)

    def request(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """Send ``request``; its answer, or None if none came within :data:`ANSWER_TIMEOUT`."""
        self.send(request)
        return self.receive(ANSWER_TIMEOUT)


# ----------------------------------------------------------------------
# loopy ps
# ----------------------------------------------------------------------


def ps(out: TextIO) -> int:
    """List this user's watchable processes: PID, uptime, loops, utilisation, command line."""
    try:
        directory = paths.private_dir(create=False)
    except (OSError, paths.MonitorDirError) as exc:
        print(f"loopy: {exc}", file=sys.stderr)
        return 1
    rows = []
    for pid in paths.live_pids(directory) if directory is not None else []:
        try:
            connection = Connection(pid)
        except Unwatchable:
            continue  # exited meanwhile, or a stale socket (now removed)
        try:
            answer = connection.request({"op": "hello"})
        except Gone:
            continue
        finally:
            connection.close()
        if answer is None:
            rows.append((str(pid), "?", "?", "-", "(not answering)"))
            continue
        loops = answer.get("loops", [])
        running = sum(1 for loop in loops if loop.get("running"))
        busy = [loop["utilisation"] for loop in loops if loop.get("utilisation") is not None]
        rows.append(
            (
                str(pid),
                _duration(answer.get("uptime", 0.0)),
                f"{running}/{len(loops)}",
                f"{max(busy):.0%}" if busy else "-",
                " ".join(answer.get("argv", [])),
            )
        )
    out.write(f"{'PID':>7}  {'UPTIME':>9}  {'LOOPS':>5}  {'UTIL':>4}  COMMAND\n")
    for pid_text, uptime, loops_text, util, command in rows:
        out.write(f"{pid_text:>7}  {uptime:>9}  {loops_text:>5}  {util:>4}  {command}\n")
    if rows:
        out.write(
            "(LOOPS: running/open; UTIL: the busiest loop's busy share of the last second;"
            f" - : {NEEDS_RECORDER})\n"
        )
    return 0


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02}:{rest % 60:02}"


# ----------------------------------------------------------------------
# loopy top PID
# ----------------------------------------------------------------------


def top(pid: int, *, once: bool, loop: int | None, out: TextIO) -> int:
    """Show what process ``pid``'s loop is doing: one frame (``once``), or one a second."""
    try:
        connection = Connection(pid)
    except Unwatchable as exc:
        print(f"loopy: {exc}", file=sys.stderr)
        return 1
    request = {"op": "snapshot", "loop": loop}
    try:
        if once:
            answer = connection.request(request)
            if answer is None:
                print(f"loopy: process {pid} {_silent(ANSWER_TIMEOUT)}", file=sys.stderr)
                return 1
            if "error" in answer and "loops" not in answer:  # refused: "too many clients"
                print(f"loopy: process {pid}: {answer['error']}", file=sys.stderr)
                return 1
            if "error" in answer and answer.get("loop") is None:
                print(f"loopy: process {pid}: {answer['error']}", file=sys.stderr)
                return 1
            out.write("\n".join(format_frame(answer)) + "\n")
            return 0
        asked = time.monotonic()
        first = connection.request(request)
        if first is not None and "pid" not in first:  # refused: "too many clients"
            print(f"loopy: process {pid}: {first.get('error')}", file=sys.stderr)
            return 1
        return _live(connection, request, out, first, asked)
    except Gone:
        out.write(f"process {pid} {'exited' if _exits(pid) else 'stopped answering'}\n")
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        connection.close()


def _exits(pid: int) -> bool:
    """Whether ``pid`` exits within a second (its monitor closes early in its exit)."""
    deadline = time.monotonic() + 1.0
    while paths.process_exists(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _silent(seconds: float) -> str:
    return (
        f"did not answer within {seconds:.0f} s "
        "(a C call holding the GIL? its monitor thread cannot run)"
    )


def _live(
    connection: Connection,
    request: dict[str, Any],
    out: TextIO,
    answer: dict[str, Any] | None,
    asked: float,
) -> int:
    """Refresh a frame every second until ``q``, Ctrl-C, or the target goes.

    ``answer`` is the answer to the first request, sent at ``asked``.
    """
    terminal = out.isatty()
    with _keys() as key_pressed:
        while True:
            while answer is None:  # the target holds the GIL: say so, keep waiting
                silent = time.monotonic() - asked
                lines = [f"loopy top {connection.pid}: {_silent(silent)}; still trying"]
                _show(out, lines, terminal)
                if key_pressed(0.0):
                    return 0
                answer = connection.receive(REFRESH)
            _show(out, format_frame(answer), terminal)
            if key_pressed(max(0.0, REFRESH - (time.monotonic() - asked))):
                return 0
            asked = time.monotonic()
            connection.send(request)
            answer = connection.receive(ANSWER_TIMEOUT)


def _show(out: TextIO, lines: list[str], terminal: bool) -> None:
    text = "\n".join(lines) + "\n"
    out.write(_CLEAR + text if terminal else text + "\n")
    out.flush()


@contextlib.contextmanager
def _keys() -> Iterator[Any]:
    """A function waiting up to N seconds for ``q`` on the terminal (just sleeping without one)."""
    stdin = sys.stdin
    if not (stdin is not None and stdin.isatty()):

        def sleep(seconds: float) -> bool:
            time.sleep(seconds)
            return False

        yield sleep
        return
    import termios  # noqa: PLC0415 - only for a terminal
    import tty  # noqa: PLC0415

    fd = stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def pressed(seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while True:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                return False
            if os.read(fd, 1) in (b"q", b"Q"):
                return True

    try:
        yield pressed
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def format_frame(answer: dict[str, Any]) -> list[str]:
    """One frame of ``top`` as plain lines (no terminal codes)."""
    loops = answer.get("loops", [])
    lines = [
        f"loopy top - pid {answer.get('pid')}  up {_duration(answer.get('uptime', 0.0))}"
        f"  python {answer.get('python')}  {' '.join(answer.get('argv', []))}",
        "loops: "
        + (
            ", ".join(
                f"#{loop['index']} "
                + (f"running in thread {loop['thread']}" if loop["running"] else "not running")
                for loop in loops
            )
            or "none open"
        ),
    ]
    if "error" in answer:
        lines.append(f"error: {answer['error']}")
    state = answer.get("loop")
    if state is None:
        return lines
    lines.append("")
    lines.append(f"loop #{state['index']}: {_activity(state)}")
    rate = state.get("iterations_per_s")
    lines.append(
        f"  iterations/s {'-' if rate is None else f'{rate:.1f}'}"
        f"   iterations {state['iterations']}"
        f"   ready {state['ready']}   timers {state['timers']}"
        f"   descriptors {state['descriptors']}   tasks {state['tasks']}"
    )
    lines.extend(_activity_lines(state.get("activity")))
    if state.get("stack"):
        where = "the running step" if state["phase"] == "callback" else "the thread"
        lines.append("")
        lines.append(f"stack of {where} in thread {state['thread']} (innermost last):")
        for frame in state["stack"]:
            lines.append(f"  {frame['file']}:{frame['line']} in {frame['function']}")
            if frame.get("source"):
                lines.append(f"      {frame['source']}")
    lines.append("")
    lines.append(f"descriptors ({state['descriptors']}):")
    for fd in state["fds"]:
        lines.append(f"  {_fd_line(fd)}")
    waiting = state.get("waiting", [])
    lines.append("")
    lines.append(
        f"tasks ({state['tasks']}), longest waiting first (waiting: since a client first saw it):"
    )
    for row in waiting:
        at = _where(row["at"])
        place = f"  at {at[0]}:{at[1]} in {at[2]}" if at else ""
        lines.append(f"  {_seconds(row['waiting']):>8}  {row['task']}{place}")
    running = 1 if state["phase"] == "callback" and state["step"].startswith("Task ") else 0
    if state["tasks"] > len(waiting) + running:
        lines.append(f"  ... {state['tasks'] - len(waiting) - running} more")
    return lines


def _activity_lines(activity: dict[str, Any] | None) -> list[str]:
    """The flight recorder's figures: busy share, callbacks/s, slowest steps, stalls."""
    if activity is None:
        return [
            f"  utilisation, callbacks/s, slowest steps, busiest tasks, stalls: {NEEDS_RECORDER}"
        ]
    seconds = activity["seconds"]
    # (Under a second for a loop too busy to read a second of: see recent_activity.)
    last = f"{seconds:g} s" if seconds >= 1 else f"{seconds * 1e3:.0f} ms"
    lines = [
        f"  utilisation {activity['utilisation']:.1%}"
        f"   callbacks/s {activity['callbacks_per_s']:.1f}"
        f"   (last {last}; recorder window {activity['window_s']:g} s)",
        "",
        f"slowest steps of the last {last}:",
    ]
    for step in activity["slowest"]:
        now = " (running)" if step["ended_s_ago"] <= 0 else ""
        lines.append(f"  {step['ms']:>9.3f} ms  {step['step']}{now}")
    if not activity["slowest"]:
        lines.append("  (none)")
    lines.append("")
    lines.append(f"busiest tasks of the last {last}:")
    for task in activity["busiest_tasks"]:
        steps = _count(task["steps"], "step")
        lines.append(f"  {task['ms']:>9.3f} ms in {steps:<10}  {task['task']}")
    if not activity["busiest_tasks"]:
        lines.append("  (none)")
    threshold = activity["stall_threshold"]
    dumps = activity["dumps"]
    written = f"; {dumps} dumped" if dumps is not None else ""
    lines.append("")
    lines.append(
        f"stalls (steps over {threshold * 1e3:g} ms) since recording began: "
        f"{activity['stall_count']}{written}"
    )
    for stall in reversed(activity["stalls"]):
        at = time.strftime("%H:%M:%S", time.localtime(stall["at"]))
        lines.append(f"  {at}  {stall['ms']:>9.1f} ms  {stall['step']}")
    return lines


def _count(n: int, thing: str) -> str:
    """``1 chunk``, ``3 chunks``."""
    return f"{n} {thing}" if n == 1 else f"{n} {thing}s"


def _where(chain: list[list[Any]]) -> list[Any] | None:
    """The innermost place in an await chain that is not in asyncio itself (where a user looks)."""
    outside = [location for location in chain if not str(location[0]).startswith(_ASYNCIO_DIR)]
    picked = (outside or chain)[-1:]
    return picked[0] if picked else None


def _activity(state: dict[str, Any]) -> str:
    if not state["running"]:
        return "not running"
    if state["blocked"]:
        bound = "" if state["blocked_for_exact"] else "at least "
        return f"BLOCKED for {bound}{state['blocked_for']:.2f} s in {state['step']}"
    if state["phase"] == "callback":
        return f"running {state['step']}"
    if state["phase"] == "waiting":
        return "waiting for I/O or timers"
    return "running (between iterations)"


def _fd_line(fd: dict[str, Any]) -> str:
    parts = [f"fd {fd['fd']:<4}"]
    if "kind" in fd:
        parts.append(fd["kind"])
    if fd.get("local"):
        parts.append(fd["local"])
    if fd.get("peer"):
        parts.append(f"<-> {fd['peer']}")
    elif fd.get("listening"):
        parts.append("(listening)")
    if fd.get("transport"):
        parts.append(f"[{fd['transport']}]")
    if fd.get("reader"):
        parts.append(f"reader: {fd['reader']}")
    if fd.get("writer"):
        parts.append(f"writer: {fd['writer']}")
    return "  ".join(parts)


def _seconds(seconds: float) -> str:
    return f"{seconds:.1f} s"


# ----------------------------------------------------------------------
# loopy trace dump PID -o FILE
# ----------------------------------------------------------------------


def dump(pid: int, output: str, *, loop: int | None, out: TextIO) -> int:
    """Fetch process ``pid``'s flight-recorder window and write it to ``output`` (ours, not its).

    The target copies its ring's window and sends one JSON line saying how
    many bytes follow, then the recording itself (numbers, names: see
    ``FlightRecorder.wire_snapshot``).  This process turns it into a trace
    and writes ``output`` (relative to its own working directory): the
    target is never given a path, nor the work of encoding.  The file
    appears only once complete (written beside it, then renamed).
    """
    try:
        check_writable(output)
    except OSError as exc:
        print(f"loopy: cannot write the dump to {output}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:
        connection = Connection(pid)
    except Unwatchable as exc:
        print(f"loopy: {exc}", file=sys.stderr)
        return 1
    try:
        # First a quick question, so that the thread is known to run: the
        # target is then not sent WAKE_SIGNAL every NUDGE_EVERY while it copies.
        hello = connection.request({"op": "hello"})
        if hello is None:
            print(f"loopy: process {pid} {_silent(ANSWER_TIMEOUT)}", file=sys.stderr)
            return 1
        if "error" in hello:  # refused: "too many clients"
            print(f"loopy: process {pid}: {hello['error']}", file=sys.stderr)
            return 1
        connection.send({"op": "dump", "loop": loop})
        header = connection.receive(DUMP_TIMEOUT)
        if header is None:
            print(f"loopy: process {pid} {_silent(DUMP_TIMEOUT)}", file=sys.stderr)
            return 1
        if "error" in header:
            print(f"loopy: process {pid}: {header['error']}", file=sys.stderr)
            return 1
        size, slot_bytes = header.get("facts"), header.get("slots")
        if not (
            isinstance(size, int) and 0 < size <= MAX_DUMP
            and isinstance(slot_bytes, int) and 0 <= slot_bytes <= MAX_DUMP
            and slot_bytes % 16 == 0
        ):  # fmt: skip
            print(
                f"loopy: process {pid}: a dump of {size!r} + {slot_bytes!r} bytes: not sent",
                file=sys.stderr,
            )
            return 1
        facts, received, slots = io.BytesIO(), io.BytesIO(), array("d")
        connection.receive_bytes(size, facts, DUMP_STALL_TIMEOUT)
        connection.receive_bytes(slot_bytes, received, DUMP_STALL_TIMEOUT)
        slots.frombytes(received.getbuffer())
        del received
    except Gone:
        print(f"loopy: process {pid} hung up before its dump was complete", file=sys.stderr)
        return 1
    finally:
        connection.close()
    began = time.perf_counter()
    try:
        snap = FlightSnapshot.from_wire(json.loads(facts.getvalue()), slots)
    except (ValueError, LookupError, TypeError) as exc:  # (not from a loopy recorder)
        print(f"loopy: process {pid} sent a dump that cannot be read: {exc!r}", file=sys.stderr)
        return 1
    snap.write(output)
    out.write(
        f"wrote {output}: {snap.now - snap.start:.2f} s of loop #{header['loop']}"
        f" (window {snap.seconds:g} s), {len(slots) // 2} events,"
        f" {os.path.getsize(output)} bytes; the loop was held {header['held_ms']:.2f} ms at most"
        f" ({_count(header['chunks'], 'chunk')} copied in {header['copy_ms']:.2f} ms),"
        f" encoded here in {time.perf_counter() - began:.2f} s\n"
    )
    return 0
