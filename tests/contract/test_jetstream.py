"""One definition of a queue's streams and consumers: what the worker applies on a real nats-server is
what the generator renders for NACK, setting by setting."""

from __future__ import annotations

import json
from typing import Any

from jetqueue.contract import jetstream
from jetqueue.durations import parse_duration
from jetqueue.generator import envmap
from jetqueue.generator.render import nack_resources, worker_values
from jetqueue.generator.validate import validate_text
from jetqueue.settings import WorkerSettings
from tests.helpers import connect, running_worker
from tests.servers import free_port

QUEUES = """
nats: {profile: external, url: "nats://nats.example:4222", streams: managed-by-nack}
gateway: {defaultQueue: billing}
queues:
  billing:
    functions: [invoice]
    streamReplication: 1
    ackWait: 45s
    maxInflight: 7
    maxWaiting: 64
"""


def _enum(value: Any) -> Any:
    return getattr(value, "value", value)


def stream_as_nack(cfg: Any) -> dict[str, Any]:
    """A stream's stored config in NACK's terms (durations in seconds for comparison)."""
    out = {
        "name": cfg.name,
        "subjects": list(cfg.subjects),
        "retention": _enum(cfg.retention),
        "storage": _enum(cfg.storage),
        "replicas": cfg.num_replicas,
        "discard": _enum(cfg.discard),
        "duplicateWindow": cfg.duplicate_window,
    }
    if cfg.max_age:
        out["maxAge"] = cfg.max_age
    return out


def consumer_as_nack(stream: str, cfg: Any) -> dict[str, Any]:
    return {
        "streamName": stream,
        "durableName": cfg.durable_name,
        "deliverPolicy": _enum(cfg.deliver_policy),
        "ackPolicy": _enum(cfg.ack_policy),
        "ackWait": cfg.ack_wait,
        "maxDeliver": cfg.max_deliver,
        "maxAckPending": cfg.max_ack_pending,
        "maxWaiting": cfg.max_waiting,
        "replayPolicy": _enum(cfg.replay_policy),
    }


def seconds(spec: dict[str, Any]) -> dict[str, Any]:
    durations = ("duplicateWindow", "maxAge", "ackWait")
    return {k: parse_duration(v) if k in durations else v for k, v in spec.items()}


async def test_worker_applies_what_nack_renders(nats_server, functions, tmp_path):
    result = validate_text(QUEUES)
    assert result.config is not None, result.problems
    cfg = result.config
    values = worker_values(cfg, "billing")
    env = envmap.worker_env(values)
    schedules = {"revision": 1, "schedules": values["queue"]["schedules"]}
    (tmp_path / "schedules.json").write_text(json.dumps(schedules))  # the chart mounts it
    env.update(
        JETQUEUE_SCHEDULES_FILE=str(tmp_path / "schedules.json"),
        JETQUEUE_NATS_URL=nats_server.url,
        JETQUEUE_FUNCTION_URL=functions.url_template,
        JETQUEUE_HTTP_HOST="127.0.0.1",
        JETQUEUE_HTTP_PORT=str(free_port()),
    )
    settings = WorkerSettings.from_env(env)
    nack = {r["spec"].get("name") or r["spec"]["durableName"]: r for r in nack_resources(cfg, "billing")}
    assert set(nack) == {"OF_billing", "OF_billing_DLQ", "billing-workers"}
    async with running_worker(settings):
        js = (nc := await connect(nats_server.url)).jetstream()
        try:
            for name in ("OF_billing", "OF_billing_DLQ"):
                stored = stream_as_nack((await js.stream_info(name)).config)
                assert stored == seconds(nack[name]["spec"]), name
            consumer = (await js.consumer_info("OF_billing", "billing-workers")).config
            assert consumer_as_nack("OF_billing", consumer) == seconds(nack["billing-workers"]["spec"])
        finally:
            await nc.close()
    # The dead letters are kept as long as the worker keeps them, whoever creates the stream.
    assert seconds(nack["OF_billing_DLQ"]["spec"])["maxAge"] == jetstream.DLQ_MAX_AGE
