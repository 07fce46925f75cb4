"""loopy's benchmark suite: loopy against asyncio's own loop and uvloop.

Run it with ``uv run python -m bench`` (``--help`` lists the options,
``--quick`` finishes in under a minute).  What it measures:

* **echo servers** (``servers.py``): one server subprocess per loop and mode
  (Protocol, streams, ``sock_*`` coroutines, BufferedProtocol), driven by a
  load generator in this process (``client.py``, plain sockets and epoll)
  pinned to another core: msgs/s, client-side p50/p99 latency, and the
  server's CPU per message (exact total from ``/proc/PID/task/*/schedstat``,
  user/system split from ``/proc/PID/stat``);
* **an aiohttp hello-world server** under the same load generator;
* **micro benchmarks** (``micro.py``), one subprocess per loop: a
  ``call_soon`` chain, timers, task spawn/await, future wake-ups,
  ``asyncio.sleep(0)``;
* **memory**: RSS per idle connection and per pending timer;
* **instrument overhead**: loopy as-is against loopy with a do-nothing
  instrument attached;
* **flight recorder overhead** (``--flight``, off by default): loopy as-is
  against loopy with its flight recorder on, Protocol echo at each size.

Loops run interleaved within each round and every figure is compared with
the baseline loop of the same round (``runner.py``); the medians, min-max and
paired ratios are computed in ``stats.py``, printed by ``report.py``, written
as JSON, and drawn as an SVG bar chart by ``plot.py``.
"""
