"""The ``loopy`` command: parse the arguments, set up logging, run the program or a trace tool.

Grammar: ``loopy [COMMAND] [OPTIONS]``.  When the first argument is not a
known command, the command is ``run``, so ``loopy --port 0`` is
``loopy run --port 0``.  ``loopy run --trace FILE`` records a trace, and
``loopy trace view FILE`` / ``loopy trace summary FILE`` look at it.

A command is a name in :data:`COMMANDS` with a function that adds its
options to a parser and a function that runs it and returns the exit code.

Exit codes: 0 after a clean shutdown (Ctrl-C, SIGTERM or SIGHUP included),
1 when the program cannot listen or a trace cannot be read or its page
written (one line on stderr says why), 2 for a bad command line (argparse's
usage and error lines) and for a ``--trace`` file that could not be written:
that is checked before anything runs, not found out at exit.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from . import demo
from .loop import TASK_MODE_ENV, TASK_MODES, Loop, new_event_loop, resolve_task_mode
from .trace import format_summary, load_trace, render_viewer, summarize, trace_to_file
from .trace.fileformat import TraceFileError, check_writable
from .trace.flight import DEFAULT_SECONDS, DUMP_DIR_ENV
from .trace.viewer import page_path

LOG_FORMAT = "%(asctime)s %(levelname)s %(module)s %(threadName)s %(message)s"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

#: The bounds of ``--interval``, in seconds.  Below a millisecond the ticker
#: would be all the program does; above a day nobody is waiting for it; and
#: far beyond either (1e-310, 1e300) the arithmetic of deadlines overflows.
MIN_INTERVAL = 0.001
MAX_INTERVAL = 86400.0


class Command(NamedTuple):
    """A subcommand: its one-line help, how it adds its options, how it runs."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    name = args.pop(0) if args and args[0] in COMMANDS else "run"
    command = COMMANDS[name]
    parser = argparse.ArgumentParser(
        prog=f"loopy {'[run]' if name == 'run' else name}",
        description=command.help,
        epilog=_commands_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_arguments(parser)
    # The usage line shows the command; error lines just say "loopy: error: ...".
    parser.usage = parser.format_usage().removeprefix("usage: ").strip()
    parser.prog = "loopy"
    try:
        options = parser.parse_args(args)
    except SystemExit as exc:  # --help (0) or a bad command line (2)
        return exc.code if isinstance(exc.code, int) else 2
    return command.run(options)


def _commands_help() -> str:
    lines = ["commands (the first argument; `run` when it is none of these):"]
    lines += [f"  {name:10}{command.help}" for name, command in COMMANDS.items()]
    return "\n".join(lines)


# ----------------------------------------------------------------------
# loopy run
# ----------------------------------------------------------------------


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s)")
    parser.add_argument(
        "--port", type=_port, default=1234, help="TCP port, 0 for any free one (%(default)s)"
    )
    parser.add_argument(
        "--interval",
        type=_interval,
        default=1.0,
        help=f"seconds between two ticks, {MIN_INTERVAL:g} to {MAX_INTERVAL:g} (%(default)s)",
    )
    parser.add_argument(
        "--max-log-bytes",
        type=_non_negative_int,
        default=200,
        metavar="N",
        help="log at most N bytes of each read, 0 for all of it (%(default)s)",
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default="INFO",
        help="least severe level logged (%(default)s)",
    )
    parser.add_argument(
        "--tasks",
        choices=TASK_MODES,
        default=None,
        help=f"the loop's Future and Task classes (${TASK_MODE_ENV}, else asyncio)",
    )
    parser.add_argument(
        "--trace",
        metavar="FILE",
        default=None,
        help="record what the loop does into FILE (Chrome trace JSON), written at exit; "
        "checked for writing first",
    )
    parser.add_argument(
        "--monitor",
        action="store_true",
        help="let `loopy top` watch this process (as LOOPY_MONITOR=1 does)",
    )
    parser.add_argument(
        "--flight-recorder",
        metavar="S",
        type=_seconds,
        default=None,
        help="keep the last S seconds of the loop's events in memory ($LOOPY_FLIGHT_RECORDER)",
    )
    parser.add_argument(
        "--dump-on-stall",
        metavar="S",
        type=_seconds,
        default=None,
        help="write a trace of the last seconds when a step holds the loop over S seconds, "
        "into $LOOPY_DUMP_DIR or here ($LOOPY_DUMP_ON_STALL)",
    )


def _run(options: argparse.Namespace) -> int:
    try:
        tasks = resolve_task_mode(options.tasks)
    except ValueError as exc:  # a bad $LOOPY_TASKS (--tasks itself is checked by argparse)
        print(f"loopy: ${TASK_MODE_ENV}: {exc}", file=sys.stderr)
        return 2
    if options.trace:
        try:
            check_writable(options.trace)
        except OSError as exc:
            reason = _reason(exc)
            print(f"loopy: cannot write the trace to {options.trace}: {reason}", file=sys.stderr)
            return 2
    try:
        listener = demo.open_listener(options.host, options.port)
    except OSError as exc:
        host = f"[{options.host}]" if ":" in options.host else options.host
        print(f"loopy: cannot listen on {host}:{options.port}: {exc}", file=sys.stderr)
        return 1
    program = demo.Program(listener, interval=options.interval, max_log_bytes=options.max_log_bytes)
    loop = new_event_loop(tasks=tasks)
    if options.trace:
        # Written when the loop closes (below): on Ctrl-C, SIGTERM and errors too.
        trace_to_file(loop, options.trace)
    if options.flight_recorder is not None or options.dump_on_stall is not None:
        # (Over what the environment asked for, if anything.)
        loop.start_flight_recorder(
            options.flight_recorder or DEFAULT_SECONDS,
            dump_on_stall=options.dump_on_stall,
            dump_dir=os.environ.get(DUMP_DIR_ENV) or None,
        )
    try:
        with _logging_to_stderr(options.log_level):
            # (The recorder implies the monitor, as its variables do.)
            if options.monitor or loop.flight_recorder is not None:
                _watch(loop)
            loop.run_until_complete(program.run())
    except KeyboardInterrupt:
        # Ctrl-C before the program installed its SIGINT handler.
        return 0
    finally:
        listener.close()
        loop.close()
    return 0


@contextmanager
def _logging_to_stderr(level: str) -> Iterator[None]:
    """Log at ``level`` and above to stderr, in the program's format, for the duration.

    The handler goes on the root logger, so the loop's own error reports
    (logger ``loopy``) come out the same way; it is removed afterwards, so
    that calling :func:`main` twice (tests do) does not log everything twice.
    """
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(level)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535, not {port}")
    return port


def _interval(text: str) -> float:
    value = float(text)
    if not MIN_INTERVAL <= value <= MAX_INTERVAL:  # NaN fails too
        raise argparse.ArgumentTypeError(
            f"must be {MIN_INTERVAL:g} to {MAX_INTERVAL:g} seconds, not {text}"
        )
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value < math.inf:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, not {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


# ----------------------------------------------------------------------
# loopy trace view|summary FILE
# ----------------------------------------------------------------------


def _add_trace_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=("view", "summary", "dump"),
        help="view: write an HTML timeline next to FILE and print its path; "
        "summary: print the trace's figures as a table; "
        "dump: fetch a running process's flight-recorder window (`dump PID -o FILE`)",
    )
    parser.add_argument(
        "file",
        metavar="FILE|PID",
        help="a trace written by `loopy run --trace` (for dump: the process's PID)",
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        default=None,
        help="where `view` writes the page; where `dump` writes the trace (required)",
    )
    parser.add_argument(
        "--loop", type=int, metavar="N", default=None, help="dump: which loop (#N, as in top)"
    )


def _trace(options: argparse.Namespace) -> int:
    if options.action == "dump":
        return _dump(options)
    try:
        page = page_path(options.file, options.output) if options.action == "view" else None
        trace = load_trace(options.file)
    except TraceFileError as exc:  # not a loopy trace, or a damaged one: the message says which
        print(f"loopy: {options.file}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a missing file, a directory...
        print(f"loopy: cannot read trace {options.file}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # the page would overwrite the trace
        print(f"loopy: {exc}", file=sys.stderr)
        return 1
    if page is None:
        sys.stdout.write(format_summary(summarize(trace)))
        return 0
    text = render_viewer(trace, title=Path(options.file).name)
    try:
        page.write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"loopy: cannot write the page {page}: {_reason(exc)}", file=sys.stderr)
        return 1
    print(page)
    return 0


def _dump(options: argparse.Namespace) -> int:
    """``loopy trace dump PID -o FILE``: the recorder's window of a running process."""
    from .monitor.client import dump  # noqa: PLC0415 - the monitor's code, only when asked for

    try:
        pid = int(options.file)
    except ValueError:
        print(f"loopy: trace dump: PID must be a number, not {options.file!r}", file=sys.stderr)
        return 2
    if options.output is None:
        print("loopy: trace dump: -o FILE is required (where to write the trace)", file=sys.stderr)
        return 2
    return dump(pid, options.output, loop=options.loop, out=sys.stdout)


def _reason(exc: BaseException) -> str:
    """An error as one line: ``No such file or directory: '/x'`` rather than ``[Errno 2] ...``."""
    if isinstance(exc, OSError) and exc.strerror:
        where = exc.filename if exc.filename is not None else None
        return f"{exc.strerror}: {where!r}" if where is not None else exc.strerror
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


# ----------------------------------------------------------------------
# loopy ps, loopy top PID: watching a running program (monitor/)
# ----------------------------------------------------------------------


def _watch(loop: Loop) -> None:
    from .monitor import watch  # noqa: PLC0415 - the monitor's code, only when asked for

    watch(loop)


def _add_ps_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def _ps(options: argparse.Namespace) -> int:
    from .monitor.client import ps  # noqa: PLC0415

    return ps(sys.stdout)


def _add_top_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pid", type=int, metavar="PID", help="the process to watch")
    parser.add_argument(
        "--once", action="store_true", help="print one frame as plain text and exit"
    )
    parser.add_argument(
        "--loop", type=int, metavar="N", default=None, help="which loop (#N in the list: 0 first)"
    )


def _top(options: argparse.Namespace) -> int:
    from .monitor.client import top  # noqa: PLC0415

    return top(options.pid, once=options.once, loop=options.loop, out=sys.stdout)


COMMANDS: dict[str, Command] = {
    "run": Command(
        "tick every interval and log what TCP clients send, on one thread",
        _add_run_arguments,
        _run,
    ),
    "trace": Command(
        "look at a trace: `loopy trace view FILE`, `loopy trace summary FILE`, "
        "or fetch one: `loopy trace dump PID -o FILE`",
        _add_trace_arguments,
        _trace,
    ),
    "ps": Command("list this user's watchable loopy processes", _add_ps_arguments, _ps),
    "top": Command(
        "watch a running loopy process: `loopy top PID [--once] [--loop N]`",
        _add_top_arguments,
        _top,
    ),
}
