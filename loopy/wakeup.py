"""The wake-up socketpair: how another thread, or a signal, interrupts ``select()``.

While the loop waits in ``select()`` nothing in its own thread can run, so
anything outside that thread needs a way to make ``select()`` return.  The
classic answer (the "self-pipe trick") is a connected pair of sockets: the loop
watches the reading end like any other socket, and a writer only has to send
one byte to the other end.

Two kinds of writers share it:

* ``call_soon_threadsafe`` sends ``b"\\0"`` after queueing its callback;
* the C-level signal handler writes the signal's number, because the loop
  hands the writing end to :func:`signal.set_wakeup_fd` (see ``signals.py``).

No signal has the number 0, so the loop can tell the two apart when it drains
the socket.
"""

from __future__ import annotations

import socket


class Waker:
    """A socketpair the loop watches; :meth:`wake` makes its ``select()`` return."""

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)

    def fileno(self) -> int:
        """The reading end, for the loop's selector."""
        return self._reader.fileno()

    def write_fileno(self) -> int:
        """The writing end, for :func:`signal.set_wakeup_fd`."""
        return self._writer.fileno()

    def wake(self) -> None:
        """Make the loop's current or next ``select()`` return at once.

        Safe to call from any thread.  A full socket buffer means wake-ups are
        already pending, and a closed socket means the loop is gone: neither
        needs another byte, so both errors are ignored.
        """
        try:
            self._writer.send(b"\0")
        except OSError:
            pass

    def drain(self) -> bytes:
        """Read every pending byte, so the socket stops being readable."""
        chunks = []
        while True:
            try:
                data = self._reader.recv(4096)
            except (BlockingIOError, InterruptedError):
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)

    def close(self) -> None:
        """Close both ends of the socketpair (the loop stops watching the reading end first)."""
        self._reader.close()
        self._writer.close()
