# ruff: noqa: RUF001 (the tables print multiplication signs and en dashes on purpose)
"""The readable end of a run: tables of medians and paired ratios, printed as text.

Each benchmark gets a few rows of figures and each loop a column.  Each cell
is the median over rounds, followed by the median of the per-round ratios
against the baseline (``x1.25`` printed as a multiplication sign: 1.25 times
better than the baseline, whichever direction "better" is for that figure;
see ``stats.py``).
"""

from __future__ import annotations

from typing import Any

ROWS_PER_GROUP: dict[str, list[tuple[str, str]]] = {
    "echo": [
        ("msgs_per_s", "msgs/s"),
        ("cpu_us_per_msg", "CPU µs/msg"),
        ("user_us_per_msg", "user µs/msg"),
        ("sys_us_per_msg", "sys µs/msg"),
        ("p50_us", "p50 µs"),
        ("p99_us", "p99 µs"),
    ],
    "micro": [("ops_per_s", "ops/s")],
    "memory": [],  # the primary figure, bytes per connection or timer
    "instrument": [],  # the primary figure, plus msgs/s for the echo benchmark
    "monitor": [],  # the same
    "flight": [
        ("msgs_per_s", "msgs/s"),
        ("cpu_us_per_msg", "CPU µs/msg"),
        ("user_us_per_msg", "user µs/msg"),
        ("sys_us_per_msg", "sys µs/msg"),
    ],
}
ROWS_PER_GROUP["http"] = ROWS_PER_GROUP["echo"]

LABELS = {"ops_per_s": "ops/s", "bytes_per_conn": "B/conn", "bytes_per_timer": "B/timer"}

SECTIONS = [
    (
        "echo",
        "Echo servers: request/response; server CPU per message (CPU: exact, from schedstat;\n"
        "user/sys: /proc/PID/stat, sampled at the kernel's tick, noisy in short windows)",
    ),
    ("http", "aiohttp hello world: HTTP/1.1 keep-alive GETs"),
    ("micro", "Micro benchmarks: operations per CPU second"),
    ("memory", "Memory: RSS growth"),
    ("instrument", "Instrument overhead: loopy with a do-nothing instrument vs loopy as-is"),
    ("monitor", "Monitor overhead: loopy made watchable (LOOPY_MONITOR=1) vs loopy as-is"),
    ("flight", "Flight recorder overhead: loopy with its flight recorder on vs loopy as-is"),
]


def format_value(value: float | None, unit: str) -> str:
    """A figure with a few significant digits, in a form that fits a table cell."""
    if value is None:
        return "–"
    if unit.startswith(("msg/s", "op/s")):
        for scale, suffix in ((1e6, "M"), (1e3, "k")):
            if abs(value) >= scale:
                return f"{value / scale:.3g}{suffix}"
        return f"{value:.3g}"
    if unit == "B":
        return f"{value:,.0f} B"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


def cell(result: dict[str, Any], metric: str, unit: str, *, baseline: bool) -> str:
    summary = result["summary"].get(metric)
    if summary is None:
        return "error" if result["errors"] else "–"
    text = format_value(summary["median"], unit)
    ratio = result["ratios"].get(metric, {}).get("median")
    if not baseline and ratio is not None:
        text += f" ×{ratio:.2f}"
    return text


def rows_for(bench: dict[str, Any]) -> list[tuple[str, str]]:
    rows = ROWS_PER_GROUP.get(bench["group"]) or []
    if not rows:
        primary = bench["primary"]
        rows = [(primary, LABELS.get(primary, primary))]
        if bench["group"] in ("instrument", "monitor") and primary != "ops_per_s":
            rows = [
                ("msgs_per_s", "msgs/s"),
                ("cpu_us_per_msg", "CPU µs/msg"),
                ("user_us_per_msg", "user µs/msg"),
            ]
    return rows


def render_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for index, row in enumerate([header, *rows]):
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [text.rjust(width) for text, width in zip(row[2:], widths[2:], strict=True)]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def render(results: dict[str, Any]) -> str:
    """All sections that have benchmarks, one table each."""
    out = []
    benchmarks = results["benchmarks"]
    for group, heading in SECTIONS:
        members = [b for b in benchmarks.values() if b["group"] == group]
        if not members:
            continue
        variants = list(members[0]["results"])
        baseline = members[0]["baseline"]
        header = ["benchmark", "figure", *variants]
        rows = []
        for bench in members:
            for n, (metric, label) in enumerate(rows_for(bench)):
                unit = bench["metrics"][metric]["unit"]
                row = [bench["title"] if n == 0 else "", label]
                for variant in variants:
                    result = bench["results"].get(variant)
                    row.append(
                        cell(result, metric, unit, baseline=variant == baseline) if result else "–"
                    )
                rows.append(row)
        out.append(f"{heading}\n(median; ×ratio = median paired advantage over {baseline})")
        out.append(render_table(header, rows))
    errors = [
        f"  {bench_id} on {variant}: {error.splitlines()[0] if error else error}"
        for bench_id, bench in benchmarks.items()
        for variant, result in bench["results"].items()
        for error in sorted(set(result["errors"]))
    ]
    if errors:
        out.append("Errors:\n" + "\n".join(errors))
    return "\n\n".join(out)
