"""Solutions to the exercises of chapter 9, "Transports and protocols" (docs/tour.md).

Exercise 9.1: :class:`ByteCounter` -- a protocol that counts what it receives.
Exercise 9.2: :class:`FlowRecorder` and :func:`fill_then_drain` -- watch the
              write buffer's water marks pause and resume the writer.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any


class ByteCounter(asyncio.Protocol):
    """Exercise 9.1: counts bytes and ``data_received`` calls; ``totals`` resolves at the end.

    ``totals`` is a future of ``(bytes, calls)``, set in ``connection_lost``:
    the transport calls it exactly once, after EOF (``eof_received``
    returned a false value, so the transport closes itself) or an error.
    """

    def __init__(self, loop: Any) -> None:
        self.received = 0
        self.calls = 0
        self.totals: asyncio.Future[tuple[int, int]] = loop.create_future()

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        self.calls += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None:
            self.totals.set_result((self.received, self.calls))
        else:
            self.totals.set_exception(exc)


class FlowRecorder(asyncio.Protocol):
    """Exercise 9.2: records each ``pause_writing``/``resume_writing`` with the buffer size then."""

    def __init__(self) -> None:
        self.transport: asyncio.WriteTransport | None = None
        self.events: list[tuple[str, int]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        self.transport = transport

    def pause_writing(self) -> None:
        assert self.transport is not None
        self.events.append(("pause", self.transport.get_write_buffer_size()))

    def resume_writing(self) -> None:
        assert self.transport is not None
        self.events.append(("resume", self.transport.get_write_buffer_size()))


async def fill_then_drain(loop: Any, sock: socket.socket, peer: socket.socket, size: int) -> Any:
    """Exercise 9.2: write ``size`` bytes at once to a peer that is not reading, then read them all.

    ``sock`` gets a transport and a :class:`FlowRecorder`; ``peer`` (its other
    end, non-blocking) is read with ``sock_recv`` only after the write.
    Returns ``(events after the write, events at the end, bytes read)``.
    """
    transport, protocol = await loop.create_connection(FlowRecorder, sock=sock)
    transport.write(b"x" * size)  # the kernel takes what fits; the rest is buffered
    after_write = list(protocol.events)
    received = 0
    while received < size:
        received += len(await loop.sock_recv(peer, 1 << 16))
    transport.close()
    return after_write, list(protocol.events), received
