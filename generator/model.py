"""Resolve queues.yaml into complete settings: schema defaults filled, queues inheriting `defaults`."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "queues.schema.json"

_QTY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|Ki|M|Mi|G|Gi|T|Ti)?$")
_QTY_FACTOR = {
    None: 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


# Keywords that only annotate: a `$ref` site may restate them (its own value wins in the merged view).
_ANNOTATIONS = frozenset({"$comment", "default", "description", "examples", "title"})


@cache
def document() -> dict[str, Any]:
    """The schema as written, `$ref`s and `$defs` included: what the validator checks documents against."""
    with SCHEMA_PATH.open(encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


def deref(node: dict[str, Any]) -> dict[str, Any]:
    """`node` with its local `$ref` followed: the target's keywords (its own `$ref` followed too), then the
    node's own. The merge must not change what validates: only annotations may be restated, and the node's
    `properties` may extend the target's only when the target does not close itself (it is closed where it
    is used, with `unevaluatedProperties: false`, which sees through `$ref`)."""
    ref = node.get("$ref")
    if ref is None:
        return node
    if not isinstance(ref, str) or not ref.startswith("#/"):
        raise ValueError(f"$ref {ref!r}: only local references (#/...) are supported")
    target: Any = document()
    for part in ref[2:].split("/"):
        target = target[part.replace("~1", "/").replace("~0", "~")]
    target = deref(target)
    target = {k: v for k, v in target.items() if k != "$comment"}  # a note on the target as written
    own = {k: v for k, v in node.items() if k != "$ref"}
    merged = {**target, **own}
    for key in target.keys() & own.keys():
        if key == "properties":
            if clash := sorted(target[key].keys() & own[key].keys()):
                raise ValueError(f"$ref {ref!r}: properties {clash} are defined both beside the $ref and in its target")
            if {"additionalProperties", "unevaluatedProperties"} & target.keys():
                raise ValueError(f"$ref {ref!r} closes itself, so the properties added beside the $ref are rejected")
            merged[key] = {**target[key], **own[key]}
        elif key not in _ANNOTATIONS:
            raise ValueError(f"$ref {ref!r}: {key!r} is set both beside the $ref and in its target")
    return merged


def _expand(node: Any) -> Any:
    if isinstance(node, list):
        return [_expand(v) for v in node]
    if isinstance(node, dict):
        return {k: _expand(v) for k, v in deref(node).items()}
    return node


@cache
def schema() -> dict[str, Any]:
    """The schema as it applies at each place: every `$ref` followed (`deref`), `$defs` dropped. Code that
    reads properties, defaults and descriptions walks this; it validates exactly like `document()`."""
    view: dict[str, Any] = _expand(document())
    view.pop("$defs", None)
    return view


def schema_at(path: Iterable[str | int]) -> Any:
    """The node of `schema()` at a keyword path, such as a ValidationError's `absolute_schema_path`."""
    node: Any = schema()
    for part in path:
        if part != "$ref":  # jsonschema leaves `$ref` out of its paths; the view has merged it anyway
            node = node[part]
    return node


def parse_quantity(text: str) -> float:
    """A Kubernetes quantity (`10Gi`, `500m`, `2`) as a number."""
    m = _QTY.match(str(text))
    if not m:
        raise ValueError(f"{text!r} is not a Kubernetes quantity")
    return float(m.group(1)) * _QTY_FACTOR[m.group(2)]


def fill_defaults(node_schema: dict[str, Any], data: Any) -> Any:
    """Copy of data with every absent property set to its schema default, recursively."""
    if not isinstance(data, dict) or node_schema.get("type") != "object":
        return copy.deepcopy(data)
    out: dict[str, Any] = {}
    props: dict[str, Any] = node_schema.get("properties", {})
    for key, sub in props.items():
        if key in data:
            out[key] = fill_defaults(sub, data[key])
        elif "default" in sub:
            out[key] = fill_defaults(sub, copy.deepcopy(sub["default"]))
    extra = node_schema.get("additionalProperties")
    for key, value in data.items():
        if key not in props:
            out[key] = fill_defaults(extra, value) if isinstance(extra, dict) else copy.deepcopy(value)
    return out


def deep_merge(base: Any, over: Any) -> Any:
    """`over` laid on `base`: mappings merge key by key, anything else replaces."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = copy.deepcopy(base)
        for k, v in over.items():
            out[k] = deep_merge(base.get(k), v) if k in base else copy.deepcopy(v)
        return out
    return copy.deepcopy(over)


def max_replicas(replicas: int, autoscaling: dict[str, Any]) -> int:
    """The most worker replicas a queue can have: the autoscaler's maximum when it scales the queue."""
    return max(replicas, autoscaling["maxReplicas"]) if autoscaling["type"] != "none" else replicas


def nats_servers(nats: dict[str, Any]) -> int | None:
    """How many NATS servers the declared profile runs; None when external (unknown)."""
    if nats["profile"] == "production":
        return int(nats["replicas"])
    if nats["profile"] == "dev":
        return 1
    return None


def resolve(data: dict[str, Any]) -> dict[str, Any]:
    """Complete settings. Assumes `data` passed the schema."""
    s = schema()
    props = s["properties"]
    top = {k: fill_defaults(props[k], data.get(k, copy.deepcopy(props[k]["default"]))) for k in props}
    nats = top["nats"]
    if not nats["url"]:
        nats["url"] = f"nats://{nats['releaseName']}.{nats['namespace']}:4222"
    raw_defaults = data.get("defaults") or {}
    queue_schema = props["queues"]["additionalProperties"]
    servers = nats_servers(nats)
    queues: dict[str, Any] = {}
    for name, raw in (data.get("queues") or {}).items():
        raw = raw or {}
        q = fill_defaults(queue_schema, deep_merge(raw_defaults, raw))
        if "streamReplication" not in raw and "streamReplication" not in raw_defaults and servers:
            q["streamReplication"] = min(q["streamReplication"], servers)
        if q["maxAckPending"] is None:
            # Sized for the most replicas the queue can have, or scaling out is capped by the consumer.
            q["maxAckPending"] = 2 * q["maxInflight"] * max_replicas(q["replicas"], q["autoscaling"])
        if q["functionURL"] is None:
            q["functionURL"] = top["gateway"]["functionURL"]
        overrides = {}
        for fn, ov in (raw.get("functionOverrides") or {}).items():
            ov = ov or {}
            overrides[fn] = {
                "upstreamTimeout": ov.get("upstreamTimeout", q["upstreamTimeout"]),
                "retry": deep_merge(q["retry"], ov.get("retry") or {}),
                "maxEventAge": ov.get("maxEventAge", q["maxEventAge"]),
                "dispatchRate": ov.get("dispatchRate", 0),  # its own limit; the queue's applies as well
                "keyConcurrency": ov.get("keyConcurrency", 0),  # by X-Concurrency-Key (docs/keys.md)
                "keyRate": ov.get("keyRate", 0),
            }
        q["functionOverrides"] = overrides
        queues[name] = q
    top["queues"] = queues
    return top
