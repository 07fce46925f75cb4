"""What a user sees around the results: logs, debug mode, error reports, as asyncio shows them.

Each case runs on asyncio's loop and on loopy's in both task modes and
compares what a user can see: the log records (logger name, level,
message), the keys of the exception handler's context, the exceptions
raised.  Where asyncio changed between versions, the expectation is the
running Python's asyncio, found by running the case on asyncio's loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from tests.helpers import ALL_KINDS, make_loop


class Records(logging.Handler):
    """Collects what the ``asyncio`` and ``loopy`` loggers emit, while in a ``with``."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> Records:
        for name in LOGGERS:
            logging.getLogger(name).addHandler(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for name in LOGGERS:
            logging.getLogger(name).removeHandler(self)

    def seen(self) -> list[tuple[str, str, str, str | None]]:
        """(logger, level, message, exception type) of each record, addresses masked."""
        return [
            (
                r.name,
                r.levelname,
                mask(r.getMessage()),
                r.exc_info[0].__name__ if r.exc_info and r.exc_info[0] else None,
            )
            for r in self.records
        ]


LOGGERS = ("asyncio", "loopy")


def mask(text: str) -> str:
    """``text`` without what differs from run to run (addresses) or between loops.

    In debug mode a future remembers where it was made: for one made by
    ``loop.create_future()``, asyncio's Future names the loop's own line
    last (asyncio's or loopy's), loopy's Future the caller's line (it skips
    loopy's frames).  That last frame is left out.
    """
    text = re.sub(r"0x[0-9a-f]+", "0x…", text)
    # A task's wake-up method, in the callbacks of the future it waits for:
    # asyncio's C Task calls it task_wakeup, loopy's Task _wakeup.
    text = text.replace("cb=[Task._wakeup()]", "cb=[Task.task_wakeup()]")
    loop_code = r"[^\s\"]*(?:asyncio/base_events|loopy/loop)\.py"
    text = re.sub(r"(<Future [^<>]*) created at [^>]*>", r"\1 created at …>", text)
    text = re.sub(rf'\n  File "{loop_code}", line \d+, in create_future\n[^\n]*', "", text)
    return _innermost_frames(text)


def _innermost_frames(text: str, keep: int = 3) -> str:
    """Each stack in ``text`` cut to its ``keep`` innermost frames.

    asyncio records at most 10 frames and then drops its own (8 or 9
    remain), loopy skips its own and records 10: the frames near the call
    are the same, the outermost ones may differ in number.
    """
    out: list[str] = []
    frames: list[str] = []
    for line in text.split("\n"):
        if line.startswith("  File "):
            frames.append(line)
        elif line.startswith("    ") and frames:
            frames[-1] += "\n" + line
        else:
            out += frames[-keep:]
            frames = []
            out.append(line)
    out += frames[-keep:]
    return "\n".join(out)


def run_briefly(loop: Any, iterations: int = 3) -> None:
    async def settle() -> None:
        for _ in range(iterations):
            await asyncio.sleep(0)

    loop.run_until_complete(settle())


def on_every_loop(case: Callable[[Any], Any], *, virtual: bool = False) -> dict[str, Any]:
    """Run ``case(loop)`` on a new loop of every kind; what each returned, by kind."""
    results = {}
    for kind in ALL_KINDS:
        loop = make_loop(kind, virtual=virtual)
        try:
            results[kind] = case(loop)
        finally:
            loop.close()
            asyncio.set_event_loop(None)
    return results


def assert_all_alike(results: dict[str, Any]) -> Any:
    """Every loop returned what asyncio's did; return that."""
    reference = results["asyncio"]
    for kind, result in results.items():
        assert result == reference, f"{kind} differs from asyncio:\n{result}\n{reference}"
    return reference


# ----------------------------------------------------------------------
# 7. "Task exception was never retrieved", in both task modes
# ----------------------------------------------------------------------


async def _forever() -> None:
    await asyncio.sleep(3600)


async def _fail_at_once() -> None:
    raise ValueError("nobody looks")


def _never_retrieved_reports(loop: Any, issue_program: bool) -> list[str]:
    """Run a program that drops a failed task; the reports once garbage is collected."""
    reports: list[str] = []
    loop.set_exception_handler(lambda _loop, context: reports.append(context["message"]))
    kept: list[Any] = []

    async def gather_it(task: Any) -> None:
        try:
            await asyncio.gather(task)
        except asyncio.CancelledError:
            pass

    def start() -> None:
        # A task cancelled before its first step, which the program keeps.
        cancelled = loop.create_task(_forever())
        cancelled.cancel()
        kept.append(cancelled)
        if issue_program:
            # The program of the issue: a later task awaits gather() of it,
            # and a callback then makes the task that fails.
            loop.create_task(gather_it(cancelled))
            loop.call_soon(lambda: loop.create_task(_fail_at_once()) and None)
        else:
            # Its first step, in the same iteration as the cancelled one's.
            loop.create_task(_fail_at_once())

    loop.call_soon(start)
    # Settle without a task of our own, whose steps would come last in the
    # iterations (the virtual clock makes the wait instant).
    loop.call_later(1, loop.stop)
    loop.run_forever()
    gc.collect()
    return reports


@pytest.mark.parametrize("issue_program", [True, False])
def test_a_dropped_failed_task_is_reported_when_collected(issue_program: bool) -> None:
    # The cancelled task's saved CancelledError holds a traceback through the
    # loop's iteration frame; that frame used to keep the last handle it ran,
    # the failing task's step, and with it the task: never collected, never
    # reported, in loopy's own task mode (on 3.13, in both).
    reports = on_every_loop(
        lambda loop: _never_retrieved_reports(loop, issue_program), virtual=True
    )
    assert assert_all_alike(reports) == ["Task exception was never retrieved"]


# ----------------------------------------------------------------------
# 1, 3, 4. Error reports: on asyncio's logger, with asyncio's context and format
# ----------------------------------------------------------------------


def _broken(*args: object) -> None:
    raise ValueError("broken callback")


async def _fail_later() -> None:
    await asyncio.sleep(0)
    raise ValueError("failed task")


async def _wait_for_nothing(loop: Any) -> None:
    # It waits for a future only it holds: collected with it, still pending.
    await loop.create_future()


def _make_every_error(loop: Any) -> None:
    """A failing callback and timer, a failed future and task dropped, a pending task forgotten."""
    loop.call_soon(_broken, "argument")
    loop.call_later(0.001, _broken)
    future = loop.create_future()
    future.set_exception(ValueError("failed future"))
    del future
    loop.create_task(_fail_later(), name="dropped")
    loop.create_task(_wait_for_nothing(loop), name="forgotten")
    loop.run_until_complete(asyncio.sleep(0.01))
    gc.collect()


def _report_errors(loop: Any, debug: bool) -> list[tuple[str, str, str, str | None]]:
    """Errors of every kind the loop reports, through the default handler; the log."""
    loop.set_debug(debug)
    with Records() as records:
        _make_every_error(loop)
        loop.call_exception_handler({"message": "plain", "extra": 1})
        loop.call_exception_handler({})
    return records.seen()


@pytest.mark.parametrize("debug", [False, True])
def test_errors_are_logged_as_asyncio_logs_them(debug: bool) -> None:
    log = assert_all_alike(on_every_loop(lambda loop: _report_errors(loop, debug), virtual=True))
    assert {name for name, *_ in log} == {"asyncio"}
    messages = [message.splitlines()[0] for _, _, message, _ in log]
    where = f"at {__file__}:{_broken.__code__.co_firstlineno}"
    argument = "'argument'" if debug or not ARGS_HIDDEN else ""
    assert messages == [
        "Future exception was never retrieved",
        f"Exception in callback _broken({argument}) {where}",
        "Task exception was never retrieved",
        f"Exception in callback _broken() {where}",
        "Task was destroyed but it is pending!",
        "plain",
        "Unhandled exception in event loop",
    ]
    if debug:
        # Where each object was made, as a stack (and not also as a list).
        with_stacks = [m for _, _, m, _ in log if "Object created at" in m]
        assert len(with_stacks) == 5
        assert all("FrameSummary" not in m for _, _, m, _ in log)


def _handler_contexts(loop: Any, debug: bool) -> list[tuple[str, list[str]]]:
    """The keys of the context the exception handler gets, for each kind of error."""
    loop.set_debug(debug)
    contexts: list[tuple[str, list[str]]] = []
    loop.set_exception_handler(
        lambda _loop, context: contexts.append((context["message"][:20], sorted(context)))
    )
    _make_every_error(loop)
    return contexts


@pytest.mark.parametrize("debug", [False, True])
def test_the_handler_gets_asyncio_s_context(debug: bool) -> None:
    contexts = assert_all_alike(
        on_every_loop(lambda loop: _handler_contexts(loop, debug), virtual=True)
    )
    origin = ["source_traceback"] if debug else []
    assert contexts == [
        ("Future exception was", sorted(["exception", "future", "message", *origin])),
        ("Exception in callbac", sorted(["exception", "handle", "message", *origin])),
        ("Task exception was n", sorted(["exception", "future", "message", *origin])),
        ("Exception in callbac", sorted(["exception", "handle", "message", *origin])),
        ("Task was destroyed b", sorted(["message", "task", *origin])),
    ]


def test_a_report_made_inside_a_callback_says_where_it_was_scheduled() -> None:
    def report(loop: Any) -> list[tuple[str, str, str, str | None]]:
        loop.set_debug(True)
        with Records() as records:
            loop.call_soon(loop.call_exception_handler, {"message": "from a callback"})
            loop.run_until_complete(asyncio.sleep(0))
        return records.seen()

    [(_, _, message, _)] = assert_all_alike(on_every_loop(report))
    assert message.startswith("from a callback\nhandle_traceback: Handle created at")


# ----------------------------------------------------------------------
# 2. Debug mode's slow callbacks name the task
# ----------------------------------------------------------------------


async def _blocking_step(clock: Any) -> None:
    clock.advance(0.3)  # as if it blocked the loop for 0.3 s
    await asyncio.sleep(1)


def _slow_callback(seconds: float) -> None:
    _clock_of_the_test[0].advance(seconds)


_clock_of_the_test: list[Any] = []


def _slow_things(loop: Any) -> list[tuple[str, str, str, str | None]]:
    loop.set_debug(True)
    _clock_of_the_test[:] = [loop.virtual_clock]
    with Records() as records:
        loop.call_soon(_slow_callback, 0.25)
        loop.create_task(_blocking_step(loop.virtual_clock), name="blocker")
        loop.call_later(2, loop.stop)
        loop.run_forever()
    return records.seen()


def test_slow_callbacks_and_task_steps_are_named_as_asyncio_names_them() -> None:
    logs = on_every_loop(_slow_things, virtual=True)
    # asyncio's C Task shows the same repr on asyncio's loop and on loopy's.
    reference = assert_all_alike({kind: logs[kind] for kind in ("asyncio", "loopy")})
    callback, step = reference
    where = f"{__file__}:{_slow_callback.__code__.co_firstlineno}"
    assert callback[:2] == ("asyncio", "WARNING")
    assert re.fullmatch(
        rf"Executing <Handle _slow_callback\(0\.25\) at {where} created at {__file__}:\d+> "
        r"took 0\.250 seconds",
        callback[2],
    )
    assert step[2].startswith(
        "Executing <Task pending name='blocker' coro=<_blocking_step() running at "
    )
    # loopy's own Task gives the same information, in its own repr.
    own_callback, own_step = logs["loopy-own"]
    assert own_callback == callback
    assert own_step[:2] == ("asyncio", "WARNING")
    head = re.match(r"Executing <Task pending name='blocker' coro=<[^>]*>", step[2])
    assert head is not None
    assert own_step[2].startswith(head.group())
    assert own_step[2].endswith("took 0.300 seconds")
    assert re.search(rf"created at {__file__}:\d+> took", own_step[2])


# ----------------------------------------------------------------------
# Python 3.12: the exception handler runs in the failing task's or handle's context
# ----------------------------------------------------------------------

_name: contextvars.ContextVar[str] = contextvars.ContextVar("name", default="outside")

#: Python 3.12 made asyncio call the handler in the failing object's context.
HANDLER_IN_CONTEXT = sys.version_info >= (3, 12)
#: Python 3.13 shows a callback's arguments only in debug mode.
ARGS_HIDDEN = sys.version_info >= (3, 13)


def _set_and_fail() -> None:
    _name.set("inside")
    raise ValueError("callback")


async def _set_and_fail_task() -> None:
    _name.set("inside")
    raise ValueError("task")


def _seen_by_handler(loop: Any) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    loop.set_exception_handler(
        lambda _loop, context: seen.append((context["message"][:20], _name.get()))
    )

    async def main() -> None:
        loop.call_soon(_set_and_fail)
        loop.create_task(_set_and_fail_task())  # dropped: reported when it fails
        for _ in range(3):
            await asyncio.sleep(0)

    loop.run_until_complete(main())
    gc.collect()
    return seen


def test_the_exception_handler_runs_in_the_failing_context_from_3_12() -> None:
    seen = assert_all_alike(on_every_loop(_seen_by_handler))
    expected = "inside" if HANDLER_IN_CONTEXT else "outside"
    assert seen == [
        ("Exception in callbac", expected),
        ("Task exception was n", expected),
    ]


# ----------------------------------------------------------------------
# 6. Callbacks refused exactly where asyncio refuses them
# ----------------------------------------------------------------------


async def _coroutine_function() -> None:
    pass


def _plain_function() -> None:
    pass


#: Every loop method that takes a callback, called with ``callback``.
CALLBACK_METHODS: dict[str, Callable[[Any, Any, Any], Any]] = {
    "call_soon": lambda loop, cb, fd: loop.call_soon(cb),
    "call_later": lambda loop, cb, fd: loop.call_later(60, cb),
    "call_at": lambda loop, cb, fd: loop.call_at(loop.time() + 60, cb),
    "call_soon_threadsafe": lambda loop, cb, fd: loop.call_soon_threadsafe(cb),
    "run_in_executor": lambda loop, cb, fd: loop.run_in_executor(None, cb),
    "add_reader": lambda loop, cb, fd: loop.add_reader(fd, cb),
    "add_writer": lambda loop, cb, fd: loop.add_writer(fd, cb),
    "add_signal_handler": lambda loop, cb, fd: loop.add_signal_handler(signal.SIGUSR1, cb),
    "set_exception_handler": lambda loop, cb, fd: loop.set_exception_handler(cb),
    "set_task_factory": lambda loop, cb, fd: loop.set_task_factory(cb),
}

#: What each method is given: the name, and a maker of a new one.
CALLBACKS: dict[str, Callable[[], Any]] = {
    "coroutine function": lambda: _coroutine_function,
    "coroutine": _coroutine_function,
    "not callable": lambda: 42,
    "function": lambda: _plain_function,
}


def _what_each_method_does(loop: Any) -> dict[tuple[str, str, bool], str]:
    """For each method, callback and debug mode: "accepted", or the error raised."""
    outcomes = {}
    reader, writer = socket.socketpair()
    try:
        for debug in (False, True):
            loop.set_debug(debug)
            for method, call in CALLBACK_METHODS.items():
                for what, make in CALLBACKS.items():
                    callback = make()
                    fd = reader if method == "add_reader" else writer
                    try:
                        result = call(loop, callback, fd)
                    except (TypeError, ValueError, RuntimeError) as exc:
                        outcome = mask(f"{type(exc).__name__}: {exc}")
                    else:
                        outcome = "accepted"
                        _undo(loop, method, result, fd)
                    finally:
                        if asyncio.iscoroutine(callback):
                            callback.close()
                    outcomes[method, what, debug] = outcome
    finally:
        reader.close()
        writer.close()
    return outcomes


def _undo(loop: Any, method: str, result: Any, fd: socket.socket) -> None:
    if isinstance(result, asyncio.Handle):
        result.cancel()
    elif method == "run_in_executor":
        # The thread calls it: its outcome (a coroutine, or a TypeError) is not our business.
        outcome = loop.run_until_complete(asyncio.gather(result, return_exceptions=True))
        for each in outcome:
            if asyncio.iscoroutine(each):
                each.close()
    elif method == "add_reader":
        loop.remove_reader(fd)
    elif method == "add_writer":
        loop.remove_writer(fd)
    elif method == "add_signal_handler":
        loop.remove_signal_handler(signal.SIGUSR1)
    elif method == "set_exception_handler":
        loop.set_exception_handler(None)
    elif method == "set_task_factory":
        loop.set_task_factory(None)


def test_callbacks_are_refused_exactly_where_asyncio_refuses_them() -> None:
    outcomes = assert_all_alike(on_every_loop(_what_each_method_does))
    refused = {key for key, outcome in outcomes.items() if outcome != "accepted"}
    always = {("add_signal_handler", "coroutine function", d) for d in (False, True)} | {
        ("add_signal_handler", "coroutine", d) for d in (False, True)
    }
    checked_in_debug = {
        "call_soon",
        "call_later",
        "call_at",
        "call_soon_threadsafe",
        "run_in_executor",
    }
    in_debug = {
        (method, what, True)
        for method in checked_in_debug
        for what in ("coroutine function", "coroutine", "not callable")
    }
    callables_only = {  # (a coroutine is no callable)
        (method, what, debug)
        for method in ("set_exception_handler", "set_task_factory")
        for what in ("coroutine", "not callable")
        for debug in (False, True)
    }
    assert refused == always | in_debug | callables_only
    assert outcomes["add_signal_handler", "coroutine function", False] == (
        "TypeError: coroutines cannot be used with add_signal_handler()"
    )


# ----------------------------------------------------------------------
# 5. Transports: asyncio's interface, method for method
# ----------------------------------------------------------------------

_ABSTRACT = (
    asyncio.BaseTransport,
    asyncio.ReadTransport,
    asyncio.WriteTransport,
    asyncio.Transport,
    asyncio.DatagramTransport,
    asyncio.SubprocessTransport,
)


def interface(transport: Any) -> dict[str, str]:
    """Each public method of ``transport``: "works", or "NotImplementedError".

    A method that only asyncio's abstract base classes define, and that
    raises NotImplementedError there, does not work; anything else does.
    Also which of asyncio's transport classes it is an instance of.
    """
    described = {}
    for name in dir(transport):
        if name.startswith("_") or not callable(getattr(transport, name)):
            continue
        owner = next(cls for cls in type(transport).__mro__ if name in vars(cls))
        function = vars(owner)[name]
        abstract = owner in _ABSTRACT and "NotImplementedError" in function.__code__.co_names
        described[name] = "NotImplementedError" if abstract else "works"
    for cls in _ABSTRACT:
        described[f"isinstance {cls.__name__}"] = str(isinstance(transport, cls))
    return described


async def _every_transport(loop: Any) -> dict[str, Any]:
    """One transport of each kind the loop makes, by kind (all open)."""
    server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
    stream, _ = await loop.create_connection(asyncio.Protocol, *server.sockets[0].getsockname())
    datagram, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
    )
    read_end, write_end = os.pipe()
    read_pipe, _ = await loop.connect_read_pipe(asyncio.Protocol, os.fdopen(read_end, "rb", 0))
    write_pipe, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(write_end, "wb", 0))
    process, _ = await loop.subprocess_exec(
        _Exits,
        sys.executable,
        "-c",
        "import sys; sys.stdin.read()",
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    server.close()
    return {
        "stream": stream,
        "datagram": datagram,
        "read pipe": read_pipe,
        "write pipe": write_pipe,
        "subprocess": process,
        "subprocess stdin": process.get_pipe_transport(0),
    }


class _Exits(asyncio.SubprocessProtocol):
    def __init__(self) -> None:
        self.exited = asyncio.get_running_loop().create_future()

    def process_exited(self) -> None:
        self.exited.set_result(None)


async def _close_all(transports: dict[str, Any]) -> None:
    process = transports.pop("subprocess")
    for transport in transports.values():
        transport.close()
    await process.get_protocol().exited  # the child ends once its stdin is closed
    process.close()
    await asyncio.sleep(0)


def _interfaces(loop: Any) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        transports = await _every_transport(loop)
        try:
            seen: dict[str, Any] = {kind: interface(t) for kind, t in transports.items()}
            # What the reading methods do on each, called as a library would.
            for kind, transport in transports.items():
                if kind == "subprocess":
                    continue
                calls = []
                for method in READING_METHODS:
                    try:
                        calls.append(repr(getattr(transport, method)()))
                    except NotImplementedError:
                        calls.append("NotImplementedError")
                seen[kind]["reading, paused, resumed"] = calls
            return seen
        finally:
            await _close_all(transports)

    result: dict[str, Any] = loop.run_until_complete(asyncio.wait_for(main(), 10))
    return result


#: Called in this order on each transport: pausing or resuming twice is harmless.
READING_METHODS = (
    "is_reading",
    "pause_reading",
    "pause_reading",
    "is_reading",
    "resume_reading",
    "resume_reading",
    "is_reading",
)


def test_every_transport_has_asyncio_s_interface() -> None:
    seen = on_every_loop(_interfaces)
    if sys.version_info < (3, 12):
        # 3.11's datagram transport is not an asyncio.DatagramTransport
        # (3.12 made it one); loopy's is one on every version.
        assert seen["asyncio"]["datagram"]["isinstance DatagramTransport"] == "False"
        seen["asyncio"]["datagram"]["isinstance DatagramTransport"] = "True"
    for kind in seen["asyncio"]:
        assert_all_alike({loop: interfaces[kind] for loop, interfaces in seen.items()})
    # What the issue was about: a write pipe is a full Transport whose
    # reading methods raise NotImplementedError, as asyncio's does.
    for kind in ("write pipe", "subprocess stdin"):
        assert seen["loopy"][kind]["isinstance Transport"] == "True"
        assert seen["loopy"][kind]["reading, paused, resumed"] == ["NotImplementedError"] * 7
    assert seen["loopy"]["datagram"]["reading, paused, resumed"] == [
        "True",
        "None",
        "None",
        "False",
        "None",
        "None",
        "True",
    ]
