"""Smoke test of the benchmark suite in ``bench/``: it runs end to end and writes sane results.

This is not a benchmark: nothing here asserts a timing or a ratio's size.  It
runs ``python -m bench --smoke`` (asyncio and loopy, a fraction of a second
per measurement) in a subprocess and checks the JSON's structure and the
SVG chart.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOOPS = ["asyncio", "loopy"]

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the suite reads /proc"
)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, str]:
    out = tmp_path_factory.mktemp("bench")
    json_path, svg_path = out / "results.json", out / "ratios.svg"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--smoke",
            "--quiet",
            "--json",
            str(json_path),
            "--plot",
            str(svg_path),
        ],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(json_path.read_text()), svg_path, done.stdout


def expected_ids() -> set[str]:
    ids = {
        "echo/protocol/100",
        "echo/sock/100",
        "memory/idle_conn/protocol",
        "memory/idle_conn/sock",
        "memory/timer",
        "micro/call_soon",
        "micro/timers",
        "micro/tasks",
        "micro/future_wakeup",
        "micro/futures",
        "micro/sleep0",
        "instrument/echo/protocol/100",
        "instrument/micro/call_soon",
        "monitor/echo/protocol/1024",
    }
    if importlib.util.find_spec("aiohttp") is not None:
        ids.add("http/aiohttp")
    return ids


def test_every_benchmark_and_loop_has_figures(smoke_run: tuple[dict, Path, str]) -> None:
    results, _, _ = smoke_run
    assert set(results) == {"meta", "config", "benchmarks"}
    assert results["config"]["loops"] == LOOPS
    benchmarks = results["benchmarks"]
    assert set(benchmarks) == expected_ids()
    for bench_id, bench in benchmarks.items():
        paired = {"instrument": "loopy+instrument", "monitor": "loopy+monitor"}.get(bench["group"])
        assert bench["baseline"] == ("loopy" if paired else "asyncio"), bench_id
        loops = ["loopy", paired] if paired else LOOPS
        assert list(bench["results"]) == loops, bench_id
        primary = bench["primary"]
        assert bench["metrics"][primary]["better"] in ("higher", "lower")
        for loop in loops:
            result = bench["results"][loop]
            assert result["errors"] == [], (bench_id, loop, result["errors"])
            assert len(result["rounds"]) == 1
            figure = result["rounds"][0][primary]
            assert math.isfinite(figure), (bench_id, loop, figure)
            assert figure > 0, (bench_id, loop, figure)
            assert result["summary"][primary]["median"] == figure
            ratio = result["ratios"][primary]
            assert len(ratio["per_round"]) == 1
            assert ratio["median"] is not None, (bench_id, loop)
            assert ratio["median"] > 0, (bench_id, loop)
            if loop == bench["baseline"]:
                assert ratio["median"] == pytest.approx(1.0)


def test_echo_figures_are_complete(smoke_run: tuple[dict, Path, str]) -> None:
    results, _, _ = smoke_run
    figures = results["benchmarks"]["echo/sock/100"]["results"]["loopy"]["rounds"][0]
    for name in ("msgs_per_s", "cpu_us_per_msg", "p50_us", "p99_us", "messages"):
        assert figures[name] > 0, name
    assert figures["p50_us"] <= figures["p99_us"]
    for name in ("user_us_per_msg", "sys_us_per_msg"):
        assert figures[name] >= 0, name


def test_chart_is_svg_and_table_is_printed(smoke_run: tuple[dict, Path, str]) -> None:
    _, svg_path, stdout = smoke_run
    root = ET.parse(svg_path).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "echo protocol 100 B" in texts
    assert len(list(root.iter("{http://www.w3.org/2000/svg}rect"))) > 10
    for word in ("benchmark", "asyncio", "loopy", "loopy+instrument", "loopy+monitor"):
        assert word in stdout
