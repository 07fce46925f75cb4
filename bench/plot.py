# ruff: noqa: RUF001 (the chart prints multiplication signs and en dashes on purpose)
"""An SVG bar chart of the median ratios against the baseline, written by hand.

One row per benchmark, one bar per loop.  The x axis is logarithmic and the
bars grow from the 1.0 line: rightwards when the loop beat the baseline,
leftwards when it lost, so 2x better and 2x worse are equally long.  Whiskers
span the per-round min-max.  Each benchmark contributes its primary figure
(server CPU per message for the servers, ops per CPU second for the
micro benchmarks, bytes for memory).  No plotting library needed.
"""

from __future__ import annotations

import math
from typing import Any
from xml.sax.saxutils import escape

COLORS = {
    "asyncio": "#7f7f7f",
    "uvloop": "#8e6cc0",
    "loopy": "#1f6fb4",
    "loopy-own": "#6fb3e0",
    "loopy+instrument": "#f08a24",
    "loopy+monitor": "#2ca02c",
    "loopy+flight": "#9467bd",
}
SECTION_TITLES = {
    "echo": "Echo servers: server CPU (user + system) per message",
    "http": "aiohttp hello world: server CPU (user + system) per request",
    "micro": "Micro benchmarks: operations per CPU second",
    "memory": "Memory: RSS per idle connection / pending timer",
    "instrument": "Instrument overhead (baseline: loopy with no instrument)",
    "monitor": "Monitor overhead (baseline: loopy, not watchable)",
    "flight": "Flight recorder overhead (baseline: loopy with it off)",
}
TICKS = (0.1, 0.2, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0, 20.0, 50.0)

WIDTH = 900
LABEL_RIGHT = 250  # right edge of the benchmark labels
PLOT_LEFT, PLOT_RIGHT = 270, WIDTH - 30
BAR_HEIGHT, BAR_GAP, ROW_GAP, SECTION_GAP = 10, 2, 8, 30


def _text(x: float, y: float, text: str, **attrs: str | float) -> str:
    extra = "".join(f' {k.replace("_", "-")}="{v}"' for k, v in attrs.items())
    return f'<text x="{x:.1f}" y="{y:.1f}"{extra}>{escape(text)}</text>'


def _domain(benchmarks: list[dict[str, Any]]) -> tuple[float, float]:
    """The ratio range to show: all whiskers, at least 0.8 to 1.25, with some margin."""
    low, high = 0.8, 1.25
    for bench in benchmarks:
        for variant, result in bench["results"].items():
            if variant == bench["baseline"]:
                continue
            ratio = result["ratios"].get(bench["primary"], {})
            for key in ("min", "max"):
                if ratio.get(key):
                    low, high = min(low, ratio[key]), max(high, ratio[key])
    return low / 1.25, high * 1.3


def render_svg(results: dict[str, Any]) -> str:
    """The chart as SVG text."""
    benchmarks = list(results["benchmarks"].values())
    low, high = _domain(benchmarks)
    span = math.log(high) - math.log(low)

    def x_of(ratio: float) -> float:
        ratio = min(max(ratio, low), high)
        return PLOT_LEFT + (math.log(ratio) - math.log(low)) / span * (PLOT_RIGHT - PLOT_LEFT)

    variants_seen: list[str] = []
    body: list[str] = []
    y = 78.0
    for group, section_title in SECTION_TITLES.items():
        members = [b for b in benchmarks if b["group"] == group]
        if not members:
            continue
        y += SECTION_GAP - 10
        body.append(_text(12, y, section_title, font_weight="bold", font_size=13))
        y += 8
        for bench in members:
            variants = [v for v in bench["results"] if v != bench["baseline"]]
            for variant in variants:
                if variant not in variants_seen:
                    variants_seen.append(variant)
            row_height = len(variants) * (BAR_HEIGHT + BAR_GAP)
            body.append(
                _text(
                    LABEL_RIGHT,
                    y + row_height / 2 + 4,
                    bench["title"],
                    text_anchor="end",
                    font_size=11,
                )
            )
            for variant in variants:
                ratio = bench["results"][variant]["ratios"].get(bench["primary"], {})
                body.extend(_bar(ratio, y, COLORS.get(variant, "#444"), x_of))
                y += BAR_HEIGHT + BAR_GAP
            y += ROW_GAP
    y += 10
    axis_top, axis_bottom = 70.0, y - 10

    axis = [
        f'<line x1="{x_of(1.0):.1f}" y1="{axis_top}" x2="{x_of(1.0):.1f}" '
        f'y2="{axis_bottom:.1f}" stroke="#222" stroke-width="1.2"/>'
    ]
    for tick in TICKS:
        if low <= tick <= high and tick != 1.0:
            x = x_of(tick)
            axis.append(
                f'<line x1="{x:.1f}" y1="{axis_top}" x2="{x:.1f}" y2="{axis_bottom:.1f}" '
                f'stroke="#ddd" stroke-width="1"/>'
            )
    for tick in TICKS:
        if low <= tick <= high:
            axis.append(
                _text(
                    x_of(tick), axis_bottom + 16, f"{tick:g}×", text_anchor="middle", font_size=11
                )
            )
    height = axis_bottom + 40

    rounds = results.get("config", {}).get("rounds", "?")
    header = [
        _text(12, 22, "loopy vs asyncio's own loop (and uvloop)", font_weight="bold", font_size=16),
        _text(
            12,
            40,
            f"median of per-round paired ratios over {rounds} rounds, whiskers min–max; "
            "> 1 = better than the baseline (asyncio unless noted)",
            font_size=11,
            fill="#444",
        ),
    ]
    x = 12.0
    for variant in variants_seen:
        color = COLORS.get(variant, "#444")
        header.append(f'<rect x="{x:.1f}" y="50" width="12" height="10" fill="{color}"/>')
        header.append(_text(x + 16, 59, variant, font_size=11))
        x += 30 + 7 * len(variant)
    header.append(
        _text(WIDTH - 12, 59, "← worse | better →", text_anchor="end", font_size=11, fill="#444")
    )

    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0f}" '
            f'viewBox="0 0 {WIDTH} {height:.0f}" font-family="Helvetica, Arial, sans-serif">',
            f'<rect width="{WIDTH}" height="{height:.0f}" fill="white"/>',
            *axis,
            *header,
            *body,
            "</svg>",
            "",
        ]
    )


def _bar(ratio: dict[str, Any], y: float, color: str, x_of: Any) -> list[str]:
    """One bar from the 1.0 line to the median, its whisker, and its value."""
    median = ratio.get("median")
    if median is None:
        return [_text(x_of(1.0) + 4, y + BAR_HEIGHT - 1, "n/a", font_size=10, fill="#a00")]
    one, end = x_of(1.0), x_of(median)
    left, right = min(one, end), max(one, end)
    parts = [
        f'<rect x="{left:.1f}" y="{y:.1f}" width="{max(right - left, 1):.1f}" '
        f'height="{BAR_HEIGHT}" fill="{color}"/>'
    ]
    lo, hi = x_of(ratio["min"]), x_of(ratio["max"])
    mid = y + BAR_HEIGHT / 2
    parts.append(
        f'<path d="M{lo:.1f},{mid - 3:.1f}V{mid + 3:.1f}M{lo:.1f},{mid:.1f}H{hi:.1f}'
        f'M{hi:.1f},{mid - 3:.1f}V{mid + 3:.1f}" stroke="#222" stroke-width="1" fill="none"/>'
    )
    label = f"{median:.2f}×"
    if median >= 1:
        parts.append(_text(max(hi, end) + 4, y + BAR_HEIGHT - 1, label, font_size=10))
    else:
        parts.append(
            _text(min(lo, end) - 4, y + BAR_HEIGHT - 1, label, font_size=10, text_anchor="end")
        )
    return parts
