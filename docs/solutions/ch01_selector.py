"""Solutions to the exercises of chapter 1, "Why a selector" (docs/tour.md).

Exercise 1.1: :func:`ready_sockets` -- ask once which of several sockets have data.
Exercise 1.2: :func:`echo_rounds` -- a toy event loop: one selector, no threads.
"""

from __future__ import annotations

import selectors
import socket


def ready_sockets(socks: list[socket.socket], timeout: float | None = 0) -> list[socket.socket]:
    """Exercise 1.1: the sockets of ``socks`` that are readable now, in the order given.

    One ``select()`` call answers for all of them.  Nothing is read: a
    socket that is not ready is never touched, so nothing can block.
    """
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            selector.register(sock, selectors.EVENT_READ)
        readable = {key.fileobj for key, _mask in selector.select(timeout)}
    return [sock for sock in socks if sock in readable]


def echo_rounds(socks: list[socket.socket], rounds: int, timeout: float | None = 0) -> int:
    """Exercise 1.2: echo whatever arrives on any of ``socks``, for ``rounds`` calls of select().

    The sockets must be non-blocking.  A socket whose peer closed (``recv``
    returns ``b""``) is forgotten.  Returns how many bytes were echoed.

    This is the seed toy's loop without the timer: wait for readiness, react
    quickly, wait again.  A real loop would also keep what ``send`` did not
    take and send it when the socket becomes writable (chapter 9).
    """
    echoed = 0
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            selector.register(sock, selectors.EVENT_READ)
        for _ in range(rounds):
            if not selector.get_map():
                break  # every peer is gone
            for key, _mask in selector.select(timeout):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                data = sock.recv(4096)  # cannot block: select() said it is readable
                if not data:
                    selector.unregister(sock)
                    continue
                echoed += sock.send(data)
    return echoed
