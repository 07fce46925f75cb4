"""Solutions to the exercises of chapter 8, "Sockets as coroutines" (docs/tour.md).

Exercise 8.1: :func:`recv_exactly` -- exactly ``n`` bytes from ``sock_recv``.
Exercise 8.2: :func:`recv_or_none` -- ``sock_recv`` with a timeout, and no
              registration left behind.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any


async def recv_exactly(loop: Any, sock: socket.socket, n: int) -> bytes:
    """Exercise 8.1: receive exactly ``n`` bytes, however the peer splits them.

    ``sock_recv`` returns whatever one ``recv`` gave, as soon as there is
    something: a message sent in one piece may arrive in several.  An empty
    read means the peer closed: ``IncompleteReadError`` with what came.
    """
    chunks: list[bytes] = []
    missing = n
    while missing:
        chunk = await loop.sock_recv(sock, missing)
        if not chunk:
            raise asyncio.IncompleteReadError(b"".join(chunks), n)
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)


async def recv_or_none(loop: Any, sock: socket.socket, n: int, timeout: float) -> bytes | None:
    """Exercise 8.2: ``sock_recv``, or None if nothing came within ``timeout`` seconds.

    ``wait_for`` cancels the ``sock_recv`` when time is up, which cancels the
    future it awaits.  However its wait ends, ``sock_recv`` drops its reader
    one iteration later (``SocketMethods._remove_reader_if_ours``), unless a
    new ``sock_recv`` on the socket took it over: no reader stays registered
    for a coroutine that gave up.
    """
    try:
        return await asyncio.wait_for(loop.sock_recv(sock, n), timeout)
    except TimeoutError:
        return None
