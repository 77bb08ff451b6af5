"""The gateway's metrics: `gateway_async_requests_total{function_name,queue_name,code}`, OpenFaaS's
`http_requests_total{method,path="/async-function",status}` (the same submissions), `gateway_publish_seconds` and
OpenFaaS's `gateway_nats_reconnect_total`, counted in plain numbers and exposed with the samples prometheus_client's
Counter and Histogram expose (`_total`/`_created`; `_bucket`/`_count`/`_sum`/`_created`). Their locks, label
lookups and bucket loop on every submission were 2-3% of the gateway's CPU; both request families come from one
count per submission, summed when scraped."""

from __future__ import annotations

import bisect
import itertools
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, metrics
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import INF, floatToGoString

REQUESTS = "gateway_async_requests"
REQUESTS_HELP = "Async requests by outcome."
REQUEST_LABELS = ("function_name", "queue_name", "code")
HTTP_REQUESTS = "http_requests"  # OpenFaaS's name: its dashboards count intake with it
HTTP_REQUESTS_HELP = "Requests to /async-function by method and status, as the OpenFaaS gateway counts them."
HTTP_LABELS = ("method", "path", "status")
ASYNC_PATH = "/async-function"
RECONNECTS = "gateway_nats_reconnect"
RECONNECTS_HELP = "Times the NATS connection was made again after it was lost."
PUBLISH = "gateway_publish_seconds"
PUBLISH_HELP = "Time to store a call (publish to PubAck)."
PUBLISH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry, reconnects: Callable[[], int] = lambda: 0) -> None:
        # (function, queue, code, method) → [count, created]
        self._requests: dict[tuple[str, str, int, str], list[float]] = {}
        self._buckets = [0] * (len(PUBLISH_BUCKETS) + 1)  # per bucket, not cumulative; +Inf last
        self._sum = 0.0
        self._created = time.time()
        self._reconnects = reconnects
        registry.register(self)

    def count(self, function: str, queue: str, code: int, method: str) -> None:
        counted = self._requests.get((function, queue, code, method))
        if counted is None:
            self._requests[function, queue, code, method] = [1, time.time()]
        else:
            counted[0] += 1

    def observe(self, seconds: float) -> None:
        self._buckets[bisect.bisect_left(PUBLISH_BUCKETS, seconds)] += 1
        self._sum += seconds

    def describe(self) -> Iterator[Metric]:
        """The names, so that the registry refuses another collector with the same ones."""
        yield CounterMetricFamily(REQUESTS, REQUESTS_HELP, labels=REQUEST_LABELS)
        yield CounterMetricFamily(HTTP_REQUESTS, HTTP_REQUESTS_HELP, labels=HTTP_LABELS)
        yield CounterMetricFamily(RECONNECTS, RECONNECTS_HELP)
        yield HistogramMetricFamily(PUBLISH, PUBLISH_HELP)

    def collect(self) -> Iterator[Metric]:
        created = metrics._use_created  # PROMETHEUS_DISABLE_CREATED_SERIES, honoured as prometheus_client does
        by_route: dict[tuple[str, str, str], list[float]] = {}
        by_status: dict[tuple[str, str, str], list[float]] = {}
        for (function, queue, code, method), (count, at) in list(self._requests.items()):
            for sums, key in ((by_route, (function, queue, str(code))), (by_status, (method, ASYNC_PATH, str(code)))):
                found = sums.get(key)
                if found is None:
                    sums[key] = [count, at]
                else:
                    found[0] += count
                    found[1] = min(found[1], at)
        for name, help_text, labels, sums in (
            (REQUESTS, REQUESTS_HELP, REQUEST_LABELS, by_route),
            (HTTP_REQUESTS, HTTP_REQUESTS_HELP, HTTP_LABELS, by_status),
        ):
            family = CounterMetricFamily(name, help_text, labels=labels)
            for key, (count, at) in sums.items():
                family.add_metric(key, count, at if created else None)
            yield family
        since = self._created if created else None
        yield CounterMetricFamily(RECONNECTS, RECONNECTS_HELP, value=self._reconnects(), created=since)
        publish = HistogramMetricFamily(PUBLISH, PUBLISH_HELP)
        bounds = map(floatToGoString, (*PUBLISH_BUCKETS, INF))
        publish.add_metric((), list(zip(bounds, itertools.accumulate(self._buckets), strict=True)), self._sum)
        if created:
            publish.add_sample(f"{PUBLISH}_created", {}, self._created)
        yield publish
