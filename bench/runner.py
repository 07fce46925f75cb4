"""The orchestration: which benchmark runs when, in which process, on which core.

A run is ``rounds`` rounds.  Within a round every benchmark runs once per
loop, the loops one after the other (A B C D, then the next benchmark), and
the order of the loops rotates from round to round so that no loop always
goes first.  Every figure is therefore paired with the baseline loop's figure
of the same round (``stats.py``).

Processes: each server is a fresh subprocess per round (``servers.py``),
pinned to the server core; the load generator runs here, pinned to the
client core; the micro benchmarks run in one subprocess per loop and round
(``micro.py``), pinned to the server core.  Servers are always stopped in a
``finally``, and also die with this process.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import selectors
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import client
from bench.loops import FLIGHT, INSTRUMENTED, MONITORED
from bench.proc import CLK_TCK, pick_cores, pin, rss_bytes
from bench.report import format_value
from bench.stats import paired_ratios, ratio_summary, summarize

ROOT = Path(__file__).resolve().parent.parent
BASELINE = "asyncio"
MICRO_BENCHMARKS = ("call_soon", "timers", "tasks", "future_wakeup", "futures", "sleep0")
SERVER_START_TIMEOUT = 60.0
SUBPROCESS_TIMEOUT = 600.0
# A fresh server is slower for its first moments (cold caches, first
# allocations; and see servers.raise_mmap_threshold): the first load on each
# server warms up at least this long.
FIRST_WARMUP = 0.15

# name: (unit, better) -- better is "higher", "lower", or None for context only.
ECHO_METRICS: dict[str, tuple[str, str | None]] = {
    "msgs_per_s": ("msg/s", "higher"),
    "user_us_per_msg": ("µs", "lower"),
    "sys_us_per_msg": ("µs", "lower"),
    "cpu_us_per_msg": ("µs", "lower"),  # exact, from schedstat
    "p50_us": ("µs", "lower"),
    "p99_us": ("µs", "lower"),
    "server_busy": ("fraction of a core", None),
    "client_busy": ("fraction of a core", None),
    "client_cpu_us_per_msg": ("µs", None),
    "messages": ("messages", None),
    "window_s": ("s", None),
}
MICRO_METRICS: dict[str, tuple[str, str | None]] = {
    "ops_per_s": ("op/s (CPU time)", "higher"),
    "n": ("operations", None),
    "cpu_s": ("s", None),
    "wall_s": ("s", None),
}
CONN_MEMORY_METRICS: dict[str, tuple[str, str | None]] = {
    "bytes_per_conn": ("B", "lower"),
    "connections": ("connections", None),
}
TIMER_MEMORY_METRICS: dict[str, tuple[str, str | None]] = {
    "bytes_per_timer": ("B", "lower"),
    "n": ("timers", None),
}


@dataclass
class Config:
    """Everything a run depends on (the CLI fills it in)."""

    rounds: int = 3
    duration: float = 1.0
    warmup: float = 0.3
    loops: list[str] = field(default_factory=lambda: ["asyncio", "uvloop", "loopy", "loopy-own"])
    modes: list[str] = field(default_factory=lambda: ["protocol", "streams", "sock", "buffered"])
    sizes: list[int] = field(default_factory=lambda: [100, 1024, 10240])
    connections: int = 10
    micro: bool = True
    micro_scale: float = 1.0
    http: bool = True
    memory: bool = True
    memory_every_round: bool = True  # False: the first round only (the figures hardly move)
    idle_connections: int = 1000
    timers_for_memory: int = 100_000
    instrument: bool = True
    monitor: bool = True
    flight: bool = False  # the flight recorder's cost: loopy with it on vs off
    pin: bool = True
    verbose: bool = True


@dataclass
class Benchmark:
    """One benchmark, its figures per loop and round, and what they mean."""

    id: str
    group: str
    title: str
    baseline: str
    variants: list[str]
    primary: str
    metrics: dict[str, tuple[str, str | None]]
    params: dict[str, Any]
    rounds: dict[str, list[dict[str, Any] | None]]

    def record(self, variant: str, round_index: int, figures: dict[str, Any]) -> None:
        self.rounds[variant][round_index] = figures

    def to_json(self) -> dict[str, Any]:
        """The benchmark with a summary and paired ratios per loop (see ``stats.py``)."""
        results: dict[str, Any] = {}
        base = [r if r and "error" not in r else None for r in self.rounds[self.baseline]]
        for variant in self.variants:
            rounds = self.rounds[variant]
            clean = [r if r and "error" not in r else None for r in rounds]
            summary = {}
            ratios = {}
            for metric, (_unit, better) in self.metrics.items():
                values = [r[metric] for r in clean if r is not None and metric in r]
                summary[metric] = summarize(values)
                if better is not None:
                    ratios[metric] = ratio_summary(paired_ratios(clean, base, metric, better))
            errors = [r["error"] for r in rounds if r and "error" in r]
            results[variant] = {
                "rounds": rounds,
                "summary": summary,
                "ratios": ratios,
                "errors": errors,
            }
        return {
            "title": self.title,
            "group": self.group,
            "baseline": self.baseline,
            "primary": self.primary,
            "params": self.params,
            "metrics": {
                name: {"unit": unit, "better": better}
                for name, (unit, better) in self.metrics.items()
            },
            "results": results,
        }


class ServerProcess:
    """A server subprocess (``python -m bench.servers``) and the port it listens on."""

    def __init__(self, loop: str, mode: str, core: int | None) -> None:
        self.loop = loop
        self.mode = mode
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop())
        command = [sys.executable, "-m", "bench.servers", "--loop", loop, "--mode", mode]
        if core is not None:
            command += ["--core", str(core)]
        self.proc = subprocess.Popen(
            command,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
        )
        self.pid = self.proc.pid
        self.port = 0
        self.warmed = False  # has had its first, longer warm-up

    def wait_ready(self, timeout: float = SERVER_START_TIMEOUT) -> None:
        """Wait for the ``PORT <n>`` line; raise with the server's stderr if it fails."""
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                raise RuntimeError(f"{self} did not start within {timeout} s")
        line = self.proc.stdout.readline().decode()
        if not line.startswith("PORT "):
            self.proc.wait(5)
            raise RuntimeError(f"{self} failed to start:\n{self.stderr_tail()}")
        self.port = int(line.split()[1])

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self} exited with {self.proc.returncode}:\n{self.stderr_tail()}")

    def stderr_tail(self, limit: int = 2000) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")[-limit:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.stderr.close()

    def __str__(self) -> str:
        return f"server {self.loop}/{self.mode} (pid {self.pid})"


@contextlib.contextmanager
def running_servers(
    loops: list[str], mode: str, core: int | None
) -> Iterator[dict[str, ServerProcess | Exception]]:
    """Start one server per loop (in parallel), yield them by loop, always stop them all."""
    servers: dict[str, ServerProcess | Exception] = {}
    try:
        for loop in loops:
            try:
                servers[loop] = ServerProcess(loop, mode, core)
            except OSError as exc:
                servers[loop] = exc
        for loop, server in servers.items():
            if isinstance(server, ServerProcess):
                try:
                    server.wait_ready()
                except RuntimeError as exc:
                    servers[loop] = exc
                    server.stop()
        yield servers
    finally:
        for server in servers.values():
            if isinstance(server, ServerProcess):
                server.stop()


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class Suite:
    """Runs the benchmarks of a :class:`Config` and keeps their figures."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.server_core, self.client_core = pick_cores() if config.pin else (None, None)
        self.benchmarks: dict[str, Benchmark] = {}
        self.started = time.time()

    # -- bookkeeping ---------------------------------------------------------

    def benchmark(
        self,
        bench_id: str,
        *,
        group: str,
        title: str,
        primary: str,
        metrics: dict[str, tuple[str, str | None]],
        params: dict[str, Any],
        variants: list[str] | None = None,
        baseline: str = BASELINE,
    ) -> Benchmark:
        """The benchmark ``bench_id``, created on first use."""
        if bench_id not in self.benchmarks:
            variants = variants or self.config.loops
            self.benchmarks[bench_id] = Benchmark(
                id=bench_id,
                group=group,
                title=title,
                baseline=baseline,
                variants=list(variants),
                primary=primary,
                metrics=metrics,
                params=params,
                rounds={v: [None] * self.config.rounds for v in variants},
            )
        return self.benchmarks[bench_id]

    def log(self, message: str) -> None:
        if self.config.verbose:
            print(message, file=sys.stderr, flush=True)

    def progress(self, round_index: int, bench: Benchmark) -> None:
        if not self.config.verbose:
            return
        unit = bench.metrics[bench.primary][0]
        cells = []
        for variant in bench.variants:
            figures = bench.rounds[variant][round_index]
            if figures is None:
                continue
            if "error" in figures:
                cells.append(f"{variant} error")
            else:
                cells.append(f"{variant} {format_value(figures[bench.primary], unit)}")
        self.log(
            f"  {time.time() - self.started:5.1f} s  round {round_index + 1}/{self.config.rounds}"
            f"  {bench.title:<32} "
            f"{bench.primary}: " + ", ".join(cells)
        )

    # -- the run ---------------------------------------------------------------

    def run(self) -> None:
        pin(self.client_core)
        config = self.config
        for r in range(config.rounds):
            order = rotated(config.loops, r)
            self.log(f"round {r + 1}/{config.rounds}: loops in order {', '.join(order)}")
            for mode in config.modes:
                self.echo_round(r, mode, order)
            if config.http:
                self.http_round(r, order)
            if config.micro or self.measure_memory(r):
                self.micro_round(r, order)
            if config.instrument and "loopy" in config.loops:
                self.instrument_round(r)
            if config.monitor and "loopy" in config.loops:
                self.monitor_round(r)
            if config.flight and "loopy" in config.loops:
                self.flight_round(r)

    def measure_memory(self, r: int) -> bool:
        return self.config.memory and (r == 0 or self.config.memory_every_round)

    def echo_round(self, r: int, mode: str, order: list[str]) -> None:
        """Idle-connection memory (on fresh servers), then echo load at every size."""
        config = self.config
        with running_servers(order, mode, self.server_core) as servers:
            if self.measure_memory(r):
                bench = self.benchmark(
                    f"memory/idle_conn/{mode}",
                    group="memory",
                    title=f"memory per idle conn, {mode}",
                    primary="bytes_per_conn",
                    metrics=CONN_MEMORY_METRICS,
                    params={"mode": mode, "connections": config.idle_connections},
                )
                for loop in order:
                    bench.record(loop, r, self.measure_idle_memory(servers[loop]))
                self.progress(r, bench)
            for size in config.sizes:
                bench = self.benchmark(
                    f"echo/{mode}/{size}",
                    group="echo",
                    title=f"echo {mode} {format_size(size)}",
                    primary="cpu_us_per_msg",
                    metrics=ECHO_METRICS,
                    params={"mode": mode, "size": size, "connections": config.connections},
                )
                request = b"x" * size
                for loop in order:
                    bench.record(loop, r, self.measure_load(servers[loop], request, echo=True))
                self.progress(r, bench)

    def http_round(self, r: int, order: list[str]) -> None:
        config = self.config
        bench = self.benchmark(
            "http/aiohttp",
            group="http",
            title="aiohttp hello world",
            primary="cpu_us_per_msg",
            metrics=ECHO_METRICS,
            params={"connections": config.connections, "request": "GET / keep-alive"},
        )
        with running_servers(order, "http", self.server_core) as servers:
            for loop in order:
                bench.record(loop, r, self.measure_load(servers[loop], b"", echo=False))
        self.progress(r, bench)

    def micro_round(self, r: int, order: list[str]) -> None:
        config = self.config
        names = (["timer_memory"] if self.measure_memory(r) else []) + (
            list(MICRO_BENCHMARKS) if config.micro else []
        )
        for loop in order:
            figures = self.run_micro(loop, names, config.micro_scale)
            for name in names:
                self.record_micro(name, loop, r, figures[name])
        for name in names:
            self.progress(r, self.benchmarks[micro_id(name)])

    def paired_echo(self, r: int, variant: str, group: str, title: str, sizes: list[int]) -> None:
        """loopy as-is against ``variant`` (loopy with something on), protocol echo, each size.

        The two servers run side by side and are measured in turns whose
        order alternates from round to round; the report's ratio is the
        median of the per-round pairs.
        """
        variants = rotated(["loopy", variant], r)
        with running_servers(variants, "protocol", self.server_core) as servers:
            for size in sizes:
                bench = self.benchmark(
                    f"{group}/echo/protocol/{size}",
                    group=group,
                    title=f"{title}: echo protocol {format_size(size)}",
                    primary="cpu_us_per_msg",
                    metrics=ECHO_METRICS,
                    params={
                        "mode": "protocol",
                        "size": size,
                        "connections": self.config.connections,
                    },
                    variants=["loopy", variant],
                    baseline="loopy",
                )
                for loop in variants:
                    bench.record(loop, r, self.measure_load(servers[loop], b"x" * size, echo=True))
                self.progress(r, bench)

    def instrument_round(self, r: int) -> None:
        """loopy as-is against loopy with a do-nothing instrument attached."""
        size = min(self.config.sizes)
        self.paired_echo(r, INSTRUMENTED, "instrument", "instrument", [size])
        variants = rotated(["loopy", INSTRUMENTED], r)
        bench = self.benchmark(
            "instrument/micro/call_soon",
            group="instrument",
            title="instrument: call_soon chain",
            primary="ops_per_s",
            metrics=MICRO_METRICS,
            params={},
            variants=["loopy", INSTRUMENTED],
            baseline="loopy",
        )
        for loop in variants:
            figures = self.run_micro(loop, ["call_soon"], self.config.micro_scale)
            bench.record(loop, r, figures["call_soon"])
            bench.params["n"] = figures["call_soon"].get("n")
        self.progress(r, bench)

    def monitor_round(self, r: int) -> None:
        """loopy as-is against loopy made watchable (LOOPY_MONITOR=1), nobody attached.

        The issue's measurement: protocol echo of 1 KiB messages, whatever
        the sizes of the echo benchmarks.
        """
        self.paired_echo(r, MONITORED, "monitor", "monitor", [1024])

    def flight_round(self, r: int) -> None:
        """loopy as-is against loopy with its flight recorder on: echo protocol, each size."""
        self.paired_echo(r, FLIGHT, "flight", "flight recorder", list(self.config.sizes))

    # -- single measurements -----------------------------------------------------

    def measure_load(
        self, server: ServerProcess | Exception, request: bytes, *, echo: bool
    ) -> dict[str, Any]:
        if isinstance(server, Exception):
            return {"error": error_text(server)}
        try:
            server.check_alive()
            warmup = self.config.warmup if server.warmed else max(self.config.warmup, FIRST_WARMUP)
            server.warmed = True
            result = client.run_load(
                server.port,
                server.pid,
                request=request if echo else client.http_request(server.port),
                response=client.EchoResponse if echo else client.HttpResponse,
                connections=self.config.connections,
                warmup=warmup,
                duration=self.config.duration,
            )
        except (OSError, RuntimeError, ValueError) as exc:
            return {"error": error_text(exc)}
        return result.metrics()

    def measure_idle_memory(self, server: ServerProcess | Exception) -> dict[str, Any]:
        """RSS growth of the server per idle connection (each has echoed one byte)."""
        if isinstance(server, Exception):
            return {"error": error_text(server)}
        count = self.config.idle_connections
        try:
            server.check_alive()
            # Warm the server's code paths first, so the delta is the connections'.
            with client.idle_connections(server.port, 10):
                pass
            time.sleep(0.05)
            before = rss_bytes(server.pid)
            with client.idle_connections(server.port, count):
                time.sleep(0.05)
                after = rss_bytes(server.pid)
        except (OSError, RuntimeError) as exc:
            return {"error": error_text(exc)}
        return {"bytes_per_conn": (after - before) / count, "connections": count}

    def run_micro(self, loop: str, names: list[str], scale: float) -> dict[str, dict[str, Any]]:
        """Run micro benchmarks ``names`` in a subprocess on ``loop``; figures by name."""
        command = [
            sys.executable,
            "-m",
            "bench.micro",
            "--loop",
            loop,
            "--benchmarks",
            ",".join(names),
            "--scale",
            str(scale),
            "--timer-memory-count",
            str(self.config.timers_for_memory),
        ]
        if self.server_core is not None:
            command += ["--core", str(self.server_core)]
        try:
            done = subprocess.run(
                command,
                cwd=ROOT,
                capture_output=True,
                timeout=SUBPROCESS_TIMEOUT,
                check=True,
                stdin=subprocess.DEVNULL,
            )
            figures: dict[str, dict[str, Any]] = json.loads(done.stdout)
        except subprocess.CalledProcessError as exc:
            error = f"micro benchmarks on {loop} failed: {exc.stderr.decode()[-2000:]}"
            return {name: {"error": error} for name in names}
        except (subprocess.TimeoutExpired, ValueError) as exc:
            return {name: {"error": error_text(exc)} for name in names}
        return figures

    def record_micro(self, name: str, loop: str, r: int, figures: dict[str, Any]) -> None:
        if name == "timer_memory":
            bench = self.benchmark(
                micro_id(name),
                group="memory",
                title="memory per pending timer",
                primary="bytes_per_timer",
                metrics=TIMER_MEMORY_METRICS,
                params={"timers": self.config.timers_for_memory},
            )
        else:
            bench = self.benchmark(
                micro_id(name),
                group="micro",
                title=f"micro {name}",
                primary="ops_per_s",
                metrics=MICRO_METRICS,
                params={"n": figures.get("n")},
            )
        bench.record(loop, r, figures)

    # -- results -------------------------------------------------------------------

    def results(self, argv: list[str] | None = None) -> dict[str, Any]:
        """Everything as one JSON-ready dict (the structure is described in ``cli.py``)."""
        versions = {"python": platform.python_version()}
        for name in ("uvloop", "aiohttp", "loopy"):
            try:
                module = __import__(name)
                versions[name] = getattr(module, "__version__", "?")
            except ImportError:
                versions[name] = None
        config = self.config
        return {
            "meta": {
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
                "elapsed_s": time.time() - self.started,
                "argv": argv,
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "server_core": self.server_core,
                "client_core": self.client_core,
                "clk_tck": CLK_TCK,
                "versions": versions,
                "ratio": (
                    "advantage over the benchmark's baseline loop in the same round: "
                    "value/baseline where higher is better, baseline/value where lower "
                    "is better; > 1 means better than the baseline"
                ),
            },
            "config": config.__dict__,
            "benchmarks": {bench_id: b.to_json() for bench_id, b in self.benchmarks.items()},
        }


def micro_id(name: str) -> str:
    return "memory/timer" if name == "timer_memory" else f"micro/{name}"


def rotated(items: list[str], by: int) -> list[str]:
    """``items`` rotated left by ``by``: round r starts with a different loop."""
    if not items:
        return []
    by %= len(items)
    return items[by:] + items[:by]


def format_size(size: int) -> str:
    if size >= 1024 and size % 1024 == 0:
        return f"{size // 1024} KiB"
    return f"{size} B"
