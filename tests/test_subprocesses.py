"""Child processes: asyncio.subprocess on top of the loop, and the transport itself.

Most cases run on asyncio's loop too (which watches children with its own
thread-based watcher): the two must behave the same.  Children that must
wait do so by reading their stdin, never by sleeping, so every test ends as
soon as it closes that pipe or kills the child.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import signal
import subprocess
import sys
import threading
from asyncio.subprocess import DEVNULL, PIPE, STDOUT
from typing import Any

import pytest

import loopy
import loopy.subprocesses
from loopy.pipes import ReadPipeTransport, WritePipeTransport


def run(loop: Any, coro: Any, timeout: float = 10.0) -> Any:
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


def forget(objects: list[Any]) -> None:
    """Drop the last references to ``objects``, and collect them."""
    objects.clear()
    gc.collect()


class Recorder(asyncio.SubprocessProtocol):
    """Records every callback in order; ``done`` resolves at connection_lost."""

    def __init__(self, loop: Any) -> None:
        self.events: list[Any] = []
        self.output: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}
        self.transport: Any = None
        self.done = loop.create_future()
        self.exited = loop.create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.events.append("made")

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        self.output[fd] += data

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self.events.append(("pipe lost", fd, exc))

    def process_exited(self) -> None:
        self.events.append("exited")
        self.exited.set_result(self.transport.get_returncode())

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")
        self.done.set_result(exc)


# -- asyncio.subprocess on the loop ----------------------------------------------


def test_communicate_a_megabyte_through_cat(any_loop: Any) -> None:
    payload = os.urandom(1024 * 1024)

    async def main() -> None:
        process = await asyncio.create_subprocess_exec("cat", stdin=PIPE, stdout=PIPE)
        assert process.pid > 0
        stdout, stderr = await process.communicate(payload)
        assert stdout == payload
        assert stderr is None
        assert process.returncode == 0

    run(any_loop, main())


def test_write_stdin_then_read_stdout(any_loop: Any) -> None:
    async def main() -> None:
        process = await asyncio.create_subprocess_exec("cat", stdin=PIPE, stdout=PIPE)
        process.stdin.write(b"line one\n")
        await process.stdin.drain()
        assert await process.stdout.readline() == b"line one\n"
        process.stdin.write(b"line two\n")
        process.stdin.close()
        await process.stdin.wait_closed()
        assert await process.stdout.read() == b"line two\n"
        assert await process.wait() == 0

    run(any_loop, main())


def test_exit_codes(any_loop: Any) -> None:
    async def main() -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import sys; print('bye'); sys.exit(3)", stdout=PIPE
        )
        assert await process.stdout.read() == b"bye\n"
        assert await process.wait() == 3
        assert process.returncode == 3
        assert await process.wait() == 3  # again: answered at once

    run(any_loop, main())


def test_shell_commands(any_loop: Any) -> None:
    async def main() -> None:
        process = await asyncio.create_subprocess_shell(
            "echo $((1 + 2)); echo oops >&2; exit 4", stdout=PIPE, stderr=STDOUT
        )
        stdout, _ = await process.communicate()
        assert stdout == b"3\noops\n"
        assert process.returncode == 4

    run(any_loop, main())


@pytest.mark.parametrize(
    ("action", "returncode"),
    [("kill", -signal.SIGKILL), ("terminate", -signal.SIGTERM), ("usr1", -signal.SIGUSR1)],
)
def test_signals(any_loop: Any, action: str, returncode: int) -> None:
    async def main() -> None:
        process = await asyncio.create_subprocess_exec("cat", stdin=PIPE, stdout=DEVNULL)
        if action == "kill":
            process.kill()
        elif action == "terminate":
            process.terminate()
        else:
            process.send_signal(signal.SIGUSR1)
        assert await process.wait() == returncode
        with pytest.raises(ProcessLookupError):
            process.kill()  # it is gone

    run(any_loop, main())


def test_a_missing_program(any_loop: Any) -> None:
    with pytest.raises(FileNotFoundError):
        run(any_loop, asyncio.create_subprocess_exec("/nonexistent/program"))


# -- the transport and the protocol ---------------------------------------------------


def test_the_protocol_sees_asyncios_order(any_loop: Any) -> None:
    script = "import sys; sys.stdout.write(sys.stdin.read().upper()); sys.stderr.write('e')"

    async def main() -> Recorder:
        transport, protocol = await any_loop.subprocess_exec(
            lambda: Recorder(any_loop), sys.executable, "-c", script
        )
        assert protocol.events == ["made"]
        assert transport.get_pid() > 0
        assert transport.get_returncode() is None
        assert transport.get_extra_info("subprocess").pid == transport.get_pid()
        stdin = transport.get_pipe_transport(0)
        assert isinstance(stdin, asyncio.WriteTransport)
        assert isinstance(transport.get_pipe_transport(1), asyncio.ReadTransport)
        assert isinstance(transport.get_pipe_transport(2), asyncio.ReadTransport)
        assert transport.get_pipe_transport(3) is None
        stdin.write(b"shout")
        stdin.close()
        assert await protocol.done is None
        assert transport.get_returncode() == 0
        transport.close()
        assert transport.is_closing()
        return protocol

    protocol = run(any_loop, main())
    assert protocol.output == {1: b"SHOUT", 2: b"e"}
    assert protocol.events[0] == "made"
    assert protocol.events[-1] == "lost"
    assert sorted(protocol.events[1:-1], key=str) == sorted(
        ["exited", ("pipe lost", 0, None), ("pipe lost", 1, None), ("pipe lost", 2, None)],
        key=str,
    )


def test_pipes_that_are_not_pipes(any_loop: Any) -> None:
    async def main() -> Recorder:
        transport, protocol = await any_loop.subprocess_exec(
            lambda: Recorder(any_loop), "true", stdin=DEVNULL, stdout=DEVNULL, stderr=DEVNULL
        )
        for fd in (0, 1, 2):
            assert transport.get_pipe_transport(fd) is None
        await protocol.done
        transport.close()
        return protocol

    assert run(any_loop, main()).events == ["made", "exited", "lost"]


def test_a_grandchild_keeps_the_pipes_open(any_loop: Any) -> None:
    # The child exits at once; its child inherited stdin and stdout and
    # answers only when stdin is closed.  connection_lost waits for that.
    script = (
        "import subprocess, sys; subprocess.Popen([sys.executable, '-c', "
        "'import sys; sys.stdin.read(); sys.stdout.write(\"late\")'])"
    )

    async def main() -> Recorder:
        transport, protocol = await any_loop.subprocess_exec(
            lambda: Recorder(any_loop), sys.executable, "-c", script, stderr=DEVNULL
        )
        assert await protocol.exited == 0
        assert protocol.events == ["made", "exited"]
        transport.get_pipe_transport(0).close()
        await protocol.done
        transport.close()
        return protocol

    protocol = run(any_loop, main())
    assert protocol.output[1] == b"late"
    assert protocol.events[:3] == ["made", "exited", ("pipe lost", 0, None)]
    assert protocol.events[3:] == [("pipe lost", 1, None), "lost"]


def test_close_kills_a_running_child(any_loop: Any) -> None:
    async def main() -> Recorder:
        transport, protocol = await any_loop.subprocess_exec(lambda: Recorder(any_loop), "cat")
        transport.close()
        transport.close()
        await protocol.done
        assert transport.get_returncode() == -signal.SIGKILL
        return protocol

    protocol = run(any_loop, main())
    assert protocol.events[-1] == "lost"


def test_close_after_exit(any_loop: Any) -> None:
    async def main() -> None:
        transport, protocol = await any_loop.subprocess_exec(
            lambda: Recorder(any_loop), "true", stdin=DEVNULL
        )
        await protocol.exited
        transport.close()  # nothing to kill
        await protocol.done
        assert transport.get_returncode() == 0

    run(any_loop, main())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"universal_newlines": True}, "universal_newlines"),
        ({"bufsize": 1}, "bufsize"),
        ({"text": True}, "text"),
        ({"encoding": "utf-8"}, "encoding"),
        ({"errors": "strict"}, "errors"),
    ],
)
def test_text_mode_is_refused(any_loop: Any, kwargs: dict[str, Any], message: str) -> None:
    for coro in (
        any_loop.subprocess_exec(asyncio.SubprocessProtocol, "true", **kwargs),
        any_loop.subprocess_shell(asyncio.SubprocessProtocol, "true", **kwargs),
    ):
        with pytest.raises(ValueError, match=message):
            run(any_loop, coro)


def test_shell_or_not(any_loop: Any) -> None:
    with pytest.raises(ValueError, match="shell must be False"):
        run(any_loop, any_loop.subprocess_exec(asyncio.SubprocessProtocol, "true", shell=True))
    with pytest.raises(ValueError, match="shell must be True"):
        run(any_loop, any_loop.subprocess_shell(asyncio.SubprocessProtocol, "true", shell=False))
    with pytest.raises(ValueError, match="cmd must be a string"):
        run(any_loop, any_loop.subprocess_shell(asyncio.SubprocessProtocol, ["true"]))


def test_cancelled_while_starting_leaves_no_child(any_loop: Any) -> None:
    async def main() -> Recorder:
        protocols: list[Recorder] = []

        def factory() -> Recorder:
            protocols.append(Recorder(any_loop))
            return protocols[0]

        task = asyncio.ensure_future(any_loop.subprocess_exec(factory, "cat"))
        while not protocols:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await protocols[0].done
        return protocols[0]

    protocol = run(any_loop, main())
    assert protocol.transport.get_returncode() == -signal.SIGKILL


# -- how exit is detected ------------------------------------------------------------


def waits_in_a_thread(pid: int) -> bool:
    """Whether a thread waits for child ``pid``.

    (By its pid: a thread that waited for an earlier test's child may still
    be on its way out.)
    """
    return any(thread.name == f"loopy-waitpid-{pid}" for thread in threading.enumerate())


def test_exit_through_a_pidfd(loop: Any) -> None:
    async def main() -> None:
        transport, protocol = await loop.subprocess_exec(lambda: Recorder(loop), "cat")
        assert transport._pidfd is not None
        assert not waits_in_a_thread(transport.get_pid())
        transport.get_pipe_transport(0).close()
        assert await protocol.exited == 0
        assert transport._pidfd is None
        await protocol.done
        transport.close()

    run(loop, main())


@pytest.mark.parametrize("unavailable", ["missing", "refused"])
def test_exit_through_a_thread_when_there_is_no_pidfd(
    loop: Any, monkeypatch: pytest.MonkeyPatch, unavailable: str
) -> None:
    if unavailable == "missing":  # not Linux
        monkeypatch.delattr(os, "pidfd_open", raising=False)
    else:  # an old kernel, or a sandbox

        def refuse(pid: int) -> int:
            raise OSError(errno.ENOSYS, "Function not implemented")

        monkeypatch.setattr(os, "pidfd_open", refuse)

    async def main() -> None:
        process = await asyncio.create_subprocess_exec("cat", stdin=PIPE, stdout=PIPE)
        assert process._transport._pidfd is None
        assert waits_in_a_thread(process.pid)
        stdout, _ = await process.communicate(b"via a thread")
        assert stdout == b"via a thread"
        assert process.returncode == 0
        process = await asyncio.create_subprocess_exec("cat", stdin=PIPE)
        process.kill()
        assert await process.wait() == -signal.SIGKILL

    run(loop, main())


def test_the_waiting_thread_tolerates_a_closed_loop() -> None:
    closed = loopy.new_event_loop()
    closed.close()
    process = subprocess.Popen(["true"])
    reports: list[int] = []
    loopy.subprocesses._wait_in_thread(process, closed, reports.append)  # type: ignore[arg-type]
    assert process.returncode == 0
    assert reports == []


# -- loopy specifics -------------------------------------------------------------


def test_wait_returns_when_the_child_exits_not_when_its_pipes_close(loop: Any) -> None:
    # asyncio 3.11 waits for the pipes too (gh-119710 changed that in
    # CPython, as uvloop and trio always did): a grandchild that keeps
    # stdout open would block wait().
    script = (
        "import subprocess, sys; subprocess.Popen([sys.executable, '-c', "
        "'import sys; sys.stdin.read()'])"
    )

    async def main() -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, stdin=PIPE, stdout=PIPE
        )
        assert await process.wait() == 0
        assert process._transport.get_pipe_transport(1).is_reading()  # still open
        process.stdin.close()  # the grandchild's cue to leave
        assert await process.stdout.read() == b""

    run(loop, main())


def test_repr_and_protocol(loop: Any) -> None:
    async def main() -> None:
        transport, _protocol = await loop.subprocess_exec(lambda: Recorder(loop), "cat")
        pid = transport.get_pid()
        assert repr(transport) == f"<SubprocessTransport pid={pid} running>"
        other = Recorder(loop)
        transport.set_protocol(other)
        assert transport.get_protocol() is other
        transport.close()
        await other.done
        assert repr(transport) == f"<SubprocessTransport pid={pid} returncode=-9 closed>"

    run(loop, main())


def test_the_pipe_transports_are_loopys(loop: Any) -> None:
    async def main() -> None:
        transport, protocol = await loop.subprocess_exec(lambda: Recorder(loop), "cat")
        assert isinstance(transport.get_pipe_transport(0), WritePipeTransport)
        assert isinstance(transport.get_pipe_transport(1), ReadPipeTransport)
        transport.close()
        await protocol.done

    run(loop, main())


def test_flow_control_reaches_the_protocol(loop: Any) -> None:
    class Flow(Recorder):
        def pause_writing(self) -> None:
            self.events.append("pause")

        def resume_writing(self) -> None:
            self.events.append("resume")

    async def main() -> Flow:
        transport, protocol = await loop.subprocess_exec(lambda: Flow(loop), "cat", stdout=DEVNULL)
        stdin = transport.get_pipe_transport(0)
        stdin.write(b"x" * (1024 * 1024))
        assert protocol.events == ["made", "pause"]
        stdin.close()
        await protocol.done
        transport.close()
        return protocol

    protocol = run(loop, main())
    assert protocol.events[:3] == ["made", "pause", "resume"]


def test_signalling_a_child_that_exited_raises(loop: Any) -> None:
    async def main() -> None:
        transport, protocol = await loop.subprocess_exec(
            lambda: Recorder(loop), "true", stdin=DEVNULL
        )
        await protocol.exited
        for method in (transport.kill, transport.terminate):
            with pytest.raises(ProcessLookupError):
                method()
        with pytest.raises(ProcessLookupError):
            transport.send_signal(signal.SIGUSR1)
        transport.close()
        await protocol.done

    run(loop, main())


def test_unclosed_transport_warns_and_kills(loop: Any) -> None:
    async def main() -> tuple[Any, Recorder]:
        transport, protocol = await loop.subprocess_exec(lambda: Recorder(loop), "cat")
        return transport, protocol

    transport, protocol = run(loop, main())
    process = transport.get_extra_info("subprocess")
    with pytest.warns(ResourceWarning, match="unclosed transport"):
        transport.__del__()  # what garbage collection would do
    assert transport.is_closing()
    run(loop, protocol.done)
    assert process.returncode == -signal.SIGKILL


def test_a_loop_closed_before_the_child_exited() -> None:
    # Nobody will reap this child through the loop any more: collecting the
    # transport warns and frees its pidfd.  (The child is reaped by hand.)
    stdin_r, stdin_w = os.pipe()  # the child waits on this, not on the loop
    loop = loopy.new_event_loop()
    held = list(
        loop.run_until_complete(
            loop.subprocess_exec(
                asyncio.SubprocessProtocol, "cat", stdin=stdin_r, stdout=DEVNULL, stderr=DEVNULL
            )
        )
    )
    pidfd = held[0]._pidfd
    process = held[0].get_extra_info("subprocess")
    loop.close()
    try:
        with pytest.warns(ResourceWarning, match="unclosed transport"):
            forget(held)  # the transport and its protocol
        with pytest.raises(OSError):
            os.fstat(pidfd)
    finally:
        os.close(stdin_w)
        os.close(stdin_r)
        assert process.wait() == 0


def test_a_cancelled_wait_does_not_disturb_the_others(any_loop: Any) -> None:
    async def main() -> None:
        process = await asyncio.create_subprocess_exec("cat", stdin=PIPE)
        impatient = asyncio.ensure_future(process.wait())
        patient = asyncio.ensure_future(process.wait())
        await asyncio.sleep(0)
        impatient.cancel()
        process.stdin.close()
        assert await patient == 0
        assert impatient.cancelled()

    run(any_loop, main())
