"""The charts, proven without a cluster: the real Helm engine, strict Kubernetes schemas, and the
rendered Deployments run as local processes against a real nats-server."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from jetqueue.generator import chartenv, envmap
from jetqueue.generator.chartdocs import stale
from jetqueue.generator.render import render
from jetqueue.generator.validate import validate_text
from tests.servers import eventually, free_port

ROOT = Path(__file__).resolve().parent.parent
CHARTS = {"queue-worker": ROOT / "charts" / "queue-worker", "gateway": ROOT / "charts" / "gateway"}
K8S_VERSION = "1.34.0"
CRD_KINDS = {"ServiceMonitor", "ScaledObject"}  # Prometheus Operator, KEDA: not in the Kubernetes schemas


def rendered_values(source: str) -> dict[str, dict[str, Any]]:
    """chart values keyed by out/ path, as `jetqueue render` writes them for a queues file."""
    result = validate_text((ROOT / source).read_text())
    assert result.config is not None
    files = render(result.config)
    return {rel: yaml.safe_load(text) for rel, text in files.items() if rel.startswith(("queues/", "gateway/"))}


def chart_for(rel: str) -> str:
    return "gateway" if rel.startswith("gateway/") else "queue-worker"


def manifests(chart: str, values: dict[str, Any] | None, name: str = "rel") -> list[dict[str, Any]]:
    out = helm_python.Chart.load(CHARTS[chart]).render(values, name=name, namespace="jetqueue")
    docs = []
    for path, text in out.items():
        if path.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


ALL_FEATURES = {
    "queue-worker": {
        "metrics": {"serviceMonitor": {"enabled": True}},
        "networkPolicy": {"enabled": True},
        "nats": {
            "auth": {"method": "userPassword", "secretName": "nats-client"},
            "tls": {"enabled": True, "secretName": "nats-tls", "clientCert": True},
        },
        "queue": {"functions": {"train": {"upstreamTimeout": "10m"}}},
        "imagePullSecrets": [{"name": "regcred"}],
        "podAnnotations": {"example.com/team": "platform"},
        "topologySpreadConstraints": {
            "kubernetes.io/hostname": {"maxSkew": 1, "whenUnsatisfiable": "ScheduleAnyway"},
            "topology.kubernetes.io/zone": {"maxSkew": 2, "labelSelector": {"matchLabels": {"team": "a"}}},
        },
    },
    "gateway": {
        "metrics": {"serviceMonitor": {"enabled": True}},
        "networkPolicy": {"enabled": True},
        "nats": {"auth": {"method": "creds", "secretName": "nats-creds"}},
        "gateway": {
            "auth": {"method": "bearer", "secretName": "gw"},
            "routes": {"a": "q"},
            "queues": {"q": {"streamReplicas": 3, "streamStorage": "file"}},
        },
        "imagePullSecrets": [{"name": "regcred"}],
        "topologySpreadConstraints": {"kubernetes.io/hostname": {"maxSkew": 1}},
    },
}

CASES = (
    [(c, None, f"{c} defaults") for c in CHARTS]
    + [(c, ALL_FEATURES[c], f"{c} every feature") for c in CHARTS]
    + [
        (chart_for(rel), v, f"{src}:{rel}")
        for src in ("queues.yaml", "tests/data/dev.yaml", "tests/data/external.yaml", "tests/data/openfaas.yaml")
        for rel, v in rendered_values(src).items()
    ]
)


@pytest.mark.parametrize(("chart", "values", "label"), CASES, ids=[c[2] for c in CASES])
def test_renders_lints_and_validates_strictly(chart, values, label):
    lint = helm_python.lint(CHARTS[chart], values)
    assert not [m for m in lint["messages"] if m["severity"] >= 3] and not lint["errors"], lint
    docs = manifests(chart, values)
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "ServiceAccount", "PodDisruptionBudget"}
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == "Deployment")


def test_pods_are_locked_down():
    for chart in CHARTS:
        spec = deployment(manifests(chart, None))["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        c = spec["containers"][0]
        assert c["command"] == ["jetqueue"] and c["args"] in (["worker"], ["gateway"])  # exec form
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"] == {"drop": ["ALL"]}
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_pods_take_pull_secrets_spread_and_annotations_as_the_openfaas_charts_do():
    """imagePullSecrets and podAnnotations as given; topologySpreadConstraints a map keyed by topologyKey (the NATS
    chart's form): each entry gets its topologyKey and, unless it has one, a labelSelector for the release's pods."""
    for chart in CHARTS:
        docs = manifests(chart, ALL_FEATURES[chart], name="rel")
        pod = deployment(docs)["spec"]["template"]
        spec = pod["spec"]
        assert spec["imagePullSecrets"] == [{"name": "regcred"}]
        selector = deployment(docs)["spec"]["selector"]["matchLabels"]
        spread = {c["topologyKey"]: c for c in spec["topologySpreadConstraints"]}
        assert spread["kubernetes.io/hostname"]["labelSelector"] == {"matchLabels": selector}
        assert spread["kubernetes.io/hostname"]["maxSkew"] == 1
        test_pod = next(d for d in docs if d["kind"] == "Pod")
        assert test_pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    worker = deployment(manifests("queue-worker", ALL_FEATURES["queue-worker"]))["spec"]["template"]
    zone = {c["topologyKey"]: c for c in worker["spec"]["topologySpreadConstraints"]}["topology.kubernetes.io/zone"]
    assert zone == {
        "topologyKey": "topology.kubernetes.io/zone",
        "maxSkew": 2,
        "whenUnsatisfiable": "ScheduleAnyway",  # the default, as OpenFaaS's chart spreads its queue-worker
        "labelSelector": {"matchLabels": {"team": "a"}},  # given: kept
    }
    assert worker["metadata"]["annotations"]["example.com/team"] == "platform"
    for chart in CHARTS:
        spec = deployment(manifests(chart, None))["spec"]["template"]["spec"]
        assert "imagePullSecrets" not in spec and "topologySpreadConstraints" not in spec


def test_queues_yaml_pod_settings_and_openfaas_reach_both_charts():
    values = rendered_values("tests/data/openfaas.yaml")
    worker, gateway = values["queues/faas-request.yaml"], values["gateway/values.yaml"]
    for v in (worker, gateway):
        assert v["imagePullSecrets"] == [{"name": "regcred"}]
        assert v["openfaas"] == {
            "url": "http://gateway.openfaas:8080",
            "refreshInterval": "10s",
            "auth": {"secretName": "basic-auth", "userKey": "basic-auth-user", "passwordKey": "basic-auth-password"},
        }
        assert v["nats"]["tls"]["insecure"] is True
    assert worker["podAnnotations"] == {"prometheus.io/scrape": "true"}
    assert worker["topologySpreadConstraints"]["topology.kubernetes.io/zone"] == {
        "maxSkew": 2,
        "whenUnsatisfiable": "DoNotSchedule",
    }
    assert gateway["topologySpreadConstraints"] == {
        "kubernetes.io/hostname": {"maxSkew": 1, "whenUnsatisfiable": "ScheduleAnyway"}
    }
    assert worker["queue"]["retry"]["openfaasInternal"] is False
    env = envmap.chart_env("queue-worker", helm_python.Chart.load(CHARTS["queue-worker"]).merge_values(worker))
    assert (
        env[0]["JETQUEUE_OPENFAAS_URL"] == "http://gateway.openfaas:8080"
        and env[0]["JETQUEUE_NATS_TLS_INSECURE"] == "true"
    )
    assert env[1]["JETQUEUE_OPENFAAS_PASSWORD"] == ("basic-auth", "basic-auth-password")
    assert env[0]["JETQUEUE_RETRY_OPENFAAS_INTERNAL"] == "false"


def test_the_gateway_keeps_serving_until_endpoints_update_then_drains():
    """preStop before SIGTERM (Services stop sending first), and a grace period that covers it and the drain."""
    from jetqueue.settings import GatewaySettings

    spec = deployment(manifests("gateway", None))["spec"]["template"]["spec"]
    pre_stop = spec["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop >= 5
    assert spec["terminationGracePeriodSeconds"] > pre_stop + GatewaySettings().shutdown_timeout


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def values_files() -> dict[str, tuple[str, dict[str, Any]]]:
    """Every rendered values file: the golden ones, and what `jetqueue render` writes for the examples."""
    files = {}
    for path in sorted((ROOT / "tests" / "golden").glob("*/*/*.yaml")):
        if path.parent.name in ("queues", "gateway"):
            chart = "gateway" if path.parent.name == "gateway" else "queue-worker"
            files[str(path.relative_to(ROOT))] = (chart, yaml.safe_load(path.read_text()))
    for src in (
        "queues.yaml",
        "examples/dev.yaml",
        "tests/data/dev.yaml",
        "tests/data/external.yaml",
        "tests/data/openfaas.yaml",
    ):
        files |= {f"{src}:{rel}": (chart_for(rel), v) for rel, v in rendered_values(src).items()}
    return files


VALUES_FILES = values_files()
# Overrides that, with ALL_FEATURES, take every branch of the named env templates (jetqueue.natsEnv,
# gateway.authEnv) and of the generated ones; 2000000 once came out of Helm as "2e+06".
VARIANTS: dict[str, list[dict[str, Any]]] = {
    "queue-worker": [
        {},
        ALL_FEATURES["queue-worker"],
        {"nats": {"auth": {"method": "token", "secretName": "t"}, "tls": {"enabled": True, "secretName": "x"}}},
        {"nats": {"auth": {"method": "creds", "secretName": "c", "credsKey": "u.creds"}}},
        {"queue": {"maxAckPending": 2000000, "retry": {"httpCodes": [503]}, "functions": {}}},
        {"queue": {"callbackSigning": {"secretName": "signing", "key": "keys"}}},
        {"openfaas": {"url": "http://gateway.openfaas:8080", "auth": {"secretName": "basic-auth"}}},
        {"nats": {"tls": {"insecure": True}}},
    ],
    "gateway": [
        {},
        ALL_FEATURES["gateway"],
        {
            "gateway": {"auth": {"method": "basic", "secretName": "b"}, "callbackHosts": ["a.example", "b.example"]},
            "nats": {"auth": {"method": "userPassword", "secretName": "u"}, "tls": {"enabled": True}},
        },
        {"openfaas": {"url": "http://gateway.openfaas:8080", "auth": {"secretName": "of", "userKey": "u"}}},
    ],
}


def env_of(container: dict[str, Any]) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    env = container.get("env", [])
    plain = {e["name"]: e["value"] for e in env if "value" in e}
    refs = [(e["name"], e["valueFrom"]["secretKeyRef"]) for e in env if "valueFrom" in e]
    return plain, {name: (ref["name"], ref["key"]) for name, ref in refs}


@pytest.mark.parametrize("label", sorted(VALUES_FILES))
def test_deployment_env_is_what_the_code_reads(label):
    """The rendered env equals envmap's (which `jetqueue dev` runs with) for every values file and branch: the
    generated entries, the named templates' conditional ones, Secrets as references, mounted files mounted."""
    chart, values = VALUES_FILES[label]
    wired = {w.name: w for w in chartenv.wiring(chart)}
    for variant in VARIANTS[chart]:
        given = deep_merge(values, variant)
        merged = helm_python.Chart.load(CHARTS[chart]).merge_values(given)
        docs = manifests(chart, given)
        container = deployment(docs)["spec"]["template"]["spec"]["containers"][0]
        plain, secret = env_of(container)
        assert (plain, secret) == envmap.chart_env(chart, merged), variant
        assert set(plain) | set(secret) <= set(wired)  # only variables the settings say this chart sets
        for helper in {w.helper for w in wired.values() if w.helper}:
            made = envmap.HELPERS[helper](merged)
            assert all(wired[name].helper == helper for name in [*made[0], *made[1]]), helper
        mounts = [m["mountPath"] for m in container["volumeMounts"]]
        for value in plain.values():
            if value.startswith("/etc/jetqueue/"):
                assert any(value == m or value.startswith(m + "/") for m in mounts), value
        test_pod = env_of(next(d for d in docs if d["kind"] == "Pod")["spec"]["containers"][0])
        if chart == "queue-worker":
            assert test_pod == envmap.nats_env(merged)
        else:
            assert test_pod[1] == envmap.gateway_auth_env(merged)[1]


def test_every_setting_says_how_the_charts_set_it():
    """wiring() raises for a setting with neither values= nor not_in_chart=; helpers named exist in envmap."""
    from jetqueue import settings

    assert set(CHARTS) == set(chartenv.SETTINGS) == set(settings.CHARTS)
    for chart in CHARTS:
        for w in chartenv.wiring(chart):
            assert not w.helper or w.helper in envmap.HELPERS, w


def test_chart_env_templates_are_current():
    for path, fresh in chartenv.files().items():
        assert path.is_file() and path.read_text() == fresh, f"{path} is stale: run `make docs`"


def test_charts_share_the_library_chart():
    """Both charts load charts/jetqueue-lib through a symlink; helpers live once, named by their chart."""
    lib = ROOT / "charts" / "jetqueue-lib"
    assert yaml.safe_load((lib / "Chart.yaml").read_text())["type"] == "library"
    lint = helm_python.lint(lib, strict=True)
    assert not lint["errors"], lint
    defined: dict[str, str] = {}
    for chart_dir in (lib, *CHARTS.values()):
        prefix = "jetqueue." if chart_dir == lib else f"{chart_dir.name}."
        for tpl in (chart_dir / "templates").glob("*.tpl"):
            for name in re.findall(r'\{\{-? define "([^"]+)"', tpl.read_text()):
                assert name.startswith(prefix) and name not in defined, (name, tpl, defined.get(name))
                defined[name] = str(tpl)
    for chart, path in CHARTS.items():
        assert (path / "charts" / "jetqueue-lib").resolve() == lib.resolve()
        deps = helm_python.Chart.load(path).dependencies
        assert [(d["name"], d.get("type")) for d in deps] == [("jetqueue-lib", "library")], chart
        assert yaml.safe_load((path / "Chart.yaml").read_text())["dependencies"][0]["name"] == "jetqueue-lib"


@pytest.mark.parametrize("chart", sorted(CHARTS))
def test_values_schema_rejects_typos_and_wrong_types(chart):
    c = helm_python.Chart.load(CHARTS[chart])
    c.validate_schema({"replicaCount": 2})
    with pytest.raises(helm_python.HelmError, match="replicaCont"):
        c.validate_schema({"replicaCont": 2})
    with pytest.raises(helm_python.HelmError):
        c.validate_schema({"replicaCount": "two"})
    with pytest.raises(helm_python.HelmError):
        c.validate_schema({"logs": {"format": "xml"}})


def test_chart_readmes_are_current():
    assert stale(write=False) == [], "run `make docs`"


def test_dockerfile_is_exec_form_non_root_and_runtime_only():
    text = (ROOT / "worker" / "Dockerfile").read_text()
    assert re.search(r'^ENTRYPOINT \["jetqueue"\]$', text, re.M)
    assert re.search(r'^CMD \["worker"\]$', text, re.M)
    assert re.search(r"^USER 10001", text, re.M) and "PYTHONUNBUFFERED=1" in text
    assert "requirements/worker.txt" in text and "[generator]" not in text
    runtime = (ROOT / "requirements" / "worker.txt").read_text().lower()
    for heavy in ("pyyaml", "jsonschema", "pytest", "helm"):
        assert heavy not in runtime


# ---- manifest-driven local run ------------------------------------------------------------------


def local_command(doc: dict[str, Any], files: dict[str, str], tmp: Path) -> tuple[list[str], dict[str, str], int]:
    """A Deployment's container as a local process: command, args and env exactly as rendered, with Secret
    refs replaced by test values, mounted files written to tmp and the listening port moved to a free one."""
    c = doc["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    for e in c["env"]:
        if "valueFrom" in e:
            env[e["name"]] = "test-secret"
    for mount, content in files.items():
        local = tmp / Path(mount).name
        local.write_text(content)
        for k, v in env.items():
            if v == mount:
                env[k] = str(local)
    port = free_port()
    assert env["JETQUEUE_HTTP_PORT"] == str(c["ports"][0]["containerPort"])
    env["JETQUEUE_HTTP_PORT"] = str(port)
    env["JETQUEUE_HTTP_HOST"] = "127.0.0.1"  # tests listen on loopback only
    argv = [str(Path(sys.executable).parent / c["command"][0]), *c["args"]]
    return argv, env, port


def configmap_files(docs: list[dict[str, Any]]) -> dict[str, str]:
    out = {}
    for d in docs:
        if d["kind"] == "ConfigMap" and "grafana_dashboard" not in d["metadata"].get("labels", {}):
            for key, value in d["data"].items():
                out[f"/etc/jetqueue/{key}"] = value
    return out


async def test_rendered_deployments_run_locally(nats_server, functions, callbacks, tmp_path):
    doc = yaml.safe_load((ROOT / "queues.yaml").read_text())
    doc["nats"] = {"profile": "external", "url": nats_server.url}
    doc["gateway"]["functionURL"] = functions.url_template
    doc["queues"]["ml-batch"]["streamReplication"] = 1
    doc["queues"]["faas-request"]["streamReplication"] = 1
    result = validate_text(yaml.safe_dump(doc))
    assert result.config is not None, [p.format("q") for p in result.problems]
    files = render(result.config)
    procs: list[subprocess.Popen[bytes]] = []
    ports: dict[str, int] = {}
    try:
        for rel, text in sorted(files.items()):
            if not rel.startswith(("queues/", "gateway/")):
                continue
            chart = chart_for(rel)
            docs = manifests(chart, yaml.safe_load(text), name=Path(rel).stem)
            argv, env, port = local_command(deployment(docs), configmap_files(docs), tmp_path)
            ports[rel] = port
            log = open(tmp_path / f"{Path(rel).stem}-{chart}.log", "wb")  # noqa: ASYNC230 - start-up only
            procs.append(
                subprocess.Popen(  # noqa: ASYNC220 - starting the rendered processes is the test
                    argv,
                    env={**{k: v for k, v in os.environ.items() if not k.startswith("JETQUEUE_")}, **env},
                    stdout=log,
                    stderr=log,
                )
            )
        import aiohttp

        async with aiohttp.ClientSession() as http:

            async def ready(port: int) -> bool:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            deadline = time.monotonic() + 60
            for port in ports.values():
                while not await ready(port):
                    assert time.monotonic() < deadline, "a rendered Deployment never became ready"
                    await asyncio.sleep(0.1)
            gateway = f"http://127.0.0.1:{ports['gateway/values.yaml']}"
            for fn in ("echo", "train"):  # default queue and the ml-batch queue
                async with http.post(
                    f"{gateway}/async-function/{fn}", data=b"from the chart", headers={"X-Callback-Url": callbacks.url}
                ) as r:
                    assert r.status == 202
        await eventually(lambda: len(callbacks.received) == 2, timeout=60)
        assert {h["X-Function-Name"] for h, _ in callbacks.received} == {"echo", "train"}
        assert all(b == b"from the chart" for _, b in callbacks.received)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(60)


def test_generated_values_match_chart_values_shape():
    """Every key the generator writes exists in the chart's values.yaml (no value referenced but not defined)."""

    def keys(d: Any, prefix: str = "") -> set[str]:
        if not isinstance(d, dict):
            return set()
        out = set()
        for k, v in d.items():
            p = f"{prefix}.{k}" if prefix else k
            out.add(p)
            if k not in ("functions", "schedules", "routes", "queues", "resources") or not prefix.startswith(
                ("queue", "gateway")
            ):
                out |= keys(v, p)
        return out

    for src in ("queues.yaml", "tests/data/dev.yaml", "tests/data/external.yaml"):
        for rel, values in rendered_values(src).items():
            defaults = yaml.safe_load((CHARTS[chart_for(rel)] / "values.yaml").read_text())
            missing = {k for k in keys(values) if k.split(".")[0] != "resources"} - keys(defaults)
            assert not missing, (src, rel, missing)
            helm_python.Chart.load(CHARTS[chart_for(rel)]).validate_schema(values)


def test_autoscaling_renders_keda_per_consumer_and_hpa():
    values = rendered_values("queues.yaml")["queues/ml-batch.yaml"]
    docs = manifests("queue-worker", values)
    scaled = next(d for d in docs if d["kind"] == "ScaledObject")
    consumers = [t["metadata"]["consumer"] for t in scaled["spec"]["triggers"]]
    assert consumers == ["ml-batch-fn-train", "ml-batch-fn-infer"]
    assert scaled["spec"]["maxReplicaCount"] == 8 and scaled["spec"]["triggers"][0]["metadata"]["lagThreshold"] == "50"
    assert "advanced" not in scaled["spec"] and all("name" not in t for t in scaled["spec"]["triggers"])  # one stream
    assert "replicas" not in deployment(docs)["spec"]  # the scaler owns the replica count
    hpa_values = {**values, "autoscaling": {**values["autoscaling"], "type": "hpa"}}
    hpa = next(d for d in manifests("queue-worker", hpa_values) if d["kind"] == "HorizontalPodAutoscaler")
    assert hpa["spec"]["metrics"][0]["external"]["metric"]["name"] == "queue_worker_pending_messages"
    kubernetes_validate.validate(hpa, K8S_VERSION, strict=True)


def test_the_dashboard_charts_only_what_the_worker_exports():
    from jetqueue.queueworker.metrics import WorkerMetrics

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    exported = {f.name + s for f in WorkerMetrics().registry.collect() for s in suffixes[f.type]}
    (configmap,) = [d for d in manifests("queue-worker", None) if d["metadata"]["name"].endswith("-dashboard")]
    (dashboard,) = [json.loads(text) for text in configmap["data"].values()]
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bqueue_worker_\w+", target["expr"])
    }
    assert queried <= exported, queried - exported
    assert {"queue_worker_paused", "queue_worker_scheduled_messages"} <= queried
    assert any('reason="expired"' in t["expr"] for p in dashboard["panels"] for t in p["targets"])


def test_keda_scales_a_partitioned_queue_on_the_sum_of_its_partitions():
    values = rendered_values("queues.yaml")["queues/faas-request.yaml"]  # 3 partitions, static mode
    keda = {**values, "autoscaling": {**values["autoscaling"], "type": "keda"}}
    scaled = next(d for d in manifests("queue-worker", keda) if d["kind"] == "ScaledObject")
    triggers = scaled["spec"]["triggers"]
    assert [(t["metadata"]["stream"], t["metadata"]["consumer"]) for t in triggers] == [
        (f"OF_faas-request{suffix}", "faas-request-workers") for suffix in ("", "_P1", "_P2")
    ]
    modifiers = scaled["spec"]["advanced"]["scalingModifiers"]
    assert modifiers == {"formula": "t0 + t1 + t2", "target": "100", "metricType": "AverageValue"}
    assert [t["name"] for t in triggers] == ["t0", "t1", "t2"]
    hpa_values = {**values, "autoscaling": {**values["autoscaling"], "type": "hpa"}}
    hpa = next(d for d in manifests("queue-worker", hpa_values) if d["kind"] == "HorizontalPodAutoscaler")
    selector = hpa["spec"]["metrics"][0]["external"]["metric"]["selector"]
    assert selector == {"matchLabels": {"queue_name": "faas-request"}}  # every partition's pending, summed
    kubernetes_validate.validate(hpa, K8S_VERSION, strict=True)
    gateway = rendered_values("queues.yaml")["gateway/values.yaml"]
    assert gateway["gateway"]["queues"]["faas-request"]["partitions"] == 3
    helm_python.Chart.load(CHARTS["gateway"]).validate_schema(gateway)
    bad = {**values, "queue": {**values["queue"], "partitions": 33}}
    with pytest.raises(Exception, match="partitions"):
        helm_python.Chart.load(CHARTS["queue-worker"]).validate_schema(bad)


def test_keda_scales_a_queue_with_priorities_on_every_level(tmp_path):
    source = tmp_path / "queues.yaml"
    source.write_text(
        "nats: {profile: dev}\ngateway: {defaultQueue: jobs}\nqueues:\n  jobs:\n    priorities: true\n"
        "    autoscaling: {type: keda, maxReplicas: 4}\n"
    )
    values = rendered_values(str(source))["queues/jobs.yaml"]
    assert values["queue"]["priorities"] is True
    assert rendered_values(str(source))["gateway/values.yaml"]["gateway"]["queues"]["jobs"]["priorities"] is True
    docs = manifests("queue-worker", values)
    scaled = next(d for d in docs if d["kind"] == "ScaledObject")
    consumers = [t["metadata"]["consumer"] for t in scaled["spec"]["triggers"]]
    assert consumers == ["jobs-workers-high", "jobs-workers", "jobs-workers-low"]
    assert scaled["spec"]["advanced"]["scalingModifiers"]["formula"] == "t0 + t1 + t2"  # the sum of the levels
    env = {e["name"]: e.get("value") for e in deployment(docs)["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["JETQUEUE_PRIORITIES"] == "true"
    bad = {**values, "queue": {**values["queue"], "mode": "function"}}
    with pytest.raises(Exception, match="priorities"):  # the worker would refuse to start: helm refuses first
        helm_python.Chart.load(CHARTS["queue-worker"]).validate_schema(bad)
