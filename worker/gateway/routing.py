"""The gateway's routing table: function → queue, and each queue's stream settings.

File (rendered by the generator into the gateway chart's ConfigMap) shape:
``{"routes": {"train": "ml-batch"}, "queues": {"ml-batch": {"streamReplicas": 3, "streamStorage": "file",
"maxQueueLength": 0, "maxQueueBytes": 0, "partitions": 3}}}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from jetqueue import contract
from jetqueue.settings import GatewaySettings, SettingsError


@dataclass
class QueueInfo:
    replicas: int = 1
    storage: str = "file"
    max_length: int = 0  # maxQueueLength: a full queue answers 503 "queue full"
    max_bytes: int = 0
    partitions: int = 1  # work streams OF_<queue>, OF_<queue>_P1 ... (contract/partitions.py picks one per call)


@dataclass
class Routing:
    default_queue: str
    strict: bool
    routes: dict[str, str] = field(default_factory=dict)
    queues: dict[str, QueueInfo] = field(default_factory=dict)

    def queue_for(self, function: str) -> str | None:
        """The queue of a function, or None when strict routing has no route for it."""
        if function in self.routes:
            return self.routes[function]
        name = function.partition(".")[0]  # name.namespace routes like name, unless listed itself
        if name in self.routes:
            return self.routes[name]
        return None if self.strict else self.default_queue

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
            r.queues.setdefault(q, QueueInfo(s.stream_replicas, s.stream_storage, partitions=s.partitions))
        return r
