"""metrics.py and the worker probes."""

from __future__ import annotations

import asyncio

import aiohttp

from jetqueue.client import submit_nats
from tests.helpers import connect, enqueue, running_worker, worker_settings
from tests.servers import eventually


async def test_metrics_and_probes(nats_server, functions):
    nc = await connect(nats_server.url)
    settings = worker_settings(nats_server.url, functions.url_template)
    async with running_worker(settings):
        await enqueue(nc, "echo")
        await eventually(lambda: len(functions.completed["echo"]) == 1)
        base = f"http://127.0.0.1:{settings.http_port}"
        async with aiohttp.ClientSession() as http:
            for path in ("/healthz", "/readyz"):
                async with http.get(base + path) as r:
                    assert r.status == 200
            await asyncio.sleep(0.1)
            async with http.get(base + "/metrics") as r:
                text = await r.text()
    for name in (
        "queue_worker_messages_processed_total",
        "queue_worker_pending_messages",
        "queue_worker_function_invocation_inflight",
        "queue_worker_nats_reconnect_total",
        "queue_worker_invocation_duration_seconds_bucket",
        "queue_worker_retries_total",
        "queue_worker_dead_letters_total",
        "queue_worker_callbacks_total",
    ):
        assert name in text, name
    assert (
        'queue_worker_messages_processed_total{function_name="echo",queue_name="faas-request",status="2xx"} 1.0' in text
    )
    assert "call_id" not in text
    await nc.close()


async def test_scheduled_and_paused_gauges(nats_server, functions):
    nc = await connect(nats_server.url)
    async with running_worker(worker_settings(nats_server.url, functions.url_template)) as w:

        def sample(name: str, function: str) -> float | None:
            labels = {"queue_name": "faas-request", "function_name": function}
            return w.metrics.registry.get_sample_value(name, labels)

        await submit_nats(nc, "later", b"", delay=3600)
        await eventually(lambda: sample("queue_worker_scheduled_messages", "later") == 1.0, timeout=20)
        assert sample("queue_worker_paused", "*") == 0.0 and sample("queue_worker_paused", "later") == 0.0
    await nc.close()


async def test_submitted_is_the_queues_stream_count_as_openfaas_exports_it(nats_server, functions):
    """queue_worker_messages_submitted_total: a gauge of the calls the queue's stream ever took (its last sequence)."""
    nc = await connect(nats_server.url)
    async with running_worker(worker_settings(nats_server.url, functions.url_template)) as w:
        for _ in range(3):
            await enqueue(nc, "echo")
        await eventually(lambda: len(functions.completed["echo"]) == 3)
        labels = {"queue_name": "faas-request"}
        await eventually(
            lambda: w.metrics.registry.get_sample_value("queue_worker_messages_submitted_total", labels) == 3.0
        )
    await nc.close()
