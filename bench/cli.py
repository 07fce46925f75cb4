"""The command line of the suite: ``uv run python -m bench [options]``.

Three presets set rounds, durations and sizes; any option given explicitly
overrides its preset:

=============  ======  ========  ======  ===========  =================================
preset         rounds  duration  warmup  micro scale  also
=============  ======  ========  ======  ===========  =================================
(none)         3       1.0 s     0.3 s   1.0          a few minutes
``--quick``    2       0.2 s     0.05 s  0.1          memory in the first round only;
                                                      under a minute on two cores
``--smoke``    1       0.15 s    0.05 s  0.02         asyncio and loopy, protocol and
                                                      sock, 100 B; a few seconds
=============  ======  ========  ======  ===========  =================================

The JSON written to ``--json`` has this structure::

    {
      "meta":   {"started", "elapsed_s", "argv", "platform", "cpus", "server_core",
                 "client_core", "clk_tck", "versions": {...}, "ratio": "<definition>"},
      "config": {"rounds", "duration", "warmup", "loops", "modes", "sizes", ...},
      "benchmarks": {
        "<id>": {                      # echo/<mode>/<size>, http/aiohttp, micro/<name>,
                                       # memory/idle_conn/<mode>, memory/timer,
                                       # instrument/echo/protocol/<size>,
                                       # instrument/micro/call_soon, flight/echo/protocol/<size>
          "title", "group", "params",
          "baseline": "asyncio",       # "loopy" for the instrument benchmarks
          "primary": "<metric>",       # the figure the plot shows
          "metrics": {"<metric>": {"unit", "better": "higher" | "lower" | null}},
          "results": {
            "<loop>": {
              "rounds":  [{"<metric>": value, ...} | {"error": "..."} | null, ...],
              "summary": {"<metric>": {"median", "min", "max", "n"} | null},
              "ratios":  {"<metric>": {"per_round": [...], "median", "min", "max", "n"}},
              "errors":  ["..."]
            }
          }
        }
      }
    }
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench import report
from bench.loops import LOOPS, unavailable
from bench.plot import render_svg
from bench.runner import BASELINE, Config, Suite
from bench.servers import ECHO_MODES

RESULTS = Path(__file__).resolve().parent / "results"
PRESETS: dict[str, dict[str, Any]] = {
    "full": {"rounds": 3, "duration": 1.0, "warmup": 0.3, "micro_scale": 1.0},
    "quick": {
        "rounds": 2,
        "duration": 0.2,
        "warmup": 0.05,
        "micro_scale": 0.1,
        "memory_every_round": False,
    },
    "smoke": {
        "rounds": 1,
        "duration": 0.15,
        "warmup": 0.05,
        "micro_scale": 0.02,
        "loops": ["asyncio", "loopy"],
        "modes": ["protocol", "sock"],
        "sizes": [100],
        "idle_connections": 100,
        "timers_for_memory": 10_000,
    },
}


def names(choices: tuple[str, ...]) -> Any:
    def parse(text: str) -> list[str]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        for item in items:
            if item not in choices:
                raise argparse.ArgumentTypeError(
                    f"unknown {item!r}; choose from {', '.join(choices)}"
                )
        return items

    return parse


def sizes(text: str) -> list[int]:
    """``100,1k,10KiB`` -> [100, 1024, 10240]."""
    result = []
    for item in text.split(","):
        word = item.strip().lower().removesuffix("ib").removesuffix("b")
        try:
            size = int(word[:-1]) * 1024 if word.endswith("k") else int(word)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a size: {item!r}") from None
        if not 0 < size <= 1024 * 1024:
            raise argparse.ArgumentTypeError(f"size out of range (1 B to 1 MiB): {size}")
        result.append(size)
    return result


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark loopy against asyncio's own loop and uvloop.",
        epilog="Defaults are the full run's; --quick and --smoke change them (see bench/cli.py).",
    )
    preset = p.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="a run of under a minute")
    preset.add_argument("--smoke", action="store_true", help="a tiny run, for the tests")
    p.add_argument("--rounds", type=int, help="rounds of interleaved loops (3; quick: 2)")
    p.add_argument("--duration", type=float, help="measured seconds per load run (1.0)")
    p.add_argument("--warmup", type=float, help="unmeasured seconds before each (0.3)")
    p.add_argument(
        "--loops",
        type=names(LOOPS),
        help=f"comma-separated, from {','.join(LOOPS)} (all; asyncio is always added)",
    )
    p.add_argument(
        "--modes", type=names(ECHO_MODES), help=f"echo modes, from {','.join(ECHO_MODES)} (all)"
    )
    p.add_argument("--sizes", type=sizes, help="echo message sizes (100,1k,10k)")
    p.add_argument("--connections", type=int, default=10, help="client connections (10)")
    p.add_argument(
        "--micro", action=argparse.BooleanOptionalAction, default=True, help="micro benchmarks"
    )
    p.add_argument("--micro-scale", type=float, help="multiplies micro benchmark sizes (1.0)")
    p.add_argument(
        "--http",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the aiohttp hello-world server",
    )
    p.add_argument(
        "--memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="RSS per idle connection and per pending timer",
    )
    p.add_argument("--idle-connections", type=int, help="connections for the memory (1000)")
    p.add_argument(
        "--instrument",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="loopy with a do-nothing instrument vs without",
    )
    p.add_argument(
        "--monitor",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="loopy made watchable (LOOPY_MONITOR=1, nobody attached) vs not",
    )
    p.add_argument(
        "--flight",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="loopy with its flight recorder on vs off (echo protocol; off by default)",
    )
    p.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="pin server and client to different cores",
    )
    p.add_argument(
        "--json",
        type=Path,
        default=RESULTS / "latest.json",
        help="results file (bench/results/latest.json)",
    )
    p.add_argument(
        "--plot",
        type=Path,
        default=RESULTS / "ratios.svg",
        help="SVG chart (bench/results/ratios.svg)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    return p


def make_config(args: argparse.Namespace) -> Config:
    preset = PRESETS["smoke" if args.smoke else "quick" if args.quick else "full"]
    config = Config(**preset)
    for name in (
        "rounds",
        "duration",
        "warmup",
        "loops",
        "modes",
        "sizes",
        "micro_scale",
        "idle_connections",
    ):
        value = getattr(args, name)
        if value is not None:
            setattr(config, name, value)
    config.connections = args.connections
    config.micro = args.micro
    config.http = args.http
    config.memory = args.memory
    config.instrument = args.instrument
    config.monitor = args.monitor
    config.flight = args.flight
    config.pin = args.pin
    config.verbose = not args.quiet
    return config


def check_config(config: Config) -> list[str]:
    """Drop what cannot run here; return notes saying so."""
    notes = []
    loops = []
    for loop in config.loops:
        reason = unavailable(loop)
        if reason:
            notes.append(f"skipping {loop}: {reason}")
        elif loop not in loops:
            loops.append(loop)
    if BASELINE not in loops:
        notes.append(f"adding {BASELINE}: the ratios are against it")
        loops.insert(0, BASELINE)
    config.loops = loops
    if config.http:
        try:
            import aiohttp  # noqa: F401, PLC0415 (optional)
        except ImportError:
            notes.append("skipping the aiohttp benchmark: aiohttp is not installed")
            config.http = False
    if config.rounds < 1 or config.duration <= 0 or config.warmup < 0 or config.connections < 1:
        raise SystemExit("--rounds and --connections must be ≥ 1, --duration > 0, --warmup ≥ 0")
    return notes


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    config = make_config(args)
    for note in check_config(config):
        print(f"note: {note}", file=sys.stderr)
    started = time.perf_counter()
    suite = Suite(config)
    suite.run()
    results = suite.results(sys.argv[1:] if argv is None else argv)
    for path in (args.json, args.plot):
        path.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    args.plot.write_text(render_svg(results))
    print()
    print(report.render(results))
    print()
    print(f"{time.perf_counter() - started:.1f} s; results in {args.json}, chart in {args.plot}")
    return 0
