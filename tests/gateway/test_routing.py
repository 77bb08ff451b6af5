"""routing.py: function → queue; queues.yaml's routes, then the functions' com.openfaas.queue annotations."""

from __future__ import annotations

import logging

from jetqueue.gateway.routing import QueueInfo, Routing
from jetqueue.openfaas import Function


class Catalog:
    def __init__(self, known: set[str]) -> None:
        self.known = known
        self.asked: list[str] = []

    def knows(self, name: str) -> bool:
        return name in self.known

    def want(self, name: str) -> None:
        self.asked.append(name)


def routing(strict: bool = False) -> Routing:
    r = Routing(default_queue="faas-request", strict=strict, routes={"train": "ml"})
    r.queues = {q: QueueInfo() for q in ("faas-request", "ml", "slow")}
    return r


def test_annotations_route_functions_queues_yaml_does_not_list(caplog):
    r = routing()
    catalog = Catalog({"figlet", "train", "ghost", "plain"})
    r.catalog = catalog  # type: ignore[assignment]
    caplog.set_level(logging.WARNING, logger="jetqueue.gateway")
    functions = {
        "figlet": Function({"com.openfaas.queue": "slow"}),
        "train": Function({"com.openfaas.queue": "slow"}),  # queues.yaml routes it to ml
        "ghost": Function({"com.openfaas.queue": "nowhere"}),  # no such queue: no worker would ever run it
        "plain": Function(),
    }
    r.annotations_changed(functions, set(functions))
    r.annotations_changed(functions, set(functions))
    assert r.queue_for("figlet") == "slow"
    assert r.queue_for("train") == "ml" and r.queue_for("train.team-a") == "ml"
    assert r.queue_for("ghost") == "faas-request" and r.queue_for("plain") == "faas-request"
    assert catalog.asked == []
    assert r.queue_for("brand-new") == "faas-request" and catalog.asked == ["brand-new"]
    functions["figlet"] = Function({"com.openfaas.queue": "faas-request"})  # re-annotated at the gateway
    r.annotations_changed(functions, {"figlet"})
    assert r.queue_for("figlet") == "faas-request" and r.annotated.keys() == {"figlet"}
    messages = [rec.getMessage() for rec in caplog.records]
    assert messages.count("function ghost: com.openfaas.queue=nowhere not followed: no such queue in queues.yaml") == 1
    assert messages.count("function train: com.openfaas.queue=slow not followed: queues.yaml routes it to 'ml'") == 1


def test_strict_routing_takes_annotated_functions_and_refuses_the_rest():
    r = routing(strict=True)
    catalog = Catalog({"figlet"})
    r.catalog = catalog  # type: ignore[assignment]
    r.annotations_changed({"figlet": Function({"com.openfaas.queue": "slow"})}, {"figlet"})
    assert r.queue_for("figlet") == "slow"
    assert r.queue_for("unknown") is None and catalog.asked == ["unknown"]
