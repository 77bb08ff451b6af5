"""Rendering: golden files per NATS profile, determinism, atomic output, the CLI's contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from jetqueue.generator.render import render, write_atomically
from jetqueue.generator.validate import validate_text

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
CASES = {"production": "queues.yaml", "dev": "tests/data/dev.yaml", "external": "tests/data/external.yaml"}


def rendered(repo_root: Path, rel: str) -> dict[str, str]:
    result = validate_text((repo_root / rel).read_text())
    assert result.config is not None, [p.format(rel) for p in result.problems]
    return render(result.config, source=Path(rel).name)


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(repo_root, case):
    files = rendered(repo_root, CASES[case])
    base = GOLDEN / case
    if os.environ.get("UPDATE_GOLDEN"):
        for rel, content in files.items():
            (base / rel).parent.mkdir(parents=True, exist_ok=True)
            (base / rel).write_text(content)
    on_disk = {str(p.relative_to(base)): p.read_text() for p in base.rglob("*") if p.is_file()}
    assert sorted(on_disk) == sorted(files), "rerun with UPDATE_GOLDEN=1 and review the diff"
    for rel, content in files.items():
        assert on_disk[rel] == content, f"{case}/{rel} differs; rerun with UPDATE_GOLDEN=1 and review the diff"


def test_production_nats_values(repo_root):
    values = yaml.safe_load(rendered(repo_root, "queues.yaml")["nats/values.yaml"])
    assert values["config"]["cluster"] == {"enabled": True, "replicas": 3}
    assert values["config"]["jetstream"]["fileStore"]["pvc"] == {"enabled": True, "size": "10Gi"}
    assert values["config"]["merge"]["jetstream"] == {"sync_interval": "always"}
    tsc = values["podTemplate"]["topologySpreadConstraints"]["kubernetes.io/hostname"]
    assert tsc == {"maxSkew": 1, "whenUnsatisfiable": "DoNotSchedule"}
    res = values["container"]["merge"]["resources"]
    assert res["requests"] == res["limits"] == {"cpu": "2", "memory": "8Gi"}
    assert values["container"]["env"]["GOMEMLIMIT"] == "6553MiB"  # 80 % of 8Gi
    assert values["podDisruptionBudget"]["enabled"] is True


def test_dev_profile_is_one_server_in_memory(repo_root):
    files = rendered(repo_root, CASES["dev"])
    values = yaml.safe_load(files["nats/values.yaml"])
    assert values["config"]["cluster"] == {"enabled": False}
    assert values["config"]["jetstream"]["fileStore"] == {"enabled": False}
    assert values["config"]["jetstream"]["memoryStore"]["enabled"] is True
    worker = yaml.safe_load(files["queues/slow.yaml"])
    assert worker["queue"]["streamStorage"] == "memory" and worker["queue"]["streamReplicas"] == 1


def test_external_profile_has_no_nats_release_and_passes_secrets_by_name(repo_root):
    files = rendered(repo_root, CASES["external"])
    assert "nats/values.yaml" not in files
    plan = json.loads(files["install-plan.json"])
    assert [r["name"] for r in plan["releases"]] == ["billing-worker", "jetqueue-gateway"]
    gw = yaml.safe_load(files["gateway/values.yaml"])
    assert gw["nats"]["url"] == "nats://a.example:4222,nats://b.example:4222"
    assert gw["nats"]["auth"]["secretName"] == "nats-client" and gw["nats"]["tls"]["clientCert"] is True
    assert gw["gateway"]["routes"] == {"invoice": "billing", "receipt.billing": "billing"}
    nack = list(yaml.safe_load_all(files["nack/billing.yaml"]))
    consumer = next(r for r in nack if r["kind"] == "Consumer")["spec"]
    assert consumer["ackPolicy"] == "explicit" and consumer["ackWait"] == "30s"
    assert all(r["spec"]["storage"] == "file" for r in nack if r["kind"] == "Stream")


def test_install_plan_order(repo_root):
    plan = json.loads(rendered(repo_root, "queues.yaml")["install-plan.json"])
    names = [r["name"] for r in plan["releases"]]
    assert names == ["nats", "faas-request-worker", "ml-batch-worker", "jetqueue-gateway"]


def test_deterministic(repo_root):
    assert rendered(repo_root, "queues.yaml") == rendered(repo_root, "queues.yaml")


def test_atomic_write_keeps_previous_output_on_failure(tmp_path):
    out = tmp_path / "out"
    write_atomically({"a.yaml": "one\n"}, out)

    class Boom(dict[str, str]):
        def items(self):  # type: ignore[override]
            yield "b.yaml", "two\n"
            raise OSError("disk full")

    with pytest.raises(OSError):
        write_atomically(Boom(), out)
    assert sorted(p.name for p in out.iterdir()) == ["a.yaml"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary directory left behind


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jetqueue", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_cli_render_then_bad_input_leaves_out_untouched(repo_root, tmp_path):
    out = tmp_path / "out"
    good = run_cli("render", "-f", str(repo_root / "queues.yaml"), "-o", str(out), cwd=repo_root)
    assert good.returncode == 0, good.stderr
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    bad = tmp_path / "bad.yaml"
    bad.write_text("queues:\n  faas-request:\n    maxInflight: lots\n    typo: 1\n")
    res = run_cli("render", "-f", str(bad), "-o", str(out), cwd=repo_root)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.startswith(str(bad))]
    assert lines[0].startswith(f"{bad}:4:5: $.queues.faas-request.typo: unknown key")
    assert any(line.startswith(f"{bad}:3:18: $.queues.faas-request.maxInflight:") for line in lines)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_cli_exit_codes(repo_root, tmp_path):
    assert run_cli("validate", "-f", str(repo_root / "queues.yaml"), cwd=repo_root).returncode == 0
    missing = run_cli("validate", "-f", str(tmp_path / "nope.yaml"), cwd=repo_root)
    assert missing.returncode == 2 and "no such file" in missing.stderr
    assert run_cli("validate", "--bogus", cwd=repo_root).returncode == 2
    helped = run_cli("render", "--help", cwd=repo_root)
    assert helped.returncode == 0 and "atomically" in helped.stdout


def test_install_dry_run_and_missing_helm(repo_root, tmp_path):
    out = tmp_path / "out"
    assert run_cli("render", "-f", str(repo_root / "queues.yaml"), "-o", str(out), cwd=repo_root).returncode == 0
    dry = run_cli("install", "--plan", str(out / "install-plan.json"), "--dry-run", cwd=repo_root)
    cmds = [line for line in dry.stdout.splitlines() if line.startswith("helm upgrade")]
    assert [c.split()[3] for c in cmds] == [
        "nats",
        "faas-request-worker",
        "ml-batch-worker",
        "jetqueue-gateway",
    ]
    env = {**os.environ, "PATH": str(tmp_path), "KUBECONFIG": str(tmp_path / "none")}
    res = subprocess.run(
        [sys.executable, "-m", "jetqueue", "install", "--plan", str(out / "install-plan.json")],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert res.returncode == 1
    assert "helm is not on PATH" in res.stdout and "no kube context" in res.stdout


def test_render_500_queues_is_fast():
    doc = {
        "gateway": {"strictRouting": True},
        "queues": {f"q{i}": {"functions": [f"fn{i}"]} for i in range(500)},
    }
    t0 = time.perf_counter()
    result = validate_text(yaml.safe_dump(doc))
    assert result.config is not None
    files = render(result.config)
    elapsed = time.perf_counter() - t0
    print(f"validate + render of 500 queues: {elapsed * 1000:.0f} ms")
    assert len(files) == 503  # 500 workers, NATS, gateway, plan
    assert elapsed < 30  # generous: a guard against a quadratic blow-up, not a benchmark


def test_key_limits_flow_from_queues_yaml_to_the_workers_policy(tmp_path):
    from jetqueue.queueworker.policy import Policies
    from jetqueue.settings import WorkerSettings

    doc = "queues:\n  faas-request:\n    functionOverrides:\n      per-customer: {keyConcurrency: 2, keyRate: 10}\n"
    result = validate_text(doc)
    assert result.config is not None, result.problems
    worker = yaml.safe_load(render(result.config, source="q.yaml")["queues/faas-request.yaml"])
    functions = worker["queue"]["functions"]
    assert functions["per-customer"]["keyConcurrency"] == 2 and functions["per-customer"]["keyRate"] == 10
    (tmp_path / "functions.json").write_text(json.dumps(functions))  # as the chart's ConfigMap holds it
    policy = Policies.from_settings(WorkerSettings(functions_file=str(tmp_path / "functions.json")))("per-customer")
    assert policy.key_concurrency == 2 and policy.key_rate == 10.0
    bad = validate_text("queues:\n  faas-request:\n    functionOverrides:\n      f: {keyConcurrency: -1}\n")
    assert bad.config is None and "keyConcurrency" in bad.problems[0].format("q.yaml")
