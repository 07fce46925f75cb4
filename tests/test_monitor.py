"""Watching a running program: ``LOOPY_MONITOR``, ``loopy ps`` and ``loopy top``.

Two kinds of tests.  End to end: real target processes (the seed program,
a ``loopy.run`` script) watched by ``loopy ps`` / ``loopy top`` as a user
runs them, and by raw clients that misbehave.  In process: a loop running
in a thread of the test process, watched by ``cli.main`` in the test's own
thread, so that coverage sees the monitor's code.

Every target gets its own short-lived socket directory (``XDG_RUNTIME_DIR``
points at a fresh temporary directory), so tests never see each other's
processes nor those of anyone else on the machine.  Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import loopy
from loopy import cli, monitor
from loopy.monitor import client, paths, server, watch
from loopy.trace import load_trace

from . import test_frameworks

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 10.0


@pytest.fixture
def runtime_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh ``XDG_RUNTIME_DIR`` (short: socket paths have a 108-byte limit)."""
    path = Path(tempfile.mkdtemp(prefix="lm-"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def own_server(runtime_dir: Path) -> Iterator[None]:
    """The test process's own monitor server, stopped and forgotten after the test."""
    yield
    if server._server is not None:
        server._server.stop()
        server._server = None


def target_env(runtime_dir: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "XDG_RUNTIME_DIR": str(runtime_dir), **extra}


def run_cli(*args: str, env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """``python -m loopy ARGS`` as a user runs it (in ``cwd``)."""
    return subprocess.run(
        [sys.executable, "-m", "loopy", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def wait_for_socket(runtime_dir: Path, pid: int) -> Path:
    path = runtime_dir / "loopy" / f"{pid}.sock"
    deadline = time.monotonic() + TIMEOUT
    while not path.exists():
        assert time.monotonic() < deadline, f"no socket {path}"
        time.sleep(0.01)
    return path


class Script:
    """A Python script as a target process; its stdout read line by line with deadlines."""

    def __init__(self, source: str, tmp_path: Path, env: dict[str, str]) -> None:
        script = tmp_path / "target.py"
        script.write_text(source)
        self.proc = subprocess.Popen(
            [sys.executable, str(script)],
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.pid = self.proc.pid
        self.pending = b""

    def next_line(self) -> str:
        """The next line of the target's stdout, within ``TIMEOUT``.

        Read from the descriptor, not through a buffered file: ``select()``
        cannot see lines a file object has already buffered.
        """
        assert self.proc.stdout is not None
        deadline = time.monotonic() + TIMEOUT
        while b"\n" not in self.pending:
            fd = self.proc.stdout.fileno()
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"no line within {TIMEOUT} s"
            data = os.read(fd, 65536)
            assert data, "the target exited"
            self.pending += data
        line, _, self.pending = self.pending.partition(b"\n")
        return line.decode()

    def wait_for_line(self, expected: str) -> None:
        while self.next_line().strip() != expected:
            pass

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(TIMEOUT)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def script(tmp_path: Path) -> Iterator[Callable[..., Script]]:
    started: list[Script] = []

    def _start(source: str, env: dict[str, str]) -> Script:
        started.append(Script(source, tmp_path, env))
        return started[-1]

    yield _start
    for target in started:
        target.close()


# ======================================================================
# End to end: the seed program
# ======================================================================


def test_ps_lists_the_seed_program_and_top_shows_its_figures(start: Any, runtime_dir: Path) -> None:
    env = target_env(runtime_dir)
    program = start("--interval", "0.02", "--monitor", env={"XDG_RUNTIME_DIR": str(runtime_dir)})
    pid = program.proc.pid
    wait_for_socket(runtime_dir, pid)
    clients = [socket.create_connection(("127.0.0.1", program.port)) for _ in range(2)]
    try:
        for sock in clients:
            sock.sendall(b"hello\n")
        program.wait_for(r"Recvd .*hello.*", count=2)
        listed = run_cli("ps", env=env)
        assert listed.returncode == 0, listed.stderr
        rows = [line.split(None, 4) for line in listed.stdout.splitlines()[1:-1]]
        assert [row[0] for row in rows] == [str(pid)]
        assert rows[0][2] == "1/1"
        assert "-m loopy" in rows[0][4]
        assert rows[0][3] == "-"  # (no recorder: no utilisation)
        assert "- : need the flight recorder (start the target with LOOPY_FLIGHT_RECORDER" in (
            listed.stdout
        )

        frame = run_cli("top", str(pid), "--once", env=env)
        assert frame.returncode == 0, frame.stderr
        text = frame.stdout
        assert "\x1b" not in text
        assert f"loopy top - pid {pid}" in text
        assert "loop #0: waiting for I/O or timers" in text
        rate = float(re.search(r"iterations/s (\S+)", text)[1])  # type: ignore[index]
        assert 10 < rate < 1000  # a tick every 20 ms, and the reads
        assert int(re.search(r"descriptors (\d+)", text)[1]) == 4  # type: ignore[index]
        assert f"127.0.0.1:{program.port}  (listening)" in text
        for sock in clients:
            host, port = sock.getsockname()
            assert f"127.0.0.1:{program.port}  <-> {host}:{port}" in text
        assert (
            "  utilisation, callbacks/s, slowest steps, busiest tasks, stalls: need the flight"
            " recorder (start the target with LOOPY_FLIGHT_RECORDER=SECONDS)"
        ) in text
        assert re.search(r"tasks \((\d+)\), longest waiting first", text)
    finally:
        for sock in clients:
            sock.close()
    assert program.stop() == 0
    assert not (runtime_dir / "loopy" / f"{pid}.sock").exists()  # removed at exit


def test_the_environment_variable_makes_the_seed_program_watchable(
    start: Any, runtime_dir: Path
) -> None:
    program = start(env={"XDG_RUNTIME_DIR": str(runtime_dir), "LOOPY_MONITOR": "1"})
    wait_for_socket(runtime_dir, program.proc.pid)
    frame = run_cli("top", str(program.proc.pid), "--once", env=target_env(runtime_dir))
    assert frame.returncode == 0
    assert "loop #0:" in frame.stdout


# ======================================================================
# End to end: a blocked loop, several loops, forks, exits
# ======================================================================

BLOCKED = """\
import asyncio, time, loopy

async def idle():
    await asyncio.sleep(3600)

async def slow():
    await asyncio.sleep(0)
    print("blocking", flush=True)
    time.sleep(3)

async def main():
    waiter = asyncio.create_task(idle(), name="idler")
    await asyncio.create_task(slow(), name="slowpoke")
    waiter.cancel()

loopy.run(main())
"""


def test_top_names_the_task_and_the_line_blocking_the_loop(
    script: Callable[..., Script], runtime_dir: Path
) -> None:
    env = target_env(runtime_dir, LOOPY_MONITOR="1")
    target = script(BLOCKED, env)
    target.wait_for_line("blocking")
    started = time.monotonic()
    frame = run_cli("top", str(target.pid), "--once", env=env)
    elapsed = time.monotonic() - started
    assert frame.returncode == 0, frame.stderr
    assert elapsed < 1.0  # (a subprocess: Python's start-up is in it too)
    text = frame.stdout
    assert "BLOCKED for at least" in text
    assert "in Task slowpoke (coro: slow)" in text
    assert re.search(r"target\.py:9 in slow\n +time\.sleep\(3\)", text), text
    assert re.search(r"Task idler \(coro: idle\)  at .*target\.py:4 in idle", text), text


def test_top_on_a_target_that_exits_says_so_and_exits_0(
    script: Callable[..., Script], runtime_dir: Path
) -> None:
    source = BLOCKED.replace("time.sleep(3)", "time.sleep(0.5)")
    env = target_env(runtime_dir, LOOPY_MONITOR="1")
    target = script(source, env)
    target.wait_for_line("blocking")
    watching = run_cli("top", str(target.pid), env=env)  # live, not a terminal
    assert watching.returncode == 0, watching.stderr
    assert watching.stdout.endswith(f"process {target.pid} exited\n")
    assert "loop #0:" in watching.stdout


THREADS_AND_FORK = """\
import asyncio, os, threading, loopy

def in_thread(started):
    async def main():
        started.set()
        await asyncio.sleep(3600)
    loopy.run(main(), monitor=True)

async def main():
    started = threading.Event()
    threading.Thread(target=in_thread, args=(started,), name="second", daemon=True).start()
    started.wait()
    child = os.fork()
    if child == 0:
        async def child_main():
            os.write(1, f"child {os.getpid()}\\n".encode())  # one write: no interleaving
            await asyncio.sleep(3600)
        asyncio.set_event_loop_policy(None)
        loopy.install()
        asyncio.run(child_main())
        os._exit(0)
    os.write(1, f"parent {child}\\n".encode())
    await asyncio.sleep(3600)

loopy.install()
asyncio.run(main())
"""


def test_each_loop_of_a_process_is_listed_and_a_forked_child_has_its_own_socket(
    script: Callable[..., Script], runtime_dir: Path
) -> None:
    env = target_env(runtime_dir, LOOPY_MONITOR="1")
    target = script(THREADS_AND_FORK, env)
    lines = {}
    while len(lines) < 2:
        role, pid = target.next_line().split()
        lines[role] = int(pid)
    child = lines["parent"]
    try:
        for pid in (target.pid, child):
            wait_for_socket(runtime_dir, pid)
        frame = run_cli("top", str(target.pid), "--once", "--loop", "1", env=env)
        assert frame.returncode == 0, frame.stderr
        assert "loops: #0 running in thread MainThread, #1 running in thread second" in frame.stdout
        assert "loop #1: waiting for I/O or timers" in frame.stdout
        child_frame = run_cli("top", str(child), "--once", env=env)
        assert child_frame.returncode == 0, child_frame.stderr
        assert f"pid {child} " in child_frame.stdout  # the child answers for itself
        # The parent's loop that forked (its callback is still on the child's
        # stack, under the child's own); not the one of the other thread.
        assert (
            "loops: #0 running in thread MainThread, #1 running in thread MainThread\n"
            in child_frame.stdout
        )
        listed = run_cli("ps", env=env)
        assert {int(line.split()[0]) for line in listed.stdout.splitlines()[1:-1]} == {
            target.pid,
            child,
        }
        missing = run_cli("top", str(target.pid), "--once", "--loop", "7", env=env)
        assert missing.returncode == 1
        assert missing.stderr == f"loopy: process {target.pid}: no loop #7 (loops: 0, 1)\n"
    finally:
        os.kill(child, 9)


# ======================================================================
# End to end: errors
# ======================================================================


def test_top_on_no_process_and_on_an_unwatchable_one_exits_1(runtime_dir: Path) -> None:
    env = target_env(runtime_dir)
    gone = subprocess.run(["true"], check=True)
    del gone
    dead = subprocess.Popen(["true"])
    dead.wait()
    frame = run_cli("top", str(dead.pid), "--once", env=env)
    assert (frame.returncode, frame.stdout, frame.stderr) == (
        1,
        "",
        f"loopy: no process {dead.pid}\n",
    )
    frame = run_cli("top", str(os.getpid()), "--once", env=env)
    assert (frame.returncode, frame.stderr) == (
        1,
        f"loopy: process {os.getpid()} is not watchable (not a loopy program, or started "
        "without LOOPY_MONITOR / LOOPY_FLIGHT_RECORDER)\n",
    )


def test_a_stale_socket_is_not_listed_and_is_removed(runtime_dir: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    directory = paths.private_dir(create=True)
    assert directory is not None
    stale = paths.socket_path(directory, dead.pid)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(stale))
    listed = run_cli("ps", env=target_env(runtime_dir))
    assert listed.returncode == 0
    assert listed.stdout == "    PID     UPTIME  LOOPS  UTIL  COMMAND\n"
    assert not stale.exists()


def test_a_bad_loopy_monitor_value_in_the_seed_program_is_one_warning(
    start: Any, runtime_dir: Path
) -> None:
    program = start(env={"XDG_RUNTIME_DIR": str(runtime_dir), "LOOPY_MONITOR": "abc"})
    program.wait_for(r"Count: \d+")
    assert program.stop() == 0
    assert [line for line in program.lines if "LOOPY_MONITOR" in line] == [
        "LOOPY_MONITOR='abc' is not 1 (on) or 0 (off): monitor off"
    ]
    assert not (runtime_dir / "loopy").exists()


def test_a_client_of_another_user_is_refused(
    script: Callable[..., Script], runtime_dir: Path
) -> None:
    """Refused twice over: the directory shuts others out, and so does the peer check."""
    env = target_env(runtime_dir, LOOPY_MONITOR="1")
    target = script(BLOCKED.replace("time.sleep(3)", "time.sleep(30)"), env)
    target.wait_for_line("blocking")
    path = wait_for_socket(runtime_dir, target.pid)
    raw_client = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        "    s.connect(sys.argv[1])\n"
        "except OSError as exc:\n"
        "    print(type(exc).__name__); sys.exit()\n"
        "s.settimeout(5)\n"
        "try:\n"
        '    s.sendall(b\'{"op": "hello"}\\n\')\n'
        "    print('answer', repr(s.recv(100)))\n"
        "except OSError as exc:\n"
        "    print('closed', type(exc).__name__)\n"
    )
    as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]

    def attach() -> str:
        return subprocess.run(
            [*as_nobody, "/usr/bin/python3", "-c", raw_client, str(path)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=True,
        ).stdout

    assert attach() == "PermissionError\n"
    # We attach: the monitor thread runs (for IDLE_EXIT seconds after we leave;
    # another user could not have started it: kill() of our process fails).
    frame = run_cli("top", str(target.pid), "--once", env=env)
    assert frame.returncode == 0
    # Open the way through the file system: the target still says nothing.
    for opened, mode in ((runtime_dir, 0o711), (path.parent, 0o711), (path, 0o666)):
        opened.chmod(mode)
    assert attach() in ("answer b''\n", "closed BrokenPipeError\n", "closed ConnectionResetError\n")
    path.parent.chmod(0o700)  # (our own client refuses a directory open to others)
    frame = run_cli("top", str(target.pid), "--once", env=env)  # the target still answers us
    assert frame.returncode == 0
    assert "BLOCKED" in frame.stdout


def test_a_socket_directory_open_to_others_is_refused(runtime_dir: Path) -> None:
    (runtime_dir / "loopy").mkdir(mode=0o755)
    (runtime_dir / "loopy").chmod(0o755)
    with pytest.raises(paths.MonitorDirError, match=r"open to other users \(mode 755\)"):
        paths.private_dir(create=True)
    frame = run_cli("top", str(os.getpid()), "--once", env=target_env(runtime_dir))
    assert frame.returncode == 1
    assert frame.stderr.startswith(f"loopy: cannot watch process {os.getpid()}: ")
    listed = run_cli("ps", env=target_env(runtime_dir))
    assert (listed.returncode, listed.stderr) == (
        1,
        f"loopy: {runtime_dir}/loopy is open to other users (mode 755)\n",
    )


# ======================================================================
# In process: a loop in a thread of the test, watched from the test
# ======================================================================


@pytest.fixture
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(monitor, "_warned", set())


@pytest.mark.parametrize("value", ["abc", "-1", "inf", "2", " 1x"])
def test_a_bad_loopy_monitor_value_warns_once_naming_the_variable(
    value: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    own_server: None,
    fresh_warnings: None,
) -> None:
    monkeypatch.setenv("LOOPY_MONITOR", value)
    with caplog.at_level(logging.WARNING, logger="loopy"):
        for _ in range(2):
            loopy.new_event_loop().close()
    assert [r.getMessage() for r in caplog.records] == [
        f"LOOPY_MONITOR={value.strip()!r} is not 1 (on) or 0 (off): monitor off"
    ]
    assert server._server is None


@pytest.mark.parametrize("value", ["0", "", "1"])
def test_loopy_monitor_0_or_empty_is_off_and_1_is_on(
    value: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    own_server: None,
) -> None:
    monkeypatch.setenv("LOOPY_MONITOR", value)
    with caplog.at_level(logging.WARNING, logger="loopy"):
        loopy.new_event_loop().close()
    assert caplog.records == []
    assert (server._server is not None) == (value == "1")


def test_a_socket_that_cannot_be_made_is_one_warning(
    own_server: None, runtime_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (runtime_dir / "loopy").write_text("not a directory")
    loop = loopy.new_event_loop()
    try:
        with caplog.at_level(logging.WARNING, logger="loopy"):
            assert watch(loop) is False
    finally:
        loop.close()
    assert [r.getMessage() for r in caplog.records] == [
        f"loopy monitor off: cannot make its socket: {runtime_dir}/loopy is not a directory"
    ]


class LoopThread:
    """A watched loopy loop running forever in a thread of the test process."""

    def __init__(self) -> None:
        self.loop = loopy.new_event_loop()
        assert watch(self.loop)
        assert watch(self.loop)  # (twice is once)
        self.thread = threading.Thread(target=self.loop.run_forever, name="watched")
        self.thread.start()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT)
        self.loop.close()


@pytest.fixture
def loop_thread(own_server: None) -> Iterator[LoopThread]:
    watched = LoopThread()
    yield watched
    watched.close()


def top_once(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert cli.main(["top", str(os.getpid()), "--once", *args]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    return out


def test_in_process_top_names_a_blocking_callback_and_its_stack(
    loop_thread: LoopThread, capsys: pytest.CaptureFixture[str]
) -> None:
    blocking, release = threading.Event(), threading.Event()

    def hold_the_loop() -> None:
        blocking.set()
        release.wait(TIMEOUT)

    loop_thread.loop.call_soon_threadsafe(hold_the_loop)
    assert blocking.wait(TIMEOUT)
    try:
        out = top_once(capsys)
    finally:
        release.set()
    assert re.search(r"loop #0: BLOCKED for (at least )?\d\.\d\d s in .*hold_the_loop", out)
    assert "stack of the running step in thread watched (innermost last):" in out
    assert "        release.wait(TIMEOUT)\n" in out.replace("      ", "        ", 1) or (
        "release.wait(TIMEOUT)" in out
    )


def test_in_process_top_shows_tasks_descriptors_and_peers(
    loop_thread: LoopThread, capsys: pytest.CaptureFixture[str]
) -> None:
    async def serve() -> tuple[Any, int]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(100)
            writer.close()
            await writer.wait_closed()

        server_ = await asyncio.start_server(handle, "127.0.0.1", 0)
        return server_, server_.sockets[0].getsockname()[1]

    tcp_server, port = loop_thread.run(serve()).result(TIMEOUT)
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)

    async def waiter() -> None:
        await asyncio.Event().wait()

    async def spawn() -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(waiter(), name="waits")

    task = loop_thread.run(spawn()).result(TIMEOUT)
    try:
        host, client_port = sock.getsockname()
        deadline = time.monotonic() + TIMEOUT
        while True:  # until the server's connection has been accepted
            out = top_once(capsys)
            if f"<-> {host}:{client_port}" in out or time.monotonic() > deadline:
                break
        assert "loop #0: waiting for I/O or timers" in out
        assert f"127.0.0.1:{port}  (listening)  reader:" in out
        assert re.search(rf"127\.0\.0\.1:{port}  <-> {host}:{client_port}  \[\w+\]  reader:", out)
        assert re.search(r"Task waits \(coro: waiter\)  at .*test_monitor\.py:\d+ in waiter", out)
        assert "Task-" in out  # the connection's handler task, waiting in read
        # Watched again: each task has waited at least as long as before.
        again = top_once(capsys, "--loop", "0")
        assert "Task waits (coro: waiter)" in again
    finally:
        sock.close()

        async def cleanup() -> None:
            task.cancel()
            tcp_server.close()
            await tcp_server.wait_closed()

        loop_thread.run(cleanup()).result(TIMEOUT)


def test_in_process_ps_lists_this_process(
    loop_thread: LoopThread, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["ps"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["PID", "UPTIME", "LOOPS", "UTIL", "COMMAND"]
    assert lines[1].split()[:4] == [str(os.getpid()), "0:00:00", "1/1", "-"]


def test_in_process_live_top_refreshes_until_the_monitor_goes(
    loop_thread: LoopThread, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client, "REFRESH", 0.05)
    frames: list[str] = []

    class Out:
        def write(self, text: str) -> None:
            frames.append(text)
            if len(frames) == 3 and server._server is not None:
                server._server.stop()

        def flush(self) -> None:
            pass

        def isatty(self) -> bool:
            return True

    assert client.top(os.getpid(), once=False, loop=None, out=Out()) == 0  # type: ignore[arg-type]
    assert all(frame.startswith("\x1b[H\x1b[2J") for frame in frames[:3])
    assert frames[-1] == f"process {os.getpid()} stopped answering\n"


def test_a_silent_target_is_reported_and_top_keeps_trying(
    runtime_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A socket that accepts and never answers, as a target holding the GIL in C does."""
    monkeypatch.setattr(client, "ANSWER_TIMEOUT", 0.05)
    monkeypatch.setattr(client, "REFRESH", 0.05)
    directory = paths.private_dir(create=True)
    assert directory is not None
    path = paths.socket_path(directory, os.getpid())

    def silent_listener() -> socket.socket:
        path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(path))
        listener.listen()
        return listener

    listener = silent_listener()
    try:
        assert cli.main(["top", str(os.getpid()), "--once"]) == 1
        assert capsys.readouterr().err == (
            f"loopy: process {os.getpid()} did not answer within 0 s "
            "(a C call holding the GIL? its monitor thread cannot run)\n"
        )
        listener.close()
        listener = silent_listener()
        accepted: list[socket.socket] = []
        lines: list[str] = []

        class Out:
            def write(self, text: str) -> None:
                lines.append(text)
                if len(lines) == 2:
                    accepted[0].close()  # the target goes away

            def flush(self) -> None:
                pass

            def isatty(self) -> bool:
                return False

        def accept() -> None:
            accepted.append(listener.accept()[0])

        acceptor = threading.Thread(target=accept)
        acceptor.start()
        client.top(os.getpid(), once=False, loop=None, out=Out())  # type: ignore[arg-type]
        acceptor.join(TIMEOUT)
        accepted[0].close()
        assert "did not answer within 0 s" in lines[0]
        assert lines[0].endswith("still trying\n\n")
        assert lines[-1] == f"process {os.getpid()} stopped answering\n"
    finally:
        listener.close()


# ======================================================================
# In process: clients that misbehave
# ======================================================================


def raw(request: bytes | None) -> bytes:
    """Send ``request`` (None: nothing) to this process's monitor; all it says back."""
    directory = paths.private_dir(create=False)
    assert directory is not None
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(str(paths.socket_path(directory, os.getpid())))
        os.kill(os.getpid(), server.WAKE_SIGNAL)  # as loopy's client does: start the thread
        if request is not None:
            sock.sendall(request)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass  # closed with our excess request unread: the kernel resets
        return received


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        (b"hello\n", "malformed request: not JSON"),
        (b"\xff\xfe\n", "malformed request: not JSON"),
        (b"[1, 2]\n", "malformed request: not a JSON object"),
        (b'{"op": "format c:"}\n', "unknown request 'format c:'"),
        (b'{"op": "snapshot", "loop": "0"}\n', "malformed request: loop must be an integer"),
        (b'{"op": "snapshot", "loop": true}\n', "malformed request: loop must be an integer"),
        (b"x" * 5000, "request longer than 4096 bytes"),
        (b"x" * 5000 + b"\n", "request longer than 4096 bytes"),
    ],
)
def test_a_bad_request_gets_one_error_line_and_is_disconnected(
    request_: bytes, error: str, loop_thread: LoopThread, capsys: pytest.CaptureFixture[str]
) -> None:
    answer = raw(request_)
    if len(request_) > server.MAX_REQUEST and not answer:
        pass  # the error line may be lost to the reset
    else:
        assert json.loads(answer) == {"error": error}
    assert "loop #0: waiting for I/O or timers" in top_once(capsys)


def test_silent_clients_time_out_and_at_most_8_are_served(
    loop_thread: LoopThread, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = paths.private_dir(create=False)
    assert directory is not None
    path = str(paths.socket_path(directory, os.getpid()))
    silent = []
    for _ in range(server.MAX_CLIENTS):
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(path)
        os.kill(os.getpid(), server.WAKE_SIGNAL)
        silent.append(sock)
    try:
        # (The ninth is told, and cannot watch.)
        assert json.loads(raw(None)) == {"error": "too many clients (at most 8)"}
        for once in (["--once"], []):
            assert cli.main(["top", str(os.getpid()), *once]) == 1
            assert capsys.readouterr().err == (
                f"loopy: process {os.getpid()}: too many clients (at most 8)\n"
            )
        dumped = str(paths.socket_path(directory, os.getpid())) + ".json"  # (never written)
        assert cli.main(["trace", "dump", str(os.getpid()), "-o", dumped]) == 1
        assert capsys.readouterr().err == (
            f"loopy: process {os.getpid()}: too many clients (at most 8)\n"
        )
        assert not os.path.exists(dumped)
        # Meanwhile the loop runs on.
        assert loop_thread.run(asyncio.sleep(0.01, "on")).result(TIMEOUT) == "on"
    finally:
        for sock in silent:
            sock.close()
    monkeypatch.setattr(server, "REQUEST_TIMEOUT", 0.05)
    assert raw(None) == b""  # a silent client is dropped after REQUEST_TIMEOUT
    assert "loop #0:" in top_once(capsys)


def test_a_closed_loop_is_no_longer_listed(
    own_server: None, capsys: pytest.CaptureFixture[str]
) -> None:
    watched = LoopThread()
    watched.close()
    out = top_once(capsys)
    assert "loops: none open" in out


def test_loopy_run_with_monitor_true_is_watchable_while_it_runs(
    own_server: None, capsys: pytest.CaptureFixture[str]
) -> None:
    async def main() -> str:
        # From a thread: the loop runs, the main thread is busy in it.
        return await asyncio.to_thread(top_once, capsys)

    out = loopy.run(main(), monitor=True)
    assert re.search(r"loop #0: (waiting for I/O or timers|running .*)\n", out)
    assert re.search(r"Task Task-\d+ \(coro: main\)  at .*test_monitor\.py:\d+ in main", out)


# ======================================================================
# End to end: uvicorn on loopy
# ======================================================================


@pytest.mark.parametrize("workers", [1, 2])
def test_uvicorn_on_loopy_is_watchable_one_socket_per_worker(
    workers: int, runtime_dir: Path, tmp_path: Path
) -> None:
    port = test_frameworks.free_port()
    argv = [test_frameworks.UVICORN, "--loop", "loopy:new_event_loop", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--workers", str(workers), "starlette_app:app"]
    env = {"LOOPY_MONITOR": "1", "XDG_RUNTIME_DIR": str(runtime_dir)}
    with test_frameworks.serving(argv, port, tmp_path, **env) as served:
        deadline = time.monotonic() + TIMEOUT
        while True:  # (workers start one after the other)
            listed = run_cli("ps", env=target_env(runtime_dir))
            pids = [int(line.split()[0]) for line in listed.stdout.splitlines()[1:-1]]
            if len(pids) == workers or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert len(pids) == workers, listed.stdout
        if workers == 1:
            assert pids == [served.process.pid]
        else:  # the workers, not the supervisor, which runs no loop
            assert served.process.pid not in pids
        for pid in pids:
            frame = run_cli("top", str(pid), "--once", env=target_env(runtime_dir))
            assert frame.returncode == 0, frame.stderr
            assert "loop #0: waiting for I/O or timers" in frame.stdout
            assert f"127.0.0.1:{port}  (listening)" in frame.stdout


# ======================================================================
# The flight recorder through the monitor: `loopy trace dump`, top's figures
# ======================================================================


def test_trace_dump_of_the_recorded_seed_program_holds_its_last_seconds(
    start: Any, runtime_dir: Path, tmp_path: Path
) -> None:
    """LOOPY_FLIGHT_RECORDER=5 alone makes it watchable; the dump is the last 5 s, written here."""
    from .test_trace_format import check_trace, strict_json_loads  # noqa: PLC0415

    env = target_env(runtime_dir)
    program = start(
        "--interval",
        "0.02",
        env={"XDG_RUNTIME_DIR": str(runtime_dir), "LOOPY_FLIGHT_RECORDER": "5"},
    )
    pid = program.proc.pid
    wait_for_socket(runtime_dir, pid)  # (the recorder implies the monitor)
    early = socket.create_connection(("127.0.0.1", program.port), timeout=TIMEOUT)
    late: list[socket.socket] = []
    try:
        early.sendall(b"early\n")
        program.wait_for(r"Recvd .*early.*")
        sent_early = time.monotonic()
        time.sleep(6.0)  # the early read is now older than the window
        for _ in range(2):
            late.append(socket.create_connection(("127.0.0.1", program.port), timeout=TIMEOUT))
            late[-1].sendall(b"late\n")
        program.wait_for(r"Recvd .*late.*", count=2)
        assert time.monotonic() - sent_early > 5.5
        # Relative to the client's working directory, not the target's (ROOT).
        dumped = run_cli("trace", "dump", str(pid), "-o", "last.json", env=env, cwd=tmp_path)
    finally:
        for sock in [early, *late]:
            sock.close()
    assert dumped.returncode == 0, dumped.stderr
    assert re.fullmatch(
        r"wrote last\.json: \d\.\d\d s of loop #0 \(window 5 s\), \d+ events, \d+ bytes;"
        r" the loop was held \d+\.\d\d ms at most \(\d+ chunks? copied in \d+\.\d\d ms\),"
        r" encoded here in \d+\.\d\d s\n",
        dumped.stdout,
    ), dumped.stdout
    path = tmp_path / "last.json"
    assert not (ROOT / "last.json").exists()
    trace = strict_json_loads(path.read_bytes())
    check_trace(trace)
    info = trace["otherData"]["flight_recorder"]
    assert info["limited_by"] == "seconds"
    assert 4.9 <= info["span_s"] <= 5.1
    span_us = trace["otherData"]["duration_us"]
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    # Nothing older than the window (times start at its beginning).
    assert all(e["ts"] >= 0 and e["ts"] + e["dur"] <= span_us + 1 for e in spans)
    # The two late reads (each connection's task reads its line in one step),
    # and not the early one: three connections, the early one's task idle since.
    served = {e["name"] for e in spans if e["cat"] == "task-step" and "_serve" in e["name"]}
    assert len(served) == 2, served
    # The ticks of every second of the window (one each 20 ms).
    ticks = [e["ts"] for e in spans if e["cat"] == "task-step" and "(coro: tick)" in e["name"]]
    for second in range(4):
        assert sum(1 for ts in ticks if second * 1e6 <= ts < (second + 1) * 1e6) >= 10, second
    summary = run_cli("trace", "summary", str(path), env=env)
    assert summary.returncode == 0, summary.stderr
    assert "task-step" in summary.stdout

    frame = run_cli("top", str(pid), "--once", env=env)
    assert frame.returncode == 0, frame.stderr
    utilisation = float(re.search(r"utilisation (\d+\.\d)%", frame.stdout)[1])  # type: ignore[index]
    rate = float(re.search(r"callbacks/s (\d+\.\d)", frame.stdout)[1])  # type: ignore[index]
    assert 0 < utilisation < 50  # an idle program that ticks
    assert 50 <= rate < 150  # a timer and a task step every 20 ms: 100 a second
    assert "slowest steps of the last 1 s:\n" in frame.stdout
    assert "(coro: tick)" in frame.stdout
    assert "stalls (steps over 100 ms) since recording began: 0" in frame.stdout
    listed = run_cli("ps", env=env)
    assert re.search(rf"^ +{pid} +\S+ +1/1 +\d+% ", listed.stdout, re.MULTILINE), listed.stdout
    assert program.stop() == 0


def test_trace_dump_errors_are_one_line_and_exit_1(
    start: Any, runtime_dir: Path, tmp_path: Path
) -> None:
    env = target_env(runtime_dir)
    no_such = 2**22 + 12345  # above the usual pid_max
    result = run_cli("trace", "dump", str(no_such), "-o", str(tmp_path / "x.json"), env=env)
    assert (result.returncode, result.stderr) == (1, f"loopy: no process {no_such}\n")
    result = run_cli("trace", "dump", str(os.getpid()), "-o", str(tmp_path / "x.json"), env=env)
    assert result.returncode == 1
    assert result.stderr == (
        f"loopy: process {os.getpid()} is not watchable (not a loopy program, or started "
        "without LOOPY_MONITOR / LOOPY_FLIGHT_RECORDER)\n"
    )
    program = start("--monitor", env={"XDG_RUNTIME_DIR": str(runtime_dir)})
    pid = program.proc.pid
    wait_for_socket(runtime_dir, pid)
    result = run_cli("trace", "dump", str(pid), "-o", str(tmp_path / "x.json"), env=env)
    assert result.returncode == 1
    assert result.stderr == (
        f"loopy: process {pid}: loop #0 has no flight recorder "
        "(start the program with LOOPY_FLIGHT_RECORDER=SECONDS)\n"
    )
    result = run_cli("trace", "dump", str(pid), "-o", str(tmp_path / "no" / "x.json"), env=env)
    assert result.returncode == 1
    assert result.stderr.startswith(f"loopy: cannot write the dump to {tmp_path}/no/x.json: ")
    assert run_cli("trace", "dump", "abc", "-o", "x.json", env=env).returncode == 2
    assert run_cli("trace", "dump", str(pid), env=env).returncode == 2
    assert not list(tmp_path.iterdir())
    assert program.stop() == 0


def test_in_process_top_and_dump_read_the_recorder(
    loop_thread: LoopThread, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Top's figures and stalls, ps's utilisation, and a dump, from a loop that records."""
    loop = loop_thread.loop
    assert "utilisation, callbacks/s, slowest steps, busiest tasks, stalls: need" in top_once(
        capsys
    )
    started = threading.Event()
    loop.call_soon_threadsafe(lambda: (loop.start_flight_recorder(5), started.set()))
    assert started.wait(TIMEOUT)

    blocking, release = threading.Event(), threading.Event()

    def hold_the_loop() -> None:
        blocking.set()
        release.wait(TIMEOUT)

    loop.call_soon_threadsafe(hold_the_loop)
    assert blocking.wait(TIMEOUT)
    try:
        out = top_once(capsys)  # (it waits until the loop has stood still 100 ms)
    finally:
        release.set()
    # The step is found in _run_once's frame, the recorder on or not.
    assert re.search(r"loop #0: BLOCKED for (at least )?\d\.\d\d s in .*hold_the_loop", out), out
    assert re.search(
        r"slowest steps of the last 1 s:\n +\d+\.\d{3} ms  .*hold_the_loop \(running\)", out
    )
    deadline = time.monotonic() + TIMEOUT
    while True:  # until the stall ended
        out = top_once(capsys)
        if "stalls (steps over 100 ms) since recording began: 1" in out:
            break
        assert time.monotonic() < deadline, out
    assert re.search(r"\n  \d\d:\d\d:\d\d +1\d\d\.\d ms  .*hold_the_loop", out), out
    assert re.search(r"utilisation \d+\.\d%   callbacks/s \d+\.\d", out)
    assert re.search(r"slowest steps of the last 1 s:\n +1\d\d\.\d{3} ms  .*hold_the_loop", out)
    # Counted once.
    assert "stalls (steps over 100 ms) since recording began: 1" in top_once(capsys)
    assert cli.main(["ps"]) == 0
    assert re.search(rf"{os.getpid()} .* 1/1 +\d+% ", capsys.readouterr().out)

    path = tmp_path / "dump.json"
    assert cli.main(["trace", "dump", str(os.getpid()), "-o", str(path), "--loop", "0"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {path}: ")
    names = {event["name"] for event in load_trace(path)["traceEvents"]}
    assert any(name.endswith(".hold_the_loop") for name in names), names
    assert cli.main(["trace", "dump", str(os.getpid()), "-o", str(path), "--loop", "7"]) == 1
    assert capsys.readouterr().err == f"loopy: process {os.getpid()}: no loop #7 (loops: 0)\n"


def test_a_dump_request_with_a_bad_loop_is_refused(loop_thread: LoopThread) -> None:
    connection = client.Connection(os.getpid())
    try:
        answer = connection.request({"op": "dump", "loop": "first"})
    finally:
        connection.close()
    assert answer == {"error": "malformed request: loop must be an integer"}


# ======================================================================
# End to end: the flight recorder in a plain loopy.run program, and in uvicorn
# ======================================================================

#: A plain ``loopy.run(main())`` program: a task that ticks every 20 ms, and
#: on SIGUSR1 (its handler set before it says "ready") one step of a task
#: that blocks the loop 0.3 s, after which it says "blocked".
TICKS_AND_BLOCKS = """\
import asyncio, signal, time
import loopy

async def tick():
    while True:
        await asyncio.sleep(0.02)

async def blocker():
    time.sleep(1.0)  # THE BLOCKING LINE
    print("blocked", flush=True)

async def main():
    loop = asyncio.get_running_loop()
    loop.create_task(tick(), name="ticker")
    loop.add_signal_handler(
        signal.SIGUSR1, lambda: loop.create_task(blocker(), name="blocker")
    )
    print("ready", flush=True)
    await asyncio.sleep(3600)

loopy.run(main())
"""

#: The figures line of ``loopy top`` when the target records.
FIGURES = re.compile(r"utilisation (\d+\.\d)%   callbacks/s (\d+\.\d)")

#: Its stalls line; "; M dumped" only when stall dumps are on.
STALLS_LINE = re.compile(
    r"^stalls \(steps over \d+ ms\) since recording began: (\d+)(?:; (\d+) dumped)?", re.MULTILINE
)


def trace_dump(pid: int, name: str, cwd: Path, env: dict[str, str]) -> dict[str, Any]:
    """``loopy trace dump PID -o NAME`` run in ``cwd``: the file it wrote, checked and loaded.

    (Its line on stdout is not checked here: the test of the seed program does.)
    """
    from .test_trace_format import check_trace, strict_json_loads  # noqa: PLC0415

    dumped = run_cli("trace", "dump", str(pid), "-o", name, env=env, cwd=cwd)
    assert dumped.returncode == 0, dumped.stderr
    path = cwd / name
    trace = strict_json_loads(path.read_bytes())
    check_trace(trace)
    assert load_trace(path) == trace
    return trace  # type: ignore[no-any-return]


def recorded_top(pid: int, env: dict[str, str]) -> str:
    """``loopy top PID --once`` of a target that records: exit 0, and the recorder's figures."""
    frame = run_cli("top", str(pid), "--once", env=env)
    assert frame.returncode == 0, frame.stderr
    assert "need the flight recorder" not in frame.stdout, frame.stdout
    assert FIGURES.search(frame.stdout), frame.stdout
    return frame.stdout


@pytest.mark.parametrize("tasks", ["asyncio", "loopy"])
def test_a_plain_loopy_run_program_with_the_recorder_is_watched_dumped_on_stall_and_traced(
    tasks: str, script: Callable[..., Script], runtime_dir: Path, tmp_path: Path
) -> None:
    """LOOPY_FLIGHT_RECORDER and LOOPY_DUMP_ON_STALL as a user sets them, then ps, top and dumps.

    The blocking step is started by a signal and its end is a line on stdout:
    each wait below is for something the target did, never a sleep.
    """
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    env = target_env(runtime_dir)
    target = script(
        TICKS_AND_BLOCKS,
        target_env(
            runtime_dir,
            LOOPY_FLIGHT_RECORDER="5",
            # (Over half a second: a loaded machine's hiccup in the target
            # before the signal is not a stall, and cannot take the one dump.)
            LOOPY_DUMP_ON_STALL="0.5",
            LOOPY_DUMP_DIR=str(dumps),
            LOOPY_TASKS=tasks,
        ),
    )
    target.wait_for_line("ready")
    wait_for_socket(runtime_dir, target.pid)  # (the recorder implies the monitor)

    listed = run_cli("ps", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = [line.split(None, 4) for line in listed.stdout.splitlines()[1:-1]]
    assert [row[0] for row in rows] == [str(target.pid)], listed.stdout
    assert rows[0][2] == "1/1"
    assert re.fullmatch(r"\d+%", rows[0][3]), rows[0]  # a recorder: a utilisation
    assert rows[0][4].endswith("target.py")

    before = recorded_top(target.pid, env)
    assert "loop #0: " in before
    assert float(FIGURES.search(before)[2]) > 0  # type: ignore[index]  # (the ticks)
    counted = STALLS_LINE.search(before)
    assert counted is not None, before
    assert counted[2] is not None, before  # (dumps are on: "; M dumped")
    stalls_before, dumped_before = int(counted[1]), int(counted[2])

    os.kill(target.pid, signal.SIGUSR1)
    target.wait_for_line("blocked")
    deadline = time.monotonic() + TIMEOUT
    while not (files := sorted(dumps.glob("loopy-stall-*.json"))):  # written off the loop
        assert time.monotonic() < deadline, f"no stall dump in {dumps}"
        time.sleep(0.01)
    stall = load_trace(files[-1])["otherData"]["stall"]
    assert stall["task"] == stall["step"] == "Task blocker (coro: blocker)"
    assert stall["duration_ms"] >= 1000
    assert stall["unfinished"] is False
    number = TICKS_AND_BLOCKS.splitlines().index("    time.sleep(1.0)  # THE BLOCKING LINE") + 1
    assert stall["stack"][-1] == f"{tmp_path / 'target.py'}:{number} in blocker", stall["stack"]

    # Relative to the client's working directory (the target's is ROOT).
    trace = trace_dump(target.pid, "last.json", tmp_path, env)
    assert not (ROOT / "last.json").exists()
    steps = [e for e in trace["traceEvents"] if e["ph"] == "X" and e.get("cat") == "task-step"]
    assert len([e for e in steps if e["name"] == "Task ticker (coro: tick)"]) >= 5
    assert [e["name"] for e in steps if e["dur"] >= 1e6] == ["Task blocker (coro: blocker)"]
    assert {e["pid"] for e in trace["traceEvents"]} == {target.pid}

    after = recorded_top(target.pid, env)
    counted = STALLS_LINE.search(after)
    assert counted is not None, after
    assert counted[2] is not None, after  # (dumps are on: "; M dumped")
    assert int(counted[1]) >= stalls_before + 1
    assert int(counted[2]) >= dumped_before + 1
    assert re.search(r"\n  \d\d:\d\d:\d\d +1\d\d\d\.\d ms  Task blocker \(coro: blocker\)\n", after)


def uvicorn_workers(runtime_dir: Path, count: int) -> list[int]:
    """The pids ``loopy ps`` lists, once it lists ``count`` (uvicorn starts workers one by one)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        listed = run_cli("ps", env=target_env(runtime_dir))
        assert listed.returncode == 0, listed.stderr
        pids = [int(line.split()[0]) for line in listed.stdout.splitlines()[1:-1]]
        if len(pids) == count or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(pids) == count, listed.stdout
    for line in listed.stdout.splitlines()[1:-1]:
        assert re.match(r" +\d+ +\S+ +1/1 +\d+% ", line), listed.stdout  # each records
    return pids


def get_loop(url: str) -> dict[str, Any]:
    """GET ``/loop`` on a connection of its own (urllib: one connection per request)."""
    with urllib.request.urlopen(f"{url}/loop", timeout=TIMEOUT) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return answer


@pytest.mark.parametrize("workers", [1, 2])
def test_uvicorn_on_loopy_with_the_recorder_each_worker_records_its_own_requests(
    workers: int, runtime_dir: Path, tmp_path: Path
) -> None:
    """Each worker is a watchable process of its own, with its own recorder.

    With two workers, one is held inside ``/hold`` (its loop blocked, see
    tests/apps/starlette_app.py) while the other answers ``/loop``: each
    worker has served requests, whatever way the kernel spreads connections.
    """
    fifo = tmp_path / "hold.fifo"
    os.mkfifo(fifo)
    port = test_frameworks.free_port()
    argv = [test_frameworks.UVICORN, "--loop", "loopy:new_event_loop", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--workers", str(workers), "starlette_app:app"]
    env = {
        "LOOPY_FLIGHT_RECORDER": "5",
        "XDG_RUNTIME_DIR": str(runtime_dir),
        "HOLD_FIFO": str(fifo),
    }
    with test_frameworks.serving(argv, port, tmp_path, **env) as served:
        pids = uvicorn_workers(runtime_dir, workers)
        assert served.process.pid not in pids or pids == [served.process.pid]
        requests: dict[int, int] = dict.fromkeys(pids, 0)  # requests each worker answered
        held: list[dict[str, Any]] = []
        if workers == 2:

            def hold() -> None:
                with urllib.request.urlopen(f"{served.url}/hold", timeout=TIMEOUT) as response:
                    held.append(json.loads(response.read()))

            holder = threading.Thread(target=hold)
            holder.start()
            try:
                writer = test_frameworks._open_fifo_writer(fifo, served)  # a worker is held
                try:
                    answers = [get_loop(served.url) for _ in range(3)]  # the other one answers
                finally:
                    os.close(writer)  # the held one answers /hold
            finally:
                holder.join(TIMEOUT)
            assert not holder.is_alive()
            assert len(held) == 1
            answers += held
        else:
            answers = [get_loop(served.url) for _ in range(3)]
        for answer in answers:
            assert answer["loop"] == test_frameworks.LOOPY_LOOP
            requests[answer["pid"]] += 1
        assert all(requests.values()), requests  # every worker answered

        env_ = target_env(runtime_dir)
        for pid in sorted(pids, key=lambda pid: requests[pid]):  # the held one's reads first
            trace = trace_dump(pid, f"worker-{pid}.json", tmp_path, env_)
            assert {e["pid"] for e in trace["traceEvents"]} == {pid}  # its own recorder
            io = [e for e in trace["traceEvents"] if e.get("cat") == "io" and e["ph"] == "X"]
            accepts = {e["args"]["fd"] for e in io if e["name"].endswith("_on_acceptable")}
            assert len(accepts) == 1, io  # the listening socket
            reads = [
                e
                for e in trace["traceEvents"]
                if e.get("cat") == "io" and e["ph"] == "i" and e["args"]["events"] == "read"
            ]
            # Each request's connection was readable at least once (its request).
            assert len([e for e in reads if e["args"]["fd"] not in accepts]) >= requests[pid], io
            frame = recorded_top(pid, env_)
            assert f"loopy top - pid {pid} " in frame
            assert f"127.0.0.1:{port}  (listening)" in frame


# ======================================================================
# A dump from something that is not a loopy recorder
# ======================================================================


@pytest.mark.parametrize(
    ("header", "body", "said"),
    [
        ({"loop": 0, "facts": 2, "slots": 17}, b"", "a dump of 2 + 17 bytes: not sent"),
        ({"loop": 0, "facts": -1, "slots": 0}, b"", "a dump of -1 + 0 bytes: not sent"),
        ({"loop": 0, "facts": 5, "slots": 0}, b"nope!", "sent a dump that cannot be read"),
        ({"loop": 0, "facts": 2, "slots": 0}, b"{}", "sent a dump that cannot be read"),
    ],
)
def test_a_dump_that_is_not_a_recording_is_one_line_and_no_file(
    header: dict[str, Any],
    body: bytes,
    said: str,
    runtime_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A process at the socket that answers hello, then sends a header and bytes it makes up."""
    stand_in = subprocess.Popen(["sleep", "30"])  # (a live pid; SIGURG leaves it be)
    directory = paths.private_dir(create=True)
    assert directory is not None
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(paths.socket_path(directory, stand_in.pid)))
    listener.listen(1)

    def answer() -> None:
        conn, _ = listener.accept()
        with conn, conn.makefile("rb") as requests:
            requests.readline()  # hello
            conn.sendall(b'{"pid": 0}\n')
            requests.readline()  # dump
            conn.sendall(json.dumps(header).encode() + b"\n" + body)

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        output = tmp_path / "dump.json"
        assert cli.main(["trace", "dump", str(stand_in.pid), "-o", str(output)]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"loopy: process {stand_in.pid}"), err
        assert said in err, err
        assert err.count("\n") == 1  # one line, no traceback
        assert not output.exists()
    finally:
        thread.join(TIMEOUT)
        listener.close()
        stand_in.kill()
        stand_in.wait()
