"""Child processes: ``subprocess_exec``, ``subprocess_shell`` and their transport.

A child process is started with :class:`subprocess.Popen`, like any other;
what the loop adds is watching it without blocking:

* **Its pipes.**  Each of ``stdin``, ``stdout`` and ``stderr`` that is a
  ``PIPE`` becomes a pipe transport from ``pipes.py``.  A small relay
  protocol per pipe (:class:`_PipeRelay`) forwards what happens on it to the
  user's ``asyncio.SubprocessProtocol`` with the pipe's number:
  ``pipe_data_received(fd, data)`` and ``pipe_connection_lost(fd, exc)``.
* **Its exit.**  On Linux a *pidfd* (``os.pidfd_open``) is a descriptor that
  becomes readable when the process exits, so exit is just one more
  ``add_reader``; the loop then reaps the child, which no longer blocks.
  Where there are no pidfds (other systems, old kernels, some sandboxes), a
  thread per child blocks in ``waitpid`` and reports back with
  ``call_soon_threadsafe``.  Either way the protocol gets
  ``process_exited()``.

There is no SIGCHLD handler and no "child watcher": each transport watches
its own child, so nothing global is installed and other code's children are
left alone.

The protocol's callbacks come in asyncio's order: ``connection_made`` first,
then pipe data and ``process_exited`` as they happen, and ``connection_lost``
last, once the process has exited *and* every pipe is closed (a grandchild
may keep a pipe open after its parent exited).

``asyncio.create_subprocess_exec`` and ``create_subprocess_shell`` run on
this unchanged: their :class:`asyncio.subprocess.Process` only uses the
transport's public methods and its private ``_wait()`` coroutine.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .contract import LoopMixin
from .pipes import ReadPipeTransport, WritePipeTransport
from .transports import _resolve_waiter

if TYPE_CHECKING:
    from .contract import LoopContract


def _open_pidfd(pid: int) -> int | None:
    """A descriptor that becomes readable when process ``pid`` exits, or None if unavailable."""
    pidfd_open = getattr(os, "pidfd_open", None)  # Linux 5.3+ only
    if pidfd_open is None:
        return None
    try:
        fd: int = pidfd_open(pid)
    except OSError:
        # ENOSYS on an older kernel, EPERM under some seccomp filters.
        return None
    return fd


def _wait_in_thread(
    proc: subprocess.Popen[bytes], loop: LoopContract, report: Callable[[int], None]
) -> None:
    """The fallback watcher: block until the child exits, then tell the loop."""
    returncode = proc.wait()
    try:
        loop.call_soon_threadsafe(report, returncode)
    except RuntimeError:
        pass  # the loop was closed meanwhile: nobody is left to tell


class _PipeRelay(asyncio.Protocol):
    """The protocol of one of the child's pipes: it relays to the transport, with the fd."""

    def __init__(self, owner: SubprocessTransport, fd: int) -> None:
        self._owner = owner
        self._fd = fd

    def data_received(self, data: bytes) -> None:
        self._owner._pipe_data_received(self._fd, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._pipe_connection_lost(self._fd, exc)

    # The child's stdin is written through its own transport, so its flow
    # control must reach the user's protocol (asyncio's stream writer waits
    # on it in drain()).  These are called synchronously, not scheduled:
    # write() must see the protocol paused before it returns.
    def pause_writing(self) -> None:
        self._owner._protocol.pause_writing()

    def resume_writing(self) -> None:
        self._owner._protocol.resume_writing()


class SubprocessTransport(asyncio.SubprocessTransport):
    """A running child process and its pipes, as seen by an ``asyncio.SubprocessProtocol``.

    Invariants: ``_returncode`` is set exactly once, when the child has been
    reaped; ``connection_lost`` is called exactly once, after that and after
    every pipe transport lost its connection (``_open_pipes`` is empty).
    """

    def __init__(
        self,
        loop: LoopContract,
        protocol: asyncio.BaseProtocol,
        proc: subprocess.Popen[bytes],
        waiter: asyncio.Future[None],
    ) -> None:
        super().__init__({"subprocess": proc})
        self._loop = loop
        self._protocol: Any = protocol
        self._proc = proc
        self._pid = proc.pid
        self._returncode: int | None = None
        self._closed = False  # close() was called
        self._finished = False  # connection_lost is scheduled
        # Futures of _wait() callers, resolved with the exit status.
        self._exit_waiters: list[asyncio.Future[int]] = []

        # fd number -> the transport of that pipe, and the fds still open.
        self._pipes: dict[int, ReadPipeTransport | WritePipeTransport] = {}
        if proc.stdin is not None:
            self._pipes[0] = WritePipeTransport(loop, proc.stdin, _PipeRelay(self, 0))
        if proc.stdout is not None:
            self._pipes[1] = ReadPipeTransport(loop, proc.stdout, _PipeRelay(self, 1))
        if proc.stderr is not None:
            self._pipes[2] = ReadPipeTransport(loop, proc.stderr, _PipeRelay(self, 2))
        self._open_pipes = set(self._pipes)

        # The pipe transports scheduled their own connection_made calls and
        # their first reads already; the protocol's connection_made goes
        # after those, so it finds the pipes ready, and anything the pipes
        # or the exit watcher report comes after it (the ready queue is
        # first in, first out).
        loop.call_soon(protocol.connection_made, self)
        loop.call_soon(_resolve_waiter, waiter)

        self._pidfd = _open_pidfd(self._pid)
        if self._pidfd is not None:
            loop.add_reader(self._pidfd, self._on_pidfd_readable)
        else:
            threading.Thread(
                target=_wait_in_thread,
                args=(proc, loop, self._process_exited),
                name=f"loopy-waitpid-{self._pid}",
                daemon=True,
            ).start()

    def __repr__(self) -> str:
        running = self._returncode is None
        state = "running" if running else f"returncode={self._returncode}"
        closed = " closed" if self._closed else ""
        return f"<{type(self).__name__} pid={self._pid} {state}{closed}>"

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        if not getattr(self, "_closed", True):
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            if not self._loop.is_closed():
                self.close()
        pidfd = getattr(self, "_pidfd", None)
        if pidfd is not None and self._loop.is_closed():
            # The loop closed before the child exited.  Its selector held the
            # only other reference to us; the descriptor is left to free.
            os.close(pidfd)

    # -- the protocol ----------------------------------------------------------

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Hand the child's output and exit to ``protocol`` instead."""
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        """The protocol that receives the child's output and exit."""
        protocol: asyncio.BaseProtocol = self._protocol
        return protocol

    def _pipe_data_received(self, fd: int, data: bytes) -> None:
        self._loop.call_soon(self._protocol.pipe_data_received, fd, data)

    def _pipe_connection_lost(self, fd: int, exc: BaseException | None) -> None:
        self._loop.call_soon(self._protocol.pipe_connection_lost, fd, exc)
        self._open_pipes.discard(fd)
        self._maybe_finish()

    # -- the process -----------------------------------------------------------

    def get_pid(self) -> int:
        """The child's process id."""
        return self._pid

    def get_returncode(self) -> int | None:
        """The exit status once the child has exited (negative: killed by that signal)."""
        return self._returncode

    def get_pipe_transport(self, fd: int) -> Any:
        """The transport of the child's stdin (0), stdout (1) or stderr (2); None if not a pipe."""
        return self._pipes.get(fd)

    def send_signal(self, signal: int) -> None:
        """Send ``signal`` to the child; ProcessLookupError once it has exited."""
        if self._returncode is not None:
            raise ProcessLookupError(f"process {self._pid} has exited")
        # Popen checks first whether the child was reaped already, so the
        # signal cannot reach another process that reused the pid.
        self._proc.send_signal(signal)

    def terminate(self) -> None:
        """Send the child SIGTERM (see :meth:`send_signal`)."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """Send the child SIGKILL (see :meth:`send_signal`)."""
        self.send_signal(signal.SIGKILL)

    def _on_pidfd_readable(self) -> None:
        """The pidfd says the child exited: reap it."""
        assert self._pidfd is not None
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = None
        # The child is a zombie by now, so this waitpid() returns at once.
        # Going through Popen keeps its returncode right, and it handles a
        # child that Popen.poll() (called by send_signal) reaped already.
        self._process_exited(self._proc.wait())

    def _process_exited(self, returncode: int) -> None:
        self._returncode = returncode
        self._loop.call_soon(self._protocol.process_exited)
        # asyncio.subprocess.Process.wait() returns now, not when the pipes
        # close too: a grandchild holding stdout open must not block it.
        for waiter in self._exit_waiters:
            if not waiter.done():
                waiter.set_result(returncode)
        self._exit_waiters.clear()
        self._maybe_finish()

    async def _wait(self) -> int:
        """Wait for the child to exit; return its exit status.

        A private name, because ``asyncio.subprocess.Process.wait()`` calls
        exactly this on its transport; it is not part of the transport API.
        """
        if self._returncode is not None:
            return self._returncode
        waiter: asyncio.Future[int] = self._loop.create_future()
        self._exit_waiters.append(waiter)
        return await waiter

    def _maybe_finish(self) -> None:
        if self._returncode is None or self._open_pipes or self._finished:
            return
        self._finished = True
        self._loop.call_soon(self._protocol.connection_lost, None)

    # -- closing ----------------------------------------------------------------

    def is_closing(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Close the pipes, and kill the child if it is still running.

        ``connection_lost`` follows once it has exited and the pipes are closed.
        """
        if self._closed:
            return
        self._closed = True
        for pipe in self._pipes.values():
            pipe.close()
        if self._returncode is None and self._proc.poll() is None:
            # poll(): the child may have exited before we heard of it, and
            # then there is nothing to kill (its pid may even be reused).
            self._proc.kill()


def _check_popen_arguments(
    universal_newlines: bool, bufsize: int, text: bool | None, encoding: Any, errors: Any
) -> None:
    """Refuse the Popen options that would turn the pipes into text files.

    The transports deal in bytes; decoding is the protocol's business.
    """
    if universal_newlines:
        raise ValueError("universal_newlines must be False")
    if bufsize != 0:
        raise ValueError("bufsize must be 0")
    if text:
        raise ValueError("text must be False")
    if encoding is not None:
        raise ValueError("encoding must be None")
    if errors is not None:
        raise ValueError("errors must be None")


class SubprocessMethods(LoopMixin):
    """``subprocess_exec`` and ``subprocess_shell`` (a mixin of :class:`loopy.loop.Loop`)."""

    # Provided by the loop; declared here for the type checker.
    create_future: Callable[[], asyncio.Future[Any]]

    async def subprocess_exec(
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        program: Any,
        *args: Any,
        stdin: Any = subprocess.PIPE,
        stdout: Any = subprocess.PIPE,
        stderr: Any = subprocess.PIPE,
        universal_newlines: bool = False,
        shell: bool = False,
        bufsize: int = 0,
        encoding: Any = None,
        errors: Any = None,
        text: bool | None = None,
        **kwargs: Any,
    ) -> tuple[Any, Any]:
        """Run ``program`` with ``args`` (no shell); other keywords go to ``Popen``."""
        if shell:
            raise ValueError("shell must be False")
        _check_popen_arguments(universal_newlines, bufsize, text, encoding, errors)
        return await self._spawn(
            protocol_factory, (program, *args), False, stdin, stdout, stderr, kwargs
        )

    async def subprocess_shell(
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        cmd: bytes | str,
        *,
        stdin: Any = subprocess.PIPE,
        stdout: Any = subprocess.PIPE,
        stderr: Any = subprocess.PIPE,
        universal_newlines: bool = False,
        shell: bool = True,
        bufsize: int = 0,
        encoding: Any = None,
        errors: Any = None,
        text: bool | None = None,
        **kwargs: Any,
    ) -> tuple[Any, Any]:
        """Run the shell command line ``cmd``; other keywords go to :class:`subprocess.Popen`."""
        if not isinstance(cmd, (bytes, str)):
            raise ValueError("cmd must be a string")
        if not shell:
            raise ValueError("shell must be True")
        _check_popen_arguments(universal_newlines, bufsize, text, encoding, errors)
        return await self._spawn(protocol_factory, cmd, True, stdin, stdout, stderr, kwargs)

    async def _spawn(
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        args: Any,
        shell: bool,
        stdin: Any,
        stdout: Any,
        stderr: Any,
        popen_kwargs: dict[str, Any],
    ) -> tuple[SubprocessTransport, asyncio.BaseProtocol]:
        protocol = protocol_factory()
        # Popen forks and execs; both are quick, and an error (no such
        # program) comes back from it synchronously, as an exception.
        proc = subprocess.Popen(
            args,
            shell=shell,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            universal_newlines=False,
            bufsize=0,
            **popen_kwargs,
        )
        waiter = self.create_future()
        transport = SubprocessTransport(self, protocol, proc, waiter)
        try:
            await waiter  # connection_made() has run
        except BaseException:
            # Cancelled while starting: do not leave a child behind.
            transport.close()
            await transport._wait()
            raise
        return transport, protocol
