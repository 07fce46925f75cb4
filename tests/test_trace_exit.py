"""A trace is never lost: ``LOOPY_TRACE`` fails early, and every way a program ends writes it.

Programs run in child processes (bounded in time), since what is checked
is how a process ends: its exit status, its file.  A status of -N from
``subprocess`` is death by signal N: what a shell shows as 128+N (129 for
SIGHUP).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import loopy
from loopy.trace import environment
from loopy.trace.export import FileRecorder

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 30


def child(program: str, trace: Path | str, **popen: Any) -> subprocess.Popen[str]:
    """``program`` in a child Python with ``LOOPY_TRACE=trace``; its output piped."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(program)],
        cwd=ROOT,
        env={**os.environ, "LOOPY_TRACE": str(trace)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def wait_ready(proc: subprocess.Popen[str]) -> None:
    """Wait for the child to print its ``ready`` line (it flushes it)."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line == "ready\n", (line, proc.stderr.read() if proc.stderr else "")


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=TIMEOUT)
    return proc.returncode, out, err


def read_trace(path: Path) -> dict[str, Any]:
    trace: dict[str, Any] = loopy.trace.load_trace(path)
    return trace


# A program that knows nothing of tracing: asyncio.run on loopy, waiting forever.
WAITS_FOREVER = """
    import asyncio, sys, loopy

    async def main():
        await asyncio.sleep(0.01)
        print("ready", flush=True)
        await asyncio.sleep(3600)

    loopy.install()
    asyncio.run(main())
"""


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM], ids=lambda s: s.name)
def test_an_exit_signal_writes_the_trace_then_kills_as_it_would(sig: int, tmp_path: Path) -> None:
    trace = tmp_path / "t.json"
    proc = child(WAITS_FOREVER, trace)
    try:
        wait_ready(proc)
        proc.send_signal(sig)
        status, _, err = finish(proc)
    finally:
        proc.kill()
        proc.wait(TIMEOUT)
    assert status == -sig, err  # died of the signal, as without tracing
    assert "Traceback" not in err
    summary = loopy.trace.summarize(read_trace(trace))
    assert summary.iterations >= 2
    assert summary.tasks_unfinished >= 1  # main, still sleeping when the signal came


def test_the_shell_sees_status_129_after_sighup(tmp_path: Path) -> None:
    trace = tmp_path / "t.json"
    script = f'{sys.executable} -c "$PROGRAM" & child=$!; read line; kill -HUP $child; wait $child'
    proc = subprocess.Popen(
        ["sh", "-c", script + '; echo "status $?"'],
        cwd=ROOT,
        env={**os.environ, "LOOPY_TRACE": str(trace), "PROGRAM": textwrap.dedent(WAITS_FOREVER)},
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The child's "ready" goes to our pipe; the shell reads our line to go on.
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        out, err = proc.communicate("go\n", timeout=TIMEOUT)
    finally:
        proc.kill()
        proc.wait(TIMEOUT)
    assert out == "status 129\n", err
    assert read_trace(trace)["otherData"]["trace_format"] == 1


def test_a_program_with_its_own_sighup_handler_keeps_it(tmp_path: Path) -> None:
    """Tracing does not change how a program reacts: its handler runs, it exits 0."""
    trace = tmp_path / "t.json"
    program = """
        import asyncio, signal, loopy

        async def main():
            loop = asyncio.get_running_loop()
            hup = loop.create_future()
            loop.add_signal_handler(signal.SIGHUP, hup.set_result, "hup")
            print("ready", flush=True)
            print(await hup, flush=True)

        loopy.install()
        asyncio.run(main())
    """
    proc = child(program, trace)
    try:
        wait_ready(proc)
        proc.send_signal(signal.SIGHUP)
        status, out, err = finish(proc)
    finally:
        proc.kill()
        proc.wait(TIMEOUT)
    assert (status, out) == (0, "hup\n"), err
    events = read_trace(trace)["traceEvents"]
    assert any(e["ph"] == "i" and e["name"] == "signal: SIGHUP" for e in events)


def test_a_loop_never_closed_is_written_at_exit(tmp_path: Path) -> None:
    trace = tmp_path / "t.json"
    program = """
        import asyncio, loopy
        loop = loopy.new_event_loop()
        loop.run_until_complete(asyncio.sleep(0.01))
        print("ready", flush=True)
        # no loop.close(): the interpreter's exit writes the trace
    """
    proc = child(program, trace)
    try:
        wait_ready(proc)
        status, _, err = finish(proc)
    finally:
        proc.kill()
        proc.wait(TIMEOUT)
    assert status == 0, err
    assert loopy.trace.summarize(read_trace(trace)).iterations >= 1


def test_an_unwritable_loopy_trace_fails_at_the_first_loop(tmp_path: Path) -> None:
    proc = child(WAITS_FOREVER, "/nonexistent/dir/t.json")
    try:
        status, out, err = finish(proc)
    finally:
        proc.kill()
        proc.wait(TIMEOUT)
    assert status == 1
    assert out == ""  # main() never ran
    assert (
        "ValueError: $LOOPY_TRACE=/nonexistent/dir/t.json: cannot write a trace there: "
        "no such directory\n"
    ) in err


# ----------------------------------------------------------------------
# In process: the details
# ----------------------------------------------------------------------


@pytest.fixture
def exit_signals() -> Iterator[None]:
    """Restore the exit signals' handlers and the module's state after the test."""
    saved = {sig: signal.getsignal(sig) for sig in environment.EXIT_SIGNALS}
    installed = set(environment._installed)
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
    environment._installed.clear()
    environment._installed.update(installed)


def test_new_event_loop_names_the_variable_and_the_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, exit_signals: None
) -> None:
    monkeypatch.setenv("LOOPY_TRACE", str(tmp_path))
    with pytest.raises(
        ValueError, match=r"^\$LOOPY_TRACE=.*: cannot write a trace there: is a dir"
    ):
        loopy.new_event_loop()  # the loop it made is closed: no ResourceWarning (an error here)
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL  # nothing installed for nothing


def test_handlers_go_only_where_the_program_has_none(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, exit_signals: None
) -> None:
    monkeypatch.setenv("LOOPY_TRACE", str(tmp_path / "t.json"))
    environment._installed.clear()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    loop = loopy.new_event_loop()
    try:
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is environment._write_then_die
    finally:
        loop.close()
    assert (tmp_path / "t.json").exists()


def test_a_forked_copy_does_not_write_its_parents_trace(tmp_path: Path) -> None:
    loop = loopy.new_event_loop()
    try:
        recorder = loopy.trace.trace_to_file(loop, tmp_path / "t.json")
        assert isinstance(recorder, FileRecorder)
        recorder.pid = -1  # what a forked child sees: not its own pid
        recorder.save()
        assert not (tmp_path / "t.json").exists()
        recorder.pid = os.getpid()
    finally:
        loop.close()
    assert (tmp_path / "t.json").exists()


def test_a_write_that_fails_at_close_is_one_logged_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "gone"
    directory.mkdir()
    loop = loopy.new_event_loop()
    loopy.trace.trace_to_file(loop, directory / "t.json")
    directory.rmdir()  # the directory went away while the program ran
    with caplog.at_level(logging.ERROR, logger="loopy"):
        loop.close()
    [record] = caplog.records
    message = record.getMessage()
    assert message.startswith(f"loopy: could not write the trace to {directory / 't.json'}: ")
    assert "No such file or directory" in message
    assert record.exc_info is None  # no traceback


def test_the_handler_writes_restores_the_default_and_re_raises(
    tmp_path: Path, exit_signals: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    raised: list[int] = []
    monkeypatch.setattr(signal, "raise_signal", raised.append)  # instead of dying
    monkeypatch.setenv("LOOPY_TRACE", str(tmp_path / "t.json"))
    environment._installed.clear()
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    loop = loopy.new_event_loop()
    try:
        assert signal.getsignal(signal.SIGHUP) is environment._write_then_die
        environment._write_then_die(signal.SIGHUP, None)
        assert raised == [signal.SIGHUP]
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        assert read_trace(tmp_path / "t.json")["otherData"]["trace_format"] == 1
    finally:
        loop.close()


def test_no_variable_no_tracing_and_other_threads_install_nothing(
    tmp_path: Path, exit_signals: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LOOPY_TRACE", raising=False)
    loop = loopy.new_event_loop()
    try:
        assert environment.trace_from_environment(loop) is None
        assert loop.instruments == ()
    finally:
        loop.close()
    monkeypatch.setenv("LOOPY_TRACE", str(tmp_path / "thread.json"))
    environment._installed.clear()
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    made: list[Any] = []
    worker = threading.Thread(target=lambda: made.append(loopy.new_event_loop()))
    worker.start()
    worker.join(TIMEOUT)
    try:
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL  # signal.signal: main thread only
        assert len(made[0].instruments) == 1  # traced all the same
    finally:
        made[0].close()
    assert (tmp_path / "thread.json").exists()
