"""`jetqueue import openfaas`: OpenFaaS chart values into a queues.yaml that validates, with a line for every value
that cannot be carried over and why.

One argument per Helm release, as OpenFaaS runs them: the `openfaas` chart's values (its queue-worker serves the
shared queue `nats.channel`; the sections read are `jetstreamQueueWorker`, `queueWorkerPro`, `queueWorker`,
`nats`, `gateway.upstreamTimeout` and the pod settings) and one `queue-worker` chart's values per dedicated queue.
`a.yaml,b.yaml` layers files as `helm -f a.yaml -f b.yaml` does. Each release's values lie over that chart's
defaults (faas-netes chart/openfaas and chart/queue-worker values.yaml at 662ce9ce), so an overrides-only file
converts like the whole file. The rest of the openfaas chart configures OpenFaaS itself, which keeps running.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from jetqueue import contract
from jetqueue.durations import format_duration, parse_duration
from jetqueue.generator import model
from jetqueue.generator.model import deep_merge

# The defaults of what is read here, from faas-netes 662ce9ce (chart/openfaas/values.yaml, chart/queue-worker).
_SPREAD = {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway"}
OPENFAAS_DEFAULTS: dict[str, Any] = {
    "openfaasPro": False,
    "async": True,
    "gateway": {"upstreamTimeout": "1m"},
    "jetstreamQueueWorker": {
        "mode": "static",
        "adaptiveConcurrency": True,
        "consumer": {"inactiveThreshold": "30s"},
        "durableName": "faas-workers",
        "logs": {"debug": False, "format": "console"},
        "pprof": False,
        "topologySpreadConstraints": [{**_SPREAD, "labelSelector": {"matchLabels": {"app": "queue-worker"}}}],
    },
    "queueWorkerPro": {
        "maxRetryAttempts": "100",
        "maxRetryWait": "120s",
        "initialRetryWait": "10s",
        "httpRetryCodes": "408,429,500,502,503,504",
        "insecureTLS": False,
        "printRequestBody": False,
        "printResponseBody": False,
        "maxInflight": 50,
    },
    "queueWorker": {"replicas": 1, "queueGroup": "faas", "ackWait": "60s", "resources": {"requests": {}}},
    "nats": {"channel": "faas-request", "streamReplication": 1, "external": {"enabled": False, "host": "", "port": ""}},
}
QUEUE_WORKER_DEFAULTS: dict[str, Any] = {
    "replicas": 1,
    "queueName": "",
    "mode": "static",
    "maxInflight": 1,
    "adaptiveConcurrency": True,
    "queuePartitions": 1,
    "partition": 0,
    "consumer": {"inactiveThreshold": "30s"},
    "upstreamTimeout": "1m",
    "maxRetryAttempts": "100",
    "maxRetryWait": "120s",
    "initialRetryWait": "10s",
    "httpRetryCodes": "408,429,500,502,503,504",
    "insecureTLS": False,
    "gateway": {"host": "http://gateway.openfaas", "port": "8080"},
    "nats": {
        "host": "nats.openfaas",
        "port": "4222",
        "stream": {"name": "custom-request", "replicas": 1},
        "consumer": {"durableName": "custom-workers", "ackWait": "30s"},
    },
    "logs": {"debug": False, "format": "console"},
    "resources": {"requests": {}},
}
# The queue-worker values that are sections of its own (the rest of the openfaas chart is OpenFaaS itself).
OPENFAAS_SECTIONS = ("jetstreamQueueWorker", "queueWorkerPro", "queueWorker", "nats")
POD_KEYS = ("nodeSelector", "tolerations", "affinity")


class ImportError_(ValueError):
    """A file is not a values file this importer knows; the message says which and why."""


@dataclass
class Release:
    """One Helm release's values over its chart's defaults; every leaf read is marked, the rest are reported."""

    label: str  # the file name(s), for the lines
    values: dict[str, Any]
    used: set[str] = field(default_factory=set)
    lines: list[str] = field(default_factory=list)

    def get(self, path: str) -> Any:
        self.used.add(path)
        node: Any = self.values
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    def number(self, path: str) -> int:
        value = self.get(path)
        try:
            return int(str(value).strip())
        except ValueError:
            raise ImportError_(f"{self.label}: {path}={_shown(value)}: not a whole number") from None

    def duration(self, path: str) -> str:
        value = self.get(path)
        try:
            return format_duration(parse_duration(str(value)))
        except ValueError as e:
            raise ImportError_(f"{self.label}: {path}={_shown(value)}: {e}") from None

    def flag(self, path: str, template: bool = False) -> bool:
        """A boolean as OpenFaaS reads it: a value its chart passes to the worker's environment is false as the
        string "false" (or "0", or empty); one a template tests with `if` (`template`) is true when not empty."""
        value = self.get(path)
        if not isinstance(value, str):
            return bool(value)
        return bool(value) if template else value.strip().lower() not in ("", "false", "0", "no")

    def say(self, what: str, kind: str, why: str) -> None:
        """A line for the user: `kind` is `not carried`, `changed` or `note`."""
        self.lines.append(f"{self.label}: {what}: {kind}: {why}")

    def drop(self, path: str, why: str) -> None:
        """A value that is not carried over: say so (when set at all) and why."""
        value = self.get(path)
        if value not in (None, "", [], {}):
            self.say(f"{path}={_shown(value)}", "not carried", why)

    def leftovers(self, roots: tuple[str, ...]) -> None:
        for path, value in _leaves(self.values):
            if path.split(".")[0] in roots and not any(path == u or path.startswith(u + ".") for u in self.used):
                self.say(f"{path}={_shown(value)}", "not carried", "unknown to this importer")


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict) and node:
        for k, v in node.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix, node


def one_line(text: str) -> str:
    """`text` with what is not printable (line breaks above all: the lines head the queues.yaml as comments) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _shown(value: Any) -> str:
    """A value for a line (which also heads the queues.yaml as a comment): one line, at most 80 characters."""
    text = str(value) if not isinstance(value, (dict, list)) else repr(value)
    text = one_line(text)
    return text if len(text) <= 80 else text[:77] + "..."


def _codes(r: Release, path: str) -> list[int]:
    value = r.get(path)
    try:
        return [int(c) for c in re.split(r"[,\s]+", str(value)) if c]
    except ValueError:
        raise ImportError_(f"{r.label}: {path}={_shown(value)}: not comma-separated status codes") from None


def kind_of(doc: dict[str, Any]) -> str | None:
    """`openfaas` or `queue-worker`: which chart a values document belongs to; None when no key tells."""
    if {"jetstreamQueueWorker", "queueWorkerPro", "queueWorker", "openfaasPro", "functionNamespace"} & doc.keys():
        return "openfaas"
    if {"maxInflight", "queueName", "maxRetryAttempts", "upstreamTimeout"} & doc.keys() or "stream" in (
        doc.get("nats") or {}
    ):
        return "queue-worker"
    return None


def release(label: str, docs: list[dict[str, Any]]) -> tuple[str, Release]:
    """One release's values: its files layered in order, over the defaults of the chart their keys name."""
    kinds = {kind for d in docs if (kind := kind_of(d)) is not None}
    if len(kinds) > 1:
        raise ImportError_(f"{label}: layers values of both charts; give each release its own argument")
    if not kinds:
        raise ImportError_(
            f"{label}: neither the openfaas chart's values nor the queue-worker chart's (no key of either)"
        )
    kind = kinds.pop()
    given: dict[str, Any] = {}
    for d in docs:
        given = deep_merge(given, d)
    defaults = OPENFAAS_DEFAULTS if kind == "openfaas" else QUEUE_WORKER_DEFAULTS
    return kind, Release(label, deep_merge(defaults, given))


def _resources(r: Release, path: str) -> dict[str, Any]:
    """The worker's requests. jetqueue's memory request is also its limit: one below jetqueue's default (OpenFaaS
    sets a request only, sized for its Go worker) would become a limit the worker may not fit, so it stays."""
    requests = r.get(path) or {}
    if not isinstance(requests, dict):
        return {}
    out = {"cpu": str(requests["cpu"])} if "cpu" in requests else {}
    if "memory" in requests:
        least = model.schema()["properties"]["defaults"]["properties"]["resources"]["properties"]["memory"]["default"]
        if model.parse_quantity(str(requests["memory"])) >= model.parse_quantity(least):
            out["memory"] = str(requests["memory"])
        else:
            why = f"jetqueue's memory request is also its limit; below its {least} the worker may not fit"
            r.say(f"{path}.memory={requests['memory']}", "not carried", why)
    return out


def _spread(r: Release, path: str) -> dict[str, Any]:
    """OpenFaaS's list of TopologySpreadConstraints as jetqueue's map keyed by topologyKey."""
    out: dict[str, Any] = {}
    for i, c in enumerate(r.get(path) or []):
        key = c.get("topologyKey")
        if not key or key in out:
            r.say(f"{path}[{i}]={_shown(c)}", "not carried", "no topologyKey, or a second one for that key")
            continue
        out[key] = {k: c[k] for k in ("maxSkew", "whenUnsatisfiable") if k in c}
        if "labelSelector" in c:
            why = "the chart selects the release's own pods (OpenFaaS's labels do not match them)"
            r.say(f"{path}[{i}].labelSelector={_shown(c['labelSelector'])}", "not carried", why)
        if extra := sorted(set(c) - {"topologyKey", "maxSkew", "whenUnsatisfiable", "labelSelector"}):
            r.say(f"{path}[{i}] {extra}", "not carried", "queues.yaml takes maxSkew and whenUnsatisfiable")
    return out


def _retry(r: Release, prefix: str, pro: bool) -> dict[str, Any]:
    keys = ("maxRetryAttempts", "maxRetryWait", "initialRetryWait", "httpRetryCodes", "backoff")
    if not pro:
        for key in keys:
            r.get(prefix + key)  # the Pro worker's, not deployed by this release
        why = "the Community Edition's queue-worker never retries; retry.maxAttempts: 1 keeps that (raise it to retry)"
        r.say("openfaasPro=false", "note", why)
        return {"maxAttempts": 1}
    out: dict[str, Any] = {
        "maxAttempts": r.number(prefix + "maxRetryAttempts"),
        "maxWait": r.duration(prefix + "maxRetryWait"),
        "httpCodes": _codes(r, prefix + "httpRetryCodes"),
    }
    initial = parse_duration(r.duration(prefix + "initialRetryWait"))
    out["initialWait"] = format_duration(initial) if initial > 0 else "100ms"
    if initial <= 0:
        r.say(f"{prefix}initialRetryWait=0s", "changed", "to 100ms: jetqueue's first wait is also its least")
    if r.get(prefix + "backoff"):
        out["backoff"] = str(r.get(prefix + "backoff"))
    return out


def _insecure(r: Release, path: str) -> None:
    if r.flag(path):
        r.drop(
            path,
            "OpenFaaS then skips verifying the certificates of callbacks (and functions); jetqueue always verifies "
            "them (nats.tls.insecure is for NATS only)",
        )


def _pod(r: Release) -> None:
    r.drop("image", "jetqueue runs its own image (image.repository)")
    for key in POD_KEYS:
        r.drop(key, f"queues.yaml has no {key}: set it on the rendered values of charts/queue-worker")


def _logs(r: Release, prefix: str) -> dict[str, str]:
    return {"format": str(r.get(prefix + "logs.format")), "level": "debug" if r.flag(prefix + "logs.debug") else "info"}


def from_openfaas(r: Release, namespace: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The openfaas chart's shared queue: its name, its queues.yaml entry, and the settings of the whole file."""
    pro = r.flag("openfaasPro", template=True)
    if not r.flag("async", template=True):
        r.say("async=false", "note", "OpenFaaS runs no queue-worker; its shared queue is declared anyway")
    name = str(r.get("nats.channel"))
    q: dict[str, Any] = {"replicas": r.number("queueWorker.replicas")}
    j = "jetstreamQueueWorker."
    if pro:
        q["mode"] = str(r.get(j + "mode"))
        q["maxInflight"] = r.number("queueWorkerPro.maxInflight")
        q["adaptiveConcurrency"] = r.flag(j + "adaptiveConcurrency")
        q["inactiveThreshold"] = r.duration(j + "consumer.inactiveThreshold")
        r.drop(j + "consumer.pullMaxMessages", "jetqueue pulls as many calls as it has free slots")
        r.drop(
            j + "durableName", "only for migrating OpenFaaS's own old streams; jetqueue's consumer is <queue>-workers"
        )
        r.drop(j + "image", "jetqueue runs its own image (image.repository)")
        if r.flag(j + "pprof", template=True):
            r.drop(j + "pprof", "jetqueue has no pprof endpoint (it is not a Go program)")
        q["logs"] = _logs(r, j)
        if spread := _spread(r, j + "topologySpreadConstraints"):
            q["topologySpreadConstraints"] = spread
        for key in ("printRequestBody", "printResponseBody"):
            if r.flag("queueWorkerPro." + key):
                r.drop("queueWorkerPro." + key, "jetqueue never logs bodies; dead letters keep them")
        _insecure(r, "queueWorkerPro.insecureTLS")
    else:
        q["maxInflight"] = r.number("queueWorker.maxInflight") if r.get("queueWorker.maxInflight") else 1
        r.get("jetstreamQueueWorker")  # the Pro worker's sections: not deployed by this release
        r.get("queueWorkerPro")
    q["retry"] = _retry(r, "queueWorkerPro.", pro)
    r.drop("queueWorker.image", "jetqueue runs its own image (image.repository)")
    r.drop("queueWorker.queueGroup", "a NATS Streaming queue group: JetStream has none")
    q["ackWait"] = r.duration("queueWorker.ackWait")
    q["upstreamTimeout"] = r.duration("gateway.upstreamTimeout")
    q["streamReplication"] = r.number("nats.streamReplication")
    if res := _resources(r, "queueWorker.resources.requests"):
        q["resources"] = res
    r.get("queueWorker.resources")
    top: dict[str, Any] = {"gateway": {"functionURL": f"http://gateway.{namespace}:8080/function/{{function}}"}}
    top["openfaas"] = {"url": f"http://gateway.{namespace}:8080"}
    if r.flag("nats.external.enabled", template=True):
        top["nats"] = {"url": f"nats://{r.get('nats.external.host')}:{r.get('nats.external.port')}"}
        r.drop("nats.external.clusterName", "NATS Streaming's cluster name: JetStream needs none")
    for key in ("nats.image", "nats.resources", "nats.external"):
        r.get(key)
    if secrets := [s["name"] for s in r.get("imagePullSecrets") or [] if isinstance(s, dict) and s.get("name")]:
        top["image"] = {"pullSecrets": secrets}
    for key in POD_KEYS:
        r.drop(key, f"queues.yaml has no {key}: set it on the rendered values of charts/queue-worker")
    r.leftovers(OPENFAAS_SECTIONS)
    return name, q, top


def queue_name(r: Release) -> str:
    given = str(r.get("queueName") or r.get("nats.stream.name"))
    name = given.lower().replace("_", "-")
    if not contract.QUEUE_NAME.match(name) or len(name) > contract.MAX_QUEUE_NAME:
        raise ImportError_(f"{r.label}: queue {given!r} cannot be a jetqueue queue name (a DNS-1123 label, 1-40)")
    if name != given:
        why = f"to {name!r} (a DNS-1123 label): annotate its functions com.openfaas.queue={name}, or list them"
        r.say(f"queue {given!r}", "changed", why + " under the queue's `functions`")
    return name


def from_queue_worker(r: Release, namespace: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """One queue-worker release: its queue's name, its queues.yaml entry, and the settings of the whole file."""
    name = queue_name(r)
    if r.get("queueName") and r.get("nats.stream.name") != r.get("queueName"):
        r.drop("nats.stream.name", f"jetqueue's stream is OF_{name}")
    durable = r.get("nats.consumer.durableName")
    if durable != contract.durable_name(name):
        r.drop("nats.consumer.durableName", f"jetqueue's consumer is {contract.durable_name(name)}")
    partitions = r.number("queuePartitions")
    if partitions > 1:  # OpenFaaS: one release per partition; jetqueue: every worker of the queue serves each
        r.say(
            f"queuePartitions={partitions}",
            "changed",
            f"to the queue's partitions: {partitions} (one release serves every partition; `partition` is not needed)",
        )
    r.get("partition")
    q: dict[str, Any] = {
        "replicas": r.number("replicas"),
        **({"partitions": partitions} if partitions > 1 else {}),
        "mode": str(r.get("mode")),
        "maxInflight": r.number("maxInflight"),
        "adaptiveConcurrency": r.flag("adaptiveConcurrency"),
        "inactiveThreshold": r.duration("consumer.inactiveThreshold"),
        "upstreamTimeout": r.duration("upstreamTimeout"),
        "ackWait": r.duration("nats.consumer.ackWait"),
        "streamReplication": r.number("nats.stream.replicas"),
        "retry": _retry(r, "", True),
        "logs": _logs(r, ""),
    }
    r.drop("consumer.pullMaxMessages", "jetqueue pulls as many calls as it has free slots")
    _insecure(r, "insecureTLS")
    if res := _resources(r, "resources.requests"):
        q["resources"] = res
    r.get("resources")
    host = str(r.get("gateway.host"))
    base = (host if "://" in host else f"http://{host}") + f":{r.get('gateway.port')}"
    q["functionURL"] = f"{base}/function/{{function}}"
    top: dict[str, Any] = {"openfaas": {"url": base}}
    nats_host = str(r.get("nats.host"))
    if nats_host.split(".")[:2] != ["nats", namespace]:  # not the openfaas chart's own NATS
        top["nats"] = {"url": f"nats://{nats_host}:{r.get('nats.port')}"}
    r.get("nats.port")
    if (policy := r.get("imagePullPolicy")) in ("Always", "IfNotPresent", "Never"):
        top["image"] = {"pullPolicy": policy}
    _pod(r)
    r.leftovers(tuple(r.values))
    return name, q, top
