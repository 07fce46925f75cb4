"""``import loopy`` stays light: the trace package is imported only when asked for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import loopy


def fresh_python(code: str, **env: str) -> str:
    """Run ``code`` in a new interpreter with no ``LOOPY_*`` variable but ``env``; its stdout."""
    clean = {key: value for key, value in os.environ.items() if not key.startswith("LOOPY_")}
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


def test_import_loopy_leaves_the_trace_package_out() -> None:
    code = "import sys, loopy, json; print(json.dumps(sorted(sys.modules)))"
    modules = json.loads(fresh_python(code))
    assert "loopy.loop" in modules
    assert [name for name in modules if name.startswith("loopy.trace")] == []


def test_the_names_lent_from_trace_still_work() -> None:
    code = (
        "import sys, loopy\n"
        "from loopy import describe\n"
        "assert describe is loopy.trace.describe and loopy.tracing is loopy.trace.tracing\n"
        "print('loopy.trace' in sys.modules)"
    )
    assert fresh_python(code).strip() == "True"


def test_loopy_trace_in_the_environment_still_traces(tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    code = (
        "import asyncio, loopy\n"
        "loop = loopy.new_event_loop()\n"
        "loop.run_until_complete(asyncio.sleep(0))\n"
        "loop.close()\n"
    )
    fresh_python(code, LOOPY_TRACE=str(path))
    assert json.loads(path.read_text())["traceEvents"]


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = loopy.no_such_name  # type: ignore[attr-defined]
