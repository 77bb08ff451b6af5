"""The worker's backlog gauges, refreshed every `REFRESH` seconds from the server: queue_worker_pending_messages
and queue_worker_scheduled_messages per function (summed over every partition served), the queue's submitted
count (every partition's last sequence, summed: what KEDA/HPA scale on), and queue_worker_paused."""

from __future__ import annotations

import asyncio
import logging

from nats.js import JetStreamContext
from prometheus_client import Gauge

from jetqueue import backlog, contract
from jetqueue.queueworker.metrics import WorkerMetrics
from jetqueue.queueworker.partitions import Partitions
from jetqueue.queueworker.pauses import PauseFollower

log = logging.getLogger("jetqueue.worker")
REFRESH = 5.0


async def refresh(
    js: JetStreamContext, queue: str, metrics: WorkerMetrics, partitions: Partitions, pauses: PauseFollower | None
) -> None:
    """Keep the gauges current, until cancelled; the paused gauge for the queue and for the functions that had
    calls (a pause ends by itself)."""
    pending: set[str] = set()
    scheduled: set[str] = set()

    def publish(gauge: Gauge, known: set[str], counts: dict[str, int]) -> None:
        for fn in known - set(counts):  # had calls, has none now
            gauge.labels(queue, fn).set(0)
        for fn, n in counts.items():
            gauge.labels(queue, fn).set(n)
        known |= set(counts)

    while True:
        try:
            counts: dict[str, int] = {}
            submitted = 0
            for stream in list(partitions.served.values()):  # every partition's, summed
                info = await js.stream_info(stream, subjects_filter=">")  # every level's calls
                for fn, n in contract.calls_per_function(queue, info.state.subjects or {}).items():
                    counts[fn] = counts.get(fn, 0) + n
                submitted += info.state.last_seq
            metrics.submitted.labels(queue).set(submitted)
            publish(metrics.pending, pending, counts)
            publish(metrics.scheduled, scheduled, (await backlog.held(js, queue)).per_function)
            if pauses is not None:
                pauses.export(pending | scheduled)
        except Exception as e:
            log.debug("pending refresh failed: %r", e)
        await asyncio.sleep(REFRESH)
