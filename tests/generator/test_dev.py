"""`jetqueue dev --exit`: the whole system on one machine; every call accounted for, nothing left running."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def run_dev(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jetqueue", "dev", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_dev_runs_to_a_summary_with_every_call_accounted_for():
    res = run_dev("--exit", "--calls", "6")
    assert res.returncode == 0, res.stdout + res.stderr
    m = re.search(
        r"summary: (\d+) submitted, (\d+) succeeded, (\d+) failed \(dead-lettered\), (\d+) callbacks, "
        r"(\d+) missing",
        res.stdout,
    )
    assert m, res.stdout
    submitted, ok, failed, callbacks, missing = map(int, m.groups())
    assert submitted == 30 and ok + failed == submitted and callbacks == submitted and missing == 0
    assert failed == 6  # `fail` always fails; `limited` (429 above 3 at once) loses none in function mode
    assert re.search(r"scheduled call: X-Delay: 3s → 202 at once, status 'scheduled'", res.stdout), res.stdout
    assert re.search(r"while paused; 2s later: \['queued', 'queued', 'queued'\], 0 run", res.stdout), res.stdout
    assert "all 3 ran and called back" in res.stdout
    assert re.search(r"result: the same call sent twice with Idempotency-Key: demo-order-\d+ → one call", res.stdout)
    assert 'function status 200, body {"order": 42}' in res.stdout
    assert re.search(r"2 ticks, one call each, .*: cron\.faas-request\.demo-tick\.\d{8}T\d{6}Z, ", res.stdout)
    assert "p50" in res.stdout and "calls/s" in res.stdout
    tmp = re.search(r"logs: (\S+)", res.stdout)
    assert tmp and not Path(tmp.group(1)).exists()  # temporary data removed
    leftovers = subprocess.run(["pgrep", "-f", tmp.group(1)], capture_output=True, text=True, check=False)
    assert leftovers.stdout.strip() == ""  # nothing left running


def test_dev_reports_an_invalid_file(tmp_path):
    bad = tmp_path / "q.yaml"
    bad.write_text("queues:\n  faas-request:\n    maxInflght: 1\n")
    res = run_dev("-f", str(bad), "--exit", timeout=60)
    assert res.returncode == 1
    assert f"{bad}:3:5: $.queues.faas-request.maxInflght: unknown key" in res.stderr
    assert "Traceback" not in res.stderr


def test_dev_reports_a_taken_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = run_dev("--exit", "--no-load", "--port", str(port), timeout=60)
    assert res.returncode == 1 and f"port {port} is taken" in res.stderr
