"""The gateway's routing table: function → queue, and each queue's stream settings.

A function's queue: the queue queues.yaml lists it under (the routes file), else its OpenFaaS annotation
`com.openfaas.queue` when that names a queue of the table (read in the background by `openfaas.FunctionCatalog`;
a function not read yet asks for it and is routed as queues.yaml says meanwhile), else the default queue (or
none with strict routing). queues.yaml wins where both speak: it is what the workers were deployed for.

File (rendered by the generator into the gateway chart's ConfigMap) shape:
``{"routes": {"train": "ml-batch"}, "queues": {"ml-batch": {"streamReplicas": 3, "streamStorage": "file",
"maxQueueLength": 0, "maxQueueBytes": 0, "partitions": 3, "idempotencyWindow": 86400, "priorities": true}}}``
(seconds).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from pathlib import Path

from jetqueue import contract, openfaas
from jetqueue.openfaas import Function, FunctionCatalog
from jetqueue.settings import GatewaySettings, SettingsError

log = logging.getLogger("jetqueue.gateway")


@dataclass
class QueueInfo:
    replicas: int = 1
    storage: str = "file"
    max_length: int = 0  # maxQueueLength: a full queue answers 503 "queue full"
    max_bytes: int = 0
    partitions: int = 1  # work streams OF_<queue>, OF_<queue>_P1 ... (contract/partitions.py picks one per call)
    idempotency_window: float = 86400.0  # seconds an Idempotency-Key is remembered (gateway/idempotency.py)
    priorities: bool = False  # X-Priority high and low are taken (contract/priorities.py); else refused with a 400


@dataclass
class Routing:
    default_queue: str
    strict: bool
    routes: dict[str, str] = field(default_factory=dict)
    queues: dict[str, QueueInfo] = field(default_factory=dict)
    annotated: dict[str, str] = field(default_factory=dict)  # com.openfaas.queue of functions queues.yaml omits
    catalog: FunctionCatalog | None = None
    _told: set[tuple[str, str]] = field(default_factory=set)

    def queue_for(self, function: str) -> str | None:
        """The queue of a function, or None when strict routing has no route for it."""
        if function in self.routes:
            return self.routes[function]
        name = function.partition(".")[0]  # name.namespace routes like name, unless listed itself
        if name in self.routes:
            return self.routes[name]
        found = self.annotated.get(function)
        if found is not None:
            return found
        if self.catalog is not None and not self.catalog.knows(function):
            self.catalog.want(function)  # its first call: read its annotations, in the background
        return None if self.strict else self.default_queue

    def annotations_changed(self, functions: Mapping[str, Function], changed: Set[str]) -> None:
        """The catalog read new annotations: the routes of the functions that changed, built off the requests' path
        (in place: nothing awaits in here)."""
        for name in changed:
            self.annotated.pop(name, None)
            function = functions.get(name)
            queue = function.annotations.get(openfaas.QUEUE, "").strip() if function is not None else ""
            if not queue:
                continue
            listed = self.routes.get(name) or self.routes.get(name.partition(".")[0])
            if queue not in self.queues or (listed and listed != queue):
                if (name, queue) not in self._told and len(self._told) < 10_000:
                    self._told.add((name, queue))
                    why = f"queues.yaml routes it to {listed!r}" if listed else "no such queue in queues.yaml"
                    log.warning("function %s: %s=%s not followed: %s", name, openfaas.QUEUE, queue, why)
                continue
            self.annotated[name] = queue

    @classmethod
    def from_settings(cls, s: GatewaySettings) -> Routing:
        r = cls(default_queue=s.default_queue, strict=s.strict_routing)
        if s.routes_file:
            try:
                data = json.loads(Path(s.routes_file).read_text(encoding="utf-8"))
                r.routes = {str(k): str(v) for k, v in (data.get("routes") or {}).items()}
                r.queues = {
                    str(q): QueueInfo(
                        int(v.get("streamReplicas", 1)),
                        str(v.get("streamStorage", "file")),
                        int(v.get("maxQueueLength", 0)),
                        int(v.get("maxQueueBytes", 0)),
                        int(v.get("partitions", 1)),
                        float(v.get("idempotencyWindow", s.idempotency_window)),
                        bool(v.get("priorities", False)),
                    )
                    for q, v in (data.get("queues") or {}).items()
                }
            except (OSError, ValueError, AttributeError, TypeError) as e:
                raise SettingsError(f"JETQUEUE_ROUTES_FILE={s.routes_file}: {e}") from None
        for q in {*r.routes.values(), *r.queues, r.default_queue}:
            if not contract.QUEUE_NAME.match(q):
                raise SettingsError(f"routing: queue name {q!r} is not a DNS-1123 label")
        for q, info in r.queues.items():
            if not 1 <= info.partitions <= contract.MAX_PARTITIONS:
                most = contract.MAX_PARTITIONS
                raise SettingsError(f"routing: queue {q!r} has {info.partitions} partitions; 1 to {most}")
        for q in (r.default_queue, *r.routes.values()):
            r.queues.setdefault(
                q,
                QueueInfo(
                    s.stream_replicas,
                    s.stream_storage,
                    partitions=s.partitions,
                    idempotency_window=s.idempotency_window,
                ),
            )
        return r
