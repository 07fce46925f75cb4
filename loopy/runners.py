"""Running asyncio programs on loopy: :func:`run`, :func:`install` and :class:`EventLoopPolicy`.

Three ways to put an asyncio program on loopy, from the most explicit:

* ``asyncio.Runner(loop_factory=loopy.new_event_loop)`` -- the standard
  runner, with a loopy loop;
* ``loopy.run(main())`` -- the same, in one call, like ``asyncio.run``;
* ``loopy.install()`` -- makes loopy asyncio's default, so that code you do
  not control (``asyncio.run``, ``asyncio.new_event_loop``) gets loopy loops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from .loop import Loop, new_event_loop

_T = TypeVar("_T")


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """asyncio's default policy, except that its new loops are loopy loops."""

    def _loop_factory(self) -> Loop:
        # asyncio's policy creates every loop through this one method.
        return new_event_loop()


def install() -> None:
    """Make loopy asyncio's default loop for this process (``asyncio.run`` included)."""
    asyncio.set_event_loop_policy(EventLoopPolicy())


def run(
    main: Coroutine[Any, Any, _T],
    *,
    debug: bool | None = None,
    tasks: str | None = None,
    monitor: bool = False,
    flight_recorder: float | None = None,
    dump_on_stall: float | None = None,
) -> _T:
    """Run ``main`` on a new loopy loop and close it, like :func:`asyncio.run`.

    ``tasks`` picks the task mode (see :func:`loopy.new_event_loop`).
    ``monitor=True`` lets ``loopy top`` watch the loop (as ``LOOPY_MONITOR=1`` does).
    ``flight_recorder`` keeps that many seconds of the loop's events in
    memory and ``dump_on_stall`` writes them out when a step holds the loop
    longer than that many seconds (10 s kept if only it is given; see
    :meth:`Loop.start_flight_recorder`).
    """

    def factory() -> Loop:
        loop = new_event_loop(tasks=tasks)
        if monitor:
            from .monitor import watch  # noqa: PLC0415 - the monitor's code, only when asked for

            watch(loop)
        if flight_recorder is not None or dump_on_stall is not None:
            seconds = flight_recorder if flight_recorder is not None else 10.0
            loop.start_flight_recorder(seconds, dump_on_stall=dump_on_stall)
        return loop

    with asyncio.Runner(debug=debug, loop_factory=factory) as runner:
        return runner.run(main)
