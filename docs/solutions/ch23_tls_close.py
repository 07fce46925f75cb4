"""Solutions to the exercises of chapter 23, "Edges: closing a TLS connection" (docs/tour.md).

Exercise 23.1: :func:`close_against_a_silent_peer` -- ``close()`` waits for the peer's
    close_notify, up to ``ssl_shutdown_timeout``; ``abort()`` does not wait.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from typing import Any


async def close_against_a_silent_peer(
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
    how: str,
    shutdown_timeout: float,
) -> dict[str, Any]:
    """Exercise 23.1: close (``how="close"``) or abort a TLS connection whose peer goes quiet.

    The peer, a thread with a blocking TLS socket, completes the handshake and
    then neither reads nor closes: the close_notify our ``close()`` sends is
    never answered.  ``close()`` makes ``SSLProtocol`` start its shutdown and
    a ``call_later(ssl_shutdown_timeout)`` timer; only that timer ends the
    connection.  ``abort()`` drops it at once.  Returns the loop's seconds
    from the call to ``connection_lost`` and what ``connection_lost`` got.
    """
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    release = threading.Event()

    def peer() -> None:
        # wrap_socket completes the handshake; then silence: this end never
        # reads, so it never sees (or answers) our close_notify.
        with server_context.wrap_socket(theirs, server_side=True):
            release.wait()

    lost = loop.create_future()

    class Client(asyncio.Protocol):
        def connection_lost(self, exc: Exception | None) -> None:
            lost.set_result(exc)

    thread = threading.Thread(target=peer)
    thread.start()
    try:
        transport, _ = await loop.create_connection(
            Client,
            sock=ours,
            ssl=client_context,
            server_hostname="localhost",
            ssl_shutdown_timeout=shutdown_timeout,
        )
        start = loop.time()
        if how == "close":
            transport.close()
        else:
            transport.abort()
        exc = await lost
        took = loop.time() - start
    finally:
        release.set()
        thread.join()
    return {"took": took, "connection_lost": type(exc).__name__ if exc else None}
