"""Smoke test of ``bench.instructions``: it counts instructions per message under valgrind.

Not a benchmark: nothing here asserts which loop is cheaper.  Without valgrind
the test skips, except under CI (``CI=true``), which must run it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_counts_instructions_per_message_for_each_loop() -> None:
    if shutil.which("valgrind") is None:
        message = "valgrind not found: apt-get install valgrind"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    done = subprocess.run(
        [
            *(sys.executable, "-m", "bench.instructions", "--loops", "asyncio,loopy"),
            *("--modes", "protocol", "--sizes", "100", "--connections", "1", "--messages", "100"),
        ],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=55,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    times = "\u00d7"  # the multiplication sign the table prints before a ratio
    row = re.search(
        rf"^protocol 100 B, 1 conn +([\d,]+) +([\d,]+) {times}([\d.]+)$", done.stdout, re.M
    )
    assert row is not None, done.stdout
    asyncio_count, loopy_count = (int(row.group(i).replace(",", "")) for i in (1, 2))
    # A Python echo server runs thousands of instructions per message, not a
    # handful and not millions: the start-up cost cancelled out.
    assert 2_000 < loopy_count < 200_000
    assert 2_000 < asyncio_count < 200_000
    assert float(row.group(3)) == pytest.approx(asyncio_count / loopy_count, abs=0.01)
