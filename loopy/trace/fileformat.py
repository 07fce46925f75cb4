"""The trace file: strict JSON going out, checked line by line coming in.

Going out, three rules keep every file readable by any JSON parser, the
viewer's ``JSON.parse`` and Perfetto included:

* **No NaN or Infinity.**  The standard forbids them, yet Python writes them
  by default.  Every event is encoded with ``allow_nan=False``; a value JSON
  cannot carry is mapped by :func:`json_safe` first: an infinite or NaN
  number becomes ``null`` (so ``"delay_ms": null`` is the timer of
  ``asyncio.sleep(math.inf)``: it never fires), a string with unpaired
  surrogates (some odd ``repr``) gets them escaped as text (``\\udc80``),
  and anything that is not a JSON value is written as its ``repr``.  An
  event whose own time is not a finite number cannot be placed at all: it
  is left out and counted in ``otherData.unwritable_events``.
* **The file appears whole or not at all.**  It is written under a
  temporary name in the same directory and renamed over the target at the
  end, so a crash halfway through never leaves half a trace (nor destroys
  the previous one).  :func:`check_writable` tries that directory up front,
  so a bad path fails at start, not after an hour of recording.
* **It says what it is.**  ``otherData.trace_format`` is an integer,
  :data:`TRACE_FORMAT`, raised when the meaning of the file changes.

Coming in, :func:`load_trace` reads only what it understands: a loopy
trace (``otherData.trace_format`` in :data:`READABLE_TRACE_FORMATS`) whose
every event has the keys and types the summary and the viewer rely on.
Anything else raises :class:`TraceFileError` with one line naming the
problem: ``not a loopy trace: ...`` for a file that is something else,
``damaged trace: event 12 has no 'ts'`` for one that is broken.
"""

from __future__ import annotations

import datetime
import errno
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from os import PathLike
from pathlib import Path
from typing import IO, Any

__all__ = [
    "READABLE_TRACE_FORMATS",
    "TRACE_FORMAT",
    "TraceFileError",
    "check_trace",
    "check_writable",
    "json_safe",
    "load_trace",
]

#: The format written into ``otherData.trace_format``.  1: the first with the
#: field (strict JSON, tasks marked by how they entered the trace).
TRACE_FORMAT = 1

#: The formats this loopy reads; any other number is refused by name.
READABLE_TRACE_FORMATS = (1,)


class TraceFileError(ValueError):
    """A file that is not a loopy trace this loopy can read; the message says why, in one line."""


# ----------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------

# One encoder for every event.  json.dumps with options, and even a kept
# JSONEncoder's encode(), build a new C encoder at each call, which was a
# third of the time of writing a trace; the C encoder itself is reusable.
# (Where there is no C accelerator, the pure-Python one does the same job.)
_make_c_encoder = getattr(json.encoder, "c_make_encoder", None)
if _make_c_encoder is not None:
    _c_encode = _make_c_encoder(
        None, repr, json.encoder.encode_basestring, None, ":", ",", False, False, False
    )

    def _encode(value: Any) -> str:
        return "".join(_c_encode(value, 0))

else:  # pragma: no cover - CPython always has the C accelerator
    _py_encode = json.JSONEncoder(
        ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=repr
    ).encode

    def _encode(value: Any) -> str:
        return _py_encode(value)


def json_safe(value: Any) -> Any:
    """``value`` with everything strict JSON cannot carry mapped (see the module docstring)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return _utf8_safe(value)
    if isinstance(value, dict):
        return {_utf8_safe(str(key)): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if value is None or isinstance(value, (bool, int)):
        return value
    return _utf8_safe(repr(value))


def _utf8_safe(text: str) -> str:
    """``text``, with unpaired surrogates (which UTF-8 cannot encode) escaped as text."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


#: A string as a JSON string literal, as the encoder writes it (ensure_ascii off).
json_string: Callable[[str], str] = json.encoder.encode_basestring


def encode_line(event: dict[str, Any]) -> str | None:
    """One event as a line of strict JSON; None if it has no finite time to be placed at.

    The fast path refuses NaN and infinities (``allow_nan=False``); an event
    holding one is mapped by :func:`json_safe` and encoded again.
    """
    try:
        return _encode(event)
    except ValueError:  # NaN or infinity
        safe = json_safe(event)
        if safe.get("ts", 0) is None or safe.get("dur", 0) is None:
            return None
        return _encode(safe)


def write_json_lines(
    file: IO[bytes], lines: Iterator[str | None], tail: Callable[[int], dict[str, Any]]
) -> None:
    """Write ``{"traceEvents": [...], ...}`` to ``file``, one encoded event per line, as they come.

    ``lines`` are events encoded by :func:`encode_line` (None for an event
    that could not be placed: counted, not written).  ``tail(unwritable)``
    gives the keys that follow the events (``otherData`` and the like).
    What is held meanwhile is at most a thousand lines, written together:
    fewer, larger writes.
    """
    file.write(b'{"traceEvents":[\n')
    unwritable = 0
    batch: list[str] = []
    separator = b""
    for line in lines:
        if line is None:
            unwritable += 1
            continue
        batch.append(line)
        if len(batch) == 1000:
            file.write(separator + _utf8_lines(batch))
            separator = b",\n"
            batch.clear()
    if batch:
        file.write(separator + _utf8_lines(batch))
    rest = _encode(json_safe(tail(unwritable))).encode("utf-8")
    file.write(b"\n],\n" + rest[1:] + b"\n")


def _utf8_lines(lines: list[str]) -> bytes:
    """Lines joined by ``,\\n`` in UTF-8; a line with an unpaired surrogate is mapped first."""
    try:
        return ",\n".join(lines).encode("utf-8")
    except UnicodeEncodeError:
        return b",\n".join(_utf8_line(line) for line in lines)


def _utf8_line(line: str) -> bytes:
    """One line in UTF-8: parsed back and mapped if it holds an unpaired surrogate."""
    try:
        return line.encode("utf-8")
    except UnicodeEncodeError:
        return _encode(json_safe(json.loads(line))).encode("utf-8")


def check_writable(path: str | PathLike[str]) -> Path:
    """Raise :class:`OSError` unless a trace can be written at ``path``; return it as a Path.

    The test is the write itself, minus the data: a temporary file is made
    in the target's directory and removed, as the real write will do.
    Permissions alone would not tell (root may write anywhere, a read-only
    file system refuses everyone).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
    if path.exists() and not path.is_file():
        return path  # /dev/null, a pipe: written in place, nothing to try
    directory = path.parent
    if not directory.is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such directory", str(directory))
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    os.unlink(name)
    return path


@contextmanager
def replacing(path: str | PathLike[str]) -> Iterator[IO[bytes]]:
    """A binary file whose contents replace ``path`` when the block ends without error.

    Written under a temporary name in the same directory, then renamed: the
    target is never seen half-written.  A target that exists and is not a
    regular file (``/dev/null``, a pipe) is written in place instead.
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        with path.open("wb") as file:
            yield file
        return
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            yield file
        os.chmod(name, 0o666 & ~_umask())
        os.replace(name, path)
    except BaseException:
        os.unlink(name)
        raise


def _umask() -> int:
    """The process's umask (reading it means setting it, so set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# ----------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------


def _no_constants(name: str) -> Any:
    raise TraceFileError(f"damaged trace: {name} is not a JSON number")


def load_trace(path: str | PathLike[str]) -> dict[str, Any]:
    """Read a loopy trace file, checked (see :func:`check_trace`).

    Raises :class:`OSError` if the file cannot be read and
    :class:`TraceFileError` (a ValueError) if it is not a loopy trace this
    loopy reads, each with a message of one line.
    """
    raw = Path(path).read_bytes()
    try:
        data = json.loads(raw, parse_constant=_no_constants)
    except TraceFileError:
        raise
    except (ValueError, RecursionError) as exc:  # bad JSON, bad UTF-8, absurd nesting
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TraceFileError(f"not a loopy trace: not JSON ({reason})") from None
    check_trace(data)
    return data  # type: ignore[no-any-return]


def check_trace(data: Any) -> None:
    """Raise :class:`TraceFileError` unless ``data`` is a loopy trace this loopy reads.

    Checked: the top level, ``otherData`` (its ``trace_format`` first), and
    in every event the keys the summary and the viewer read, with their
    types.  Events of phases loopy does not write are refused too: a loopy
    trace has none, so a file with them is damaged or something else.
    """
    if not isinstance(data, dict):
        raise TraceFileError(f"not a loopy trace: a JSON {_json_type(data)}, not an object")
    other = data.get("otherData")
    if other is None or (isinstance(other, dict) and "trace_format" not in other):
        raise TraceFileError("not a loopy trace: no otherData.trace_format")
    if not isinstance(other, dict):
        raise TraceFileError(f"not a loopy trace: otherData is a JSON {_json_type(other)}")
    version = other["trace_format"]
    if not _is_int(version):
        raise TraceFileError(f"not a loopy trace: trace_format is {_short(version)}")
    if version not in READABLE_TRACE_FORMATS:
        readable = ", ".join(str(v) for v in READABLE_TRACE_FORMATS)
        raise TraceFileError(
            f"trace format {version} is not one this loopy reads (it reads {readable})"
        )
    _check_other_data(other)
    events = data.get("traceEvents")
    if not isinstance(events, list):
        raise TraceFileError("damaged trace: traceEvents is not a list")
    for index, event in enumerate(events):
        problem = _event_problem(event)
        if problem is not None:
            raise TraceFileError(f"damaged trace: event {index} {problem}")


def _check_other_data(other: dict[str, Any]) -> None:
    for key in ("start_wall_time", "duration_us"):
        if not _is_number(other.get(key)):
            raise TraceFileError(f"damaged trace: otherData.{key} is not a number")
    for key in ("dropped_events", "max_events"):
        if not _is_int(other.get(key)) or other[key] < 0:
            raise TraceFileError(f"damaged trace: otherData.{key} is not a count")
    if other["duration_us"] < 0:
        raise TraceFileError("damaged trace: otherData.duration_us is negative")
    try:
        datetime.datetime.fromtimestamp(other["start_wall_time"], datetime.UTC)
    except (OverflowError, OSError, ValueError):
        start = other["start_wall_time"]
        raise TraceFileError(
            f"damaged trace: otherData.start_wall_time {start!r} is not a time"
        ) from None


def _is_number(value: Any) -> bool:
    """A JSON number that is a finite float (an integer of 400 digits is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_object(value: Any) -> bool:
    return isinstance(value, dict)


def _is_duration(value: Any) -> bool:
    return _is_number(value) and value >= 0


# What each phase loopy writes must carry, besides name, ph and pid/tid:
# key -> the check its value must pass.
_REQUIRED: dict[str, dict[str, Callable[[Any], bool]]] = {
    "M": {"args": _is_object},
    "X": {"ts": _is_number, "dur": _is_duration, "cat": _is_str, "args": _is_object},
    "i": {"ts": _is_number, "cat": _is_str, "args": _is_object},
    "C": {"ts": _is_number, "args": _is_object},
    "b": {"ts": _is_number, "cat": _is_str, "id": _is_str, "args": _is_object},
    "e": {"ts": _is_number, "cat": _is_str, "id": _is_str, "args": _is_object},
    "s": {"ts": _is_number, "cat": _is_str, "id": _is_int},
    "f": {"ts": _is_number, "cat": _is_str, "id": _is_int},
}

# The args the summary and the viewer read, by category of X, i and C events.
_ARGS: dict[str, dict[str, Callable[[Any], bool]]] = {
    "iteration": {"n": _is_int, "wait": _is_number, "callbacks": _is_int},
    "task-step": {"task": _is_int},
    "io": {"fd": _is_int},
}
_OPTIONAL_ARGS: dict[str, Callable[[Any], bool]] = {
    "lateness_ms": _is_number,
    "delay_ms": lambda v: v is None or _is_number(v),
    "timeout_ms": lambda v: v is None or _is_number(v),
    "task": _is_int,
    "parent": lambda v: v is None or _is_int(v),
    "outcome": _is_str,
    "exception": lambda v: v is None or _is_str(v),
    "origin": _is_str,
    "callbacks": _is_number,
    "fds": _is_number,
}


def _event_problem(event: Any) -> str | None:
    """What is wrong with one event, as the end of a sentence; None if nothing."""
    if not isinstance(event, dict):
        return f"is a JSON {_json_type(event)}, not an object"
    phase = event.get("ph")
    if phase not in _REQUIRED:
        return "has no 'ph'" if phase is None else f"has an unknown 'ph' {_short(phase)}"
    name = event.get("name")
    if not isinstance(name, str):
        return "has no 'name'" if name is None else "has a 'name' that is not a string"
    if not name.isascii() and _utf8_safe(name) != name:
        return "has a 'name' that is not valid Unicode (an unpaired surrogate)"
    for key in ("pid", "tid"):
        if key in event and not _is_int(event[key]):
            return f"has a '{key}' that is not an integer"
    for key, valid in _REQUIRED[phase].items():
        if key not in event:
            return f"has no '{key}'"
        if not valid(event[key]):
            return f"has a bad '{key}': {_short(event[key])}"
    args = event.get("args", {})
    if not isinstance(args, dict):
        return f"has 'args' that are not an object: {_short(args)}"
    for key, valid in _ARGS.get(event.get("cat", ""), {}).items():
        if phase in ("X", "i") and not valid(args.get(key)):
            return f"has a bad args.{key}: {_short(args.get(key))}"
    for key, valid in _OPTIONAL_ARGS.items():
        if key in args and not valid(args[key]):
            return f"has a bad args.{key}: {_short(args[key])}"
    return None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _short(value: Any) -> str:
    """A value for an error message: its JSON, cut to 40 characters, on one line."""
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= 40 else text[:37] + "..."
