"""CPython's own test_asyncio against loopy, through the stewards' harness; fail below 100%.

    python .ci/conformance.py --python .venv-3.12/bin/python [--tasks loopy]

Runs ``../shared/compat/run.py`` (two modules at a time) and reads its JSON
report.  The figure that must be 100% is the *adjusted* one: tests that ran
on loopy's loop, less those that reach into asyncio's private internals (the
harness's README explains both).  A test that fails is run once more with its
module alone (``-j 1``) before it counts, so one timing test upset by the
other module running beside it does not block a landing; the summary says
which tests needed that.

The harness's own output goes to a log file (its path is printed), so that its
closing tally -- which counts the internal-reference tests too -- is not read
as this run's verdict.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT.parent / "shared" / "compat" / "run.py"
FAILED = {"fail", "error", "hung", "crash", "notrun-error"}


def run_harness(python: str, jobs: int, modules: list[str], log: Path) -> list[dict[str, object]]:
    """Run the harness; return its per-test records."""
    report = log.with_suffix(".json")
    command = [
        sys.executable,
        str(HARNESS),
        *("--python", python, "--loop", "loopy:new_event_loop", "--sys-path", str(ROOT)),
        *("-j", str(jobs), "--json", str(report)),
    ]
    if modules:
        command += ["--modules", *modules]
    with log.open("w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0 or not report.exists():
        sys.exit(f"conformance: the harness failed (exit {done.returncode}); see {log}")
    modules_run = json.loads(report.read_text())["modules"]
    return [
        dict(record, module=name)
        for name, summary in modules_run.items()
        if summary["counted"]
        for record in summary["tests"]
    ]


def on_the_loop(record: dict[str, object]) -> bool:
    """Ran (not skipped) on loopy's loop, in a counted class (as the harness counts)."""
    return (
        bool(record.get("lut"))
        and not record.get("internal")
        and record["outcome"] not in ("skip", "notrun")
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", required=True, help="the interpreter to test under")
    parser.add_argument("--tasks", choices=["asyncio", "loopy"], default="asyncio")
    args = parser.parse_args()
    # Absolute, not resolved: a virtual environment's python is a symlink.
    args.python = str(Path(args.python).absolute())
    if not HARNESS.exists():
        sys.exit(f"conformance: {HARNESS} not found (the stewards' shared/ beside the checkout)")
    os.environ["LOOPY_TASKS"] = args.tasks
    # A shell's background job starts with SIGINT ignored, and children
    # inherit that; test_runners' Ctrl-C tests would then wait forever.  A
    # handler (unlike SIG_IGN) is reset to the default in every child.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    version = subprocess.run(
        [args.python, "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    label = f"CPython {version}, tasks={args.tasks}"
    logs = Path(tempfile.mkdtemp(prefix="loopy-conformance-"))

    records = run_harness(args.python, 2, [], logs / "all.log")
    strict = [r for r in records if on_the_loop(r)]
    # Less the tests of asyncio's private internals.
    adjusted = [r for r in strict if not r.get("internal_ref")]
    failing = {r["id"]: r for r in adjusted if r["outcome"] in FAILED}
    rerun_passed: list[str] = []
    if failing:
        modules = sorted({str(r["module"]) for r in failing.values()})
        again = {r["id"]: r for r in run_harness(args.python, 1, modules, logs / "rerun.log")}
        for test_id in list(failing):
            if test_id in again and again[test_id]["outcome"] == "pass":
                rerun_passed.append(str(test_id))
                del failing[test_id]

    strict_passed = sum(r["outcome"] == "pass" for r in strict)
    adjusted_passed = len(adjusted) - len(failing)
    share = 100.0 * adjusted_passed / len(adjusted) if adjusted else 0.0
    print(
        f"conformance, {label}: adjusted {adjusted_passed}/{len(adjusted)} = {share:.1f}%"
        f" (all tests on the loop, internals included: {strict_passed}/{len(strict)});"
        f" log: {logs}"
    )
    for test_id in rerun_passed:
        print(f"  needed its module alone to pass: {test_id}")
    for test_id, record in failing.items():
        last = (str(record.get("msg") or "").strip().splitlines() or [""])[-1][:150]
        print(f"  FAILS: {test_id} ({record['outcome']}): {last}")
    if not adjusted:
        print("conformance: no test ran on loopy's loop")
        return 1
    return 0 if not failing else 1


if __name__ == "__main__":
    sys.exit(main())
