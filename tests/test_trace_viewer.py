"""The HTML viewer, read as text: self-contained, data embedded safely, marker logic present.

``record_sample_trace`` is also the trace the real-browser test draws.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import socket
from pathlib import Path
from typing import Any

import pytest

from loopy.instruments import Instrument
from loopy.trace import (
    TraceRecorder,
    load_trace,
    render_viewer,
    summarize,
    to_chrome_trace,
    write_trace,
    write_viewer,
)
from loopy.trace.viewer import script_json
from tests.helpers import make_loop


class Overhead(Instrument):
    """Every callback takes 40 µs of virtual time, as real ones take some time."""

    def callback_finished(self, loop: Any, handle: Any) -> None:
        loop.virtual_clock.advance(0.00004)


def record_sample_trace(path: Path, *, task_name: str = "ticker") -> Path:
    """A deterministic little program with a bit of everything; its trace at ``path``.

    A ticking task, a socket read feeding a queue and its consumer, a
    callback that blocks the loop 25 ms, a task that fails and one that
    is cancelled, on a virtual clock.
    """
    loop = make_loop("loopy", virtual=True)
    clock = loop.virtual_clock
    a, b = socket.socketpair()
    a.setblocking(False)
    loop.add_instrument(Overhead())  # first, so the recorder sees its time pass
    recorder = TraceRecorder()
    recorder.attach(loop)

    async def ticker() -> None:
        for _ in range(20):
            clock.advance(0.0008)
            await asyncio.sleep(0.01)

    async def consumer(queue: asyncio.Queue[bytes]) -> None:
        while len(await queue.get()) < 10:
            clock.advance(0.0015)

    async def failing() -> None:
        await asyncio.sleep(0.03)
        raise ValueError("boom")

    async def main() -> None:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        loop.add_reader(a, lambda: queue.put_nowait(a.recv(100)))
        for i in range(1, 11):
            loop.call_later(0.015 * i, b.send, b"x" * i)
        loop.call_later(0.06, clock.advance, 0.025)
        tasks = [
            loop.create_task(ticker(), name=task_name),
            loop.create_task(consumer(queue), name="consumer"),
            loop.create_task(failing(), name="failing"),
        ]
        sleeper = loop.create_task(asyncio.sleep(10), name="sleeper")
        await asyncio.gather(*tasks, return_exceptions=True)
        sleeper.cancel()
        await asyncio.gather(sleeper, return_exceptions=True)
        loop.remove_reader(a)

    try:
        loop.run_until_complete(loop.create_task(main(), name="main"))
    finally:
        recorder.detach()
        loop.close()
        a.close()
        b.close()
    return write_trace(recorder, path)


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    return record_sample_trace(tmp_path / "trace.json")


def embedded_json(page: str) -> Any:
    match = re.search(r'<script type="application/json" id="trace-data">(.*?)</script>', page, re.S)
    assert match is not None
    return json.loads(match.group(1))


def test_the_viewer_goes_next_to_the_trace(sample: Path, tmp_path: Path) -> None:
    page_path = write_viewer(sample)
    assert page_path == tmp_path / "trace.html"
    assert page_path.read_text().startswith("<!DOCTYPE html>")
    elsewhere = write_viewer(str(sample), str(tmp_path / "view.html"))
    assert elsewhere == tmp_path / "view.html"
    assert elsewhere.read_text() == page_path.read_text()
    with pytest.raises(ValueError, match="overwrite"):
        write_viewer(sample, sample)


def test_the_page_is_self_contained(sample: Path) -> None:
    page = write_viewer(sample).read_text()
    assert "http://" not in page
    assert "https://" not in page
    assert not re.search(r"\b(src|href)\s*=", page, re.I), "no external resources at all"
    assert "<link" not in page
    assert "@import" not in page
    assert page.count("<script") == 2  # the data, and the inline script


def test_the_page_embeds_the_trace_and_the_summary(sample: Path) -> None:
    trace = load_trace(sample)
    page = write_viewer(sample).read_text()
    assert embedded_json(page) == trace
    summary = summarize(trace)
    assert f'data-trace-iterations="{summary.iterations}"' in page
    assert f"{summary.utilisation * 100:.1f} %" in page
    assert f"{summary.iterations_per_second:.1f} per second" in page
    assert html.escape(summary.slowest[0].name) in page
    assert "Slowest callbacks and task steps" in page
    assert "Busiest file descriptors" in page
    assert "loopy trace summary" in page  # the text table too


def test_the_page_reports_what_it_drew(sample: Path) -> None:
    page = write_viewer(sample).read_text()
    assert '<span id="drawn-iterations">0</span>' in page
    assert 'getElementById("drawn-iterations").textContent = String(drawn)' in page
    assert 'setAttribute("data-drawn-iterations", String(drawn))' in page
    assert '<pre id="errors" hidden></pre>' in page
    assert 'addEventListener("error"' in page


def test_script_closing_text_in_the_trace_cannot_break_out(tmp_path: Path) -> None:
    evil = "</script><script>alert(1)</script><!--"
    path = record_sample_trace(tmp_path / "evil.json", task_name=evil)
    page = write_viewer(path).read_text()
    assert evil not in page
    assert page.count("</script>") == 2
    assert embedded_json(page) == load_trace(path)
    assert any(evil in e["name"] for e in embedded_json(page)["traceEvents"])
    assert script_json({"a": "</b>&"}) == '{"a":"\\u003c/b\\u003e\\u0026"}'


def test_a_page_for_an_empty_trace() -> None:
    page = render_viewer({"traceEvents": []}, title="<empty>")
    assert "loopy trace: &lt;empty&gt;" in page
    assert 'data-trace-iterations="0"' in page
    assert "no callbacks" in page
    assert '<td colspan="4">none</td>' in page


def test_the_page_says_which_tasks_were_first_seen_and_what_was_dropped(tmp_path: Path) -> None:
    loop = make_loop("loopy", virtual=True)
    recorder = TraceRecorder(max_events=200)

    async def child() -> None:
        await asyncio.sleep(0.001)

    async def main() -> None:
        for _ in range(100):
            await asyncio.sleep(0.001)
        await asyncio.Task(child(), loop=asyncio.get_running_loop(), name="direct")

    recorder.attach(loop)
    try:
        loop.run_until_complete(loop.create_task(main(), name="main"))
    finally:
        recorder.detach()
        loop.close()
    summary = summarize(to_chrome_trace(recorder))
    assert summary.tasks_first_seen == 1
    assert summary.dropped_events > 0
    page = write_viewer(write_trace(recorder, tmp_path / "t.json")).read_text()
    assert "first seen running 1" in page
    assert f"{summary.dropped_events:,} events dropped" in page
    assert f'data-dropped-events="{summary.dropped_events}"' in page
    assert f'data-recorded-from="{round(summary.recorded_from * 1e6, 3)!r}"' in page
    assert '"origin":"first_sight"' in page
