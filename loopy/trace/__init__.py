"""See the loop work: record what it does, and look at it.

The pieces, in the order you meet them:

* ``recorder.py``  :class:`TraceRecorder`, an instrument that records every
  iteration, wait and callback into a bounded ring buffer
* ``export.py``    :func:`chrome_events`/:func:`write_trace`: the recording
  as Chrome Trace Event JSON, streamed, for Perfetto or ``chrome://tracing``;
  :func:`tracing` records a ``with`` block; :func:`trace_to_file` records a
  loop until it closes
* ``fileformat.py`` the file itself: strict JSON written whole, and
  :func:`load_trace`, which reads a loopy trace back or says in one line
  why it will not (:class:`TraceFileError`)
* ``environment.py`` ``LOOPY_TRACE=FILE``: every new loop traced, the file
  written however the program ends
* ``summary.py``   :func:`summarize`/:func:`format_summary`: the figures of a
  saved trace (utilisation, slowest callbacks, timer lateness...)
* ``viewer.py``    :func:`write_viewer`: a self-contained HTML timeline of a trace
* ``flight.py``    the flight recorder: the loop's last seconds in bounded
  memory, written inline by ``_run_once``, dumped as a trace on demand or
  when a step stalls (``loop.start_flight_recorder``)
* ``stalls.py``    :class:`StallDetector` (which callback blocked the loop)
  and :class:`LoadMonitor` (how busy the loop is, right now)
* ``describe.py``  :func:`describe`: the loop's to-do list, as text

Typical use::

    with loopy.trace.tracing("trace.json"):   # inside a coroutine on a loopy loop
        await work()
    loopy.trace.write_viewer("trace.json")     # writes trace.html

Everything here but the flight recorder is built on the instrument hooks of
``instruments.py`` and costs nothing until attached.
"""

from .describe import LoopSnapshot, describe, snapshot
from .export import chrome_events, load_trace, to_chrome_trace, trace_to_file, tracing, write_trace
from .fileformat import READABLE_TRACE_FORMATS, TRACE_FORMAT, TraceFileError
from .recorder import DEFAULT_MAX_EVENTS, TraceEvent, TraceRecorder
from .stalls import Load, LoadMonitor, Stall, StallDetector
from .summary import Percentiles, SlowStep, Summary, format_summary, summarize
from .viewer import render_viewer, write_viewer

__all__ = [
    "DEFAULT_MAX_EVENTS",
    "READABLE_TRACE_FORMATS",
    "TRACE_FORMAT",
    "Load",
    "LoadMonitor",
    "LoopSnapshot",
    "Percentiles",
    "SlowStep",
    "Stall",
    "StallDetector",
    "Summary",
    "TraceEvent",
    "TraceFileError",
    "TraceRecorder",
    "chrome_events",
    "describe",
    "format_summary",
    "load_trace",
    "render_viewer",
    "snapshot",
    "summarize",
    "to_chrome_trace",
    "trace_to_file",
    "tracing",
    "write_trace",
    "write_viewer",
]
