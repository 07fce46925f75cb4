"""The figures of a trace: how busy the loop was, what held it longest, how late timers ran.

:func:`summarize` reads an exported trace (the dict :func:`~loopy.trace.load_trace`
returns), not a live recorder, so ``loopy trace summary FILE`` works on any
loopy trace saved earlier, and the viewer shows the very same figures.
:func:`format_summary` prints them as a small text table.

Definitions:

* **loop time**: the time spent inside iterations (the sum of their
  durations); time between two ``run_forever`` calls is not the loop's.
* **waiting**: the part of it spent in ``select()``; **busy** is the rest:
  running callbacks and the loop's own bookkeeping.
* **utilisation**: busy / loop time.  1.0 means the loop never waited: it
  is saturated, and anything new will queue.
* **timer lateness**: how long after its deadline each timer was moved to
  the ready queue (percentiles by nearest rank).
* **the recorded window**: when the ring buffer dropped events, the trace
  keeps only its last stretch (from the earliest event kept to the end).
  Every figure but ``duration`` is over that window: iterations per second
  divide by its length, not by the whole run's.
* **tasks**: every task in the trace entered it one way (``create_task``,
  first seen at a step, or created before the recorded window) and is
  either finished or unfinished, so ``tasks_seen`` is always
  ``tasks_finished + tasks_unfinished``.
"""

from __future__ import annotations

import datetime
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from .recorder import STEP_KINDS

__all__ = ["Percentiles", "SlowStep", "Summary", "format_summary", "printable", "summarize"]

#: The categories of callback events in a loopy trace: the recorder's kinds.
STEP_CATEGORIES = STEP_KINDS

#: How many of the slowest callbacks and busiest fds a summary keeps.
TOP = 10


@dataclass(frozen=True)
class SlowStep:
    """One callback or task step: seconds it held the loop, and when it started."""

    name: str
    kind: str
    duration: float
    start: float


@dataclass(frozen=True)
class Percentiles:
    """A distribution in seconds; all zero when ``count`` is 0."""

    count: int = 0
    p50: float = 0.0
    p90: float = 0.0
    p99: float = 0.0
    max: float = 0.0


@dataclass(frozen=True)
class Summary:
    """The figures of one trace; times in seconds.

    When the ring buffer dropped events, everything but ``duration`` is over
    the recorded window, the last ``recorded`` seconds: the first
    ``recorded_from`` seconds of the trace are not in the file.
    """

    duration: float
    iterations: int
    iterations_per_second: float
    loop_time: float
    wait_time: float
    busy_time: float
    utilisation: float
    callbacks: int
    callbacks_by_kind: dict[str, int]
    slowest: tuple[SlowStep, ...]
    timer_lateness: Percentiles
    busiest_fds: tuple[tuple[int, int], ...]  # (fd, times it was ready), busiest first
    tasks_created: int  # by create_task, within the recorded window (parent known)
    tasks_finished: int
    tasks_cancelled: int
    tasks_failed: int
    dropped_events: int
    start_wall_time: float | None = None
    tasks_first_seen: int = 0  # built directly or before the trace: seen at a first step
    tasks_unrecorded: int = 0  # created before the recorded window (their creation dropped)
    tasks_unfinished: int = 0
    recorded_from: float = 0.0

    @property
    def recorded(self) -> float:
        """Seconds of the trace whose events are all in the file."""
        return max(0.0, self.duration - self.recorded_from)

    @property
    def tasks_seen(self) -> int:
        """Every task in the trace; always ``tasks_finished + tasks_unfinished``."""
        return self.tasks_created + self.tasks_first_seen + self.tasks_unrecorded


def summarize(trace: dict[str, Any]) -> Summary:
    """The figures of a trace (see the module docstring for definitions).

    ``trace`` is a loopy trace as :func:`~loopy.trace.load_trace` returns it
    (checked) or :func:`~loopy.trace.to_chrome_trace` makes it.
    """
    events = trace.get("traceEvents", [])
    other = trace.get("otherData", {})
    duration = _duration(events, other)
    dropped = int(other.get("dropped_events", 0))
    recorded_from = _recorded_from(events, duration) if dropped else 0.0
    recorded = max(0.0, duration - recorded_from)
    iterations = [e for e in events if e.get("ph") == "X" and e.get("cat") == "iteration"]
    steps = [e for e in events if e.get("ph") == "X" and e.get("cat") in STEP_CATEGORIES]
    loop_time = _seconds(sum(e["dur"] for e in iterations))
    wait_time = sum(e["args"]["wait"] for e in iterations) / 1e3
    busy_time = max(0.0, loop_time - wait_time)
    origins = Counter(e["args"].get("origin") for e in events if _is_task(e) and e["ph"] == "b")
    outcomes = Counter(e["args"].get("outcome") for e in events if _is_task(e) and e["ph"] == "e")
    return Summary(
        duration=duration,
        iterations=len(iterations),
        iterations_per_second=len(iterations) / recorded if recorded > 0 else 0.0,
        loop_time=loop_time,
        wait_time=wait_time,
        busy_time=busy_time,
        utilisation=busy_time / loop_time if loop_time > 0 else 0.0,
        callbacks=len(steps),
        callbacks_by_kind=dict(Counter(e["cat"] for e in steps)),
        slowest=_slowest(steps),
        timer_lateness=_lateness(events),
        busiest_fds=_busiest_fds(events),
        tasks_created=origins["create_task"],
        tasks_first_seen=origins["first_sight"],
        tasks_unrecorded=sum(origins.values()) - origins["create_task"] - origins["first_sight"],
        tasks_finished=sum(n for outcome, n in outcomes.items() if outcome != "unfinished"),
        tasks_unfinished=outcomes["unfinished"],
        tasks_cancelled=outcomes["cancelled"],
        tasks_failed=outcomes["exception"],
        dropped_events=dropped,
        start_wall_time=other.get("start_wall_time"),
        recorded_from=recorded_from,
    )


def _seconds(microseconds: float) -> float:
    return microseconds / 1e6


def _is_task(event: dict[str, Any]) -> bool:
    return event.get("cat") == "task" and event.get("ph") in ("b", "e")


def _duration(events: list[dict[str, Any]], other: dict[str, Any]) -> float:
    """The exporter's own figure if there is one, else the end of the last event."""
    if "duration_us" in other:
        return _seconds(float(other["duration_us"]))
    ends = [e["ts"] + e.get("dur", 0) for e in events if e.get("ph") != "M" and "ts" in e]
    return _seconds(max(ends)) if ends else 0.0


def _recorded_from(events: list[dict[str, Any]], duration: float) -> float:
    """Where the recorded window begins: the earliest event the buffer kept.

    Everything before it fell out of the ring buffer.  (An iteration kept
    whole may begin a little before the first events inside it that were
    kept; its own figures are complete, so the window starts with it.)
    """
    starts = [e["ts"] for e in events if e.get("ph") != "M"]
    return min(_seconds(min(starts)), duration) if starts else duration


def _slowest(steps: list[dict[str, Any]]) -> tuple[SlowStep, ...]:
    ranked = sorted(steps, key=lambda e: e["dur"], reverse=True)[:TOP]
    return tuple(
        SlowStep(e["name"], e["cat"], _seconds(e["dur"]), _seconds(e["ts"])) for e in ranked
    )


def _lateness(events: list[dict[str, Any]]) -> Percentiles:
    values = sorted(
        e["args"]["lateness_ms"] / 1e3
        for e in events
        if e.get("ph") == "i" and e.get("cat") == "timer" and "lateness_ms" in e.get("args", {})
    )
    if not values:
        return Percentiles()
    return Percentiles(
        count=len(values),
        p50=_nearest_rank(values, 50),
        p90=_nearest_rank(values, 90),
        p99=_nearest_rank(values, 99),
        max=values[-1],
    )


def _nearest_rank(sorted_values: list[float], percent: float) -> float:
    """The smallest value with at least ``percent`` % of the values at or below it."""
    rank = math.ceil(percent / 100 * len(sorted_values))
    return sorted_values[max(rank, 1) - 1]


def _busiest_fds(events: list[dict[str, Any]]) -> tuple[tuple[int, int], ...]:
    counts = Counter(
        e["args"]["fd"]
        for e in events
        if e.get("ph") == "i" and e.get("cat") == "io" and "fd" in e.get("args", {})
    )
    return tuple(sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:TOP])


# ----------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


def _span(seconds: float) -> str:
    """A stretch of time as a person says it: ``2.3 s``, ``450.0 ms``."""
    return f"{seconds:.1f} s" if seconds >= 1 else f"{seconds * 1e3:.1f} ms"


# What a terminal would act on rather than show: C0 and C1 controls (ESC
# starts the sequences that recolour, move the cursor or retitle the
# window), DEL, the bidirectional overrides that reorder what follows, and
# the Unicode line and paragraph separators; and unpaired surrogates, which
# cannot be written to a UTF-8 terminal at all.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029\ud800-\udfff]")


def printable(text: str) -> str:
    """``text`` with every character a terminal would interpret written as an escape (``\\x1b``).

    Names in a trace come from the traced program (task names, reprs of
    callbacks): a summary printed to a terminal must not let them drive it.
    """
    return _UNPRINTABLE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def dropped_note(summary: Summary) -> str:
    """``first 2.3 s not recorded: 608,294 events dropped``, or "" when none were."""
    if not summary.dropped_events:
        return ""
    return (
        f"first {_span(summary.recorded_from)} not recorded: "
        f"{summary.dropped_events:,} events dropped"
    )


def tasks_line(summary: Summary) -> str:
    """How many tasks the trace saw, how each entered it, and how many finished."""
    s = summary
    origins = [f"created {s.tasks_created}"]
    if s.tasks_first_seen:
        origins.append(f"first seen running {s.tasks_first_seen}")
    if s.tasks_unrecorded:
        origins.append(f"created before the recorded window {s.tasks_unrecorded}")
    return (
        f"{s.tasks_seen} seen: {', '.join(origins)}; finished {s.tasks_finished} "
        f"(cancelled {s.tasks_cancelled}, failed {s.tasks_failed}), "
        f"unfinished {s.tasks_unfinished}"
    )


def format_summary(summary: Summary) -> str:
    """The summary as a text table, for a terminal (names with control characters escaped)."""
    s = summary
    lines = ["loopy trace summary", ""]
    rows = [("duration", _ms(s.duration))]
    if s.dropped_events:
        rows.append(("recorded", f"the last {_ms(s.recorded)}; {dropped_note(s)}"))
    per_second = f"{s.iterations_per_second:.1f} per second"
    if s.dropped_events:
        per_second += " recorded"
    rows += [
        ("started (wall clock)", _wall(s.start_wall_time)),
        ("iterations", f"{s.iterations}  ({per_second})"),
        ("loop time", f"{_ms(s.loop_time)} = busy {_ms(s.busy_time)} + waiting {_ms(s.wait_time)}"),
        ("utilisation", f"{s.utilisation * 100:.1f} %  (busy share of loop time)"),
        ("callbacks run", f"{s.callbacks}  {_by_kind(s.callbacks_by_kind)}".rstrip()),
        ("tasks", tasks_line(s)),
        ("dropped events", f"{s.dropped_events:,}"),
    ]
    width = max(len(label) for label, _ in rows)
    lines += [f"  {label:<{width}}  {value}" for label, value in rows]
    if s.tasks_first_seen:
        lines += [
            "",
            "  Tasks first seen running were built directly (asyncio.Task(...)) or",
            "  before the trace began: they count from their first step, parent unknown.",
        ]
    lines += ["", *_slowest_table(s.slowest), "", *_lateness_lines(s.timer_lateness)]
    lines += ["", *_fd_table(s.busiest_fds)]
    return "\n".join(lines) + "\n"


def _wall(timestamp: float | None) -> str:
    if timestamp is None:
        return "unknown"
    when = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return when.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _by_kind(by_kind: dict[str, int]) -> str:
    parts = [f"{kind} {by_kind[kind]}" for kind in STEP_CATEGORIES if by_kind.get(kind)]
    return f"({', '.join(parts)})" if parts else ""


def _slowest_table(slowest: tuple[SlowStep, ...]) -> list[str]:
    lines = ["slowest callbacks and task steps"]
    if not slowest:
        return [*lines, "  (none)"]
    lines.append(f"  {'took (ms)':>12}  {'at (ms)':>12}  {'kind':<9}  name")
    lines += [
        f"  {step.duration * 1e3:12.3f}  {step.start * 1e3:12.3f}  {step.kind:<9}  "
        f"{printable(step.name)}"
        for step in slowest
    ]
    return lines


def _lateness_lines(lateness: Percentiles) -> list[str]:
    title = f"timer lateness ({lateness.count} timers fired)"
    if not lateness.count:
        return [title, "  (none)"]
    figures = [("p50", lateness.p50), ("p90", lateness.p90), ("p99", lateness.p99)]
    figures.append(("max", lateness.max))
    return [title, "  " + "   ".join(f"{label} {_ms(value)}" for label, value in figures)]


def _fd_table(fds: tuple[tuple[int, int], ...]) -> list[str]:
    lines = ["busiest file descriptors"]
    if not fds:
        return [*lines, "  (none)"]
    lines.append(f"  {'fd':>6}  {'times ready':>11}")
    lines += [f"  {fd:>6}  {count:>11}" for fd, count in fds]
    return lines
