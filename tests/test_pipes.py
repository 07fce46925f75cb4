"""Pipe transports over os.pipe(), socketpairs and ptys.

Most cases run on asyncio's loop too: the transports must behave the same.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import socket
import tty
from collections.abc import Iterator
from typing import Any

import pytest

import loopy.pipes


class Recorder(asyncio.Protocol):
    """Records every callback; ``done`` resolves at connection_lost."""

    def __init__(self, loop: Any) -> None:
        self.events: list[Any] = []
        self.data = bytearray()
        self.transport: Any = None
        self.done = loop.create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> None:
        self.events.append("eof")

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append(("lost", type(exc)))
        self.done.set_result(exc)


@pytest.fixture
def pipe() -> Iterator[tuple[Any, Any]]:
    """Both ends of an os.pipe() as unbuffered file objects."""
    r, w = os.pipe()
    with open(r, "rb", buffering=0) as reader, open(w, "wb", buffering=0) as writer:
        yield reader, writer


def run(loop: Any, coro: Any, timeout: float = 5.0) -> Any:
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


def forget(objects: list[Any]) -> None:
    """Drop the last references to ``objects``, and collect them."""
    objects.clear()
    gc.collect()


def registered_fds(loop: Any) -> set[int]:
    """The descriptors the loop's selector watches, besides its own wake-up socket."""
    own = loop._waker.fileno() if hasattr(loop, "_waker") else loop._ssock.fileno()
    return set(loop._selector.get_map()) - {own}


# -- reading -------------------------------------------------------------------


def test_read_pipe_delivers_data_then_eof(any_loop: Any, pipe: Any) -> None:
    reader, writer = pipe

    async def main() -> Recorder:
        transport, protocol = await any_loop.connect_read_pipe(lambda: Recorder(any_loop), reader)
        assert protocol.events == ["made"]
        assert transport.get_extra_info("pipe") is reader
        assert transport.is_reading()
        writer.write(b"hello ")
        any_loop.call_soon(writer.write, b"world")
        any_loop.call_later(0.01, writer.close)
        await protocol.done
        assert transport.is_closing()
        transport.close()  # after EOF: nothing left to do
        return protocol

    protocol = run(any_loop, main())
    assert bytes(protocol.data) == b"hello world"
    assert protocol.events == ["made", "eof", ("lost", type(None))]
    assert reader.closed
    assert registered_fds(any_loop) == set()


def test_read_pipe_close_stops_reading(any_loop: Any, pipe: Any) -> None:
    reader, _writer = pipe

    async def main() -> Recorder:
        transport, protocol = await any_loop.connect_read_pipe(lambda: Recorder(any_loop), reader)
        transport.close()
        transport.close()
        assert transport.is_closing()
        assert not transport.is_reading()
        await protocol.done
        return protocol

    protocol = run(any_loop, main())
    assert protocol.events == ["made", ("lost", type(None))]
    assert reader.closed


def test_read_pipe_pause_and_resume(any_loop: Any, pipe: Any) -> None:
    reader, writer = pipe

    async def main() -> Recorder:
        transport, protocol = await any_loop.connect_read_pipe(lambda: Recorder(any_loop), reader)
        transport.pause_reading()
        transport.pause_reading()  # twice is harmless
        assert not transport.is_reading()
        writer.write(b"held")
        for _ in range(5):
            await asyncio.sleep(0)
        assert protocol.data == b""
        transport.resume_reading()
        transport.resume_reading()
        assert transport.is_reading()
        writer.close()
        await protocol.done
        transport.pause_reading()  # after the end: ignored
        transport.resume_reading()
        return protocol

    protocol = run(any_loop, main())
    assert bytes(protocol.data) == b"held"


def test_read_pipe_from_a_pty_ends_with_eio(any_loop: Any) -> None:
    # A terminal hangs up differently: reading the master after the last
    # slave descriptor closed fails with EIO, and there is no EOF.
    master, slave = os.openpty()
    tty.setraw(slave)
    master_file = os.fdopen(master, "rb", buffering=0)  # the transport closes it

    async def main() -> Recorder:
        _transport, protocol = await any_loop.connect_read_pipe(
            lambda: Recorder(any_loop), master_file
        )
        os.write(slave, b"typed")
        while len(protocol.data) < 5:
            await asyncio.sleep(0.001)
        os.close(slave)
        exc = await protocol.done
        assert isinstance(exc, OSError)
        assert exc.errno == errno.EIO
        return protocol

    errors: list[Any] = []
    any_loop.set_exception_handler(lambda loop, context: errors.append(context))
    protocol = run(any_loop, main())
    assert bytes(protocol.data) == b"typed"
    assert protocol.events == ["made", ("lost", OSError)]
    assert errors == []  # a hang-up is not worth a report
    assert master_file.closed


def test_read_error_is_reported(any_loop: Any, pipe: Any) -> None:
    # The write end is no reading end: once its reader is closed, select()
    # says it is readable, and os.read() fails with EBADF.
    reader, writer = pipe
    errors: list[Any] = []
    any_loop.set_exception_handler(lambda loop, context: errors.append(context))

    async def main() -> Any:
        _transport, protocol = await any_loop.connect_read_pipe(lambda: Recorder(any_loop), writer)
        reader.close()
        return await protocol.done

    exc = run(any_loop, main())
    assert isinstance(exc, OSError)
    assert exc.errno == errno.EBADF
    assert [context["message"] for context in errors] == ["Fatal read error on pipe transport"]


def test_read_pipe_over_a_socket(any_loop: Any) -> None:
    a, b = socket.socketpair()
    try:

        async def main() -> Recorder:
            _transport, protocol = await any_loop.connect_read_pipe(lambda: Recorder(any_loop), a)
            b.sendall(b"over a socket")
            b.shutdown(socket.SHUT_WR)
            await protocol.done
            return protocol

        protocol = run(any_loop, main())
        assert bytes(protocol.data) == b"over a socket"
        assert a.fileno() == -1  # closed with the transport
    finally:
        a.close()
        b.close()


def test_regular_files_are_refused(any_loop: Any, tmp_path: Any) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"data")
    with open(path, "rb") as file:
        with pytest.raises(ValueError, match="ipe"):
            run(any_loop, any_loop.connect_read_pipe(asyncio.Protocol, file))
        with pytest.raises(ValueError, match="ipe"):
            run(any_loop, any_loop.connect_write_pipe(asyncio.BaseProtocol, file))


def test_cancelled_while_connecting_closes_the_pipe(any_loop: Any, pipe: Any) -> None:
    reader, _writer = pipe

    async def main() -> None:
        task = asyncio.ensure_future(any_loop.connect_read_pipe(asyncio.Protocol, reader))
        any_loop.call_soon(task.cancel)  # right after its first step
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(3):
            await asyncio.sleep(0)

    run(any_loop, main())
    assert reader.closed


def test_write_pipe_cancelled_while_connecting(any_loop: Any, pipe: Any) -> None:
    _reader, writer = pipe

    async def main() -> None:
        task = asyncio.ensure_future(any_loop.connect_write_pipe(asyncio.BaseProtocol, writer))
        any_loop.call_soon(task.cancel)
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(3):
            await asyncio.sleep(0)

    run(any_loop, main())
    assert writer.closed


# -- writing -------------------------------------------------------------------


def test_write_pipe_writes_and_closes(any_loop: Any, pipe: Any) -> None:
    reader, writer = pipe

    async def main() -> Recorder:
        transport, protocol = await any_loop.connect_write_pipe(lambda: Recorder(any_loop), writer)
        assert transport.get_extra_info("pipe") is writer
        assert transport.can_write_eof()
        transport.write(b"abc")
        transport.write(bytearray(b"def"))
        transport.writelines([b"g", memoryview(b"hi")])
        transport.write(b"")
        assert transport.get_write_buffer_size() == 0
        transport.close()
        assert transport.is_closing()
        transport.close()
        transport.write_eof()
        await protocol.done
        return protocol

    protocol = run(any_loop, main())
    assert protocol.events == ["made", ("lost", type(None))]
    assert writer.closed
    assert reader.read() == b"abcdefghi"


def test_a_large_write_is_buffered_and_flow_controlled(any_loop: Any, pipe: Any) -> None:
    reader, writer = pipe
    payload = os.urandom(1024 * 1024)

    async def main() -> tuple[Recorder, Recorder]:
        _, sink = await any_loop.connect_read_pipe(lambda: Recorder(any_loop), reader)
        transport, protocol = await any_loop.connect_write_pipe(lambda: Recorder(any_loop), writer)
        transport.write(payload)
        # A pipe holds 64 KiB: most of the megabyte waits in the buffer.
        assert transport.get_write_buffer_size() > 0
        assert protocol.events == ["made", "pause"]
        transport.close()  # flushes first
        await protocol.done
        await sink.done
        return protocol, sink

    protocol, sink = run(any_loop, main())
    assert protocol.events == ["made", "pause", "resume", ("lost", type(None))]
    assert bytes(sink.data) == payload


def test_buffer_limits(any_loop: Any, pipe: Any) -> None:
    _reader, writer = pipe

    async def main() -> None:
        transport, protocol = await any_loop.connect_write_pipe(lambda: Recorder(any_loop), writer)
        assert transport.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
        transport.set_write_buffer_limits(high=400)
        assert transport.get_write_buffer_limits() == (100, 400)
        transport.set_write_buffer_limits(low=10)
        assert transport.get_write_buffer_limits() == (10, 40)
        transport.set_write_buffer_limits()
        assert transport.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
        with pytest.raises(ValueError):
            transport.set_write_buffer_limits(high=1, low=2)
        transport.close()
        await protocol.done

    run(any_loop, main())


def test_reader_closing_with_data_buffered_is_a_broken_pipe(any_loop: Any, pipe: Any) -> None:
    reader, writer = pipe

    async def main() -> Recorder:
        transport, protocol = await any_loop.connect_write_pipe(lambda: Recorder(any_loop), writer)
        transport.write(b"x" * (1024 * 1024))
        assert transport.get_write_buffer_size() > 0
        reader.close()
        exc = await protocol.done
        assert isinstance(exc, BrokenPipeError)
        assert transport.get_write_buffer_size() == 0
        transport.write(b"dropped")  # after the end: silently dropped
        return protocol

    errors: list[Any] = []
    any_loop.set_exception_handler(lambda loop, context: errors.append(context))
    protocol = run(any_loop, main())
    assert protocol.events == ["made", "pause", ("lost", BrokenPipeError)]
    assert errors == []
    assert writer.closed
    assert registered_fds(any_loop) == set()


def test_reader_closing_with_nothing_buffered_is_a_clean_end(any_loop: Any, pipe: Any) -> None:
    reader, writer = pipe

    async def main() -> Any:
        transport, protocol = await any_loop.connect_write_pipe(lambda: Recorder(any_loop), writer)
        transport.write(b"delivered")
        assert reader.read(100) == b"delivered"
        reader.close()
        return await protocol.done

    assert run(any_loop, main()) is None
    assert writer.closed


def test_write_into_a_closed_pipe_is_a_broken_pipe(any_loop: Any, pipe: Any) -> None:
    reader, writer = pipe

    async def main() -> Any:
        transport, protocol = await any_loop.connect_write_pipe(lambda: Recorder(any_loop), writer)
        reader.close()
        transport.write(b"into the void")  # before the loop noticed
        return await protocol.done

    assert isinstance(run(any_loop, main()), BrokenPipeError)


def test_reader_closing_on_a_socket_pipe(any_loop: Any) -> None:
    a, b = socket.socketpair()
    try:

        async def main() -> Any:
            transport, protocol = await any_loop.connect_write_pipe(lambda: Recorder(any_loop), a)
            transport.write(b"ping")
            assert b.recv(10) == b"ping"
            b.close()
            return await protocol.done

        assert run(any_loop, main()) is None
    finally:
        a.close()
        b.close()


def test_abort_drops_the_buffer(any_loop: Any, pipe: Any) -> None:
    reader, writer = pipe

    async def main() -> Any:
        transport, protocol = await any_loop.connect_write_pipe(lambda: Recorder(any_loop), writer)
        transport.write(b"x" * (1024 * 1024))
        transport.abort()
        assert transport.get_write_buffer_size() == 0
        assert transport.is_closing()
        transport.abort()
        return await protocol.done

    assert run(any_loop, main()) is None
    assert writer.closed
    assert len(reader.read()) < 1024 * 1024


def test_writes_after_close_are_dropped_with_a_warning(
    any_loop: Any, pipe: Any, caplog: pytest.LogCaptureFixture
) -> None:
    reader, writer = pipe

    async def main() -> None:
        transport, protocol = await any_loop.connect_write_pipe(lambda: Recorder(any_loop), writer)
        transport.write(b"kept")
        transport.close()
        for _ in range(6):
            transport.write(b"dropped")
        await protocol.done

    run(any_loop, main())
    assert reader.read() == b"kept"
    assert "pipe closed by peer" in caplog.text


def test_write_pipe_on_a_pty(any_loop: Any) -> None:
    # A terminal is not watched for "the reader went away": it is readable
    # whenever someone types.  Writing to it works as for a pipe.
    master, slave = os.openpty()
    tty.setraw(slave)
    master_file = os.fdopen(master, "wb", buffering=0)  # the transport closes it
    try:

        async def main() -> Any:
            transport, protocol = await any_loop.connect_write_pipe(
                lambda: Recorder(any_loop), master_file
            )
            os.write(slave, b"typing does not close it")
            transport.write(b"to the terminal")
            assert os.read(slave, 100) == b"to the terminal"
            for _ in range(5):
                await asyncio.sleep(0)
            assert not transport.is_closing()
            transport.close()
            return await protocol.done

        assert run(any_loop, main()) is None
    finally:
        os.close(slave)


# -- loopy specifics -------------------------------------------------------------


def test_write_refuses_text(loop: Any, pipe: Any) -> None:
    _reader, writer = pipe

    async def main() -> None:
        transport, protocol = await loop.connect_write_pipe(lambda: Recorder(loop), writer)
        with pytest.raises(TypeError):
            transport.write("text")
        transport.close()
        await protocol.done

    run(loop, main())


def test_repr(loop: Any, pipe: Any) -> None:
    reader, _writer = pipe

    async def main() -> None:
        transport, protocol = await loop.connect_read_pipe(lambda: Recorder(loop), reader)
        assert repr(transport) == f"<ReadPipeTransport fd={reader.fileno()} open>"
        transport.close()
        assert "closing" in repr(transport)
        await protocol.done
        assert "closed" in repr(transport)

    run(loop, main())


def test_failing_data_received_closes_the_pipe(loop: Any, pipe: Any) -> None:
    reader, writer = pipe
    errors: list[Any] = []
    loop.set_exception_handler(lambda loop, context: errors.append(context))

    class Failing(Recorder):
        def data_received(self, data: bytes) -> None:
            raise ZeroDivisionError

    async def main() -> Any:
        _transport, protocol = await loop.connect_read_pipe(lambda: Failing(loop), reader)
        writer.write(b"boom")
        return await protocol.done

    assert isinstance(run(loop, main()), ZeroDivisionError)
    assert errors[0]["message"] == "Fatal error: protocol.data_received() call failed."


def test_failing_eof_received_is_reported(loop: Any, pipe: Any) -> None:
    reader, writer = pipe
    errors: list[Any] = []
    loop.set_exception_handler(lambda loop, context: errors.append(context))

    class Failing(Recorder):
        def eof_received(self) -> None:
            raise ZeroDivisionError

    async def main() -> Any:
        _transport, protocol = await loop.connect_read_pipe(lambda: Failing(loop), reader)
        writer.close()
        return await protocol.done

    assert isinstance(run(loop, main()), ZeroDivisionError)
    assert errors[0]["message"] == "Fatal error: protocol.eof_received() call failed."


def test_failing_flow_control_callbacks_are_reported(loop: Any, pipe: Any) -> None:
    reader, writer = pipe
    errors: list[Any] = []
    loop.set_exception_handler(lambda loop, context: errors.append(context))

    class Failing(Recorder):
        def pause_writing(self) -> None:
            raise ZeroDivisionError

        def resume_writing(self) -> None:
            raise ZeroDivisionError

    async def main() -> Any:
        _, sink = await loop.connect_read_pipe(lambda: Recorder(loop), reader)
        transport, protocol = await loop.connect_write_pipe(lambda: Failing(loop), writer)
        transport.write(b"x" * (256 * 1024))
        transport.close()
        await sink.done
        return await protocol.done

    assert run(loop, main()) is None
    assert [context["message"] for context in errors] == [
        "protocol.pause_writing() failed",
        "protocol.resume_writing() failed",
    ]


class _FailingOs:
    """``os`` as pipes.py sees it, with writes failing (other errors than a peer leaving)."""

    def __init__(self, error: BaseException, after: int = 0) -> None:
        self.error = error
        self.after = after  # successful writes before the failures start

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: Any) -> int:
        if self.after:
            self.after -= 1
            return os.write(fd, data)
        raise self.error


@pytest.mark.parametrize("after", [0, 1])
def test_write_errors_are_reported(
    loop: Any, pipe: Any, monkeypatch: pytest.MonkeyPatch, after: int
) -> None:
    # after=0: the first, direct write fails; after=1: a write from the buffer.
    reader, writer = pipe
    errors: list[Any] = []
    loop.set_exception_handler(lambda loop, context: errors.append(context))

    async def main() -> Any:
        transport, protocol = await loop.connect_write_pipe(lambda: Recorder(loop), writer)
        monkeypatch.setattr(loopy.pipes, "os", _FailingOs(OSError(errno.EINVAL, "bad"), after))
        transport.write(b"x" * (256 * 1024))
        if after:
            reader.read(65536)  # room for a write from the buffer
        return await protocol.done

    exc = run(loop, main())
    monkeypatch.undo()
    assert isinstance(exc, OSError)
    assert exc.errno == errno.EINVAL
    assert errors[0]["message"] == "Fatal write error on pipe transport"


def test_interrupted_writes_are_retried(
    loop: Any, pipe: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader, writer = pipe
    payload = os.urandom(200 * 1024)

    class Flaky(_FailingOs):
        def write(self, fd: int, data: Any) -> int:
            self.after += 1
            if self.after % 2:
                raise InterruptedError
            return os.write(fd, data)

    async def main() -> bytes:
        _, sink = await loop.connect_read_pipe(lambda: Recorder(loop), reader)
        transport, protocol = await loop.connect_write_pipe(lambda: Recorder(loop), writer)
        monkeypatch.setattr(loopy.pipes, "os", Flaky(InterruptedError()))
        transport.write(payload)
        transport.close()
        await protocol.done
        await sink.done
        return bytes(sink.data)

    assert run(loop, main()) == payload


def test_a_second_write_queues_behind_the_buffer(any_loop: Any, pipe: Any) -> None:
    reader, writer = pipe
    first, second = os.urandom(200 * 1024), os.urandom(1000)

    async def main() -> bytes:
        _, sink = await any_loop.connect_read_pipe(lambda: Recorder(any_loop), reader)
        transport, protocol = await any_loop.connect_write_pipe(lambda: Recorder(any_loop), writer)
        transport.write(first)
        transport.write(second)  # must not overtake the buffered data
        while transport.get_write_buffer_size():
            await asyncio.sleep(0)
        assert not transport.is_closing()  # drained, and still open
        transport.close()
        await protocol.done
        await sink.done
        return bytes(sink.data)

    assert run(any_loop, main()) == first + second


def test_protocol_can_be_replaced(loop: Any, pipe: Any) -> None:
    reader, writer = pipe

    async def main() -> None:
        for connect in (loop.connect_read_pipe, loop.connect_write_pipe):
            end = reader if connect == loop.connect_read_pipe else writer
            transport, first = await connect(lambda: Recorder(loop), end)
            second = Recorder(loop)
            transport.set_protocol(second)
            assert transport.get_protocol() is second
            transport.close()
            await second.done
            assert not first.done.done()

    run(loop, main())


def test_transports_made_directly_and_closed_at_once(loop: Any, pipe: Any) -> None:
    # Closed before the loop ran once: reading and watching never start.
    reader, writer = pipe
    read_side = Recorder(loop)
    write_side = Recorder(loop)
    loopy.pipes.ReadPipeTransport(loop, reader, read_side).close()
    loopy.pipes.WritePipeTransport(loop, writer, write_side).close()
    run(loop, asyncio.gather(read_side.done, write_side.done))
    assert read_side.events == ["made", ("lost", type(None))]
    assert write_side.events == ["made", ("lost", type(None))]
    assert registered_fds(loop) == set()


@pytest.mark.parametrize("end", ["read", "write"])
def test_unclosed_transport_warns(end: str, pipe: Any) -> None:
    loop = loopy.new_event_loop()
    reader, writer = pipe
    if end == "read":
        transports: list[Any] = [loopy.pipes.ReadPipeTransport(loop, reader, asyncio.Protocol())]
    else:
        transports = [loopy.pipes.WritePipeTransport(loop, writer, asyncio.BaseProtocol())]
    loop.close()  # drops the callbacks that referred to the transport
    with pytest.warns(ResourceWarning, match="unclosed transport"):
        forget(transports)
    assert (reader if end == "read" else writer).closed


def test_spurious_readiness_is_ignored(
    loop: Any, pipe: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader, writer = pipe

    class NotReallyReady(_FailingOs):
        def read(self, fd: int, size: int) -> bytes:
            if self.after < 2:
                self.after += 1
                raise (BlockingIOError if self.after == 1 else InterruptedError)
            return os.read(fd, size)

    async def main() -> bytes:
        _transport, protocol = await loop.connect_read_pipe(lambda: Recorder(loop), reader)
        monkeypatch.setattr(loopy.pipes, "os", NotReallyReady(OSError()))
        writer.write(b"eventually")
        writer.close()
        await protocol.done
        return bytes(protocol.data)

    assert run(loop, main()) == b"eventually"


def test_data_received_that_closes_then_raises(loop: Any, pipe: Any) -> None:
    reader, writer = pipe
    errors: list[Any] = []
    loop.set_exception_handler(lambda loop, context: errors.append(context))

    class CloseThenFail(Recorder):
        def data_received(self, data: bytes) -> None:
            self.transport.close()
            raise ZeroDivisionError

    async def main() -> Recorder:
        _transport, protocol = await loop.connect_read_pipe(lambda: CloseThenFail(loop), reader)
        writer.write(b"x")
        await protocol.done
        for _ in range(3):
            await asyncio.sleep(0)
        return protocol

    protocol = run(loop, main())
    assert protocol.events == ["made", ("lost", type(None))]  # lost once, cleanly
    assert len(errors) == 1


@pytest.mark.parametrize("callback", ["data_received", "eof_received"])
def test_keyboard_interrupt_in_a_callback_propagates(loop: Any, pipe: Any, callback: str) -> None:
    reader, writer = pipe

    class Interrupting(Recorder):
        def data_received(self, data: bytes) -> None:
            if callback == "data_received":
                raise KeyboardInterrupt

        def eof_received(self) -> None:
            raise KeyboardInterrupt

    transport, protocol = run(loop, loop.connect_read_pipe(lambda: Interrupting(loop), reader))
    writer.write(b"x")
    writer.close()
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    transport.close()
    run(loop, protocol.done)


def test_keyboard_interrupt_in_pause_writing_propagates(loop: Any, pipe: Any) -> None:
    _reader, writer = pipe

    class Interrupting(Recorder):
        def pause_writing(self) -> None:
            raise KeyboardInterrupt

    transport, protocol = run(loop, loop.connect_write_pipe(lambda: Interrupting(loop), writer))
    with pytest.raises(KeyboardInterrupt):
        transport.write(b"x" * (256 * 1024))
    transport.abort()
    run(loop, protocol.done)
