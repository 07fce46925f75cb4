"""The ``loopy`` command: in-process through ``cli.main`` and end to end as a process.

The in-process tests cover ``cli.py`` (coverage does not follow
subprocesses).  The end-to-end tests run ``python -m loopy --port 0`` the way
a user would, play real clients against it and read its log line by line.
Every wait has a deadline and waits for a specific line, never for a guess of
how long something takes.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import logging
import os
import re
import runpy
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import loopy
from loopy import cli, demo
from loopy.trace import load_trace

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 10.0  # seconds: the longest any single wait may take

#: One log line of the program, and the message it carries.
LINE = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) "
    r"(\w+) (\w+) (.*)"
)


# ======================================================================
# In-process: cli.main
# ======================================================================


def test_help_describes_the_options_and_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: loopy [run] [-h] [--host HOST] [--port PORT]")
    for option in ("--interval", "--max-log-bytes", "--log-level", "--tasks {asyncio,loopy}"):
        assert option in out
    assert "seconds between two ticks, 0.001 to 86400 (1.0)" in " ".join(out.split())
    assert "commands (the first argument; `run` when it is none of these):" in out
    assert "\n  run " in out
    assert cli.main(["run", "--help"]) == 0
    assert capsys.readouterr().out == out


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["run", "extra"], "unrecognized arguments: extra"),
        (["--port", "http"], "argument --port: invalid _port value: 'http'"),
        (["--port", "65536"], "argument --port: port must be 0..65535, not 65536"),
        *(
            (
                ["--interval", value],
                f"argument --interval: must be 0.001 to 86400 seconds, not {value}",
            )
            # 1e-310 was once accepted, and the ticker died of OverflowError with a traceback.
            for value in ("0", "nan", "1e-310", "0.0009", "86400.5", "inf", "-1")
        ),
        (["--max-log-bytes", "-1"], "argument --max-log-bytes: must be 0 or more, not -1"),
        (["--log-level", "loud"], "argument --log-level: invalid choice: 'LOUD'"),
        (["--tasks", "trio"], "argument --tasks: invalid choice: 'trio'"),
    ],
)
def test_a_bad_command_line_exits_2_with_usage(
    argv: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    usage, message = err.rstrip("\n").rsplit("\n", 1)
    assert usage.startswith("usage: loopy [run] ")
    assert message.startswith(f"loopy: error: {error}")


def test_the_interval_bounds_themselves_are_accepted() -> None:
    assert cli._interval("0.001") == 0.001
    assert cli._interval("86400") == 86400.0


def test_a_bad_loopy_tasks_variable_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOOPY_TASKS", "threads")
    assert cli.main(["--port", "0"]) == 2
    assert capsys.readouterr().err == (
        "loopy: $LOOPY_TASKS: unknown task mode 'threads': expected one of asyncio, loopy\n"
    )


def test_a_busy_port_exits_1_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        assert cli.main(["--port", str(port)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (f"loopy: cannot listen on 127.0.0.1:{port}: [Errno 98] Address already in use\n")


def test_an_address_it_cannot_listen_on_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    # An IPv6 address this host does not have (or no IPv6 at all): written in brackets.
    assert cli.main(["--host", "2001:db8::1", "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("loopy: cannot listen on [2001:db8::1]:0: [Errno ")
    assert err.count("\n") == 1


class SignalAfter(logging.Handler):
    """Raises ``sig`` in the program's own thread once it logs ``message``."""

    def __init__(self, message: str, sig: int = signal.SIGINT) -> None:
        super().__init__()
        self.message = message
        self.sig = sig

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == self.message:
            signal.raise_signal(self.sig)


@pytest.fixture
def signal_after() -> Iterator[Any]:
    """``signal_after(message, sig)``: raise ``sig`` when the program logs ``message``."""
    demo_logger = logging.getLogger("loopy.demo")
    handlers: list[logging.Handler] = []

    def install(message: str, sig: int = signal.SIGINT) -> None:
        handlers.append(SignalAfter(message, sig))
        demo_logger.addHandler(handlers[-1])

    yield install
    for handler in handlers:
        demo_logger.removeHandler(handler)


@pytest.mark.parametrize("tasks", ["asyncio", "loopy"])
def test_main_runs_the_program_until_a_signal(
    tasks: str, signal_after: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    signal_after("Count: 3")
    argv = ["--port", "0", "--interval", "0.01", "--tasks", tasks, "--log-level", "debug"]
    assert cli.main(argv) == 0
    lines = capsys.readouterr().err.splitlines()
    messages = []
    for line in lines:
        match = LINE.fullmatch(line)
        assert match, line
        assert match.group(2, 3) == ("demo", "MainThread")
        messages.append(match[4])
    assert messages[0].startswith("Event loop: loopy.loop.Loop <Loop running=True ")
    assert messages[0].endswith(f" tasks={tasks}>")
    assert messages[1].startswith("Listening on ('127.0.0.1', ")
    assert messages[2:] == [
        "Count: 0",
        "Count: 1",
        "Count: 2",
        "Count: 3",
        "Shutting down (SIGINT)",
    ]
    # The logging set up for the run is gone with it.
    assert not any(
        isinstance(h, logging.StreamHandler) and h.stream is sys.stderr
        for h in logging.getLogger().handlers
    )


def test_main_takes_the_task_mode_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, signal_after: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOOPY_TASKS", "loopy")
    signal_after("Count: 0", signal.SIGTERM)
    assert cli.main(["--port", "0", "--log-level", "DEBUG", "--max-log-bytes", "0"]) == 0
    err = capsys.readouterr().err
    assert " tasks=loopy>" in err
    assert err.endswith(" INFO demo MainThread Shutting down (SIGTERM)\n")


def test_main_with_trace_writes_it_on_sighup(
    signal_after: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    signal_after("Count: 1", signal.SIGHUP)
    trace_file = tmp_path / "t.json"
    assert cli.main(["--port", "0", "--interval", "0.01", "--trace", str(trace_file)]) == 0
    assert capsys.readouterr().err.endswith(" INFO demo MainThread Shutting down (SIGHUP)\n")
    assert load_trace(trace_file)["otherData"]["dropped_events"] == 0


def test_trace_errors_in_process(
    saved_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The one-line errors of ``loopy trace``, without a subprocess (see test_trace_files.py)."""
    assert cli.main(["trace", "view", str(saved_trace), "-o", str(saved_trace)]) == 1
    assert cli.main(["trace", "view", str(saved_trace), "-o", str(tmp_path / "no" / "x.html")]) == 1
    assert cli.main(["trace", "summary", str(tmp_path)]) == 1
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    assert cli.main(["trace", "summary", str(bad)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"loopy: the viewer would overwrite the trace itself: {saved_trace}",
        f"loopy: cannot write the page {tmp_path / 'no' / 'x.html'}: "
        f"No such file or directory: '{tmp_path / 'no' / 'x.html'}'",
        f"loopy: cannot read trace {tmp_path}: Is a directory",
        f"loopy: {bad}: not a loopy trace: a JSON array, not an object",
    ]


def test_reasons_are_one_line() -> None:
    assert cli._reason(OSError(5, "I/O error")) == "I/O error"
    assert cli._reason(ValueError("first\nsecond")) == "first"
    assert cli._reason(ValueError()) == "ValueError"


def test_ctrl_c_before_the_handlers_are_installed_exits_0(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def interrupted(self: demo.Program) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(demo.Program, "run", interrupted)
    assert cli.main(["--port", "0"]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_python_m_loopy_runs_main(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["loopy", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("loopy", run_name="__main__")
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: loopy [run] ")


# ======================================================================
# End to end: python -m loopy
# ======================================================================


RUN_WITH_FD_LIMIT = """\
import resource, runpy
resource.setrlimit(resource.RLIMIT_NOFILE, (%d, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
runpy.run_module("loopy", run_name="__main__", alter_sys=True)
"""


class Loopy:
    """``python -m loopy --port 0 ARGS`` as a child process, its log read line by line.

    A thread reads the merged stdout/stderr into ``lines``; the test waits
    for the lines it expects, each wait bounded by ``TIMEOUT``.
    """

    def __init__(
        self, *args: str, env: dict[str, str] | None = None, fd_limit: int | None = None
    ) -> None:
        python = [sys.executable, "-m", "loopy"]
        if fd_limit is not None:
            # Lower the limit in the child itself, then run loopy as -m would.
            python = [sys.executable, "-c", RUN_WITH_FD_LIMIT % fd_limit]
        self.proc = subprocess.Popen(
            [*python, "--port", "0", *args],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        listening = self.wait_for(r"Listening on (.*)")
        self.address = ast.literal_eval(listening[1])
        self.port: int = self.address[1]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def messages(self) -> list[str]:
        """The messages of the log lines so far (checking each line's format)."""
        with self._changed:
            lines = list(self.lines)
        messages = []
        for line in lines:
            match = LINE.fullmatch(line)
            assert match, f"not a log line: {line!r}"
            assert match.group(2, 3) == ("demo", "MainThread"), line
            messages.append(match[4])
        return messages

    def wait_for(self, pattern: str, count: int = 1, timeout: float = TIMEOUT) -> re.Match[str]:
        """Wait until ``count`` log messages match ``pattern``; the ``count``-th match."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                matches = [
                    m
                    for line in self.lines
                    if (log_line := LINE.fullmatch(line)) and (m := regex.fullmatch(log_line[4]))
                ]
                if len(matches) >= count:
                    return matches[count - 1]
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    tail = "\n".join(self.lines[-20:])
                    raise AssertionError(f"no {count} lines like {pattern!r}; last lines:\n{tail}")
                self._changed.wait(left)

    def messages_matching(self, pattern: str) -> list[re.Match[str]]:
        regex = re.compile(pattern)
        return [m for message in self.messages() if (m := regex.fullmatch(message))]

    def wait_for_ticks(self, ticks: int = 2) -> None:
        """Wait until the program has ticked ``ticks`` more times."""
        latest = len(self.messages_matching(r"Count: \d+"))
        self.wait_for(r"Count: \d+", count=latest + ticks)

    def stop(self, sig: int = signal.SIGINT) -> int:
        """Send ``sig``; the exit code, once the process has exited and its output is read."""
        self.proc.send_signal(sig)
        code = self.proc.wait(TIMEOUT)
        self._reader.join(TIMEOUT)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(TIMEOUT)
        self._reader.join(TIMEOUT)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def client(port: int) -> tuple[socket.socket, str]:
    """A client connected to the program, and its address as the program logs it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    return sock, str(sock.getsockname())


def reset(sock: socket.socket) -> None:
    """Close ``sock`` with a RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.parametrize("tasks", ["asyncio", "loopy"])
def test_the_seed_transcript(start: Any, tasks: str) -> None:
    loopy = start("--interval", "0.2", "--tasks", tasks)
    loopy.wait_for("Count: 1")
    one, one_addr = client(loopy.port)
    with one:
        loopy.wait_for(re.escape(f"Accept from {one_addr}"))
        one.sendall(b"hello from one connection!\n")
        loopy.wait_for(re.escape(f"Recvd (from {one_addr}): b'hello from one connection!\\n'"))
        loopy.wait_for_ticks(1)
        two, two_addr = client(loopy.port)
        with two:
            loopy.wait_for(re.escape(f"Accept from {two_addr}"))
            two.sendall(b"hello from another!\n")
            loopy.wait_for(re.escape(f"Recvd (from {two_addr}): b'hello from another!\\n'"))
            loopy.wait_for_ticks(1)
        loopy.wait_for(re.escape(f"Closed {two_addr}"))
        loopy.wait_for_ticks(1)
    loopy.wait_for(re.escape(f"Closed {one_addr}"))
    assert loopy.stop(signal.SIGINT) == 0

    messages = loopy.messages()  # every line: the format, module demo, MainThread
    assert "Traceback" not in "\n".join(loopy.lines)
    counts = [m for m in messages if m.startswith("Count: ")]
    assert counts == [f"Count: {k}" for k in range(len(counts))]
    events = [m for m in messages if not m.startswith("Count: ")]
    assert events == [
        f"Listening on {loopy.address}",
        f"Accept from {one_addr}",
        f"Recvd (from {one_addr}): b'hello from one connection!\\n'",
        f"Accept from {two_addr}",
        f"Recvd (from {two_addr}): b'hello from another!\\n'",
        f"Closed {two_addr}",
        f"Closed {one_addr}",
        "Shutting down (SIGINT)",
    ]
    # The test waited for ticks between these events: they interleave.
    for before, after in [(2, 3), (4, 5), (5, 6)]:
        between = messages[messages.index(events[before]) : messages.index(events[after])]
        assert any(m.startswith("Count: ") for m in between)


def test_sigterm_closes_open_connections_and_exits_0(start: Any) -> None:
    loopy = start("--tasks", "loopy")
    conn, addr = client(loopy.port)
    with conn:
        loopy.wait_for(re.escape(f"Accept from {addr}"))
        assert loopy.stop(signal.SIGTERM) == 0
        assert conn.recv(10) == b""  # closed by the program
    assert loopy.messages()[-2:] == ["Shutting down (SIGTERM)", f"Closed {addr}"]
    assert "Traceback" not in "\n".join(loopy.lines)


def test_sighup_shuts_down_like_sigterm_and_the_trace_is_written(
    start: Any, tmp_path: Path
) -> None:
    """Closing the terminal: a clean shutdown, exit 0, the whole trace on disk."""
    trace_file = tmp_path / "hup.json"
    loopy = start("--interval", "0.2", "--trace", str(trace_file))
    loopy.wait_for_ticks(1)
    assert loopy.stop(signal.SIGHUP) == 0
    assert loopy.messages()[-1] == "Shutting down (SIGHUP)"
    events = load_trace(trace_file)["traceEvents"]
    assert any(e["ph"] == "i" and e["name"] == "signal: SIGHUP" for e in events)
    assert any(e.get("cat") == "iteration" for e in events)


def test_a_busy_port_exits_1_with_one_line_on_stderr() -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "loopy", "--port", str(port)],
            cwd=ROOT,
            check=False,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (
        f"loopy: cannot listen on 127.0.0.1:{port}: [Errno 98] Address already in use\n"
    )


def test_a_bad_option_exits_2_with_usage() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "loopy", "--colour"],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("usage: loopy [run] ")
    assert done.stderr.endswith("loopy: error: unrecognized arguments: --colour\n")
    assert "Traceback" not in done.stderr


def test_the_console_script_prints_help() -> None:
    script = Path(sys.executable).parent / "loopy"
    if not script.exists():
        pytest.skip("the loopy console script is not installed in this environment")
    done = subprocess.run(
        [str(script), "--help"], check=False, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert done.returncode == 0
    assert done.stdout.startswith("usage: loopy [run] ")


# -- bad input ---------------------------------------------------------------------


def test_binary_resets_and_silence(start: Any) -> None:
    loopy = start("--interval", "0.1")
    silent, silent_addr = client(loopy.port)
    with silent:
        binary, binary_addr = client(loopy.port)
        with binary:
            binary.sendall(bytes(range(256)))
            loopy.wait_for(re.escape(f"Recvd (from {binary_addr}): ") + "b'.*")
        loopy.wait_for(re.escape(f"Closed {binary_addr}"))
        rude, rude_addr = client(loopy.port)
        rude.sendall(b"half a line")
        loopy.wait_for(re.escape(f"Recvd (from {rude_addr}): b'half a line'"))
        reset(rude)
        loopy.wait_for(re.escape(f"Reset {rude_addr}"))
        loopy.wait_for_ticks(2)
    loopy.wait_for(re.escape(f"Closed {silent_addr}"))
    assert loopy.stop() == 0

    received = b""
    for match in loopy.messages_matching(re.escape(f"Recvd (from {binary_addr}): ") + "(.*)"):
        text = match[1]
        assert text.endswith(" bytes)") == (" ... (" in text)
        received += ast.literal_eval(text.partition(" ... (")[0])
    # The default --max-log-bytes is 200: the 256 bytes are logged cut, whatever
    # the reads were; what is logged is exactly what was sent.
    assert bytes(range(256)).startswith(received)
    assert len(received) >= 200
    assert "Traceback" not in "\n".join(loopy.lines)


def test_a_10_mib_burst_leaves_others_served_and_ticks_going(start: Any) -> None:
    loopy = start("--interval", "0.1", "--max-log-bytes", "16")
    total = 10 * 1024 * 1024
    burst, burst_addr = client(loopy.port)
    other, other_addr = client(loopy.port)
    with burst, other:
        loopy.wait_for(re.escape(f"Accept from {other_addr}"))

        def send_burst() -> None:
            with contextlib.suppress(OSError):  # the test failed and closed the socket
                burst.sendall(b"\xee" * total)

        sender = threading.Thread(target=send_burst)
        sender.start()
        loopy.wait_for(re.escape(f"Recvd (from {burst_addr}): ") + ".*", count=3)
        # While the burst goes on, the other client is served and ticks continue.
        other.sendall(b"me too\n")
        loopy.wait_for(re.escape(f"Recvd (from {other_addr}): b'me too\\n'"))
        loopy.wait_for_ticks(2)
        sender.join(TIMEOUT)
        assert not sender.is_alive()
        burst.shutdown(socket.SHUT_WR)
        loopy.wait_for(re.escape(f"Closed {burst_addr}"))
    assert loopy.stop() == 0

    sizes = []
    for match in loopy.messages_matching(re.escape(f"Recvd (from {burst_addr}): ") + "(.*)"):
        cut = re.fullmatch(r"b'(\\xee){16}' \.\.\. \((\d+) bytes\)", match[1])
        if cut:
            sizes.append(int(cut[2]))
        else:
            sizes.append(len(ast.literal_eval(match[1])))
    assert sum(sizes) == total
    assert max(sizes) <= 65536
    assert "Traceback" not in "\n".join(loopy.lines)


def test_500_clients_at_once(start: Any) -> None:
    loopy = start("--interval", "0.1")
    clients = []
    try:
        for _ in range(500):
            clients.append(client(loopy.port))
        for number, (sock, _) in enumerate(clients):
            sock.sendall(b"client %d\n" % number)
        loopy.wait_for(r"Accept from .*", count=500)
        loopy.wait_for(r"Recvd \(from .*", count=500)
        loopy.wait_for_ticks(2)
    finally:
        for sock, _ in clients:
            sock.close()
    loopy.wait_for(r"Closed .*", count=500)
    loopy.wait_for_ticks(1)
    assert loopy.stop() == 0

    messages = loopy.messages()
    for number, (_, addr) in enumerate(clients):
        assert f"Accept from {addr}" in messages
        assert f"Recvd (from {addr}): b'client {number}\\n'" in messages
        assert f"Closed {addr}" in messages
    assert "Traceback" not in "\n".join(loopy.lines)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_running_out_of_file_descriptors_pauses_accepting(start: Any) -> None:
    loopy = start("--interval", "0.1", fd_limit=40)
    clients = []
    try:
        for number in range(60):
            sock, addr = client(loopy.port)  # queued by the kernel, all of them
            clients.append((sock, addr))
            sock.sendall(b"client %d\n" % number)
        loopy.wait_for(r"Cannot accept \(\[Errno 24\] Too many open files\): pausing .*")
        accepted = {m[1] for m in loopy.messages_matching(r"Accept from (.*)")}
        assert 10 < len(accepted) < 60
        # Out of descriptors, the server neither spins nor stops ticking.
        loopy.wait_for_ticks(1)
        before, started = cpu_seconds(loopy.proc.pid), time.monotonic()
        loopy.wait_for_ticks(5)
        assert cpu_seconds(loopy.proc.pid) - before < 0.5 * (time.monotonic() - started)
        # Free descriptors: the rest are accepted and served.
        for sock, addr in clients:
            if addr in accepted:
                sock.close()
        loopy.wait_for(r"Accept from .*", count=60)
        loopy.wait_for(r"Recvd \(from .*", count=60)
    finally:
        for sock, _ in clients:
            sock.close()
    loopy.wait_for(r"Closed .*", count=60)
    assert loopy.stop() == 0
    warnings = [line for line in loopy.lines if " WARNING " in line]
    assert 1 <= len(warnings) <= 3  # once per shortage, not once per attempt
    assert "Traceback" not in "\n".join(loopy.lines)


# -- tracing the program, and the trace commands ------------------------------------


def log_time(line: str) -> float:
    """The wall-clock time of a log line (its asctime is local time, to the millisecond)."""
    assert LINE.fullmatch(line), line
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def test_the_trace_shows_the_accepts_and_reads_when_the_log_does(
    start: Any, tmp_path: Path
) -> None:
    trace_file = tmp_path / "seed.json"
    loopy = start("--interval", "0.2", "--trace", str(trace_file))
    one, _ = client(loopy.port)
    loopy.wait_for(r"Accept from .*")
    other, _ = client(loopy.port)
    loopy.wait_for(r"Accept from .*", count=2)
    one.sendall(b"hello from one connection!\n")
    loopy.wait_for(r"Recvd .*")
    other.sendall(b"hello from another!\n")
    loopy.wait_for(r"Recvd .*", count=2)
    one.close()
    other.close()
    loopy.wait_for(r"Closed .*", count=2)
    loopy.wait_for_ticks(2)  # and idles through a whole interval
    assert loopy.stop(signal.SIGTERM) == 0

    trace = json.loads(trace_file.read_text())
    started = trace["otherData"]["start_wall_time"]
    steps = [
        (started + e["ts"] / 1e6, started + (e["ts"] + e["dur"]) / 1e6, e["name"])
        for e in trace["traceEvents"]
        if e.get("cat") == "task-step"
    ]
    tolerance = 0.005  # the log's clock reads to the millisecond; 5 ms is generous

    def step_at(logged: float, coroutine: str) -> bool:
        return any(
            begin - tolerance <= logged <= end + tolerance and f"(coro: {coroutine})" in name
            for begin, end, name in steps
        )

    events = {"Accept from": "_accept_forever", "Recvd": "_serve", "Count:": "tick"}
    with loopy._changed:
        lines = list(loopy.lines)
    checked = dict.fromkeys(events, 0)
    for line in lines:
        for message, coroutine in events.items():
            if f" {message}" in line:
                assert step_at(log_time(line), coroutine), line
                checked[message] += 1
    assert checked["Accept from"] == 2
    assert checked["Recvd"] == 2
    assert checked["Count:"] >= 1
    # The story Perfetto shows: long waits between the ticks, I/O marks for the reads.
    waits = [e["dur"] for e in trace["traceEvents"] if e.get("cat") == "wait"]
    assert max(waits) > 100_000  # µs: the loop sleeps most of each 0.2 s tick
    assert any(e["ph"] == "i" and e.get("cat") == "io" for e in trace["traceEvents"])


@pytest.fixture
def saved_trace(tmp_path: Path) -> Path:
    """A small trace of a real loopy loop, saved to a file."""
    path = tmp_path / "small.json"

    async def work() -> None:
        with loopy.tracing(path):
            await asyncio.sleep(0.01)
            await asyncio.gather(*(asyncio.sleep(0) for _ in range(3)))

    loopy.run(work())
    return path


def test_trace_summary_prints_the_figures(
    saved_trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["trace", "summary", str(saved_trace)]) == 0
    out = capsys.readouterr().out
    assert "iterations" in out
    assert "utilisation" in out


def test_trace_view_writes_the_page_next_to_the_trace(
    saved_trace: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert cli.main(["trace", "view", str(saved_trace)]) == 0
    page = saved_trace.with_suffix(".html")
    assert capsys.readouterr().out == f"{page}\n"
    assert "<html" in page.read_text()
    elsewhere = tmp_path / "elsewhere.html"
    assert cli.main(["trace", "view", str(saved_trace), "-o", str(elsewhere)]) == 0
    assert elsewhere.exists()


def test_trace_of_a_missing_or_broken_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["trace", "summary", str(tmp_path / "missing.json")]) == 1
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert cli.main(["trace", "view", str(broken)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"loopy: cannot read trace {tmp_path / 'missing.json'}: No such file or directory",
        f"loopy: {broken}: not a loopy trace: not JSON (Expecting property name enclosed in "
        "double quotes: line 1 column 2 (char 1))",
    ]


def test_trace_needs_an_action(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["trace"]) == 2
    assert "usage: loopy trace" in capsys.readouterr().err


def test_loopy_trace_environment_variable_traces_asyncio_run(tmp_path: Path) -> None:
    trace_file = tmp_path / "app.json"
    program = "import asyncio, loopy\nloopy.install()\nasyncio.run(asyncio.sleep(0.01))\n"
    done = subprocess.run(
        [sys.executable, "-c", program],
        cwd=ROOT,
        env={**os.environ, "LOOPY_TRACE": str(trace_file)},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    trace = json.loads(trace_file.read_text())
    assert any(e.get("cat") == "iteration" for e in trace["traceEvents"])
    assert any(e.get("cat") == "task-step" for e in trace["traceEvents"])
