"""Solutions to the exercises of chapter 12, "Servers" (docs/tour.md).

Exercise 12.1: :class:`Limiter` -- a server that serves at most N connections at a time.
Exercise 12.2: :func:`close_then_wait` -- ``Server.wait_closed`` waits for the
               connections, not only for the listening socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

BUSY = b"busy, try again later\n"


class Limiter:
    """Exercise 12.1: a protocol factory serving at most ``limit`` connections at a time.

    ``create_server(Limiter(factory, 2), ...)``: while ``limit`` connections
    are open, a new one is told :data:`BUSY` and closed.  The accepted
    socket is already a transport by the time the factory runs
    (``Server._on_acceptable`` makes both at once), so the gate sits in
    ``connection_made``; the count goes down in ``connection_lost``, which
    the transport calls exactly once.
    """

    def __init__(self, factory: Callable[[], asyncio.Protocol], limit: int) -> None:
        self.factory = factory
        self.limit = limit
        self.active = 0
        self.refused = 0

    def __call__(self) -> asyncio.Protocol:
        return _Gate(self)


class _Gate(asyncio.Protocol):
    """The protocol of one connection: lets it through to the real protocol, or not."""

    def __init__(self, limiter: Limiter) -> None:
        self._limiter = limiter
        self._inner: asyncio.Protocol | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        limiter = self._limiter
        if limiter.active >= limiter.limit:
            limiter.refused += 1
            assert isinstance(transport, asyncio.Transport)
            transport.write(BUSY)
            transport.close()  # flushes BUSY first
            return
        limiter.active += 1
        self._inner = limiter.factory()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is not None:
            self._limiter.active -= 1
            self._inner.connection_lost(exc)


async def close_then_wait(server: Any, client: asyncio.StreamWriter) -> list[str]:
    """Exercise 12.2: close ``server`` while ``client`` is still connected; what waits for what?

    On loopy, ``wait_closed()`` returns only once the server's last
    connection is gone: ``["close() returned", "client closed",
    "wait_closed() returned"]``.  asyncio 3.11's returns at once, since the
    listening socket is already closed (3.12.1 changed it to loopy's order).
    """
    events: list[str] = []
    server.close()
    events.append("close() returned")

    async def wait() -> None:
        await server.wait_closed()
        events.append("wait_closed() returned")

    waiting = asyncio.create_task(wait())
    for _ in range(5):
        await asyncio.sleep(0)
    client.close()
    await client.wait_closed()
    events.append("client closed")
    await waiting
    return events
