"""What writing a full trace costs: time, memory, and the size of the file.

``uv run python -m bench.trace_export`` fills a recorder's ring buffer
(200,000 events by default) with a realistic mix (task steps, timers,
socket reads, waits), then writes it with ``write_trace`` and reports:

* the export time (wall clock, best of ``--rounds``);
* the process's RSS before and after the export, and its peak (``ru_maxrss``
  is the whole run's high-water mark, so the peak is measured in a child
  process that only fills and exports);
* under ``tracemalloc``, the buffer's own size and the extra peak while
  exporting, as a share of it (the unit test holds this to 50 %).

Export is done at exit by ``LOOPY_TRACE`` and ``loopy --trace``: a service
with a memory limit must not be killed at shutdown by its own trace, and
the trace must be on disk before a supervisor's patience runs out.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import loopy
from loopy.trace import DEFAULT_MAX_EVENTS, TraceRecorder, write_trace


def rss_mib() -> float:
    """The current resident set size, in MiB (Linux: /proc/self/statm)."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def fill(recorder: TraceRecorder, events: int) -> Any:
    """Run a small busy program on a loopy loop until ``recorder`` holds ``events`` events.

    Ten tasks take turns (``sleep(0)``), a timer fires every millisecond and
    a socketpair carries a message now and then.  The loop is returned
    still open, the recorder detached.
    """
    loop = loopy.new_event_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    recorder.attach(loop)

    async def spinner(n: int) -> None:
        i = 0
        while len(recorder._buffer) < events:
            i += 1
            if n == 0 and i % 50 == 0:
                b.send(b"x")
                await loop.sock_recv(a, 10)
            else:
                await asyncio.sleep(0)

    async def ticker() -> None:
        while len(recorder._buffer) < events:
            await asyncio.sleep(0.001)

    async def main() -> None:
        await asyncio.gather(ticker(), *(spinner(n) for n in range(10)))

    loop.run_until_complete(main())
    recorder.detach()
    a.close()
    b.close()
    return loop


def measure_tracemalloc(events: int, path: Path) -> dict[str, float]:
    """The buffer's size and the export's extra peak, under tracemalloc."""
    gc.collect()
    tracemalloc.start()
    recorder = TraceRecorder(events)
    before_fill = tracemalloc.get_traced_memory()[0]
    loop = fill(recorder, events)
    loop.close()
    gc.collect()
    buffer_bytes = tracemalloc.get_traced_memory()[0] - before_fill
    tracemalloc.reset_peak()
    current = tracemalloc.get_traced_memory()[0]
    write_trace(recorder, path)
    peak = tracemalloc.get_traced_memory()[1] - current
    tracemalloc.stop()
    return {
        "buffer_mib": buffer_bytes / 2**20,
        "export_peak_mib": peak / 2**20,
        "peak_share": peak / buffer_bytes,
    }


def measure_time_and_rss(events: int, path: Path, rounds: int) -> dict[str, float]:
    """Export time (best of ``rounds``) and RSS around the first export."""
    recorder = TraceRecorder(events)
    loop = fill(recorder, events)
    loop.close()
    gc.collect()
    rss_before = rss_mib()
    times = []
    rss_after = 0.0
    for _ in range(rounds):
        started = time.perf_counter()
        write_trace(recorder, path)
        times.append(time.perf_counter() - started)
        if not rss_after:
            rss_after = rss_mib()
    return {
        "events": len(recorder._buffer),
        "export_s": min(times),
        "export_s_worst": max(times),
        "rss_before_mib": rss_before,
        "rss_after_mib": rss_after,
        "file_mib": path.stat().st_size / 2**20,
    }


def child_peak(events: int, path: Path) -> dict[str, float]:
    """In a fresh process: RSS after filling, and the high-water mark once exported."""
    code = (
        "import json, resource, sys\n"
        "from pathlib import Path\n"
        "from bench.trace_export import fill, rss_mib\n"
        "from loopy.trace import TraceRecorder, write_trace\n"
        f"recorder = TraceRecorder({events})\n"
        f"fill(recorder, {events}).close()\n"
        "before = rss_mib()\n"
        "peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        f"write_trace(recorder, Path({str(path)!r}))\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        "print(json.dumps({'rss_filled_mib': before, 'peak_before_export_mib': peak_before,"
        " 'peak_after_export_mib': peak}))\n"
    )
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    result: dict[str, float] = json.loads(done.stdout)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.trace_export", description=__doc__)
    parser.add_argument("--events", type=int, default=DEFAULT_MAX_EVENTS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "trace.json"
        figures = measure_time_and_rss(options.events, path, options.rounds)
        figures.update(child_peak(options.events, path))
        figures.update(measure_tracemalloc(options.events, path))
    print(f"trace export of a full buffer ({figures['events']:,.0f} events)")
    print(
        f"  time            {figures['export_s']:.3f} s best, "
        f"{figures['export_s_worst']:.3f} s worst of {options.rounds}"
    )
    print(
        f"  RSS             {figures['rss_before_mib']:.1f} MiB before, "
        f"{figures['rss_after_mib']:.1f} MiB after"
    )
    print(
        f"  RSS peak        {figures['peak_before_export_mib']:.1f} MiB before export, "
        f"{figures['peak_after_export_mib']:.1f} MiB after (fresh process)"
    )
    print(
        f"  tracemalloc     buffer {figures['buffer_mib']:.1f} MiB, export peak "
        f"{figures['export_peak_mib']:.1f} MiB = {figures['peak_share'] * 100:.1f} % of it"
    )
    print(f"  file            {figures['file_mib']:.1f} MiB")
    if options.json:
        Path(options.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
