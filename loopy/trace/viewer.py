"""The trace viewer: one self-contained HTML page that draws a trace as a timeline.

``write_viewer("trace.json")`` writes ``trace.html`` beside it.  Open it in
any browser, offline: the page has no external resource at all.  Its parts:

* the **figures** of :func:`~loopy.trace.summarize`, computed here in Python
  and written into the page as HTML, so they are the very numbers
  ``loopy trace summary`` prints;
* the **trace itself**, embedded as JSON in a
  ``<script type="application/json">`` element (with ``<``, ``>`` and ``&``
  escaped, so no string in the trace can close the element);
* a **script** that draws it on a canvas: one lane for the iterations (busy
  part dark, waiting part light), one for what the loop did (waits in grey,
  callbacks coloured by kind), one for timer firings and I/O readiness, one
  for the ready queue's length, and a row per task from creation to
  completion.  Mouse wheel or the buttons zoom, dragging pans, hovering
  shows details; ``trace.html#1000-5000`` opens showing 1 ms to 5 ms.

After every drawing the script writes how many iterations it drew into
``<span id="drawn-iterations">`` and the body's ``data-drawn-iterations``
attribute, and any script error into ``<pre id="errors">``: a test (or a
person) can check the page really rendered the trace.
"""

from __future__ import annotations

import html
import json
import re
from os import PathLike
from pathlib import Path
from typing import Any

from .fileformat import json_safe, load_trace
from .summary import STEP_CATEGORIES, Summary, dropped_note, format_summary, summarize

__all__ = ["page_path", "render_viewer", "write_viewer"]


def write_viewer(
    trace_path: str | PathLike[str], html_path: str | PathLike[str] | None = None
) -> Path:
    """Write the viewer page for the trace at ``trace_path``; return the page's path.

    By default the page goes next to the trace, with ``.html`` for its
    suffix: ``trace.json`` gives ``trace.html``.  Reading errors are those of
    :func:`~loopy.trace.load_trace`; a page that cannot be written raises
    :class:`OSError`.
    """
    target = page_path(trace_path, html_path)
    page = render_viewer(load_trace(trace_path), title=Path(trace_path).name)
    target.write_text(page, encoding="utf-8")
    return target


def page_path(
    trace_path: str | PathLike[str], html_path: str | PathLike[str] | None = None
) -> Path:
    """Where :func:`write_viewer` writes the page; ValueError if that is the trace itself."""
    trace_path = Path(trace_path)
    target = Path(html_path) if html_path is not None else trace_path.with_suffix(".html")
    if target == trace_path:
        raise ValueError(f"the viewer would overwrite the trace itself: {trace_path}")
    return target


def render_viewer(trace: dict[str, Any], *, title: str = "trace") -> str:
    """The viewer page for ``trace`` (a loopy trace dict), as a string."""
    summary = summarize(trace)
    parts = {
        "TITLE": html.escape(title),
        "HEADLINE": html.escape(_headline(trace, summary)),
        "DROPPED": _dropped(summary),
        "CARDS": _cards(summary),
        "TABLES": _tables(summary),
        "TEXT_SUMMARY": html.escape(format_summary(summary)),
        "ITERATIONS": str(summary.iterations),
        "RECORDED_FROM": repr(round(summary.recorded_from * 1e6, 3)),
        "DROPPED_EVENTS": str(summary.dropped_events),
        "STYLE": _STYLE,
        "SCRIPT": _SCRIPT,
        "DATA": script_json(trace),
    }
    # One pass, so nothing substituted (a task named @@DATA@@...) is substituted again.
    return re.sub(r"@@([A-Z_]+)@@", lambda match: parts[match.group(1)], _PAGE)


def script_json(value: Any) -> str:
    """Strict JSON, safe inside a ``<script>`` element.

    Strict: no NaN or Infinity, which ``JSON.parse`` refuses (see
    ``fileformat.json_safe`` for what they become).  Safe: ``</script>``
    (or ``<!--``) inside a string would end or confuse the element;
    ``\\u003c`` is the same character to ``JSON.parse`` and nothing to the
    HTML parser.
    """
    try:
        text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    except ValueError:
        text = json.dumps(json_safe(value), separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# ----------------------------------------------------------------------
# The figures, as HTML
# ----------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


def _headline(trace: dict[str, Any], summary: Summary) -> str:
    other = trace.get("otherData", {})
    started = other.get("start_wall_time_iso", "unknown time")
    version = other.get("loopy_version", "?")
    return (
        f"started {started} · {_ms(summary.duration)} · {summary.iterations} iterations · "
        f"{summary.callbacks} callbacks · loopy {version}"
    )


def _dropped(summary: Summary) -> str:
    """The warning above the figures when the ring buffer dropped events."""
    if not summary.dropped_events:
        return ""
    note = dropped_note(summary)
    return (
        f'<p class="dropped" id="dropped-note"><b>{html.escape(note)}</b>: the ring buffer '
        f"kept the last {_ms(summary.recorded)}; every figure below is over that window.</p>"
    )


def _cards(s: Summary) -> str:
    slowest = s.slowest[0] if s.slowest else None
    lateness = s.timer_lateness
    by_kind = ", ".join(
        f"{k} {s.callbacks_by_kind[k]}" for k in STEP_CATEGORIES if k in s.callbacks_by_kind
    )
    seen = [f"created {s.tasks_created}"]
    if s.tasks_first_seen:
        seen.append(f"first seen running {s.tasks_first_seen}")
    if s.tasks_unrecorded:
        seen.append(f"created earlier {s.tasks_unrecorded}")
    per_second = f"{s.iterations_per_second:.1f} per second"
    cards = [
        (
            "Loop utilisation",
            f"{s.utilisation * 100:.1f} %",
            f"busy {_ms(s.busy_time)} of {_ms(s.loop_time)}",
        ),
        ("Iterations", str(s.iterations), per_second + (" recorded" if s.dropped_events else "")),
        ("Waiting in select()", _ms(s.wait_time), f"busy {_ms(s.busy_time)}"),
        ("Callbacks run", str(s.callbacks), by_kind or "none"),
        (
            "Slowest step",
            _ms(slowest.duration) if slowest else "-",
            slowest.name if slowest else "no callbacks",
        ),
        (
            "Timer lateness p50",
            _ms(lateness.p50),
            f"p90 {lateness.p90 * 1e3:.3f} · p99 {lateness.p99 * 1e3:.3f}"
            f" · max {lateness.max * 1e3:.3f} ms",
        ),
        (
            "Tasks seen",
            str(s.tasks_seen),
            f"{', '.join(seen)} · finished {s.tasks_finished} (cancelled {s.tasks_cancelled},"
            f" failed {s.tasks_failed}) · unfinished {s.tasks_unfinished}",
        ),
        (
            "Dropped events",
            f"{s.dropped_events:,}",
            dropped_note(s) or "none: the buffer kept everything",
        ),
    ]
    return "\n".join(
        f'<div class="card"><div class="label">{html.escape(label)}</div>'
        f'<div class="value">{html.escape(value)}</div>'
        f'<div class="sub" title="{html.escape(sub)}">{html.escape(sub)}</div></div>'
        for label, value, sub in cards
    )


def _table(caption: str, header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = (
        "".join(
            "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
            for row in rows
        )
        or f'<tr><td colspan="{len(header)}">none</td></tr>'
    )
    return f"<table><caption>{html.escape(caption)}</caption><tr>{head}</tr>{body}</table>"


def _tables(s: Summary) -> str:
    slowest = _table(
        "Slowest callbacks and task steps",
        ["took", "at", "kind", "name"],
        [[_ms(step.duration), _ms(step.start), step.kind, step.name] for step in s.slowest],
    )
    fds = _table(
        "Busiest file descriptors",
        ["fd", "times ready"],
        [[str(fd), str(n)] for fd, n in s.busiest_fds],
    )
    lateness = s.timer_lateness
    timers = _table(
        f"Timer lateness ({lateness.count} timers fired)",
        ["p50", "p90", "p99", "max"],
        [[_ms(lateness.p50), _ms(lateness.p90), _ms(lateness.p99), _ms(lateness.max)]]
        if lateness.count
        else [],
    )
    return slowest + fds + timers


# ----------------------------------------------------------------------
# The page
# ----------------------------------------------------------------------

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>loopy trace: @@TITLE@@</title>
<style>@@STYLE@@</style>
</head>
<body data-drawn-iterations="" data-trace-iterations="@@ITERATIONS@@"
  data-recorded-from="@@RECORDED_FROM@@" data-dropped-events="@@DROPPED_EVENTS@@">
<header>
  <h1>loopy trace <span class="file">@@TITLE@@</span></h1>
  <p class="headline">@@HEADLINE@@</p>
  @@DROPPED@@
</header>
<section class="cards" id="figures">
@@CARDS@@
</section>
<section id="timeline-section">
  <div class="toolbar">
    <button type="button" id="zoom-in" title="Zoom in (+)">+ Zoom in</button>
    <button type="button" id="zoom-out" title="Zoom out (-)">&minus; Zoom out</button>
    <button type="button" id="pan-left" title="Pan left (&larr;)">&larr;</button>
    <button type="button" id="pan-right" title="Pan right (&rarr;)">&rarr;</button>
    <button type="button" id="reset" title="Show everything (0)">Reset</button>
    <span id="range" class="range"></span>
    <span class="hint">wheel: zoom &middot; drag: pan &middot; hover: details</span>
    <span class="drawn">iterations drawn:
      <span id="drawn-iterations">0</span> of @@ITERATIONS@@</span>
  </div>
  <div id="timeline"><canvas id="canvas"></canvas><div id="tooltip" hidden></div></div>
  <div id="legend" class="legend"></div>
</section>
<section class="tables">
@@TABLES@@
</section>
<details class="text-summary"><summary>Summary as text</summary>
<pre>@@TEXT_SUMMARY@@</pre></details>
<pre id="errors" hidden></pre>
<script type="application/json" id="trace-data">@@DATA@@</script>
<script>@@SCRIPT@@</script>
</body>
</html>
"""

_STYLE = """
:root { --ink: #1f2328; --muted: #59636e; --line: #d1d9e0; --panel: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; padding: 16px 24px 32px; font: 14px/1.4 system-ui, -apple-system,
  "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: var(--ink); background: #fff; }
header h1 { margin: 0; font-size: 22px; font-weight: 600; }
header .file { color: var(--muted); font-weight: 400; }
.headline { margin: 4px 0 12px; color: var(--muted); }
.cards { display: grid; grid-template-columns: repeat(4, minmax(0, 1fr)); gap: 10px;
  margin-bottom: 14px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 8px 12px;
  background: var(--panel); min-width: 0; }
.card .label { color: var(--muted); font-size: 12px; text-transform: uppercase;
  letter-spacing: .04em; }
.card .value { font-size: 22px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .sub { color: var(--muted); font-size: 12px; white-space: nowrap; overflow: hidden;
  text-overflow: ellipsis; }
.toolbar { display: flex; flex-wrap: wrap; align-items: center; gap: 8px; margin-bottom: 6px; }
.toolbar button { font: inherit; padding: 3px 10px; border: 1px solid var(--line);
  border-radius: 6px; background: #fff; cursor: pointer; }
.toolbar button:hover { background: var(--panel); }
.range { font-variant-numeric: tabular-nums; margin-left: 8px; }
.hint { color: var(--muted); }
.drawn { margin-left: auto; color: var(--muted); }
#drawn-iterations { color: var(--ink); font-weight: 600; }
#timeline { position: relative; border: 1px solid var(--line); border-radius: 8px;
  overflow: hidden; user-select: none; }
#canvas { display: block; width: 100%; cursor: grab; }
#canvas.dragging { cursor: grabbing; }
#tooltip { position: absolute; pointer-events: none; background: rgba(31,35,40,.94);
  color: #fff; padding: 6px 9px; border-radius: 6px; font-size: 12px; max-width: 460px;
  white-space: pre-wrap; word-break: break-word; z-index: 2; }
#tooltip b { font-size: 13px; }
.legend { display: flex; flex-wrap: wrap; gap: 6px 16px; margin: 8px 2px 16px;
  color: var(--muted); font-size: 13px; }
.legend .swatch { display: inline-block; width: 14px; height: 12px; margin-right: 5px;
  vertical-align: -1px; border-radius: 2px; border: 1px solid rgba(0,0,0,.15); }
.tables { display: grid; grid-template-columns: 2fr 1fr 1fr; gap: 16px; align-items: start; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
caption { text-align: left; font-weight: 600; padding-bottom: 4px; }
th, td { border-bottom: 1px solid var(--line); padding: 3px 6px; text-align: left;
  font-variant-numeric: tabular-nums; }
th { color: var(--muted); font-weight: 500; }
td:last-child { word-break: break-all; }
.text-summary { margin-top: 16px; }
.text-summary pre, #errors { background: var(--panel); padding: 8px; border-radius: 6px;
  overflow: auto; }
#errors { color: #b00020; border: 1px solid #b00020; }
.dropped { margin: 0 0 12px; padding: 6px 10px; border-left: 4px solid #8c8c8c;
  background: #f0f0f0; }
"""

# The drawing script.  Plain ES5-style JavaScript, no libraries: read it
# from the top.  Times are microseconds, as in the trace.
_SCRIPT = r"""
(function () {
  "use strict";

  var errorBox = document.getElementById("errors");
  function reportError(message) {
    errorBox.hidden = false;
    errorBox.textContent += message + "\n";
    document.body.setAttribute("data-errors", "yes");
  }
  window.addEventListener("error", function (event) {
    reportError("error: " + event.message);
  });
  // console.error too: whatever the page complains about shows on the page.
  var consoleError = console.error;
  console.error = function () {
    reportError("console.error: " + Array.prototype.join.call(arguments, " "));
    return consoleError.apply(console, arguments);
  };

  try {
    start();
  } catch (error) {
    reportError("error: " + (error && error.stack ? error.stack : error));
  }

  function start() {
    // Okabe-Ito colours: distinguishable with every common colour blindness.
    var KIND_COLOURS = {
      "callback": "#E69F00", "task-step": "#009E73", "io": "#CC79A7", "timer": "#D55E00"
    };
    var OTHER_STEP = "#8c8c8c";
    var WAIT = "#dde3ea", BUSY = "#0072B2", ITER_WAIT = "#cfe2f3";
    var MARK_COLOURS = {
      "timer": "#D55E00", "io": "#CC79A7", "signal": "#222", "exception": "#b00020"
    };
    var TASK_COLOURS = {
      "result": "#c7eadb", "exception": "#f6c6c6", "cancelled": "#e1e1e1", "unfinished": "#d6e6f5"
    };
    // A task whose creation the trace did not see starts with this cap.
    var UNSEEN_START = "#59636e", NOT_RECORDED = "#ececec";
    var LEGEND = [
      ["iteration: busy", BUSY], ["iteration: waiting", ITER_WAIT], ["waiting in select()", WAIT],
      ["callback", KIND_COLOURS["callback"]], ["task step", KIND_COLOURS["task-step"]],
      ["I/O callback", KIND_COLOURS["io"]], ["timer callback", KIND_COLOURS["timer"]],
      ["timer fired (mark)", MARK_COLOURS["timer"]], ["fd ready (mark)", MARK_COLOURS["io"]],
      ["task alive", TASK_COLOURS["result"]], ["task failed", TASK_COLOURS["exception"]],
      ["task cancelled", TASK_COLOURS["cancelled"]],
      ["task unfinished", TASK_COLOURS["unfinished"]],
      ["task first seen running (* after its name): creation not seen", UNSEEN_START],
      ["not recorded (events dropped)", NOT_RECORDED]
    ];
    // Where the recorded window begins, in microseconds (0 unless the ring
    // buffer dropped events), and how many it dropped: figures from Python.
    var RECORDED_FROM = Number(document.body.getAttribute("data-recorded-from")) || 0;
    var DROPPED_EVENTS = Number(document.body.getAttribute("data-dropped-events")) || 0;
    var ORIGINS = {
      "create_task": "created by create_task",
      "first_sight": "first seen at a step: built directly or before the trace; parent unknown",
      "unrecorded": "created before the recorded window (its creation was dropped)"
    };

    var GUTTER = 200, RIGHT = 12, AXIS = 26, TASK_ROW = 18, MAX_TASK_ROWS = 40;
    var LANES = [
      { key: "iterations", label: "iterations", h: 28 },
      { key: "loop", label: "waits & callbacks", h: 40 },
      { key: "marks", label: "timers & I/O ready", h: 22 },
      { key: "ready", label: "ready queue", h: 34 }
    ];

    // ------------------------------------------------------------------
    // The model: the trace's events sorted into lanes.
    // ------------------------------------------------------------------

    function byStart(a, b) { return a.s - b.s; }

    function withMaxEnd(items) {
      // maxEnd[i]: the latest end among items[0..i]; it only grows, so a
      // binary search on it finds the first item that reaches into a view.
      items.sort(byStart);
      var maxEnd = 0;
      for (var i = 0; i < items.length; i++) {
        maxEnd = Math.max(maxEnd, items[i].s + items[i].d);
        items[i].maxEnd = maxEnd;
      }
      return items;
    }

    function loadModel() {
      var raw = JSON.parse(document.getElementById("trace-data").textContent);
      var events = Array.isArray(raw) ? raw : (raw.traceEvents || []);
      var other = raw.otherData || {};
      var model = { iterations: [], loop: [], marks: [], ready: [], tasks: [], end: 0 };
      var tasks = {}, steps = [];
      events.forEach(function (e) {
        if (!e || e.ph === "M") { return; }
        var ts = Number(e.ts) || 0, dur = Number(e.dur) || 0, args = e.args || {};
        model.end = Math.max(model.end, ts + dur);
        var item = { s: ts, d: dur, name: String(e.name), cat: String(e.cat || ""), args: args };
        if (e.ph === "X") {
          if (item.cat === "iteration") { model.iterations.push(item); }
          else { model.loop.push(item); }
          if (item.cat === "task-step" && args.task !== undefined) { steps.push(item); }
        } else if (e.ph === "i" || e.ph === "I") {
          if (item.cat !== "timer-scheduled") { model.marks.push(item); }
        } else if (e.ph === "C" && e.name === "ready queue") {
          item.value = Number(args.callbacks) || 0;
          model.ready.push(item);
        } else if (e.cat === "task" && (e.ph === "b" || e.ph === "e")) {
          var task = tasks[e.id] || (tasks[e.id] = { name: item.name, s: 0, e: null, steps: [] });
          if (e.ph === "b") {
            task.s = ts;
            task.args = args;
            task.origin = String(args.origin || "create_task");
            if (task.origin !== "create_task") { task.name += " *"; }
          }
          else { task.e = ts; task.outcome = args.outcome || "result"; task.endArgs = args; }
        }
      });
      model.end = Math.max(model.end, (Number(other.duration_us) || 0));
      steps.forEach(function (step) {
        var task = tasks["task-" + step.args.task];
        if (task) { task.steps.push(step); }
      });
      Object.keys(tasks).forEach(function (id) {
        var task = tasks[id];
        task.d = Math.max(0, (task.e === null ? model.end : task.e) - task.s);
        task.outcome = task.outcome || "unfinished";
        withMaxEnd(task.steps);
        model.tasks.push(task);
      });
      model.tasks.sort(byStart);
      withMaxEnd(model.iterations);
      withMaxEnd(model.loop);
      withMaxEnd(model.marks);
      model.ready.sort(byStart);
      for (var i = 0; i < model.ready.length; i++) {
        var next = model.ready[i + 1];
        model.ready[i].d = (next ? next.s : model.end) - model.ready[i].s;
      }
      withMaxEnd(model.ready);
      model.maxReady = model.ready.reduce(function (m, c) { return Math.max(m, c.value); }, 0);
      return model;
    }

    // ------------------------------------------------------------------
    // Formatting
    // ------------------------------------------------------------------

    function formatTime(us) {
      var a = Math.abs(us);
      if (a >= 1e6) { return (us / 1e6).toFixed(3) + " s"; }
      if (a >= 1e3) { return (us / 1e3).toFixed(3) + " ms"; }
      return us.toFixed(a < 10 ? 3 : 1) + " \u00b5s";
    }

    function niceStep(span, pixels) {
      // A tick every 1, 2 or 5 times a power of ten, about 110 px apart.
      var raw = span / Math.max(1, pixels / 110);
      var power = Math.pow(10, Math.floor(Math.log(raw) / Math.LN10));
      var steps = [1, 2, 5, 10];
      for (var i = 0; i < steps.length; i++) {
        if (steps[i] * power >= raw) { return steps[i] * power; }
      }
      return 10 * power;
    }

    function tickLabel(us, step) {
      var unit = step >= 1e5 ? [1e6, " s"] : step >= 100 ? [1e3, " ms"] : [1, " \u00b5s"];
      var digits = Math.max(0, Math.min(6, Math.ceil(-Math.log(step / unit[0]) / Math.LN10)));
      return (us / unit[0]).toFixed(digits) + unit[1];
    }

    // ------------------------------------------------------------------
    // The view: which time range is shown, and drawing it.
    // ------------------------------------------------------------------

    var model = loadModel();
    var canvas = document.getElementById("canvas");
    var ctx = canvas.getContext("2d");
    var tooltip = document.getElementById("tooltip");
    var full = { t0: 0, t1: model.end > 0 ? model.end : 1000 };
    var view = { t0: full.t0, t1: full.t1 };
    var MIN_SPAN = 0.01;
    var width = 0, height = 0, hovered = null;
    var taskRows = Math.min(model.tasks.length, MAX_TASK_ROWS);

    function layout() {
      var top = AXIS;
      LANES.forEach(function (lane) { lane.y = top; top += lane.h; });
      var tasksTop = top + (model.tasks.length ? 8 : 0);
      model.tasks.forEach(function (task, i) {
        task.y = i < MAX_TASK_ROWS ? tasksTop + i * TASK_ROW : -1;
      });
      var more = model.tasks.length > MAX_TASK_ROWS ? TASK_ROW : 0;
      width = Math.max(320, canvas.parentNode.clientWidth);
      height = tasksTop + taskRows * TASK_ROW + more + 8;
      var ratio = window.devicePixelRatio || 1;
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
      canvas.style.height = height + "px";
      ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    }

    function scale() { return (width - GUTTER - RIGHT) / (view.t1 - view.t0); }
    function xOf(t) { return GUTTER + (t - view.t0) * scale(); }
    function timeAt(x) { return view.t0 + (x - GUTTER) / scale(); }

    function firstReaching(items, t) {
      // The first item whose maxEnd reaches t (binary search).
      var lo = 0, hi = items.length;
      while (lo < hi) {
        var mid = (lo + hi) >> 1;
        if (items[mid].maxEnd < t) { lo = mid + 1; } else { hi = mid; }
      }
      return lo;
    }

    function eachInView(items, callback) {
      // Calls callback(item) for each item that overlaps the view; returns how many.
      var count = 0;
      for (var i = firstReaching(items, view.t0); i < items.length; i++) {
        var item = items[i];
        if (item.s > view.t1) { break; }
        if (item.s + item.d < view.t0) { continue; }
        count++;
        callback(item);
      }
      return count;
    }

    function eachVisible(items, callback) {
      // Calls callback(item, x, w) for the items in view.  Items narrower
      // than a pixel that land on the pixel just drawn in the same colour are
      // not drawn again: a million callbacks cost no more to draw than the
      // canvas has pixels.
      var lastPixel = -1, lastColour = null;
      return eachInView(items, function (item) {
        var x = xOf(item.s), w = item.d * scale(), pixel = Math.floor(x);
        if (w < 1 && pixel === lastPixel && item.cat === lastColour) { return; }
        lastPixel = pixel;
        lastColour = item.cat;
        callback(item, x, Math.max(w, 1));
      });
    }

    function perColumn(items, filter) {
      // How much of each pixel column's time the items cover (0..1 each), and
      // how many items start in it: the iteration lane is drawn from these,
      // so it tells the truth about busy and waiting time at any zoom.
      var n = Math.max(1, Math.ceil(width - GUTTER - RIGHT)), k = scale();
      var cover = new Float64Array(n), starts = new Uint32Array(n);
      var count = eachInView(items, function (item) {
        if (filter && !filter(item)) { return; }
        var a = (Math.max(item.s, view.t0) - view.t0) * k;
        var b = (Math.min(item.s + item.d, view.t1) - view.t0) * k;
        var c0 = Math.min(n - 1, Math.floor(a)), c1 = Math.min(n - 1, Math.floor(b));
        starts[Math.min(n - 1, Math.max(0, Math.floor((item.s - view.t0) * k)))]++;
        if (c0 === c1) { cover[c0] += b - a; return; }
        cover[c0] += c0 + 1 - a;
        for (var c = c0 + 1; c < c1; c++) { cover[c] += 1; }
        cover[c1] += b - c1;
      });
      return { cover: cover, starts: starts, count: count };
    }

    function clipX(x, w) {
      // Keep rectangles within the drawing area (huge coordinates upset canvases).
      var left = Math.max(x, GUTTER - 1), right = Math.min(x + w, width - RIGHT + 1);
      return [left, Math.max(right - left, 0)];
    }

    function box(x, w, y, h, colour) {
      var c = clipX(x, w);
      ctx.fillStyle = colour;
      ctx.fillRect(c[0], y, c[1], h);
    }

    function label(text, x, w, y, h, colour, backdrop) {
      // Text inside a box wide enough for it, clipped to the box; with a
      // backdrop, on a pale patch, for boxes of mixed colours.
      var c = clipX(x, w);
      if (c[1] < 36) { return; }
      ctx.save();
      ctx.beginPath();
      ctx.rect(c[0] + 2, y, c[1] - 4, h);
      ctx.clip();
      if (backdrop) {
        ctx.fillStyle = "rgba(255, 255, 255, 0.85)";
        ctx.fillRect(c[0] + 2, y + h / 2 - 7, ctx.measureText(text).width + 4, 14);
      }
      ctx.fillStyle = colour;
      ctx.fillText(text, c[0] + 4, y + h / 2);
      ctx.restore();
    }

    function drawAxis() {
      var step = niceStep(view.t1 - view.t0, width - GUTTER - RIGHT);
      var first = Math.ceil(view.t0 / step) * step;
      ctx.font = "11px system-ui, sans-serif";
      ctx.textBaseline = "middle";
      for (var t = first; t <= view.t1; t += step) {
        var x = Math.round(xOf(t)) + 0.5;
        ctx.fillStyle = "#eef1f4";
        ctx.fillRect(x, AXIS, 1, height - AXIS);
        ctx.fillStyle = "#59636e";
        ctx.fillText(tickLabel(t, step), x + 3, AXIS / 2);
      }
    }

    function drawGutter() {
      ctx.fillStyle = "#f6f8fa";
      ctx.fillRect(0, 0, GUTTER - 1, height);
      ctx.fillStyle = "#d1d9e0";
      ctx.fillRect(GUTTER - 1, 0, 1, height);
      ctx.font = "12px system-ui, sans-serif";
      ctx.textBaseline = "middle";
      ctx.fillStyle = "#1f2328";
      LANES.forEach(function (lane) {
        var text = lane.label;
        if (lane.key === "ready") { text += " (max " + model.maxReady + ")"; }
        ctx.fillText(text, 8, lane.y + lane.h / 2);
        ctx.fillStyle = "#e4e8ec";
        ctx.fillRect(0, lane.y + lane.h - 1, width, 1);
        ctx.fillStyle = "#1f2328";
      });
      ctx.fillStyle = "#59636e";
      ctx.fillText("time \u2192", 8, AXIS / 2);
      model.tasks.forEach(function (task) {
        if (task.y < 0) { return; }
        ctx.save();
        ctx.beginPath();
        ctx.rect(0, task.y, GUTTER - 8, TASK_ROW);
        ctx.clip();
        ctx.fillStyle = "#1f2328";
        ctx.fillText(task.name, 8, task.y + TASK_ROW / 2);
        ctx.restore();
      });
      if (model.tasks.length > MAX_TASK_ROWS) {
        ctx.fillStyle = "#59636e";
        ctx.fillText("+ " + (model.tasks.length - MAX_TASK_ROWS) + " more tasks not shown",
                     8, model.tasks[MAX_TASK_ROWS - 1].y + TASK_ROW * 1.5);
      }
    }

    function drawIterations() {
      // Each pixel column: light where the loop waited, dark (from the bottom)
      // for the share of its loop time that was busy.  An iteration too short
      // to measure still shows as a dark tick.
      var lane = LANES[0], y = lane.y + 4, h = lane.h - 8;
      var loop = perColumn(model.iterations);
      var waits = perColumn(model.loop, function (item) { return item.cat === "wait"; });
      for (var c = 0; c < loop.cover.length; c++) {
        var x = GUTTER + c, inLoop = loop.cover[c];
        if (inLoop > 1e-9) {
          var busy = Math.max(0, Math.min(1, (inLoop - waits.cover[c]) / inLoop));
          box(x, 1, y, h, ITER_WAIT);
          if (busy > 0) { box(x, 1, y + h * (1 - busy), h * busy, BUSY); }
        } else if (loop.starts[c]) {
          box(x, 1, y, h, BUSY);
        }
      }
      eachVisible(model.iterations, function (it, x, w) {
        if (w >= 4) { box(x, 1, y, h, "#ffffff"); }
        label("#" + it.args.n, x, w, y, h, "#1f2328", true);
      });
      return loop.count;
    }

    function drawLoop() {
      var lane = LANES[1], y = lane.y + 4, h = lane.h - 8;
      eachVisible(model.loop, function (item, x, w) {
        var colour = item.cat === "wait" ? WAIT : (KIND_COLOURS[item.cat] || OTHER_STEP);
        box(x, w, item.cat === "wait" ? y + h / 4 : y, item.cat === "wait" ? h / 2 : h, colour);
        label(item.cat === "wait" ? "wait" : item.name, x, w, y, h,
              item.cat === "wait" ? "#59636e" : "#111");
      });
    }

    function drawMarks() {
      var lane = LANES[2];
      eachVisible(model.marks, function (mark, x) {
        var colour = MARK_COLOURS[mark.cat] || "#555";
        var top = mark.cat === "io" ? lane.y + lane.h / 2 : lane.y + 3;
        var h = mark.cat === "timer" || mark.cat === "io" ? lane.h / 2 - 3 : lane.h - 6;
        box(x - 1, 2, top, h, colour);
      });
    }

    function drawReady() {
      var lane = LANES[3], bottom = lane.y + lane.h - 4, room = lane.h - 8;
      if (!model.maxReady) { return; }
      eachVisible(model.ready, function (c, x, w) {
        var h = Math.max(1, room * c.value / model.maxReady);
        if (c.value) { box(x, w, bottom - h, h, "#56B4E9"); }
      });
    }

    function drawTasks() {
      model.tasks.forEach(function (task) {
        if (task.y < 0 || task.s > view.t1 || task.s + task.d < view.t0) { return; }
        var y = task.y + 3, h = TASK_ROW - 6;
        box(xOf(task.s), Math.max(task.d * scale(), 2), y, h, TASK_COLOURS[task.outcome] || "#ddd");
        eachVisible(task.steps, function (step, x, w) {
          box(x, w, y, h, KIND_COLOURS["task-step"]);
        });
        if (task.origin !== "create_task") { box(xOf(task.s), 3, y, h, UNSEEN_START); }
      });
    }

    function drawNotRecorded() {
      // The stretch at the start whose events fell out of the ring buffer:
      // shaded and labelled, rather than left blank as if the loop had idled.
      if (!DROPPED_EVENTS || RECORDED_FROM <= view.t0) { return false; }
      var x = xOf(Math.max(view.t0, 0)), w = xOf(RECORDED_FROM) - x;
      box(x, w, AXIS, height - AXIS, NOT_RECORDED);
      ctx.font = "12px system-ui, sans-serif";
      label("not recorded: " + DROPPED_EVENTS.toLocaleString("en-US") + " events dropped",
            x, w, AXIS, LANES[0].h, "#59636e", false);
      return true;
    }

    function drawHover() {
      if (!hovered || !hovered.rect) { return; }
      var r = hovered.rect, c = clipX(r[0], r[1]);
      ctx.strokeStyle = "#111";
      ctx.lineWidth = 1.5;
      ctx.strokeRect(c[0] - 1, r[2] - 1, Math.max(c[1], 1) + 2, r[3] + 2);
    }

    function render() {
      ctx.clearRect(0, 0, width, height);
      ctx.fillStyle = "#ffffff";
      ctx.fillRect(0, 0, width, height);
      var notRecorded = drawNotRecorded();
      drawAxis();
      var drawn = drawIterations();
      drawLoop();
      drawMarks();
      drawReady();
      drawTasks();
      drawGutter();
      drawHover();
      document.getElementById("range").textContent =
        formatTime(view.t0) + " \u2013 " + formatTime(view.t1) +
        " (" + formatTime(view.t1 - view.t0) + " shown)";
      document.getElementById("drawn-iterations").textContent = String(drawn);
      document.body.setAttribute("data-drawn-iterations", String(drawn));
      document.body.setAttribute("data-not-recorded-drawn", notRecorded ? "yes" : "no");
    }

    // ------------------------------------------------------------------
    // Zooming, panning, hovering
    // ------------------------------------------------------------------

    function viewFromHash() {
      // "page.html#t0-t1", in microseconds: a link to a zoomed-in view.
      var match = /^#(\d+(?:\.\d+)?)-(\d+(?:\.\d+)?)$/.exec(window.location.hash);
      if (match) { setView(Number(match[1]), Number(match[2])); }
    }

    function setView(t0, t1) {
      var span = Math.max(MIN_SPAN, t1 - t0), fullSpan = full.t1 - full.t0;
      if (span >= fullSpan) { view.t0 = full.t0; view.t1 = full.t1; return; }
      t0 = Math.min(Math.max(t0, full.t0), full.t1 - span);
      view.t0 = t0;
      view.t1 = t0 + span;
    }

    function zoom(factor, anchor) {
      setView(anchor - (anchor - view.t0) * factor, anchor + (view.t1 - anchor) * factor);
      render();
    }

    function pan(fraction) {
      var shift = (view.t1 - view.t0) * fraction;
      setView(view.t0 + shift, view.t1 + shift);
      render();
    }

    function centre() { return (view.t0 + view.t1) / 2; }

    function find(items, t, slack) {
      // The item in view nearest to time t, within slack microseconds.
      var best = null, bestDistance = slack;
      for (var i = firstReaching(items, t - slack); i < items.length; i++) {
        var item = items[i];
        if (item.s > t + slack) { break; }
        var distance = t < item.s ? item.s - t : t > item.s + item.d ? t - item.s - item.d : 0;
        if (distance <= bestDistance) { best = item; bestDistance = distance; }
      }
      return best;
    }

    function hitTest(x, y) {
      if (x < GUTTER) { return null; }
      var t = timeAt(x), slack = 3 / scale();
      for (var i = 0; i < LANES.length; i++) {
        var lane = LANES[i];
        if (y >= lane.y && y < lane.y + lane.h) {
          var item = find(model[lane.key], t, slack);
          return item ? { item: item, lane: lane.key, rect: [xOf(item.s),
            Math.max(item.d * scale(), 1), lane.y + 3, lane.h - 6] } : null;
        }
      }
      for (var j = 0; j < model.tasks.length; j++) {
        var task = model.tasks[j];
        if (task.y >= 0 && y >= task.y && y < task.y + TASK_ROW) {
          var step = find(task.steps, t, slack);
          var hit = step || (t >= task.s - slack && t <= task.s + task.d + slack ? task : null);
          return hit ? { item: hit, lane: step ? "loop" : "task", task: task,
            rect: [xOf(hit.s), Math.max(hit.d * scale(), 1), task.y + 3, TASK_ROW - 6] } : null;
        }
      }
      return null;
    }

    function describe(hit) {
      var item = hit.item, lines = [];
      if (hit.lane === "iterations") {
        lines.push("iteration #" + item.args.n);
        lines.push("busy " + formatTime(item.d - item.args.wait * 1e3) +
                   ", waiting " + formatTime(item.args.wait * 1e3));
        lines.push(item.args.callbacks + " callbacks");
      } else if (hit.lane === "task") {
        lines.push(item.name);
        lines.push(ORIGINS[item.origin] || String(item.origin));
        lines.push("outcome: " + item.outcome + (item.endArgs && item.endArgs.exception ?
                   " " + item.endArgs.exception : ""));
        lines.push(item.steps.length + " steps in the trace");
      } else if (hit.lane === "ready") {
        lines.push("ready queue: " + item.value + " callbacks");
      } else {
        lines.push(item.name);
        lines.push(item.cat === "wait" ? "waiting in select()" : "kind: " + item.cat);
        Object.keys(item.args).forEach(function (key) {
          var value = item.args[key];
          if (value !== null && key !== "task") { lines.push(key + ": " + JSON.stringify(value)); }
        });
      }
      lines.push("at " + formatTime(item.s) + (item.d ? ", took " + formatTime(item.d) : ""));
      return lines;
    }

    function showTooltip(hit, x, y) {
      if (!hit) { tooltip.hidden = true; return; }
      var lines = describe(hit);
      tooltip.textContent = "";
      var title = document.createElement("b");
      title.textContent = lines[0];
      tooltip.appendChild(title);
      tooltip.appendChild(document.createTextNode("\n" + lines.slice(1).join("\n")));
      tooltip.hidden = false;
      var left = Math.min(x + 14, width - tooltip.offsetWidth - 4);
      var top = y + 16 + tooltip.offsetHeight > height ? y - tooltip.offsetHeight - 8 : y + 16;
      tooltip.style.left = Math.max(4, left) + "px";
      tooltip.style.top = Math.max(4, top) + "px";
    }

    function pointer(event) {
      var r = canvas.getBoundingClientRect();
      return [event.clientX - r.left, event.clientY - r.top];
    }

    var drag = null;
    canvas.addEventListener("wheel", function (event) {
      event.preventDefault();
      var p = pointer(event);
      var anchor = p[0] >= GUTTER ? timeAt(p[0]) : centre();
      zoom(Math.pow(1.0015, event.deltaY), anchor);
    }, { passive: false });
    canvas.addEventListener("mousedown", function (event) {
      drag = { x: event.clientX, t0: view.t0, t1: view.t1 };
      canvas.classList.add("dragging");
    });
    window.addEventListener("mouseup", function () {
      drag = null;
      canvas.classList.remove("dragging");
    });
    window.addEventListener("mousemove", function (event) {
      if (drag) {
        var shift = (event.clientX - drag.x) / scale();
        setView(drag.t0 - shift, drag.t1 - shift);
        render();
      }
    });
    canvas.addEventListener("mousemove", function (event) {
      var p = pointer(event);
      hovered = drag ? null : hitTest(p[0], p[1]);
      render();
      showTooltip(hovered, p[0], p[1]);
    });
    canvas.addEventListener("mouseleave", function () {
      hovered = null;
      tooltip.hidden = true;
      render();
    });
    function zoomIn() { zoom(0.5, centre()); }
    function zoomOut() { zoom(2, centre()); }
    function panLeft() { pan(-0.25); }
    function panRight() { pan(0.25); }
    function reset() { setView(full.t0, full.t1); render(); }
    var buttons = {
      "zoom-in": zoomIn, "zoom-out": zoomOut, "pan-left": panLeft, "pan-right": panRight,
      "reset": reset
    };
    Object.keys(buttons).forEach(function (id) {
      document.getElementById(id).addEventListener("click", buttons[id]);
    });
    var keys = {
      "+": zoomIn, "=": zoomIn, "-": zoomOut, "0": reset,
      "ArrowLeft": panLeft, "ArrowRight": panRight
    };
    document.addEventListener("keydown", function (event) {
      if (keys[event.key]) { keys[event.key](); }
    });
    window.addEventListener("resize", function () { layout(); render(); });

    var legend = document.getElementById("legend");
    LEGEND.forEach(function (entry) {
      var item = document.createElement("span");
      var swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = entry[1];
      item.appendChild(swatch);
      item.appendChild(document.createTextNode(entry[0]));
      legend.appendChild(item);
    });

    layout();
    viewFromHash();
    render();
  }
})();
"""
