"""Run tests N times in a row (optionally with one core kept busy) and tabulate every outcome.

    .venv/bin/python bench/repeat.py -n 30 --load tests/queueworker/test_callbacks.py::test_x [more ids...]

Each run is a fresh pytest process with -s; the lines the tests print are read back:
`callbacks [name]: missing M, once O, more D ...` (CallbackReceiver.tally) and `ledger [name]: ... missing M,
duplicates D ...` (tests/chaos/ledger.py). One markdown row per run: run, test, result, outcome, duration,
load average. A failed run's pytest output and temp dir are kept under --keep (default /tmp/repeat-runs).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CALLBACKS = re.compile(
    r"^callbacks \[(?P<name>[^\]]+)\]: missing (?P<missing>\d+), once (?P<once>\d+), more (?P<more>\d+)"
)
LEDGER = re.compile(r"^ledger \[(?P<name>[^\]]+)\]: (?P<report>.*)$")
WORKER_EXIT = re.compile(r"worker (exited \S+ [\d.]+s after SIGTERM|still running \S+ after SIGTERM: SIGKILLed)")


def load_process() -> subprocess.Popen[bytes]:
    """One core kept busy: stress-ng --cpu 1 where installed (Debian), else a Python busy loop."""
    if shutil.which("stress-ng"):
        command = ["stress-ng", "--cpu", "1", "--quiet"]
    else:
        command = [sys.executable, "-c", "while True: pass"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def outcome(output: str) -> str:
    parts = []
    for line in output.splitlines():
        line = line.strip()
        if m := CALLBACKS.match(line):
            missing, more = int(m["missing"]), int(m["more"])
            verdict = "MISSING" if missing else "DUPLICATED" if more else "once"
            parts.append(f"callbacks {verdict} (missing {missing}, once {m['once']}, more {more})")
        elif m := LEDGER.match(line):
            fields = dict(item.rsplit(" ", 1) for item in m["report"].split(", "))
            parts.append(f"ledger missing {fields.get('missing')}, duplicates {fields.get('duplicates')}")
            finals = {k: v for k, v in fields.items() if k.startswith("final ") and k != "final succeeded"}
            if finals:
                parts[-1] += ", " + ", ".join(f"{k} {v}" for k, v in finals.items())
        if m := WORKER_EXIT.search(line):
            parts.append(m[0])
    return "; ".join(parts) or "-"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tests", nargs="+", help="pytest node ids, each run in turn within one round")
    ap.add_argument("-n", "--runs", type=int, default=30)
    ap.add_argument("--load", action="store_true", help="keep one core busy meanwhile")
    ap.add_argument("--keep", type=Path, default=Path("/tmp/repeat-runs"), help="failed runs' output and temp dirs")
    ap.add_argument("--keep-passed", action="store_true", help="keep passed runs' temp dirs too")
    ap.add_argument("--table", type=Path, help="also write the markdown table here")
    ap.add_argument("--env", action="append", default=[], help="NAME=value for the test processes")
    args = ap.parse_args()
    env = {**os.environ, **dict(e.split("=", 1) for e in args.env)}
    args.keep.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the load process and the test run stop too
    load = load_process() if args.load else None
    rows = ["| run | test | result | outcome | duration | load avg (1 min) |", "|---|---|---|---|---|---|"]
    print("\n".join(rows), flush=True)
    try:
        for run in range(1, args.runs + 1):
            for test in args.tests:
                tmp = args.keep / f"run-{run}-{test.rsplit('::', 1)[-1]}"
                shutil.rmtree(tmp, ignore_errors=True)
                command = [sys.executable, "-m", "pytest", test, "-q", "-s", "-p", "no:cacheprovider"]
                t0 = time.monotonic()
                child = subprocess.Popen(
                    [*command, f"--basetemp={tmp}"],
                    cwd=ROOT,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
                try:
                    output, _ = child.communicate()
                except BaseException:  # stopped: SIGINT lets pytest tear its fixtures down (servers, namespaces)
                    child.send_signal(signal.SIGINT)
                    child.wait(120)
                    raise
                took = time.monotonic() - t0
                result = "passed" if child.returncode == 0 else f"FAILED ({child.returncode})"
                if child.returncode == 0 and not args.keep_passed:
                    shutil.rmtree(tmp, ignore_errors=True)
                else:  # kept: with the output beside it
                    tmp.mkdir(parents=True, exist_ok=True)
                    (tmp / "pytest-output.txt").write_text(output)
                name = test.rsplit("::", 1)[-1]
                row = f"| {run} | {name} | {result} | {outcome(output)} | {took:.1f} s | {os.getloadavg()[0]:.2f} |"
                rows.append(row)
                print(row, flush=True)
                if args.table:
                    args.table.write_text("\n".join(rows) + "\n")
    finally:
        if load is not None:
            load.terminate()
            load.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
