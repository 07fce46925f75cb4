"""The viewer in a real browser: headless Chromium draws every iteration, without errors.

Needs ``chromium`` (Debian: ``apt-get install chromium``).  Without it the
tests skip, except under CI (``CI=true``), where they fail: CI must run them.

The screenshot is a test artifact: in the test's tmp dir, or in
``$LOOPY_TEST_ARTIFACTS`` when that is set, to look at.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import loopy
import loopy.trace
from loopy.trace import load_trace, summarize, write_viewer
from tests.test_trace_viewer import record_sample_trace

TIMEOUT = 45  # seconds per browser run: less than pytest-timeout's 60, to fail cleanly


def chromium() -> str:
    """The browser's path; skips (fails under CI) when there is none."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "headless Chromium not found: apt-get install chromium"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def run_chromium(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Open ``page`` (a file) in headless Chromium with ``extra`` flags; bounded in time."""
    return run_chromium_url(page.resolve().as_uri(), profile, *extra)


def run_chromium_url(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        *extra,
        url,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, check=False)


def assert_no_script_errors(stderr: str) -> None:
    console = [line for line in stderr.splitlines() if "CONSOLE" in line]
    assert not [line for line in console if "Uncaught" in line or "rror" in line], console
    assert "Uncaught" not in stderr


@pytest.fixture
def page(tmp_path: Path) -> Path:
    return write_viewer(record_sample_trace(tmp_path / "trace.json"))


def test_the_browser_draws_every_iteration(page: Path, tmp_path: Path) -> None:
    iterations = summarize(load_trace(page.with_suffix(".json"))).iterations
    assert iterations > 50
    result = run_chromium(page, tmp_path / "profile", "--dump-dom", "--virtual-time-budget=5000")
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    assert f'data-drawn-iterations="{iterations}"' in dom
    assert re.search(rf'<span id="drawn-iterations">{iterations}</span>', dom)
    assert '<pre id="errors" hidden=""></pre>' in dom
    assert 'data-errors="yes"' not in dom
    assert_no_script_errors(result.stderr)


def test_a_screenshot_of_the_page(page: Path, tmp_path: Path) -> None:
    artifacts = Path(os.environ.get("LOOPY_TEST_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "trace-viewer.png"
    shot.unlink(missing_ok=True)
    result = run_chromium(
        page, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1400,900"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000  # a drawn page, not a blank one
    assert_no_script_errors(result.stderr)


def test_a_broken_page_would_be_caught(tmp_path: Path) -> None:
    """The checks above can fail: a page whose script throws is reported."""
    page = write_viewer(record_sample_trace(tmp_path / "trace.json"))
    text = page.read_text()
    page.write_text(text.replace("function layout() {", "function layout() { missing();", 1))
    result = run_chromium(page, tmp_path / "profile", "--dump-dom")
    assert "ReferenceError: missing is not defined" in result.stdout
    assert 'data-errors="yes"' in result.stdout


def test_a_link_to_a_time_range_draws_only_its_iterations(page: Path, tmp_path: Path) -> None:
    """``page.html#t0-t1`` opens zoomed in: the zoom arithmetic, checked in the browser."""
    t0, t1 = 50_000, 100_000  # microseconds
    events = load_trace(page.with_suffix(".json"))["traceEvents"]
    overlapping = [
        e
        for e in events
        if e.get("cat") == "iteration" and e["ts"] <= t1 and e["ts"] + e["dur"] >= t0
    ]
    assert 0 < len(overlapping) < summarize({"traceEvents": events}).iterations
    url = f"{page.resolve().as_uri()}#{t0}-{t1}"
    result = run_chromium_url(url, tmp_path / "profile", "--dump-dom")
    assert f'data-drawn-iterations="{len(overlapping)}"' in result.stdout
    assert "50.000 ms \u2013 100.000 ms" in result.stdout


@pytest.mark.parametrize("tasks", ["asyncio", "loopy"])
def test_a_program_waiting_forever_draws_every_iteration(tasks: str, tmp_path: Path) -> None:
    """``await asyncio.sleep(math.inf)``: its timer's delay once wrote ``Infinity``.

    ``JSON.parse`` refused the page's data and the timeline stayed blank
    ("iterations drawn: 0 of 12").  The delay is now written as null.
    """
    path = tmp_path / "forever.json"

    async def main() -> None:
        with loopy.trace.tracing(path):
            forever = asyncio.ensure_future(asyncio.sleep(math.inf))
            for _ in range(12):
                await asyncio.sleep(0.001)
            forever.cancel()
            await asyncio.gather(forever, return_exceptions=True)

    loopy.run(main(), tasks=tasks)
    text = path.read_text()
    assert "Infinity" not in text
    assert '"delay_ms":null' in text
    iterations = summarize(load_trace(path)).iterations
    assert iterations >= 12
    page = write_viewer(path)
    result = run_chromium(page, tmp_path / "profile", "--dump-dom", "--virtual-time-budget=5000")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f'data-drawn-iterations="{iterations}"' in result.stdout
    assert '<pre id="errors" hidden=""></pre>' in result.stdout
    assert_no_script_errors(result.stderr)


def test_the_span_whose_events_were_dropped_is_marked(tmp_path: Path) -> None:
    """Not left blank as if the loop had idled: shaded, and said above the figures."""
    path = tmp_path / "dropped.json"

    async def main() -> None:
        with loopy.trace.tracing(path, max_events=400):
            for _ in range(300):
                await asyncio.sleep(0.0002)

    loopy.run(main())
    summary = summarize(load_trace(path))
    assert summary.dropped_events > 0
    page = write_viewer(path)
    assert f"{summary.dropped_events:,} events dropped" in page.read_text()
    result = run_chromium(page, tmp_path / "profile", "--dump-dom", "--virtual-time-budget=5000")
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    assert 'data-not-recorded-drawn="yes"' in dom
    assert f'data-drawn-iterations="{summary.iterations}"' in dom
    assert 'id="dropped-note"' in dom
    assert_no_script_errors(result.stderr)
