"""The API reference builds from the docstrings, cleanly, with a page for every module.

This is how CI builds it: ``uv run pytest`` runs this test, so the reference
cannot rot unnoticed.  ``docs/api.py`` is the command the README gives.
"""

from __future__ import annotations

import html
import inspect
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import loopy

ROOT = Path(__file__).resolve().parent.parent

# Names that must be documented, page by page (pdoc gives each an HTML id).
KEY_NAMES = {
    "loopy.html": [
        "Loop",
        "Loop.run_until_complete",
        "Loop.call_soon",
        "Loop.add_instrument",
        "Loop.remove_instrument",
        "run",
        "install",
        "new_event_loop",
        "EventLoopPolicy",
        "Future",
        "Task",
        "Server",
        "describe",
        "tracing",
    ],
    "loopy/trace.html": [
        "tracing",
        "TraceRecorder",
        "TraceRecorder.attach",
        "write_trace",
        "load_trace",
        "summarize",
        "write_viewer",
        "StallDetector",
        "LoadMonitor",
    ],
    "loopy/instruments.html": [
        "Instrument",
        "Instrument.iteration_started",
        "Instrument.loop_closed",
    ],
    "loopy/handles.html": ["Handle", "TimerHandle", "TimerHandle.when"],
    "loopy/transports.html": ["SocketTransport", "SocketTransport.write"],
}


def _squeeze(text: str) -> str:
    """``text`` without its whitespace, so markup that splits words does not matter."""
    return "".join(text.split())


def _docstrings(page: str) -> str:
    """The rendered docstrings of a page (not its source listings), as squeezed text."""
    blocks = re.findall(r'<div class="docstring">(.*?)</div>', page, flags=re.DOTALL)
    return _squeeze(html.unescape(re.sub(r"<[^>]+>", " ", " ".join(blocks))))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("api")
    result = subprocess.run(
        [sys.executable, "docs/api.py", "-o", str(out)],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # pdoc reports what it could not resolve (annotations, imports) as warnings.
    assert "Warn" not in result.stdout + result.stderr, result.stdout + result.stderr
    assert result.stderr == ""
    return out


def test_every_module_has_a_page(reference: Path) -> None:
    modules = [
        info.name
        for info in pkgutil.walk_packages(loopy.__path__, "loopy.")
        if info.name != "loopy.__main__"
    ]
    assert len(modules) > 20
    missing = [
        m for m in ["loopy", *modules] if not (reference / f"{m.replace('.', '/')}.html").exists()
    ]
    assert missing == []
    assert (reference / "index.html").exists()
    assert (reference / "search.js").exists()


@pytest.mark.parametrize("page", sorted(KEY_NAMES))
def test_key_names_are_documented(reference: Path, page: str) -> None:
    content = (reference / page).read_text()
    missing = [name for name in KEY_NAMES[page] if f'id="{name}"' not in content]
    assert missing == []


def test_pages_carry_the_docstrings(reference: Path) -> None:
    def first_line(obj: object) -> str:
        doc = inspect.getdoc(obj)
        assert doc is not None
        return _squeeze(doc.split("\n\n")[0].replace("``", ""))

    top = _docstrings((reference / "loopy.html").read_text())
    assert first_line(loopy.Loop.add_instrument) in top
    assert first_line(loopy.new_event_loop) in top
    instruments = _docstrings((reference / "loopy" / "instruments.html").read_text())
    assert first_line(loopy.instruments.Instrument.timer_fired) in instruments
