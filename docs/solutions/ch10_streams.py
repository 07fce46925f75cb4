"""Solutions to the exercises of chapter 10, "Streams on top" (docs/tour.md).

Exercise 10.1: :func:`lines_from_chunks` -- a StreamReader fed by hand: a buffer and a future.
Exercise 10.2: :func:`drain_stalls` -- ``drain()`` stops a writer whose peer does not read.
Exercise 10.3: :func:`peak_buffer` -- the write buffer passes the high-water mark by up to one
    write.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any


async def lines_from_chunks(chunks: list[bytes]) -> list[bytes]:
    """Exercise 10.1: feed ``chunks`` to a StreamReader, one per iteration, and read lines.

    No socket and no transport: ``feed_data`` is what ``data_received`` of
    ``StreamReaderProtocol`` would call.  It appends to the reader's buffer and
    completes the future a waiting ``readline`` sleeps on; ``feed_eof`` ends
    the iteration.  Lines split across chunks come out whole.
    """
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()

    def feed(i: int) -> None:
        if i == len(chunks):
            reader.feed_eof()
            return
        reader.feed_data(chunks[i])
        loop.call_soon(feed, i + 1)

    loop.call_soon(feed, 0)
    return [line async for line in reader]


async def drain_stalls(sock: socket.socket, peer: socket.socket, chunk: int, total: int) -> Any:
    """Exercise 10.2: a writer writes ``chunk`` bytes and awaits ``drain()``, ``total`` times.

    ``peer`` (non-blocking) reads nothing at first.  Once the kernel's socket
    buffers are full, the transport's buffer grows past its high-water mark,
    it calls ``pause_writing()`` and ``drain()`` waits.  Returns
    ``(chunks written when stalled, the same after 50 more iterations, bytes
    buffered in the transport then, bytes the peer read in the end)``.
    """
    loop = asyncio.get_running_loop()
    _reader, writer = await asyncio.open_connection(sock=sock)
    written = 0

    async def write_all() -> None:
        nonlocal written
        for _ in range(total):
            writer.write(b"x" * chunk)
            written += 1
            await writer.drain()

    writing = asyncio.create_task(write_all())
    for _ in range(50):
        await asyncio.sleep(0)
    stalled_at = written
    for _ in range(50):
        await asyncio.sleep(0)
    still = written
    buffered = writer.transport.get_write_buffer_size()
    received = 0
    while received < chunk * total:
        received += len(await loop.sock_recv(peer, 1 << 16))
    await writing
    writer.close()
    await writer.wait_closed()
    return stalled_at, still, buffered, received


async def peak_buffer(sock: socket.socket, peer: socket.socket, chunk: int, high: int) -> Any:
    """Exercise 10.3: how far past the high-water mark a writer's buffer goes.

    The writer writes ``chunk`` bytes and awaits ``drain()`` until a
    ``drain()`` waits (``peer`` reads nothing).  ``transport.write`` never
    refuses bytes: it appends the whole chunk, and only then compares the
    buffer with the mark and calls ``pause_writing()``.  So the buffer ends
    above ``high`` by less than one chunk.  Returns ``(buffer size when drain
    waited, bytes the peer read in the end)``.
    """
    loop = asyncio.get_running_loop()
    _reader, writer = await asyncio.open_connection(sock=sock)
    writer.transport.set_write_buffer_limits(high=high)
    written = 0
    while True:
        writer.write(b"x" * chunk)
        written += chunk
        draining = asyncio.ensure_future(writer.drain())
        for _ in range(5):
            await asyncio.sleep(0)
        if not draining.done():
            break
    peak = writer.transport.get_write_buffer_size()
    received = 0
    while received < written:
        received += len(await loop.sock_recv(peer, 1 << 16))
    await draining
    writer.close()
    await writer.wait_closed()
    return peak, received
