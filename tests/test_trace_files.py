"""Trace files: foreign or damaged ones get one line and exit 1, bad targets fail up front.

The CLI is driven in subprocesses, as a user would meet it: each bad file
and each bad path gives exit status 1 (2 for ``--trace``, a command-line
mistake), exactly one line on stderr, and never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import loopy
from loopy import cli
from loopy.trace import TraceRecorder, format_summary, load_trace, summarize, write_trace
from loopy.trace.fileformat import (
    READABLE_TRACE_FORMATS,
    TRACE_FORMAT,
    TraceFileError,
    check_writable,
    json_safe,
)

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 30


def run_loopy(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loopy", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def one_line(stderr: str) -> str:
    """The one line on stderr; fails on a traceback or more lines."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture(scope="module")
def good_trace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A small real trace, as a dict, to damage in many ways."""
    path = tmp_path_factory.mktemp("good") / "good.json"

    async def work() -> None:
        with loopy.tracing(path):
            await asyncio.sleep(0.001)
            await asyncio.gather(*(asyncio.sleep(0) for _ in range(3)))

    loopy.run(work())
    trace: dict[str, Any] = json.loads(path.read_text())
    return trace


def first(trace: dict[str, Any], ph: str, cat: str | None = None) -> dict[str, Any]:
    return next(
        e for e in trace["traceEvents"] if e["ph"] == ph and (cat is None or e.get("cat") == cat)
    )


def index_of(trace: dict[str, Any], ph: str, cat: str | None = None) -> int:
    return trace["traceEvents"].index(first(trace, ph, cat))


def damaged(change: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], str]:
    """A case: ``change`` applied to a copy of the good trace, written as JSON."""

    def make(good: dict[str, Any]) -> str:
        trace = json.loads(json.dumps(good))
        change(trace)
        return json.dumps(trace)

    return make


def set_in(ph: str, cat: str | None, key: str, value: Any) -> Callable[[dict[str, Any]], Any]:
    def change(trace: dict[str, Any]) -> None:
        first(trace, ph, cat)[key] = value

    return change


def set_arg(ph: str, cat: str, key: str, value: Any) -> Callable[[dict[str, Any]], Any]:
    def change(trace: dict[str, Any]) -> None:
        first(trace, ph, cat)["args"][key] = value

    return change


def with_io_event(trace: dict[str, Any]) -> None:
    event = {"name": "fd", "cat": "io", "ph": "i", "s": "t", "ts": 1.0, "pid": 1, "tid": 1}
    trace["traceEvents"].append({**event, "args": {"fd": [3, 4]}})


def without_ts(trace: dict[str, Any]) -> None:
    del trace["traceEvents"][12]["ts"]


def other(key: str, value: Any) -> Callable[[dict[str, Any]], Any]:
    def change(trace: dict[str, Any]) -> None:
        trace["otherData"][key] = value

    return change


def same(text: str) -> Callable[[dict[str, Any]], str]:
    return lambda good: text


CHROME_FROM_ANOTHER_TOOL = json.dumps(
    {"traceEvents": [{"name": "x", "ph": "X", "ts": 0, "dur": 5, "pid": 1, "tid": 1}]}
)

#: (file contents, from the good trace) -> the error line's end, after "loopy: FILE: ".
BAD_FILES: dict[str, tuple[Callable[[dict[str, Any]], str], str]] = {
    "an array": (same("[1,2,3]"), "not a loopy trace: a JSON array, not an object"),
    "junk events": (
        same('{"traceEvents":[1,"a",null]}'),
        "not a loopy trace: no otherData.trace_format",
    ),
    "otherData a list": (
        same('{"traceEvents":[],"otherData":[]}'),
        "not a loopy trace: otherData is a JSON array",
    ),
    "another tool's trace": (
        same(CHROME_FROM_ANOTHER_TOOL),
        "not a loopy trace: no otherData.trace_format",
    ),
    "not JSON": (same("{not json"), "not a loopy trace: not JSON (Expecting property name"),
    "NaN": (damaged(other("duration_us", float("nan"))), "damaged trace: NaN is not a JSON number"),
    "a string duration": (
        damaged(other("duration_us", "1")),
        "damaged trace: otherData.duration_us is not a number",
    ),
    "a future format": (
        damaged(other("trace_format", 99)),
        "trace format 99 is not one this loopy reads (it reads 1)",
    ),
    "a string format": (
        damaged(other("trace_format", "1")),
        'not a loopy trace: trace_format is "1"',
    ),
    "dur null": (damaged(set_in("X", None, "dur", None)), "has a bad 'dur': null"),
    "start_wall_time 1e300": (
        damaged(other("start_wall_time", 1e300)),
        "damaged trace: otherData.start_wall_time 1e+300 is not a time",
    ),
    "an integer name": (
        damaged(set_in("X", "iteration", "name", 7)),
        "has a 'name' that is not a string",
    ),
    "a string lateness": (
        damaged(set_arg("i", "timer", "lateness_ms", "late")),
        'has a bad args.lateness_ms: "late"',
    ),
    "a list as fd": (damaged(with_io_event), "has a bad args.fd: [3, 4]"),
    "no ts": (damaged(without_ts), "damaged trace: event 12 has no 'ts'"),
    "a 400-digit ts": (damaged(set_in("X", "wait", "ts", 10**400)), "has a bad 'ts'"),
}


@pytest.mark.parametrize("action", ["summary", "view"])
@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_foreign_or_damaged_file_is_one_line_and_exit_1(
    case: str, action: str, good_trace: dict[str, Any], tmp_path: Path
) -> None:
    make, expected = BAD_FILES[case]
    path = tmp_path / "bad.json"
    path.write_text(make(good_trace))
    done = run_loopy("trace", action, str(path))
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert line.startswith(f"loopy: {path}: ")
    assert expected in line
    assert done.stdout == ""
    assert not path.with_suffix(".html").exists()


def test_damaged_files_name_the_event(good_trace: dict[str, Any], tmp_path: Path) -> None:
    """In process: the message names the event by its index in traceEvents."""
    trace = json.loads(json.dumps(good_trace))
    at = index_of(trace, "X", "iteration")
    trace["traceEvents"][at]["args"]["n"] = "three"
    path = tmp_path / "t.json"
    path.write_text(json.dumps(trace))
    with pytest.raises(TraceFileError, match=rf"^damaged trace: event {at} has a bad args.n: "):
        load_trace(path)


def test_the_good_trace_itself_is_read(good_trace: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "good.json"
    path.write_text(json.dumps(good_trace))
    assert good_trace["otherData"]["trace_format"] == TRACE_FORMAT
    assert TRACE_FORMAT in READABLE_TRACE_FORMATS
    assert summarize(load_trace(path)).iterations > 0
    done = run_loopy("trace", "summary", str(path))
    assert done.returncode == 0
    assert done.stderr == ""


def test_a_page_that_cannot_be_written_says_so(good_trace: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "good.json"
    path.write_text(json.dumps(good_trace))
    done = run_loopy("trace", "view", str(path), "-o", "/nonexistent/x.html")
    assert done.returncode == 1
    assert one_line(done.stderr) == (
        "loopy: cannot write the page /nonexistent/x.html: "
        "No such file or directory: '/nonexistent/x.html'"
    )
    done = run_loopy("trace", "view", str(path), "-o", str(tmp_path))
    assert done.returncode == 1
    assert one_line(done.stderr).startswith(f"loopy: cannot write the page {tmp_path}: Is a dir")


def test_a_missing_trace_or_a_directory_cannot_be_read(tmp_path: Path) -> None:
    done = run_loopy("trace", "summary", str(tmp_path / "missing.json"))
    assert done.returncode == 1
    assert one_line(done.stderr).endswith("missing.json: No such file or directory")
    done = run_loopy("trace", "view", str(tmp_path))
    assert done.returncode == 1
    assert one_line(done.stderr) == f"loopy: cannot read trace {tmp_path}: Is a directory"


# ----------------------------------------------------------------------
# Control characters in names
# ----------------------------------------------------------------------

ESCAPES = "\x1b[31mred\x1b[0m\x07\u202eevil\r\n\udc80"


def test_control_characters_in_names_are_printed_escaped(tmp_path: Path) -> None:
    async def work() -> None:
        await asyncio.sleep(0)

    async def main() -> None:
        with loopy.tracing(tmp_path / "t.json"):
            await asyncio.get_running_loop().create_task(work(), name=ESCAPES)

    loopy.run(main())
    text = format_summary(summarize(load_trace(tmp_path / "t.json")))
    assert "\\x1b[31mred\\x1b[0m\\x07\\u202eevil\\x0d\\x0a\\udc80" in text
    assert not any(ord(c) < 0x20 and c != "\n" for c in text)
    assert "\u202e" not in text
    done = run_loopy("trace", "summary", str(tmp_path / "t.json"))
    assert done.returncode == 0
    assert "\x1b" not in done.stdout
    assert "\\x1b[31mred" in done.stdout


# ----------------------------------------------------------------------
# Writing: strict values, whole files, targets checked first
# ----------------------------------------------------------------------


def test_json_safe_maps_what_json_cannot_carry() -> None:
    assert json_safe(
        {"a": float("inf"), "b": [float("nan"), -float("inf"), 1.5], "c": "x\udc80", 3: object}
    ) == {"a": None, "b": [None, None, 1.5], "c": "x\\udc80", "3": "<class 'object'>"}


def test_odd_values_in_a_recording_still_make_a_strict_file(tmp_path: Path) -> None:
    """Written through the fallback path: each odd value mapped, the rest unchanged."""
    recorder = TraceRecorder()
    recorder._add("signal", 0.0, None, "odd \udc80", {"signum": 1, "extra": float("nan")})
    recorder._add("exception", 0.0, None, "huge", {"exception": "x", "big": 10**30})
    recorder._add("signal", float("inf"), None, "nowhere", {"signum": 2})  # no time to place it
    path = write_trace(recorder, tmp_path / "odd.json")
    raw = path.read_bytes()
    trace = json.loads(raw)  # conftest also reads it strictly
    names = [e["name"] for e in trace["traceEvents"] if e["ph"] == "i"]
    assert names == ["signal: odd \\udc80", "exception: huge"]
    odd = next(e for e in trace["traceEvents"] if e["name"].startswith("signal"))
    assert odd["args"] == {"signum": 1, "extra": None}
    assert trace["otherData"]["unwritable_events"] == 1
    load_trace(path)


def test_a_trace_replaces_the_file_whole(tmp_path: Path) -> None:
    recorder = TraceRecorder()
    recorder._add("signal", 0.0, None, "SIGHUP", {"signum": 1})
    target = tmp_path / "t.json"
    target.write_text("the previous trace")
    write_trace(recorder, target)
    assert load_trace(target)["traceEvents"][-1]["name"] == "signal: SIGHUP"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]  # no temporary left
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~current_umask())

    class Boom(Exception):
        pass

    def broken_lines(*args: Any) -> Any:
        yield '{"name":"x","ph":"i","ts":0}'
        raise Boom

    from loopy.trace import export  # noqa: PLC0415

    real = export._lines
    export._lines = broken_lines  # type: ignore[assignment]
    try:
        with pytest.raises(Boom):
            write_trace(recorder, target)
    finally:
        export._lines = real
    # The half-written trace never replaced the good one, and was removed.
    assert load_trace(target)["traceEvents"][-1]["name"] == "signal: SIGHUP"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_a_special_file_is_written_in_place() -> None:
    recorder = TraceRecorder()
    assert check_writable(os.devnull) == Path(os.devnull)
    write_trace(recorder, os.devnull)
    assert Path(os.devnull).exists()


@pytest.mark.parametrize(
    ("target", "error"),
    [
        ("/nonexistent/dir/t.json", "no such directory: '/nonexistent/dir'"),
        ("{tmp}", "is a directory: '{tmp}'"),
    ],
)
def test_unwritable_targets_fail_before_anything_is_recorded(
    target: str, error: str, tmp_path: Path
) -> None:
    target = target.format(tmp=tmp_path)
    with pytest.raises(OSError) as raised:
        check_writable(target)
    assert f"{raised.value.strerror}: '{raised.value.filename}'" == error.format(tmp=tmp_path)
    loop = loopy.new_event_loop()
    try:
        with pytest.raises(OSError):
            loopy.trace.trace_to_file(loop, target)
        assert loop.instruments == ()  # nothing attached: nothing recorded for nothing

        async def traced() -> None:
            with loopy.tracing(target):
                raise AssertionError("the block must not run")

        with pytest.raises(OSError):
            loop.run_until_complete(traced())
        assert loop.instruments == ()
    finally:
        loop.close()


def test_cli_trace_to_an_unwritable_target_is_one_line_and_exit_2(tmp_path: Path) -> None:
    for target, reason in [
        ("/nonexistent/dir/t.json", "no such directory: '/nonexistent/dir'"),
        (str(tmp_path), f"is a directory: '{tmp_path}'"),
    ]:
        done = run_loopy("--port", "0", "--trace", target)
        assert done.returncode == 2
        assert one_line(done.stderr) == f"loopy: cannot write the trace to {target}: {reason}"
        assert done.stdout == ""  # it never started: no "Listening on" line


def test_cli_trace_check_comes_before_listening(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """In process: the check runs first, so a busy port is not even tried."""
    assert cli.main(["--port", "1", "--host", "192.0.2.1", "--trace", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("loopy: cannot write the trace to ")


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_each_bad_file_in_process(case: str, good_trace: dict[str, Any], tmp_path: Path) -> None:
    make, expected = BAD_FILES[case]
    path = tmp_path / "bad.json"
    path.write_text(make(good_trace))
    with pytest.raises(TraceFileError) as raised:
        load_trace(path)
    assert expected in str(raised.value)
    assert "\n" not in str(raised.value)


def meta(**fields: Any) -> dict[str, Any]:
    return {"name": "thread_name", "ph": "M", "pid": 1, "tid": 1, "args": {}, **fields}


@pytest.mark.parametrize(
    ("event", "problem"),
    [
        (None, "is a JSON null, not an object"),
        ({"name": "x"}, "has no 'ph'"),
        ({"name": "x", "ph": "B"}, "has an unknown 'ph' \"B\""),
        ({"ph": "M"}, "has no 'name'"),
        (meta(name="\udc80"), "has a 'name' that is not valid Unicode"),
        (meta(pid="1"), "has a 'pid' that is not an integer"),
        (meta(args=None), "has a bad 'args': null"),
        ({"name": "x", "ph": "M", "pid": 1}, "has no 'args'"),
        ({**meta(), "ph": "C", "ts": 0, "args": {"callbacks": "3"}}, "bad args.callbacks"),
        ({**meta(), "ph": "X", "ts": 0, "dur": -1, "cat": "wait"}, "has a bad 'dur': -1"),
        ({**meta(), "ph": "s", "ts": 0, "cat": "task", "id": "1"}, "has a bad 'id': \"1\""),
        (
            {**meta(), "ph": "b", "ts": 0, "cat": "task", "id": "t", "args": {"parent": "p"}},
            "parent",
        ),
        ({**meta(), "ph": "i", "ts": 0, "cat": "io", "args": {"fd": True}}, "bad args.fd: true"),
        ({**meta(), "ph": "i", "ts": 0, "cat": "x", "args": [1]}, "has a bad 'args': [1]"),
        ({**meta(), "ph": "X", "ts": 0, "dur": 1, "cat": "iteration", "args": {}}, "args.n: null"),
        ({**meta(), "ph": "i", "ts": 0, "cat": "x", "args": {"k": 1}, "name": "y" * 50}, None),
    ],
)
def test_event_checks(event: Any, problem: str | None) -> None:
    from loopy.trace.fileformat import _event_problem  # noqa: PLC0415

    found = _event_problem(event)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"dropped_events": -1}, "otherData.dropped_events is not a count"),
        ({"max_events": 1.5}, "otherData.max_events is not a count"),
        ({"duration_us": -5}, "otherData.duration_us is negative"),
        ({"start_wall_time": -1e20}, "is not a time"),
    ],
)
def test_other_data_checks(
    change: dict[str, Any], problem: str, good_trace: dict[str, Any]
) -> None:
    from loopy.trace.fileformat import check_trace  # noqa: PLC0415

    trace = json.loads(json.dumps(good_trace))
    trace["otherData"].update(change)
    with pytest.raises(TraceFileError, match=problem):
        check_trace(trace)
    trace = json.loads(json.dumps(good_trace))
    trace["traceEvents"] = {}
    with pytest.raises(TraceFileError, match="traceEvents is not a list"):
        check_trace(trace)


def test_files_that_are_not_json_at_all(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(TraceFileError, match=r"^not a loopy trace: not JSON"):
        load_trace(path)
    path.write_text("[" * 100_000)
    with pytest.raises(TraceFileError, match=r"^not a loopy trace: not JSON"):
        load_trace(path)
    path.write_text('{"traceEvents": [], "otherData": {"x": Infinity}}')
    with pytest.raises(TraceFileError, match=r"^damaged trace: Infinity is not a JSON number$"):
        load_trace(path)


def test_unusual_records_still_export(tmp_path: Path) -> None:
    """Duplicates, finishes without a start, unknown kinds, steps at no finite time."""
    recorder = TraceRecorder()
    created = {"task": 1, "parent": None, "first_sight": False}
    recorder._add("task-created", 0.0, None, "Task a", created)
    recorder._add("task-created", 0.0, None, "Task a", created)  # said twice: one span
    recorder._add("mystery", 0.0, None, "?", {})  # a kind from the future: nothing to draw
    recorder._add("task-step", float("inf"), 0.0, "Task a", {"task": 1})  # nowhere to place
    recorder._add("task-finished", 0.001, None, "Task b",
                  {"task": 2, "outcome": "result", "exception": None})  # fmt: skip
    path = write_trace(recorder, tmp_path / "t.json")
    trace = load_trace(path)
    spans = [
        (e["ph"], e["id"], e["args"].get("origin"))
        for e in trace["traceEvents"]
        if e.get("cat") == "task"
    ]
    assert spans == [
        ("b", "task-1", "create_task"),
        ("b", "task-2", "unrecorded"),
        ("e", "task-2", None),
        ("e", "task-1", None),
    ]
    assert trace["otherData"]["unwritable_events"] == 1
    assert not any(e["name"] == "?" for e in trace["traceEvents"])
    in_memory = loopy.trace.to_chrome_trace(recorder)
    assert any(e["ts"] == float("inf") for e in in_memory["traceEvents"])
    # The page's data is strict JSON even so.
    page = loopy.trace.render_viewer(in_memory)
    assert "Infinity" not in page


def test_save_all_writes_what_is_left(tmp_path: Path) -> None:
    from loopy.trace import export  # noqa: PLC0415

    loop = loopy.new_event_loop()
    try:
        loopy.trace.trace_to_file(loop, tmp_path / "t.json")
        export.save_all()
        assert load_trace(tmp_path / "t.json")["otherData"]["trace_format"] == TRACE_FORMAT
    finally:
        loop.close()


def test_labels_of_tasks_whose_coroutine_is_gone() -> None:
    from loopy.trace.describe import coroutine_name, task_label  # noqa: PLC0415

    class Finished:
        _coro = None

        def done(self) -> bool:
            return True

        def get_name(self) -> str:
            return "gone"

        def get_coro(self) -> Any:
            raise AssertionError("never asked of a done task")

    assert task_label(Finished()) == "Task gone"
    assert coroutine_name(None) is None
