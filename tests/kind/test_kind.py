"""The kind suite: a real Kubernetes cluster, the official NATS chart with the rendered values, our charts.

Runs with `make kind-test` where Docker, kind and helm are available; elsewhere every test skips with
the reason. It is always collected, so it is imported and syntax-checked on every `make test`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config

from jetqueue.generator.render import render, write_atomically
from jetqueue.generator.validate import validate_text
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "jetqueue:kind-test"
NAMESPACE = "jetqueue"


def missing_tools() -> str | None:
    for tool in ("docker", "kind", "helm", "kubectl"):
        if not shutil.which(tool):
            return f"{tool} is not on PATH"
    if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode != 0:
        return "no Docker engine is reachable (docker info failed)"
    return None


pytestmark = [pytest.mark.kind, pytest.mark.skipif(missing_tools() is not None, reason=str(missing_tools()))]


def sh(*argv: str, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    done = subprocess.run(
        argv, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


QUEUES = {
    "nats": {
        "profile": "production",
        "replicas": 3,
        "storage": {"size": "1Gi"},
        "resources": {"cpu": "100m", "memory": "256Mi"},
        "durability": "strict",
    },
    "image": {"repository": IMAGE.split(":")[0], "tag": IMAGE.split(":")[1], "pullPolicy": "Never"},
    "gateway": {"replicas": 1, "functionURL": f"http://samples.{NAMESPACE}:8080/function/{{function}}"},
    "defaults": {
        "retry": {"maxAttempts": 5, "initialWait": "500ms", "maxWait": "5s"},
        "resources": {"cpu": "50m", "memory": "128Mi"},
    },
    "queues": {"faas-request": {"streamReplication": 3}},
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    name = f"jetqueue-{uuid.uuid4().hex[:6]}"
    kubeconfig = tmp_path_factory.mktemp("kind") / "kubeconfig"
    env = {"KUBECONFIG": str(kubeconfig)}
    sh("kind", "create", "cluster", "--name", name, "--kubeconfig", str(kubeconfig), "--wait", "120s")
    try:
        sh("docker", "build", "-f", "worker/Dockerfile", "-t", IMAGE, str(ROOT), timeout=1200)
        sh("kind", "load", "docker-image", IMAGE, "--name", name)
        yield env
    finally:
        sh("kind", "delete", "cluster", "--name", name)


@pytest.fixture(scope="module")
def installed(cluster: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    result = validate_text(yaml.safe_dump(QUEUES))
    assert result.config is not None, [p.format("kind") for p in result.problems]
    out = tmp_path_factory.mktemp("render") / "out"
    write_atomically(render(result.config), out)
    sh("kubectl", "create", "namespace", NAMESPACE, env=cluster)
    sh("kubectl", "-n", NAMESPACE, "create", "deployment", "samples", f"--image={IMAGE}", env=cluster)
    sh(
        "kubectl",
        "-n",
        NAMESPACE,
        "patch",
        "deployment",
        "samples",
        "--type=json",
        "-p",
        json.dumps(
            [
                {
                    "op": "add",
                    "path": "/spec/template/spec/containers/0/command",
                    "value": ["python", "-m", "jetqueue.generator.samples", "8080"],
                },
                {"op": "add", "path": "/spec/template/spec/containers/0/imagePullPolicy", "value": "Never"},
            ]
        ),
        env=cluster,
    )
    sh("kubectl", "-n", NAMESPACE, "expose", "deployment", "samples", "--port=8080", env=cluster)
    sh(
        str(Path(sys.executable).parent / "jetqueue"),
        "install",
        "--plan",
        str(out / "install-plan.json"),
        env=cluster,
        timeout=1200,
    )
    return cluster


def port_forward(env: dict[str, str], target: str, port: int) -> subprocess.Popen[bytes]:
    local = free_port()
    proc = subprocess.Popen(
        ["kubectl", "-n", NAMESPACE, "port-forward", target, f"{local}:{port}"],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    proc.local_port = local  # type: ignore[attr-defined]
    time.sleep(2)
    return proc


def test_calls_flow_and_survive_a_nats_pod_loss(installed: dict[str, str]) -> None:
    config.load_kube_config(config_file=installed["KUBECONFIG"])
    core = client.CoreV1Api()
    gw = port_forward(installed, "svc/jetqueue-gateway", 8080)
    samples = port_forward(installed, "svc/samples", 8080)
    try:
        base = f"http://127.0.0.1:{gw.local_port}"  # type: ignore[attr-defined]
        callback = f"http://samples.{NAMESPACE}:8080/callback"
        ids = []
        for i in range(200):
            if i == 100:  # lose a NATS server mid-run
                pods = core.list_namespaced_pod("nats", label_selector="app.kubernetes.io/name=nats").items
                victim = pods[0].metadata
                assert victim is not None and victim.name
                core.delete_namespaced_pod(victim.name, "nats", grace_period_seconds=0)
            req = urllib.request.Request(
                f"{base}/async-function/echo", data=b"kind", headers={"X-Callback-Url": callback}
            )
            for _ in range(30):  # a 503 during the failover is an honest answer: retry it
                try:
                    with urllib.request.urlopen(req, timeout=10) as r:
                        ids.append(r.headers["X-Call-Id"])
                        break
                except OSError:
                    time.sleep(1)
        deadline = time.monotonic() + 300
        stats_url = f"http://127.0.0.1:{samples.local_port}/stats"  # type: ignore[attr-defined]
        while time.monotonic() < deadline:
            with urllib.request.urlopen(stats_url, timeout=10) as r:
                if json.load(r)["callbacks"] >= len(ids):
                    break
            time.sleep(2)
        with urllib.request.urlopen(stats_url, timeout=10) as r:
            assert json.load(r)["callbacks"] == len(ids) == 200
        sh("helm", "test", "jetqueue-gateway", "-n", NAMESPACE, env=installed)
    finally:
        gw.terminate()
        samples.terminate()
