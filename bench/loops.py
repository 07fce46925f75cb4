"""The event loops under test, created by name.

===================  ====================================================
name                 loop
===================  ====================================================
``asyncio``          ``asyncio.new_event_loop()`` (the SelectorEventLoop)
``uvloop``           ``uvloop.new_event_loop()``
``loopy``            ``loopy.new_event_loop(tasks="asyncio")``: asyncio's
                     C Future and Task
``loopy-own``        ``loopy.new_event_loop(tasks="loopy")``: loopy's own
                     pure-Python Future and Task
``loopy+instrument`` ``loopy`` with a do-nothing instrument attached, which
                     switches it to its observed path
``loopy+monitor``    ``loopy`` made watchable (``LOOPY_MONITOR=1``: its
                     monitor thread listening, nobody attached)
``loopy+flight``     ``loopy`` with its flight recorder on (10 s window)
===================  ====================================================
"""

from __future__ import annotations

import asyncio

LOOPS = ("asyncio", "uvloop", "loopy", "loopy-own")
INSTRUMENTED = "loopy+instrument"
MONITORED = "loopy+monitor"
FLIGHT = "loopy+flight"
VARIANTS = (*LOOPS, INSTRUMENTED, MONITORED, FLIGHT)


class NullInstrument:
    """An instrument that defines no hooks: attaching it only costs the observed path."""


def new_loop(name: str) -> asyncio.AbstractEventLoop:
    """A new event loop of kind ``name`` (one of :data:`VARIANTS`)."""
    if name == "asyncio":
        return asyncio.new_event_loop()
    if name == "uvloop":
        import uvloop  # noqa: PLC0415 (optional, and only in its own server)

        return uvloop.new_event_loop()
    if name in ("loopy", "loopy-own", INSTRUMENTED, MONITORED, FLIGHT):
        import loopy  # noqa: PLC0415 (imported only by the processes that run it)

        loop = loopy.new_event_loop(tasks="loopy" if name == "loopy-own" else "asyncio")
        if name == INSTRUMENTED:
            loop.add_instrument(NullInstrument())
        if name == MONITORED:
            from loopy.monitor import watch  # noqa: PLC0415

            watch(loop)
        if name == FLIGHT:
            loop.start_flight_recorder(10.0)
        return loop
    raise ValueError(f"unknown loop {name!r}; choose from {', '.join(VARIANTS)}")


def unavailable(name: str) -> str | None:
    """Why loop ``name`` cannot run here, or None if it can."""
    if name not in VARIANTS:
        return f"unknown loop {name!r}"
    if name == "uvloop":
        try:
            import uvloop  # noqa: F401, PLC0415
        except ImportError as exc:
            return f"uvloop is not installed ({exc})"
    return None
