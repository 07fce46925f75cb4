"""Reliability, part 4: shutting down under load, and closing without leaks.

* SIGINT or SIGTERM while several clients stream to the ``loopy`` program
  as fast as they can: it logs the shutdown, closes every connection and
  exits 0 within ``MAX_EXIT_SECONDS`` of the signal, measured from the
  signal to the process's exit (a pidfd says the moment it exits);
* a loop that ran servers, client and server connections, streams,
  ``sock_*`` sockets, a datagram endpoint, a pipe, a child process and
  signal handlers gives back every file descriptor: the process has exactly
  the descriptors it had before the loop was created, once everything and
  the loop are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import LOOPY_KINDS, make_loop
from tests.test_cli import Loopy
from tests.test_reliability import MiB, catch_errors, needs_proc, open_fds, reset, run

pytestmark = needs_proc

STREAMING_CLIENTS = 4
#: Tolerance: from the signal to the process's exit.  The program only has
#: to cancel a few tasks and close a few sockets; 1 s leaves a loaded
#: two-core machine plenty of room.
MAX_EXIT_SECONDS = 1.0


@pytest.fixture
def program() -> Iterator[list[Loopy]]:
    """A list to put started programs in; each is killed and reaped after the test."""
    started: list[Loopy] = []
    yield started
    for process in started:
        process.close()


def wait_for_exit(pid: int, timeout: float) -> float | None:
    """Wait until process ``pid`` exits (not reaping it); the time it did, or None."""
    pidfd = os.pidfd_open(pid)
    try:
        readable, _, _ = select.select([pidfd], [], [], timeout)
        return time.monotonic() if readable else None
    finally:
        os.close(pidfd)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("tasks", ["asyncio", "loopy"])
def test_a_signal_during_heavy_io_closes_everything_and_exits_0_quickly(
    program: list[Loopy], tasks: str, sig: signal.Signals, record_property: Any
) -> None:
    program.append(Loopy("--interval", "0.1", "--max-log-bytes", "16", "--tasks", tasks))
    loopy = program[0]
    block = random.Random(17).randbytes(1 * MiB)
    clients = [
        socket.create_connection(("127.0.0.1", loopy.port)) for _ in range(STREAMING_CLIENTS)
    ]
    addresses = [str(sock.getsockname()) for sock in clients]
    idle = socket.create_connection(("127.0.0.1", loopy.port))
    idle_addr = str(idle.getsockname())
    endings: list[BaseException | None] = []

    def stream(sock: socket.socket) -> None:
        try:
            while True:
                sock.sendall(block)
        except OSError as exc:  # the program closed the connection
            endings.append(exc)

    senders = [threading.Thread(target=stream, args=(sock,)) for sock in clients]
    try:
        for sender in senders:
            sender.start()
        for address in addresses:  # every client is being read from
            loopy.wait_for(re.escape(f"Recvd (from {address}): ") + ".*", count=3)
        loopy.wait_for(re.escape(f"Accept from {idle_addr}"))
        signalled = time.monotonic()
        loopy.proc.send_signal(sig)
        exited = wait_for_exit(loopy.proc.pid, 10.0)
        assert exited is not None, "the program did not exit within 10 s of the signal"
        exit_seconds = exited - signalled
        assert loopy.proc.wait(10) == 0
        for sender in senders:
            sender.join(10)
        idle.settimeout(10)
        with contextlib.suppress(ConnectionResetError):
            assert idle.recv(1) == b""  # the program closed the idle connection too
    finally:
        for sock in [*clients, idle]:
            with contextlib.suppress(OSError):  # wakes a sender still blocked in sendall
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for sender in senders:
            sender.join(10)

    record_property("exit_after_signal_s", round(exit_seconds, 3))
    print(f"\n{sig.name} under load ({tasks} tasks): exited {exit_seconds:.3f} s after it")
    loopy.close()  # joins the log reader: every line is in
    messages = loopy.messages()
    shutdown = messages.index(f"Shutting down ({sig.name})")
    closed = {m.removeprefix("Closed ") for m in messages[shutdown:] if m.startswith("Closed ")}
    assert closed == {*addresses, idle_addr}
    assert not any(m.startswith("Recvd") for m in messages[shutdown + 1 :])
    assert "Traceback" not in "\n".join(loopy.lines)
    assert len(endings) == STREAMING_CLIENTS  # every sender saw its connection end
    assert all(isinstance(exc, (ConnectionResetError, BrokenPipeError)) for exc in endings)
    assert exit_seconds < MAX_EXIT_SECONDS


# ======================================================================
# loop.close() gives every descriptor back
# ======================================================================


class Echo(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class Collect(asyncio.Protocol):
    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.data = bytearray()
        self.lost: asyncio.Future[BaseException | None] = loop.create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.set_result(exc)


class Datagrams(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.got.done():
            self.got.set_result(data)


async def _use_everything() -> None:
    """Servers, connections, streams, sock_*, UDP, a pipe, a child: used, then all closed."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async def stream_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass  # a client reset
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    stream_server = await asyncio.start_server(stream_echo, "127.0.0.1", 0)
    stream_port = stream_server.sockets[0].getsockname()[1]

    # Transports: some closed cleanly, some aborted.
    connections = [await loop.create_connection(Collect, "127.0.0.1", port) for _ in range(20)]
    for transport, _ in connections:
        transport.write(b"ping")
    for number, (transport, protocol) in enumerate(connections):
        while len(protocol.data) < 4:
            await asyncio.sleep(0.001)
        if number % 2:
            transport.abort()
        else:
            transport.close()
        await protocol.lost

    # Streams, closed cleanly; plain sockets through sock_*, some reset.
    for _ in range(10):
        reader, writer = await asyncio.open_connection("127.0.0.1", stream_port)
        writer.write(b"hello")
        assert await reader.readexactly(5) == b"hello"
        writer.close()
        await writer.wait_closed()
    for number in range(10):
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", stream_port))
        await loop.sock_sendall(sock, b"x" * 1000)
        assert len(await loop.sock_recv(sock, 1000)) > 0
        if number % 2:
            reset(sock)
        else:
            sock.close()

    # A socket pair made into a transport, a UDP endpoint, a pipe, a child process.
    a, b = socket.socketpair()
    transport, protocol = await loop.connect_accepted_socket(Collect, a)
    b.sendall(b"over the pair")
    b.close()
    await protocol.lost
    udp, datagrams = await loop.create_datagram_endpoint(Datagrams, local_addr=("127.0.0.1", 0))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.sendto(b"datagram", udp.get_extra_info("sockname"))
        assert await datagrams.got == b"datagram"
    udp.close()
    read_end, write_end = os.pipe()
    _, pipe_protocol = await loop.connect_read_pipe(Collect, os.fdopen(read_end, "rb"))
    os.write(write_end, b"through the pipe")
    os.close(write_end)
    await pipe_protocol.lost
    assert pipe_protocol.data == b"through the pipe"
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "print('child')", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await child.communicate()
    assert out == b"child\n"
    loop.add_signal_handler(signal.SIGUSR1, lambda: None)
    await loop.run_in_executor(None, time.sleep, 0)

    server.close()
    stream_server.close()
    await server.wait_closed()
    await stream_server.wait_closed()
    loop.remove_signal_handler(signal.SIGUSR1)
    await loop.shutdown_default_executor()


@pytest.mark.parametrize("kind", LOOPY_KINDS)
def test_closing_the_loop_gives_back_every_descriptor(kind: str) -> None:
    before = open_fds()
    loop = make_loop(kind)
    try:
        errors = catch_errors(loop)
        assert len(open_fds()) > len(before)  # the loop holds its selector and wake-up socket
        run(loop, _use_everything())
        run(loop, loop.shutdown_asyncgens())
    finally:
        loop.close()
    assert errors == []
    assert open_fds() == before
