"""The rules a queues.yaml must follow beyond its schema (names, routing, replication, durations, limits,
URLs, sizes, autoscaling): each a check that yields every problem it finds, at the position it was set."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from jetqueue import contract
from jetqueue.contract import jetstream
from jetqueue.durations import format_duration, parse_duration
from jetqueue.generator import model
from jetqueue.generator.problems import Path, Problem
from jetqueue.generator.schedulerules import check_schedules
from jetqueue.generator.source import Source

MIN_ACK_WAIT = 2.0
GRACE_MARGIN = 15.0


Check = Callable[[Source, dict[str, Any]], Iterator[Problem]]


def _at(src: Source, path: Path, message: str, severity: str = "error", key: bool = False) -> Problem:
    return Problem(*src.where(path, key=key), path, message, severity)


def _queues(data: dict[str, Any]) -> dict[str, Any]:
    return {k: (v or {}) for k, v in (data.get("queues") or {}).items()}


def _effective(data: dict[str, Any], qname: str, key: str) -> tuple[Any, Path]:
    """A queue setting as resolved (queue, else defaults, else schema default) and where it was set."""
    q = _queues(data)[qname]
    if key in q:
        return q[key], ("queues", qname, key)
    d = data.get("defaults") or {}
    if key in d:
        return d[key], ("defaults", key)
    props = model.schema()["properties"]["defaults"]["properties"]
    return props[key]["default"], ("queues", qname)


def check_queue_names(src: Source, data: dict[str, Any]) -> Iterator[Problem]:
    for name in _queues(data):
        path: Path = ("queues", name)
        if not contract.QUEUE_NAME.match(name):
            yield _at(
                src,
                path,
                f"queue name {name!r} must be a DNS-1123 label: lower-case letters, digits "
                "and '-', starting and ending with a letter or digit",
                key=True,
            )
        elif len(name) > contract.MAX_QUEUE_NAME:
            yield _at(
                src,
                path,
                f"queue name {name!r} is {len(name)} characters; at most "
                f"{contract.MAX_QUEUE_NAME} (it names the stream, consumer and release)",
                key=True,
            )


def check_routing(src: Source, data: dict[str, Any]) -> Iterator[Problem]:
    seen: dict[str, str] = {}
    for qname, q in _queues(data).items():
        for i, fn in enumerate(q.get("functions") or []):
            if fn in seen and seen[fn] != qname:
                yield _at(
                    src,
                    ("queues", qname, "functions", i),
                    f"function {fn!r} is already routed to queue {seen[fn]!r}; a function has one queue",
                )
            seen.setdefault(fn, qname)
    gw = data.get("gateway") or {}
    dq = gw.get("defaultQueue", "faas-request")
    if "queues" in data and not gw.get("strictRouting", False) and dq not in _queues(data):
        path: Path = ("gateway", "defaultQueue") if "defaultQueue" in gw else ("queues",)
        yield _at(
            src,
            path,
            f"default queue {dq!r} is not declared in queues; declare it, set "
            "gateway.defaultQueue to a declared queue, or set gateway.strictRouting: true",
        )


def check_nats(src: Source, data: dict[str, Any]) -> Iterator[Problem]:
    nats = data.get("nats") or {}
    profile = nats.get("profile", "production")
    if profile == "production":
        n = nats.get("replicas", 3)
        if n < 3 or n % 2 == 0:
            yield _at(
                src,
                ("nats", "replicas"),
                f"production NATS needs an odd number of servers, at least 3 "
                f"(got {n}): JetStream needs a majority to keep writing when one is lost",
            )
    elif "replicas" in nats:
        yield _at(
            src,
            ("nats", "replicas"),
            f"replicas applies to the production profile only (profile is {profile})",
            "warning",
        )
    if profile == "external" and not nats.get("url"):
        yield _at(src, ("nats",), "the external profile needs nats.url (e.g. nats://nats.nats:4222)")
    if profile != "external" and nats.get("url"):
        yield _at(src, ("nats", "url"), f"url is for the external profile only; the {profile} profile derives it")
    for part, name in (("auth", "method"), ("tls", "enabled")):
        block = nats.get(part) or {}
        active = block.get(name, "none" if name == "method" else False) not in ("none", False)
        if active and not block.get("secretName"):
            yield _at(src, ("nats", part), f"nats.{part} needs secretName: credentials come from an existing Secret")
    if (nats.get("tls") or {}).get("verifyClients") and not (nats.get("tls") or {}).get("enabled"):
        yield _at(src, ("nats", "tls", "verifyClients"), "verifyClients needs tls.enabled: true")
    if (nats.get("tls") or {}).get("insecure") and profile == "production":
        yield _at(
            src,
            ("nats", "tls", "insecure"),
            "insecure TLS leaves the server's certificate unchecked: anyone on the path can read and change every "
            "call; it is for a development NATS with a self-signed certificate, never for production",
            "warning",
        )


def check_replication(src: Source, data: dict[str, Any]) -> Iterator[Problem]:
    servers = model.nats_servers(model.fill_defaults(model.schema()["properties"]["nats"], data.get("nats") or {}))
    if servers is None:
        return
    for qname in _queues(data):
        value, path = _effective(data, qname, "streamReplication")
        if path == ("queues", qname):
            continue  # the default is capped to the server count
        if value > servers:
            yield _at(
                src,
                path,
                f"streamReplication {value} needs at least {value} NATS servers; the cluster has {servers}",
            )


_ZERO_IS_NONE = ("maxEventAge", "maxRetryAfter")  # `0s` switches these off
_DURATIONS = ("ackWait", "upstreamTimeout", "shutdownTimeout", "inactiveThreshold", "maxEventAge", "idempotencyWindow")


def _duration_fields(data: dict[str, Any]) -> Iterator[tuple[Path, Any]]:
    def settings(base: Path, block: dict[str, Any]) -> Iterator[tuple[Path, Any]]:
        for k in _DURATIONS:
            if k in block:
                yield (*base, k), block[k]
        for k in ("initialWait", "maxWait", "maxRetryAfter"):
            if k in (block.get("retry") or {}):
                yield (*base, "retry", k), block["retry"][k]

    yield from settings(("defaults",), data.get("defaults") or {})
    for qname, q in _queues(data).items():
        yield from settings(("queues", qname), q)
        for fn, ov in (q.get("functionOverrides") or {}).items():
            yield from settings(("queues", qname, "functionOverrides", fn), ov or {})
    gateway = data.get("gateway") or {}
    ttl = (gateway.get("callStatus") or {}).get("ttl")
    if ttl is not None:
        yield ("gateway", "callStatus", "ttl"), ttl
    if "maxDelay" in gateway:
        yield ("gateway", "maxDelay"), gateway["maxDelay"]
    if "refreshInterval" in (data.get("openfaas") or {}):
        yield ("openfaas", "refreshInterval"), data["openfaas"]["refreshInterval"]


def check_durations(src: Source, data: dict[str, Any]) -> Iterator[Problem]:
    for path, value in _duration_fields(data):
        try:
            seconds = parse_duration(str(value))
        except ValueError as e:
            yield _at(src, path, str(e))
            continue
        if seconds < 0 or (seconds == 0 and path[-1] not in _ZERO_IS_NONE):
            yield _at(src, path, f"{value!r} must be greater than zero")
        elif path == ("gateway", "maxDelay") and seconds > jetstream.MAX_SCHEDULE_AHEAD:
            most = format_duration(jetstream.MAX_SCHEDULE_AHEAD)
            yield _at(src, path, f"{value!r} is above {most}: cancel requests are kept a day longer than that")


def check_queue_limits(src: Source, data: dict[str, Any]) -> Iterator[Problem]:
    for qname in _queues(data):

        def get(key: str, q: str = qname) -> tuple[Any, Path]:
            return _effective(data, q, key)

        inflight, _ = get("maxInflight")
        replicas, _ = get("replicas")
        scaling = model.fill_defaults(
            model.schema()["properties"]["defaults"]["properties"]["autoscaling"], get("autoscaling")[0]
        )
        most = model.max_replicas(replicas, scaling)
        map_, map_path = get("maxAckPending")
        if map_ is not None and map_ < inflight * most:
            by = "autoscaling.maxReplicas" if most > replicas else "replicas"
            yield _at(
                src,
                map_path,
                f"maxAckPending {map_} is below maxInflight × {by} = {inflight * most}: "
                "workers would sit idle waiting for acks",
            )
        waiting, waiting_path = get("maxWaiting")
        if waiting < replicas:
            yield _at(
                src,
                waiting_path,
                f"maxWaiting {waiting} is below the {replicas} worker replicas: "
                "some workers' pull requests would be refused",
            )
        ack, ack_path = get("ackWait")
        up, up_path = get("upstreamTimeout")
        stop, _ = get("shutdownTimeout")
        ack_s, up_s, stop_s = (parse_duration(str(v)) for v in (ack, up, stop))
        if ack_s < MIN_ACK_WAIT:
            yield _at(
                src,
                ack_path,
                f"ackWait {ack} is too short: in-progress signals go every ackWait/2; use at least {MIN_ACK_WAIT:g}s",
            )
        if up_s > stop_s:
            yield _at(
                src,
                up_path,
                f"upstreamTimeout {up} exceeds shutdownTimeout {stop}: at a rollout, calls "
                "still running after shutdownTimeout are handed back and run again",
                "warning",
            )
        q_retry = _queues(data)[qname].get("retry") or {}
        retry = {
            **model.fill_defaults(model.schema()["properties"]["defaults"]["properties"]["retry"], {}),
            **((data.get("defaults") or {}).get("retry") or {}),
            **q_retry,
        }
        if parse_duration(str(retry["initialWait"])) > parse_duration(str(retry["maxWait"])):
            path: Path = ("queues", qname, "retry") if q_retry else ("defaults", "retry")
            yield _at(
                src,
                path,
                f"retry.initialWait {retry['initialWait']} exceeds retry.maxWait {retry['maxWait']}",
            )


def check_urls(src: Source, data: dict[str, Any]) -> Iterator[Problem]:
    candidates: list[tuple[Path, Any]] = []
    gw = data.get("gateway") or {}
    if "functionURL" in gw:
        candidates.append((("gateway", "functionURL"), gw["functionURL"]))
    for qname, q in _queues(data).items():
        if q.get("functionURL") is not None:
            candidates.append((("queues", qname, "functionURL"), q["functionURL"]))
    openfaas = data.get("openfaas") or {}
    if openfaas.get("url") and not str(openfaas["url"]).startswith(("http://", "https://")):
        yield _at(src, ("openfaas", "url"), f"{openfaas['url']!r} must be an http:// or https:// URL")
    if (openfaas.get("auth") or {}).get("secretName") and not openfaas.get("url"):
        yield _at(src, ("openfaas", "auth"), "credentials without openfaas.url are never used", "warning")
    for path, url in candidates:
        if not str(url).startswith(("http://", "https://")):
            yield _at(src, path, f"{url!r} must be an http:// or https:// URL")
        elif "{function}" not in str(url):
            yield _at(src, path, f"{url!r} has no {{function}} placeholder: every call would hit the same URL")


def check_body_size(src: Source, data: dict[str, Any]) -> Iterator[Problem]:
    gw = data.get("gateway") or {}
    if "maxBodySize" not in gw:
        return
    extra = (data.get("nats") or {}).get("extraValues") or {}
    max_payload = ((extra.get("config") or {}).get("merge") or {}).get("max_payload", contract.NATS_DEFAULT_MAX_PAYLOAD)
    limit = model.parse_quantity(str(max_payload))
    if model.parse_quantity(str(gw["maxBodySize"])) > limit:
        yield _at(
            src,
            ("gateway", "maxBodySize"),
            f"maxBodySize {gw['maxBodySize']} is above the NATS max_payload "
            f"({int(limit)} bytes); raise max_payload in nats.extraValues.config.merge or keep bodies smaller",
        )


def check_autoscaling(src: Source, data: dict[str, Any]) -> Iterator[Problem]:
    for qname, q in _queues(data).items():
        a = {**((data.get("defaults") or {}).get("autoscaling") or {}), **(q.get("autoscaling") or {})}
        kind = a.get("type", "none")
        if kind == "none":
            continue
        path: Path = ("queues", qname, "autoscaling") if "autoscaling" in q else ("defaults", "autoscaling")
        low, high = a.get("minReplicas", 1), a.get("maxReplicas", 10)
        if low > high:
            yield _at(src, path, f"autoscaling.minReplicas {low} exceeds maxReplicas {high}")
        if kind == "hpa" and low < 1:
            yield _at(src, path, "an HPA cannot scale to zero: minReplicas must be at least 1 (use keda)")
        mode, _ = _effective(data, qname, "mode")
        if kind == "keda" and mode == "function" and not q.get("functions"):
            yield _at(
                src,
                path,
                "keda in function mode scales on each function's consumer: list the queue's functions, or use hpa",
            )


def check_partitions(src: Source, data: dict[str, Any]) -> Iterator[Problem]:
    """Partitions lift a queue past one stream leader by spreading leaders over servers: more partitions than
    servers put two partitions' leaders (and their disk writes) on one server."""
    servers = model.nats_servers(model.fill_defaults(model.schema()["properties"]["nats"], data.get("nats") or {}))
    for qname in _queues(data):
        partitions, path = _effective(data, qname, "partitions")
        if servers is not None and partitions > servers and path != ("queues", qname):
            yield _at(
                src,
                path,
                f"partitions {partitions} is more than the {servers} NATS server(s): some servers lead several of the "
                "queue's partitions, which adds no server's disk to its intake (see docs/partitions.md)",
                "warning",
            )


def check_priorities(src: Source, data: dict[str, Any]) -> Iterator[Problem]:
    """Function mode serves each function from a consumer of its own, not the levels' consumers."""
    for qname in _queues(data):
        on, path = _effective(data, qname, "priorities")
        mode, _ = _effective(data, qname, "mode")
        if on and mode == "function":
            yield _at(src, path, "priorities need mode: static (function mode serves functions in turn, not levels)")


CHECKS: list[Check] = [
    check_queue_names,
    check_routing,
    check_nats,
    check_replication,
    check_durations,
    check_queue_limits,
    check_urls,
    check_body_size,
    check_autoscaling,
    check_partitions,
    check_priorities,
    check_schedules,
]
