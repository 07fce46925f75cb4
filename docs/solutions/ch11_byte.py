"""Solutions to the exercises of chapter 11, "The path of a byte" (docs/tour.md).

Exercise 11.1: :func:`trace_one_byte` -- record one byte's round trip through a
               streams echo, and list the callbacks that carried it.
Exercise 11.2: :func:`round_trip_iterations` -- how many iterations a round trip
               takes with streams, and with plain protocols.
"""

from __future__ import annotations

import asyncio
import socket

from loopy.trace import TraceRecorder


class _IterationCounter:
    """An instrument: counts the iterations of the loop it is attached to."""

    def __init__(self) -> None:
        self.iterations = 0

    def iteration_started(self, loop: object) -> None:
        self.iterations += 1


async def _stream_echo_pair() -> tuple[
    asyncio.StreamReader, asyncio.StreamWriter, asyncio.StreamWriter, asyncio.Task[None]
]:
    """A client's reader and writer, the server's writer, and the server's echo task.

    Both ends live on one loop, over a socketpair: a byte written on one
    end is readable on the other as soon as ``send`` returns.
    """
    server_sock, client_sock = socket.socketpair()
    server_reader, server_writer = await asyncio.open_connection(sock=server_sock)
    client_reader, client_writer = await asyncio.open_connection(sock=client_sock)

    async def echo() -> None:
        while data := await server_reader.read(100):
            server_writer.write(data)
            await server_writer.drain()
        server_writer.close()

    echo_task = asyncio.create_task(echo(), name="echo")
    await asyncio.sleep(0)  # the echo task starts and waits in read()
    return client_reader, client_writer, server_writer, echo_task


async def trace_one_byte() -> list[str]:
    """Exercise 11.1: ``"kind name"`` of each I/O callback and task step of one byte's round trip.

    Recording starts right before the client's ``write`` and ends when the
    client's ``read`` returned the byte.  On loopy the list reads:

    * ``io SocketTransport._read_data`` -- the server's socket was readable;
      ``data_received`` fed the server's StreamReader and woke its task;
    * ``task-step Task echo ...`` -- ``read()`` returned; the echo task wrote
      the byte back (``send`` straight away) and waits in ``read()`` again;
    * ``io SocketTransport._read_data`` -- the client's socket was readable;
    * ``task-step Task ...`` -- the client's ``read()`` returned: here.
    """
    loop = asyncio.get_running_loop()
    client_reader, client_writer, _server_writer, echo_task = await _stream_echo_pair()
    recorder = TraceRecorder()
    recorder.attach(loop)
    client_writer.write(b"!")
    assert await client_reader.read(1) == b"!"
    recorder.detach()
    client_writer.close()
    await echo_task
    await client_writer.wait_closed()
    return [
        f"{event.type} {event.name}"
        for event in recorder.events
        if event.type in ("io", "task-step")
    ]


async def round_trip_iterations() -> dict[str, int]:
    """Exercise 11.2: iterations from a client's write to its having the echo, two ways.

    Streams take 4: the server's read wakes a task, which writes back in the
    next iteration; the client's read wakes another task, one more.  Plain
    protocols take 3: the server's ``data_received`` writes back at once, and
    only the client's awaiting coroutine needs a step of its own.
    """
    loop = asyncio.get_running_loop()
    counts: dict[str, int] = {}

    client_reader, client_writer, _server_writer, echo_task = await _stream_echo_pair()
    counter = _IterationCounter()
    loop.add_instrument(counter)
    client_writer.write(b"!")
    await client_reader.read(1)
    loop.remove_instrument(counter)
    counts["streams"] = counter.iterations
    client_writer.close()
    await echo_task
    await client_writer.wait_closed()

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)

    class Client(asyncio.Protocol):
        def __init__(self) -> None:
            self.reply: asyncio.Future[bytes] = loop.create_future()

        def data_received(self, data: bytes) -> None:
            self.reply.set_result(data)

    server_sock, client_sock = socket.socketpair()
    server_transport, _ = await loop.connect_accepted_socket(Echo, server_sock)
    client_transport, client = await loop.create_connection(Client, sock=client_sock)
    counter = _IterationCounter()
    loop.add_instrument(counter)
    client_transport.write(b"!")
    await client.reply
    loop.remove_instrument(counter)
    counts["protocols"] = counter.iterations
    client_transport.close()
    server_transport.close()
    await asyncio.sleep(0)  # let both connection_lost callbacks run
    return counts
