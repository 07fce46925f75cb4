"""The README's quick start works as written: its program, traced, summarized and viewed.

The program and the commands are read from the README (the blocks after the
``<!-- quickstart: ... -->`` markers), so this fails if the README drifts.
``uv run X`` is run as this interpreter running X, so the test does not need
``uv`` itself.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def _block(marker: str) -> str:
    """The fenced code block right after ``<!-- quickstart: marker -->``."""
    text = README.read_text()
    match = re.search(rf"<!-- quickstart: {re.escape(marker)} -->\n```\w*\n(.*?)```", text, re.S)
    assert match, f"no quickstart block {marker!r} in the README"
    return match.group(1)


def _argv(command: str) -> tuple[dict[str, str], list[str]]:
    """A README command line as (environment variables it sets, argv for this interpreter)."""
    words = shlex.split(command, comments=True)
    env = {}
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    assert words[:2] == ["uv", "run"], command
    program, *args = words[2:]
    runs = {"python": [sys.executable], "loopy": [sys.executable, "-m", "loopy"]}
    assert program in runs, command
    return env, [*runs[program], *args]


def _run(command: str, cwd: Path) -> str:
    extra, argv = _argv(command)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPY_")}
    result = subprocess.run(
        argv,
        cwd=cwd,
        env={**env, **extra},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"{command}\n{result.stdout}{result.stderr}"
    assert result.stderr == "", f"{command}\n{result.stderr}"
    return result.stdout


def test_the_quickstart_traces_the_program(tmp_path: Path) -> None:
    (tmp_path / "myprog.py").write_text(_block("myprog.py"))
    block = _block("commands")
    commands = [line for line in block.splitlines() if line.strip()]
    assert len(commands) == 3, block
    run, summary, view = commands

    # 1. The program runs on loopy, prints what the README says, and leaves a trace.
    assert "LOOPY_TRACE=trace.json" in run
    printed = _run(run, tmp_path).strip()
    assert printed == "done: [0.0, 0.1, 0.2]"
    assert printed in run, "the README's comment says what the program prints"
    trace = json.loads((tmp_path / "trace.json").read_text())
    names = {event.get("name") for event in trace["traceEvents"]}
    assert {f"Task worker {i} (coro: worker)" for i in range(3)} <= names

    # 2. The summary's slowest steps are the workers' 50 ms blocking sleeps.
    assert "trace summary trace.json" in summary
    text = _run(summary, tmp_path)
    assert "tasks" in text
    table = text.split("slowest callbacks and task steps", 1)[1].splitlines()[2:5]
    assert len(table) == 3, text
    for row in table:
        took, _, kind, name = row.split(maxsplit=3)
        assert float(took) >= 50.0, text
        assert (kind, name.startswith("Task worker ")) == ("task-step", True), text

    # 3. The viewer writes trace.html next to the trace and prints its path.
    assert "trace view trace.json" in view
    page = tmp_path / _run(view, tmp_path).strip()  # relative to where it ran
    assert page == tmp_path / "trace.html"
    html = page.read_text()
    assert html.lstrip().lower().startswith("<!doctype html")
    assert "Task worker 2 (coro: worker)" in html
