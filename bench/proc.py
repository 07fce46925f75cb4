"""What the suite reads about processes from ``/proc``, and how it pins them to cores.

CPU times come from ``/proc/PID/stat`` (``utime``/``stime``, in clock ticks of
``1 / SC_CLK_TCK`` seconds) and, exact, from ``/proc/PID/task/*/schedstat``;
memory from ``VmRSS`` in ``/proc/PID/status``, so a server's native
allocations (uvloop's libuv) count as well as Python's.
"""

from __future__ import annotations

import ctypes
import os
import signal

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU seconds used so far by process ``pid``."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    # Field 2, the command name, is in parentheses and may hold spaces:
    # split what follows the last ')'.  That starts at field 3 (state);
    # utime and stime are fields 14 and 15.
    fields = data[data.rindex(b")") + 2 :].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def cpu_ns(pid: int) -> int:
    """CPU nanoseconds (user + system) used so far by all threads of process ``pid``.

    From ``/proc/PID/task/*/schedstat``: the scheduler's own clock, exact to
    the nanosecond, where ``/proc/PID/stat`` counts in 10 ms ticks and splits
    user from system time by sampling (at ``CONFIG_HZ``, 250 Hz here).
    """
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # a thread that just ended
    return total


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def pick_cores() -> tuple[int | None, int | None]:
    """(server core, client core): two different cores when there are two, else (None, None)."""
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return None, None
    return cores[0], cores[1]


def pin(core: int | None) -> None:
    """Run the calling process on ``core`` only (nothing when ``core`` is None)."""
    if core is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})


def die_with_parent() -> None:
    """Ask Linux to kill this process when its parent dies, so no server outlives a run."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
