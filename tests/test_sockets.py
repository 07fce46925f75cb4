"""The ``sock_*`` coroutines over socketpairs and a real listener on 127.0.0.1.

Each case runs on asyncio's loop too: the coroutines must behave the same.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.setblocking(False)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock
    sock.close()


def registered_fds(loop: Any) -> set[int]:
    """The descriptors the loop's selector watches, besides its own wake-up socket."""
    fds = set(loop._selector.get_map())
    if hasattr(loop, "_watches"):  # loopy: its table and the selector agree
        assert set(loop._watches) == fds
    return fds - {key for key in fds if key in _internal_fds(loop)}


def _internal_fds(loop: Any) -> set[int]:
    if hasattr(loop, "_waker"):
        return {loop._waker.fileno()}
    return {loop._ssock.fileno()}  # asyncio's self-pipe


def test_recv_returns_data_already_there(any_loop: Any, pair: Any) -> None:
    a, b = pair
    b.send(b"ready")
    assert any_loop.run_until_complete(any_loop.sock_recv(a, 100)) == b"ready"


def test_recv_waits_for_data(any_loop: Any, pair: Any) -> None:
    a, b = pair
    any_loop.call_later(0.01, b.send, b"later")
    assert any_loop.run_until_complete(any_loop.sock_recv(a, 100)) == b"later"
    assert registered_fds(any_loop) == set()


def test_recv_returns_empty_bytes_at_eof(any_loop: Any, pair: Any) -> None:
    a, b = pair
    any_loop.call_soon(b.shutdown, socket.SHUT_WR)
    assert any_loop.run_until_complete(any_loop.sock_recv(a, 100)) == b""


def test_recv_into(any_loop: Any, pair: Any) -> None:
    a, b = pair
    buf = bytearray(10)
    b.send(b"abc")
    assert any_loop.run_until_complete(any_loop.sock_recv_into(a, buf)) == 3
    any_loop.call_soon(b.send, b"defg")
    assert any_loop.run_until_complete(any_loop.sock_recv_into(a, memoryview(buf)[3:])) == 4
    assert bytes(buf[:7]) == b"abcdefg"


def test_sendall_larger_than_the_socket_buffer(any_loop: Any, pair: Any) -> None:
    a, b = pair
    payload = os.urandom(4 * 1024 * 1024)

    async def receive_all() -> bytes:
        chunks = []
        total = 0
        while total < len(payload):
            chunk = await any_loop.sock_recv(b, 65536)
            assert chunk
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks)

    async def main() -> bytes:
        receiver = asyncio.ensure_future(receive_all())
        await any_loop.sock_sendall(a, payload)
        return await receiver

    assert any_loop.run_until_complete(main()) == payload
    assert registered_fds(any_loop) == set()


def test_sendall_of_nothing_and_of_a_memoryview(any_loop: Any, pair: Any) -> None:
    a, b = pair
    any_loop.run_until_complete(any_loop.sock_sendall(a, b""))
    any_loop.run_until_complete(any_loop.sock_sendall(a, memoryview(b"view")))
    assert b.recv(10) == b"view"


def test_sendall_to_a_closed_peer_raises(any_loop: Any, pair: Any) -> None:
    a, b = pair
    b.close()

    async def main() -> None:
        while True:  # the first sends may still land in the buffer
            await any_loop.sock_sendall(a, b"x" * 65536)

    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        any_loop.run_until_complete(main())


def test_sendall_error_while_waiting_for_room(any_loop: Any, pair: Any) -> None:
    a, b = pair

    async def main() -> None:
        send = asyncio.ensure_future(any_loop.sock_sendall(a, b"x" * (16 * 1024 * 1024)))
        await asyncio.sleep(0.01)
        assert not send.done()  # the buffer is full: it is waiting for room
        b.close()
        await send

    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        any_loop.run_until_complete(main())
    assert registered_fds(any_loop) == set()


def test_accept_and_connect(any_loop: Any, listener: socket.socket) -> None:
    address = listener.getsockname()

    async def main() -> tuple[bytes, bool]:
        accept = asyncio.ensure_future(any_loop.sock_accept(listener))
        client = socket.socket()
        client.setblocking(False)
        try:
            await any_loop.sock_connect(client, address)
            conn, peer = await accept
            with conn:
                assert peer == client.getsockname()
                await any_loop.sock_sendall(client, b"hi")
                data = await any_loop.sock_recv(conn, 10)
                return data, conn.gettimeout() == 0
        finally:
            client.close()

    assert any_loop.run_until_complete(main()) == (b"hi", True)
    assert registered_fds(any_loop) == set()


def test_accept_a_connection_already_waiting(any_loop: Any, listener: socket.socket) -> None:
    client = socket.create_connection(listener.getsockname())
    try:
        conn, _ = any_loop.run_until_complete(any_loop.sock_accept(listener))
        conn.close()
    finally:
        client.close()


def test_connect_refused(any_loop: Any) -> None:
    # A port nobody listens on: bind one, and close it without listening.
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    address = probe.getsockname()
    probe.close()
    client = socket.socket()
    client.setblocking(False)
    try:
        with pytest.raises(ConnectionRefusedError):
            any_loop.run_until_complete(any_loop.sock_connect(client, address))
    finally:
        client.close()
    assert registered_fds(any_loop) == set()


def test_blocking_sockets_are_refused(loop: Any) -> None:
    # asyncio checks this only in debug mode (and otherwise blocks the whole
    # loop); loopy always refuses, with a clear error.
    any_loop = loop
    blocking_a, blocking_b = socket.socketpair()
    try:
        for coro in (
            any_loop.sock_recv(blocking_a, 1),
            any_loop.sock_recv_into(blocking_a, bytearray(1)),
            any_loop.sock_sendall(blocking_a, b"x"),
            any_loop.sock_accept(blocking_a),
            any_loop.sock_connect(blocking_a, ("127.0.0.1", 1)),
        ):
            with pytest.raises(ValueError, match="non-blocking"):
                any_loop.run_until_complete(coro)
    finally:
        blocking_a.close()
        blocking_b.close()


@pytest.mark.parametrize("operation", ["recv", "recv_into", "accept", "sendall"])
def test_cancelling_a_waiting_call_unregisters_its_fd(
    any_loop: Any, pair: Any, listener: socket.socket, operation: str
) -> None:
    a, _ = pair
    while True:  # fill a's send buffer so sendall has to wait
        try:
            a.send(b"x" * 65536)
        except BlockingIOError:
            break
    coros = {
        "recv": lambda: any_loop.sock_recv(a, 1),
        "recv_into": lambda: any_loop.sock_recv_into(a, bytearray(1)),
        "accept": lambda: any_loop.sock_accept(listener),
        "sendall": lambda: any_loop.sock_sendall(a, b"more"),
    }

    async def main() -> None:
        task = asyncio.ensure_future(coros[operation]())
        await asyncio.sleep(0.01)
        assert not task.done()
        assert registered_fds(any_loop) != set()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    any_loop.run_until_complete(main())
    assert registered_fds(any_loop) == set()


def test_a_spurious_wakeup_keeps_waiting(loop: Any, pair: Any) -> None:
    """A readiness callback that finds nothing to read just waits again."""
    a, b = pair

    async def main() -> bytes:
        task = asyncio.ensure_future(loop.sock_recv(a, 10))
        await asyncio.sleep(0)
        reader = loop._watches[a.fileno()].reader
        # As if select() had reported the socket readable:
        reader._context.run(reader._callback, *reader._args)
        assert not task.done()
        b.send(b"real")
        return await task

    assert loop.run_until_complete(main()) == b"real"


def test_readiness_after_the_future_is_done_is_ignored(loop: Any, pair: Any) -> None:
    """A callback queued in the same iteration as a cancellation does nothing."""
    a, b = pair
    future = loop.create_future()
    future.cancel()
    for callback, args in [
        (loop._recv_ready, (a, 1)),
        (loop._recv_into_ready, (a, bytearray(1))),
        (loop._sendall_ready, (a, memoryview(b"x"), [0])),
        (loop._connect_ready, (a, None)),
        (loop._accept_ready, (a,)),
    ]:
        callback(future, *args)
    with pytest.raises(BlockingIOError):  # nothing was sent on a's behalf
        b.recv(10)


def test_readiness_callbacks_report_errors(loop: Any) -> None:
    broken = socket.socket()
    broken.setblocking(False)
    broken.close()  # every call on it now fails with EBADF
    for callback, args in [
        (loop._recv_ready, (broken, 1)),
        (loop._recv_into_ready, (broken, bytearray(1))),
        (loop._connect_ready, (broken, ("127.0.0.1", 1))),
        (loop._accept_ready, (broken,)),
    ]:
        future = loop.create_future()
        callback(future, *args)
        assert isinstance(future.exception(), OSError)


def test_connect_resolves_host_names(any_loop: Any, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    client = socket.socket()
    client.setblocking(False)
    try:
        any_loop.run_until_complete(any_loop.sock_connect(client, ("localhost", port)))
        assert client.getpeername() == ("127.0.0.1", port)
    finally:
        client.close()


def test_a_read_loop_keeps_its_registration(loop: Any, pair: Any) -> None:
    """Back-to-back sock_recv calls reuse the selector registration: no selector call per read."""
    a, b = pair
    calls: list[str] = []
    selector = loop._selector
    for name in ("register", "modify", "unregister"):
        original = getattr(selector, name)

        def counting(*args: Any, _original: Any = original, _name: str = name) -> Any:
            calls.append(_name)
            return _original(*args)

        setattr(selector, name, counting)

    async def main() -> list[bytes]:
        got = []
        for i in range(5):
            loop.call_soon(b.send, b"%d" % i)
            got.append(await loop.sock_recv(a, 10))
        return got

    assert loop.run_until_complete(main()) == [b"0", b"1", b"2", b"3", b"4"]
    for _ in range(3):  # the last registration goes an iteration or two later
        loop.call_soon(loop.stop)
        loop.run_forever()
    assert calls == ["register", "unregister"]
    assert registered_fds(loop) == set()


def test_a_closed_sockets_leftover_registration_does_not_hide_a_new_one(
    any_loop: Any,
) -> None:
    a, b = socket.socketpair()
    a.setblocking(False)

    async def main() -> bytes:
        any_loop.call_soon(b.send, b"x")
        assert await any_loop.sock_recv(a, 10) == b"x"
        old_fd = a.fileno()
        a.close()  # before the loop dropped a's registration
        b.close()
        c, d = socket.socketpair()
        with c, d:
            assert c.fileno() == old_fd  # the number is reused at once
            c.setblocking(False)
            any_loop.call_later(0.01, d.send, b"y")  # after c starts waiting
            async with asyncio.timeout(5):  # in this task: sock_recv(c) starts at once
                return await any_loop.sock_recv(c, 10)

    assert any_loop.run_until_complete(main()) == b"y"


@pytest.mark.parametrize("direction", ["recv", "sendall"])
def test_a_waiting_task_collected_after_its_loop_closed_raises_nothing(
    loop: Any, pair: Any, direction: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Closing the coroutine runs loopy's cleanup, which must not touch the closed loop.

    (An exception there would be "ignored" and reported as unraisable, which
    this suite turns into a failure.)
    """
    a, _ = pair
    if direction == "recv":
        coroutine = loop.sock_recv(a, 10)
    else:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        coroutine = loop.sock_sendall(a, b"x" * (1 << 22))  # more than the buffers take
    task = loop.create_task(coroutine)
    loop.run_until_complete(asyncio.sleep(0.01))
    assert not task.done()
    loop.close()
    del task, coroutine
    gc.collect()
    assert "Task was destroyed but it is pending!" in caplog.text
