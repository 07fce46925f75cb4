"""Unix signals as loop callbacks: ``add_signal_handler`` and ``remove_signal_handler``.

A Python signal handler runs between two bytecodes of the main thread, at a
moment nobody chose: in the middle of a callback, or while the loop is blocked
in ``select()``.  Neither is a good place to run arbitrary code.  So the loop
runs a signal's callback as an ordinary callback instead:

1. ``signal.set_wakeup_fd`` makes the interpreter's C-level handler write the
   signal's number to the loop's wake-up socket (``wakeup.py``), which makes
   ``select()`` return;
2. the loop's reader for that socket reads the numbers and queues the
   callback registered for each one (:meth:`SignalMethods._deliver_signals`).

The Python-level handler installed with ``signal.signal`` does nothing: it
only has to exist so that the default action (for SIGINT, raising
``KeyboardInterrupt``) does not happen.

``set_wakeup_fd`` holds one descriptor per process.  The loop claims it when
it adds its first handler and gives it back when it removes its last one or
closes, and only if the descriptor is still its own, so that two loops in one
process do not undo each other.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVarTuple, Unpack

from .contract import LoopMixin
from .handles import Handle

if TYPE_CHECKING:
    pass

_Ts = TypeVarTuple("_Ts")


def _ignore_signal(signum: int, frame: object) -> None:
    """The Python-level handler: the wake-up fd does the real work."""


def _check_signal(sig: object) -> None:
    if not isinstance(sig, int):
        raise TypeError(f"sig must be an int, not {sig!r}")
    if sig not in signal.valid_signals():
        raise ValueError(f"sig {sig} out of range")


class SignalMethods(LoopMixin):
    """The signal part of the loop (a mixin of :class:`loopy.loop.Loop`).

    What it uses of the rest of the loop is in ``contract.py``.
    """

    def _setup_signals(self) -> None:
        """Part of ``Loop.__init__``: no handler yet."""
        # signal number -> the handle to queue when it arrives
        self._signal_handlers: dict[int, Handle] = {}
        # The wake-up fd that was set before we claimed it, to restore.
        self._previous_wakeup_fd: int | None = None

    def add_signal_handler(
        self, sig: int, callback: Callable[[Unpack[_Ts]], object], *args: *_Ts
    ) -> None:
        """Run ``callback(*args)`` in the loop each time signal ``sig`` arrives.

        Only from the main thread, as Python allows signal handlers only there.
        A coroutine function is refused, in debug mode or not, as asyncio
        refuses it: called from a signal it would only make a coroutine
        nobody awaits.
        """
        if asyncio.iscoroutine(callback) or asyncio.iscoroutinefunction(callback):
            raise TypeError("coroutines cannot be used with add_signal_handler()")
        _check_signal(sig)
        self._check_closed()
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("add_signal_handler() can only be called from the main thread")
        if not self._signal_handlers:
            self._claim_wakeup_fd()
        self._signal_handlers[sig] = Handle(callback, args, self)
        try:
            signal.signal(sig, _ignore_signal)
            # Let system calls interrupted by this signal restart, rather
            # than fail with EINTR in code that does not expect it.
            signal.siginterrupt(sig, False)
        except OSError as exc:
            del self._signal_handlers[sig]
            if not self._signal_handlers:
                self._release_wakeup_fd()
            raise RuntimeError(f"sig {sig} cannot be caught") from exc

    def remove_signal_handler(self, sig: int) -> bool:
        """Restore the default action of ``sig``; True if a handler was removed."""
        _check_signal(sig)
        if sig not in self._signal_handlers:
            return False
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("remove_signal_handler() can only be called from the main thread")
        handle = self._signal_handlers.pop(sig)
        handle.cancel()
        default = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        signal.signal(sig, default)
        if not self._signal_handlers:
            self._release_wakeup_fd()
        return True

    def _deliver_signals(self, data: bytes) -> None:
        """Queue the callbacks of the signals whose numbers the wake-up socket carried.

        Bytes of 0 come from ``call_soon_threadsafe``, and numbers with no
        handler from a signal some other code handles: both are ignored.
        """
        hooks = self._hooks
        for signum in data:
            handle = self._signal_handlers.get(signum)
            if handle is not None:
                self._ready.append(handle)
                if hooks is not None:
                    hooks.call("signal_received", self, signum)

    def _claim_wakeup_fd(self) -> None:
        previous = signal.set_wakeup_fd(self._waker.write_fileno(), warn_on_full_buffer=False)
        self._previous_wakeup_fd = previous if previous != -1 else None

    def _release_wakeup_fd(self) -> None:
        ours = self._waker.write_fileno()
        current = signal.set_wakeup_fd(-1)
        if current != ours:
            # Somebody else claimed it after us: leave theirs in place.
            signal.set_wakeup_fd(current)
        elif self._previous_wakeup_fd is not None:
            try:
                signal.set_wakeup_fd(self._previous_wakeup_fd)
            except (OSError, ValueError):
                pass  # its owner closed it meanwhile: nobody to give it back to
        self._previous_wakeup_fd = None

    def _close_signals(self) -> None:
        """Remove every handler the loop installed (part of ``Loop.close``)."""
        if threading.current_thread() is not threading.main_thread():
            self._signal_handlers.clear()
            return
        for sig in list(self._signal_handlers):
            self.remove_signal_handler(sig)
