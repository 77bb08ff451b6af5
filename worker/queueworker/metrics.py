"""Prometheus metrics. OpenFaaS names where OpenFaaS has one; low-cardinality labels, never a call id.

Each process (or test) gets its own registry, so several workers can live in one interpreter.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Seconds, from a few ms to the longest jobs: async functions range from no-ops to hours.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


def status_class(status: int | None) -> str:
    return "error" if status is None else f"{status // 100}xx"


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        fn = ["queue_name", "function_name"]
        self.pending = Gauge("queue_worker_pending_messages", "Calls waiting in the stream.", fn, registry=r)
        self.scheduled = Gauge(
            "queue_worker_scheduled_messages",
            "Calls held for later: scheduled submissions and retries waiting for their time.",
            fn,
            registry=r,
        )
        self.paused = Gauge(
            "queue_worker_paused",
            'Whether calls are held back by a pause (1) or not (0); function_name "*" is the whole queue.',
            fn,
            registry=r,
        )
        self.processed = Counter(
            "queue_worker_messages_processed_total",
            "Calls finished (success, dead letter or cancel), by the status class of the last attempt.",
            [*fn, "status"],
            registry=r,
        )
        self.submitted = Gauge(
            "queue_worker_messages_submitted_total",
            "Calls stored in the queue's stream since it was created (its last sequence): every submission once, and "
            "once more each retry that waited 2s or more. A gauge, as OpenFaaS exports it.",
            ["queue_name"],
            registry=r,
        )
        self.inflight = Gauge("queue_worker_function_invocation_inflight", "Invocations running now.", fn, registry=r)
        self.reconnects = Counter("queue_worker_nats_reconnect_total", "Reconnections to NATS.", registry=r)
        self.retries = Counter(
            "queue_worker_retries_total", "Attempts that failed and were scheduled again.", fn, registry=r
        )
        self.dead_letters = Counter(
            "queue_worker_dead_letters_total", "Calls moved to the dead-letter stream.", [*fn, "reason"], registry=r
        )
        self.callbacks = Counter(
            "queue_worker_callbacks_total",
            "Callback attempts by result: delivered, retried (scheduled again), failed (dead-lettered).",
            ["queue_name", "result"],
            registry=r,
        )
        self.schedule_ticks = Counter(
            "queue_worker_schedule_ticks_total",
            "Cron schedule ticks: called (became a call; missed ticks made up included) or skipped (missed, beyond "
            "the latest 100 made up).",
            ["queue_name", "schedule_name", "outcome"],
            registry=r,
        )
        self.duration = Histogram(
            "queue_worker_invocation_duration_seconds",
            "Duration of one invocation.",
            [*fn, "status"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.concurrency_limit = Gauge(
            "queue_worker_concurrency_limit",
            "Adaptive concurrency limit per function (function mode).",
            fn,
            registry=r,
        )
        self.rate_wait = Counter(
            "queue_worker_dispatch_rate_wait_seconds_total",
            "Seconds calls waited for the dispatch rate (the queue's and the function's own) before their invocation.",
            fn,
            registry=r,
        )

    def child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, remembered: prometheus_client takes a lock and builds a key on every call, a
        cost paid several times per call otherwise (labels are queue, function and a class: few, never ids)."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found
