"""metrics.py: the gateway's metrics read exactly as prometheus_client's Counter and Histogram wrote them."""

from __future__ import annotations

import re
from collections.abc import Callable

import prometheus_client.metrics
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from jetqueue.gateway.metrics import PUBLISH_BUCKETS, GatewayMetrics

OBSERVED = [0.0001, 0.0005, 0.0007, 0.001, 0.003, 0.02, 0.3, 0.9, 1.0, 4.9, 5.0, 7.5, 120.0]
COUNTED = [
    ("echo", "q", 202, "POST"),
    ("echo", "q", 202, "PUT"),
    ("_invalid", "", 400, "POST"),
    ("train", "ml", 503, "POST"),
    ("echo", "q", 413, "POST"),
    ("train", "ml", 202, "POST"),
]


@pytest.mark.parametrize("created", [True, False], ids=["created", "PROMETHEUS_DISABLE_CREATED_SERIES"])
@pytest.mark.parametrize("generate", [generate_latest, generate_openmetrics])
def test_the_same_samples_as_prometheus_client_counter_and_histogram(
    generate: Callable[[CollectorRegistry], bytes], created: bool, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(prometheus_client.metrics, "_use_created", created)

    def exposition(registry: CollectorRegistry) -> str:
        """With the creation times (seconds since the epoch, different on every run) blanked."""
        return re.sub(r"(_created(\{[^}]*\})?) \S+", r"\1 T", generate(registry).decode())

    theirs = CollectorRegistry()
    requests = Counter(
        "gateway_async_requests_total",
        "Async requests by outcome.",
        ["function_name", "queue_name", "code"],
        registry=theirs,
    )
    http_requests = Counter(
        "http_requests_total",
        "Requests to /async-function by method and status, as the OpenFaaS gateway counts them.",
        ["method", "path", "status"],
        registry=theirs,
    )
    reconnects = Counter(
        "gateway_nats_reconnect_total", "Times the NATS connection was made again after it was lost.", registry=theirs
    )
    publish = Histogram(
        "gateway_publish_seconds", "Time to store a call (publish to PubAck).", buckets=PUBLISH_BUCKETS, registry=theirs
    )
    ours = CollectorRegistry()
    reconnected = [0]
    metrics = GatewayMetrics(ours, lambda: reconnected[0])
    assert exposition(ours) == exposition(theirs)  # nothing counted yet
    for function, queue, code, method in COUNTED:
        requests.labels(function, queue, str(code)).inc()
        http_requests.labels(method, "/async-function", str(code)).inc()
        metrics.count(function, queue, code, method)
    reconnects.inc(2)
    reconnected[0] = 2
    for seconds in OBSERVED:
        publish.observe(seconds)
        metrics.observe(seconds)
    assert exposition(ours) == exposition(theirs)
    assert 'gateway_async_requests_total{code="202",function_name="echo",queue_name="q"} 2.0' in exposition(ours)
    assert 'http_requests_total{method="POST",path="/async-function",status="202"} 2.0' in exposition(ours)


def test_a_second_collector_with_the_same_names_is_refused():
    registry = CollectorRegistry()
    GatewayMetrics(registry)
    with pytest.raises(ValueError, match="Duplicated"):
        Counter("gateway_async_requests_total", "again", registry=registry)


async def test_the_gateway_counts_its_reconnections_to_nats(nats_server, http):
    """gateway_nats_reconnect_total, as OpenFaaS's gateway exports it: NATS restarts, the gateway is back."""
    from tests.helpers import gateway_settings, running_gateway
    from tests.servers import eventually

    async with running_gateway(gateway_settings(nats_server.url)) as gw:
        url = f"http://127.0.0.1:{gw.s.http_port}/metrics"
        async with http.get(url) as r:
            assert "gateway_nats_reconnect_total 0.0" in await r.text()
        nats_server.stop()
        await eventually(lambda: not gw.backend.connected)
        nats_server.start()
        await eventually(lambda: gw.backend.connected)
        async with http.get(url) as r:
            assert "gateway_nats_reconnect_total 1.0" in await r.text()
