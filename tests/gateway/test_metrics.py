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
COUNTED = [("echo", "q", 202), ("echo", "q", 202), ("_invalid", "", 400), ("train", "ml", 503), ("echo", "q", 413)]


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
    publish = Histogram(
        "gateway_publish_seconds", "Time to store a call (publish to PubAck).", buckets=PUBLISH_BUCKETS, registry=theirs
    )
    ours = CollectorRegistry()
    metrics = GatewayMetrics(ours)
    assert exposition(ours) == exposition(theirs)  # nothing counted yet
    for function, queue, code in COUNTED:
        requests.labels(function, queue, str(code)).inc()
        metrics.count(function, queue, code)
    for seconds in OBSERVED:
        publish.observe(seconds)
        metrics.observe(seconds)
    assert exposition(ours) == exposition(theirs)
    assert 'gateway_async_requests_total{code="202",function_name="echo",queue_name="q"} 2.0' in exposition(ours)


def test_a_second_collector_with_the_same_names_is_refused():
    registry = CollectorRegistry()
    GatewayMetrics(registry)
    with pytest.raises(ValueError, match="Duplicated"):
        Counter("gateway_async_requests_total", "again", registry=registry)
