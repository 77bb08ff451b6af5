"""The rules a queue's cron schedules (`queues.<name>.schedules`) must follow beyond the schema: an expression and
time zone nats-server accepts (jetqueue/cron.py reads them as it does), headers a function may get, callback URLs
the egress rules allow, and a function that runs on this queue. The same checks the worker and
`jetqueue schedule add` make (jetqueue/schedules.py), each at the position it was set."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from jetqueue.egress import Egress
from jetqueue.generator.problems import Path, Problem
from jetqueue.generator.source import Source
from jetqueue.schedules import Schedule


def check_schedules(src: Source, data: dict[str, Any]) -> Iterator[Problem]:
    queues = {k: (v or {}) for k, v in (data.get("queues") or {}).items()}
    routed = {fn: q for q, spec in queues.items() for fn in spec.get("functions") or []}
    hosts = ",".join((data.get("gateway") or {}).get("callbackHosts") or [])
    egress = Egress.parse(hosts, "")  # blocked networks are the runtime's setting: checked there, on connecting
    defaults = (data.get("defaults") or {}).get("autoscaling") or {}
    for qname, q in queues.items():
        scaling = {**defaults, **(q.get("autoscaling") or {})}
        if q.get("schedules") and scaling.get("type") == "keda" and scaling.get("minReplicas", 1) == 0:
            at: Path = ("queues", qname, "schedules")
            yield Problem(
                *src.where(at, key=True),
                at,
                "autoscaling may scale this queue to zero workers, and KEDA scales on the queue's pending calls, not "
                "on due ticks: with no worker, no tick becomes a call. Keep autoscaling.minReplicas at 1 or more",
                "warning",
            )
        for name, spec in (q.get("schedules") or {}).items():
            base: Path = ("queues", qname, "schedules", name)
            schedule = Schedule.from_json(name, spec or {})
            for key, message in schedule.problems(egress):
                if key == "name":
                    yield Problem(*src.where(base, key=True), base, message)
                elif key in (spec or {}):
                    yield Problem(*src.where((*base, key)), (*base, key), message)
                else:  # a default the schedule did not set, or a key it needs
                    yield Problem(*src.where(base), base, message)
            other = routed.get(schedule.function)
            if other is not None and other != qname:
                path: Path = (*base, "function")
                yield Problem(
                    *src.where(path),
                    path,
                    f"function {schedule.function!r} is routed to queue {other!r}; declare its schedule there "
                    "(a function runs on one queue)",
                )
