"""The gateway's metrics: `gateway_async_requests_total{function_name,queue_name,code}` and
`gateway_publish_seconds`, counted in plain numbers and exposed with the samples prometheus_client's Counter and
Histogram expose (`_total`/`_created`; `_bucket`/`_count`/`_sum`/`_created`). Their locks, label lookups and
bucket loop on every submission were 2-3% of the gateway's CPU."""

from __future__ import annotations

import bisect
import itertools
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, metrics
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import INF, floatToGoString

REQUESTS = "gateway_async_requests"
REQUESTS_HELP = "Async requests by outcome."
REQUEST_LABELS = ("function_name", "queue_name", "code")
PUBLISH = "gateway_publish_seconds"
PUBLISH_HELP = "Time to store a call (publish to PubAck)."
PUBLISH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._requests: dict[tuple[str, str, int], list[float]] = {}  # (function, queue, code) → [count, created]
        self._buckets = [0] * (len(PUBLISH_BUCKETS) + 1)  # per bucket, not cumulative; +Inf last
        self._sum = 0.0
        self._created = time.time()
        registry.register(self)

    def count(self, function: str, queue: str, code: int) -> None:
        counted = self._requests.get((function, queue, code))
        if counted is None:
            self._requests[function, queue, code] = [1, time.time()]
        else:
            counted[0] += 1

    def observe(self, seconds: float) -> None:
        self._buckets[bisect.bisect_left(PUBLISH_BUCKETS, seconds)] += 1
        self._sum += seconds

    def describe(self) -> Iterator[Metric]:
        """The names, so that the registry refuses another collector with the same ones."""
        yield CounterMetricFamily(REQUESTS, REQUESTS_HELP, labels=REQUEST_LABELS)
        yield HistogramMetricFamily(PUBLISH, PUBLISH_HELP)

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(REQUESTS, REQUESTS_HELP, labels=REQUEST_LABELS)
        created = metrics._use_created  # PROMETHEUS_DISABLE_CREATED_SERIES, honoured as prometheus_client does
        for (function, queue, code), (count, at) in self._requests.items():
            requests.add_metric((function, queue, str(code)), count, at if created else None)
        yield requests
        publish = HistogramMetricFamily(PUBLISH, PUBLISH_HELP)
        bounds = map(floatToGoString, (*PUBLISH_BUCKETS, INF))
        publish.add_metric((), list(zip(bounds, itertools.accumulate(self._buckets), strict=True)), self._sum)
        if created:
            publish.add_sample(f"{PUBLISH}_created", {}, self._created)
        yield publish
