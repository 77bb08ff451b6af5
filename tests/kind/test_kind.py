"""The kind suite: a real Kubernetes cluster, the official NATS chart with the rendered values, our charts.

Runs with `make kind-test` where Docker, kind, helm and kubectl are available; elsewhere every test skips with
the reason. It is always collected, so it is imported and syntax-checked on every `make test`.

The cluster comes through pytest-helm-charts (PyPI; its `kube_cluster` fixture attaches to an existing cluster
given by a kubeconfig). This module overrides that plugin's `kube_config` fixture:
- `--kubeconfig PATH` or KUBECONFIG naming a kind cluster (current context `kind-<name>`): that cluster is used
  and kept; the image is loaded into it and the releases are uninstalled afterwards;
- no kubeconfig given: a throwaway kind cluster is created here and deleted afterwards;
- a kubeconfig whose current context is not a kind cluster: skipped, so nothing is installed into a real cluster.
The plugin registers only options and lazy fixtures: without a kind test selected it needs no KUBECONFIG.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pykube  # type: ignore[import-untyped]
import pytest
import yaml
from pytest_helm_charts.clusters import Cluster  # type: ignore[import-untyped]
from pytest_helm_charts.k8s.fixtures import NamespaceFactoryFunc  # type: ignore[import-untyped]

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


MISSING = missing_tools()
pytestmark = [pytest.mark.kind, pytest.mark.skipif(MISSING is not None, reason=f"kind suite: {MISSING}")]


def sh(*argv: str, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    done = subprocess.run(
        argv, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def kind_name(kubeconfig: str) -> str | None:
    """The kind cluster behind the kubeconfig's current context (kind names its contexts `kind-<name>`)."""
    for path in kubeconfig.split(os.pathsep):
        if path and Path(path).is_file():
            context = str((yaml.safe_load(Path(path).read_text()) or {}).get("current-context") or "")
            if context:
                return context.removeprefix("kind-") if context.startswith("kind-") else None
    return None


@dataclass(frozen=True)
class KindCluster:
    name: str
    kubeconfig: str
    created: bool  # made by this suite (deleted afterwards), or an existing one (kept)


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
def kind_cluster(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KindCluster]:
    given = str(pytestconfig.getoption("kubeconfig", default=None) or os.environ.get("KUBECONFIG", ""))
    if given:
        name = kind_name(given)
        if name is None:
            pytest.skip(f"kind suite: the kubeconfig {given} does not point at a kind cluster; unset KUBECONFIG")
        yield KindCluster(name, given, created=False)
        return
    name = f"jetqueue-{uuid.uuid4().hex[:6]}"
    kubeconfig = tmp_path_factory.mktemp("kind") / "kubeconfig"
    sh("kind", "create", "cluster", "--name", name, "--kubeconfig", str(kubeconfig), "--wait", "120s")
    try:
        yield KindCluster(name, str(kubeconfig), created=True)
    finally:
        sh("kind", "delete", "cluster", "--name", name)


@pytest.fixture(scope="module")
def kube_config(kind_cluster: KindCluster) -> str:
    """pytest-helm-charts' `kube_config`, overridden: its `kube_cluster` attaches to the kind cluster above."""
    return kind_cluster.kubeconfig


@pytest.fixture(scope="module")
def image(kind_cluster: KindCluster) -> str:
    sh("docker", "build", "-f", "worker/Dockerfile", "-t", IMAGE, str(ROOT), timeout=1200)
    sh("kind", "load", "docker-image", IMAGE, "--name", kind_cluster.name)
    return IMAGE


@pytest.fixture(scope="module")
def installed(
    kind_cluster: KindCluster,
    kube_cluster: Cluster,
    namespace_factory: NamespaceFactoryFunc,
    image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    result = validate_text(yaml.safe_dump(QUEUES))
    assert result.config is not None, [p.format("kind") for p in result.problems]
    out = tmp_path_factory.mktemp("render") / "out"
    write_atomically(render(result.config), out)
    env = {"KUBECONFIG": kube_cluster.kube_config_path}
    namespace_factory(NAMESPACE)  # the plugin deletes it afterwards if it created it
    kube_cluster.kubectl("create deployment samples", namespace=NAMESPACE, image=image, output_format="")
    kube_cluster.kubectl(
        "patch deployment samples",
        namespace=NAMESPACE,
        type="json",
        patch=json.dumps(
            [
                {
                    "op": "add",
                    "path": "/spec/template/spec/containers/0/command",
                    "value": ["python", "-m", "jetqueue.generator.samples", "8080"],
                },
                {"op": "add", "path": "/spec/template/spec/containers/0/imagePullPolicy", "value": "Never"},
            ]
        ),
        output_format="",
    )
    kube_cluster.kubectl("expose deployment samples", namespace=NAMESPACE, port="8080", output_format="")
    plan: dict[str, Any] = json.loads((out / "install-plan.json").read_text())
    try:
        sh(
            str(Path(sys.executable).parent / "jetqueue"),
            "install",
            "--plan",
            str(out / "install-plan.json"),
            env=env,
            timeout=1200,
        )
        yield kube_cluster
    finally:
        if not kind_cluster.created:  # an existing cluster is left as it was found
            for release in reversed(plan["releases"]):
                subprocess.run(
                    ["helm", "uninstall", release["name"], "-n", release["namespace"], "--wait"],
                    env={**os.environ, **env},
                    capture_output=True,
                    timeout=600,
                    check=False,
                )


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


def test_calls_flow_and_survive_a_nats_pod_loss(installed: Cluster) -> None:
    env = {"KUBECONFIG": installed.kube_config_path}
    gw = port_forward(env, "svc/jetqueue-gateway", 8080)
    samples = port_forward(env, "svc/samples", 8080)
    try:
        base = f"http://127.0.0.1:{gw.local_port}"  # type: ignore[attr-defined]
        callback = f"http://samples.{NAMESPACE}:8080/callback"
        ids = []
        for i in range(200):
            if i == 100:  # lose a NATS server mid-run
                query = pykube.Pod.objects(installed.kube_client).filter(
                    namespace="nats", selector={"app.kubernetes.io/name": "nats"}
                )
                pods = [pod.name for pod in query]
                assert pods, "no NATS pod found"
                victim = pods[0]
                # kubectl options go in the command: the plugin turns keyword arguments into `--key=value` verbatim
                installed.kubectl(f"delete pod {victim} --force --grace-period=0", namespace="nats")
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
        sh("helm", "test", "jetqueue-gateway", "-n", NAMESPACE, env=env)
    finally:
        gw.terminate()
        samples.terminate()
