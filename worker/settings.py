"""Settings from `JETQUEUE_<NAME>` environment variables: one dataclass per process, `from_env()`.

A bad value fails at start with a message naming the variable. Secrets never appear in `repr`.
How a setting is declared and parsed is in settingfields.py; the settings reference is generated from the field
metadata (generator/settingsdoc.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from jetqueue import contract
from jetqueue.contract import jetstream
from jetqueue.durations import format_duration
from jetqueue.gatewaysettings import GatewaySettings
from jetqueue.settingfields import (
    CALLBACK_SIGNING,
    CHARTS,
    DEFAULT,
    GATEWAY_AUTH,
    NATS,
    OPENFAAS_AUTH,
    PREFIX,
    SettingsError,
    chart_values,
)
from jetqueue.settingfields import setting as _f
from jetqueue.settingsbase import SharedSettings, check_partitions
from jetqueue.signing import signing_keys

__all__ = [
    "CALLBACK_SIGNING",
    "CHARTS",
    "GATEWAY_AUTH",
    "NATS",
    "OPENFAAS_AUTH",
    "PREFIX",
    "GatewaySettings",
    "SettingsError",
    "SharedSettings",
    "WorkerSettings",
    "chart_values",
]


@dataclass(repr=False)
class WorkerSettings(SharedSettings):
    queue: str = _f(contract.DEFAULT_QUEUE, "Queue to work on.", values="queue.name")
    stream: str = _f("", "Stream name (default `OF_<queue>`).", values="queue.stream")
    durable: str = _f("", "Durable consumer name (default `<queue>-workers`).", values="queue.durable")
    dlq_stream: str = _f("", "Dead-letter stream (default `OF_<queue>_DLQ`).", values="queue.deadLetterStream")
    stream_replicas: int = _f(
        1, "Replicas of the streams this worker creates (1, 3 or 5).", values="queue.streamReplicas"
    )
    partitions: int = _f(
        1,
        f"Partitions of the queue (1-{contract.MAX_PARTITIONS}): work streams `OF_<queue>`, `OF_<queue>_P1` ..., each "
        "with a leader of its own; the worker takes calls from all of them, and also drains partitions beyond this "
        "that still exist (docs/partitions.md).",
        values="queue.partitions",
    )
    max_queue_length: int = _f(
        0,
        "Most calls the queue's stream holds; a full queue answers 503 'queue full' and never discards one. "
        "0 = no limit (a limit set on the stream by hand is left as it is).",
        values="queue.maxQueueLength",
    )
    max_queue_bytes: int = _f(
        0,
        "Most bytes the queue's stream holds, as `max_queue_length`. 0 = no limit.",
        kind="size",
        values="queue.maxQueueBytes",
    )
    mode: str = _f(
        "static",
        "`static`: one consumer per queue; `function`: one per function.",
        choices=("static", "function"),
        values="queue.mode",
    )
    priorities: bool = _f(
        False,
        "Static mode: take `X-Priority` high and low calls on subjects of their own, and start the levels' calls "
        "4:2:1 while several wait (docs/priorities.md). Once on, a stream keeps the levels' subjects.",
        values="queue.priorities",
    )
    max_inflight: int = _f(50, "Calls this worker runs at once.", values="queue.maxInflight")
    ack_wait: float = _f(
        30.0,
        "Consumer ack wait; in-progress signals are sent every ack_wait/2.",
        kind="duration",
        values="queue.ackWait",
    )
    max_ack_pending: int = _f(0, "Consumer max_ack_pending; 0 = 2 × max_inflight.", values="queue.maxAckPending")
    max_waiting: int = _f(512, "Consumer max_waiting.", values="queue.maxWaiting")
    inactive_threshold: float = _f(
        30.0, "Function mode: idle consumers are removed after this.", kind="duration", values="queue.inactiveThreshold"
    )
    adaptive_concurrency: bool = _f(
        True, "Function mode: learn each function's concurrency limit from 429s.", values="queue.adaptiveConcurrency"
    )
    upstream_timeout: float = _f(60.0, "Timeout of one invocation.", kind="duration", values="queue.upstreamTimeout")
    function_url: str = _f(
        "http://gateway.openfaas:8080/function/{function}",
        "Function URL template; `{function}` is replaced by the function name.",
        values="queue.functionURL",
    )
    max_retry_attempts: int = _f(10, "Attempts per call, the first included.", values="queue.retry.maxAttempts")
    initial_retry_wait: float = _f(
        10.0, "First retry wait, and the minimum wait.", kind="duration", values="queue.retry.initialWait"
    )
    max_retry_wait: float = _f(120.0, "Longest retry wait.", kind="duration", values="queue.retry.maxWait")
    retry_http_codes: tuple[int, ...] = _f(
        (408, 429, 500, 502, 503, 504), "Status codes that are retried.", kind="codes", values="queue.retry.httpCodes"
    )
    backoff: str = _f(
        "exponential", "Backoff jitter.", choices=("exponential", "full", "equal"), values="queue.retry.backoff"
    )
    retry_openfaas_internal: bool = _f(
        True,
        "Retry an error answer that carries `X-OpenFaaS-Internal` (the OpenFaaS gateway's own, e.g. its 404 or 503 "
        "while a function scales from zero) whatever its status, as OpenFaaS does; attempts and waits as any retry.",
        values="queue.retry.openfaasInternal",
    )
    max_retry_after: float = _f(
        0.0,
        "Longest Retry-After (429/503) honoured; a longer one waits this long. 0 = the longest retry wait.",
        kind="duration",
        values="queue.retry.maxRetryAfter",
    )
    max_event_age: float = _f(
        0.0,
        "Oldest a call may be when it is invoked, from its start (or its scheduled) time; an older call is "
        "dead-lettered as `expired`, and no retry is made that would start past it. 0 = no limit.",
        kind="duration",
        values="queue.maxEventAge",
    )
    result_max_bytes: int = _f(
        64 * 1024,
        "Bytes of a function's answer kept as the call's result (`GET /async-calls/{id}/result`, docs/results.md), "
        "for the status TTL; a longer body is cut there and marked truncated. 0 = no results kept.",
        kind="size",
        not_in_chart=DEFAULT,
    )
    dispatch_rate: float = _f(
        0.0,
        "Most calls of the queue invoked per second, all functions together, across every worker replica. "
        "0 = no limit.",
        values="queue.dispatchRate",
    )
    functions_file: str = _f(
        "",
        "JSON file of per-function overrides (upstreamTimeout, retry, maxEventAge, dispatchRate), from the generator.",
        values="queue.functions",
        file="/etc/jetqueue/functions.json",
        if_set=True,
    )
    schedules_file: str = _f(
        "",
        "JSON file of the queue's cron schedules (queues.yaml `schedules:`), from the generator: applied at start, "
        "each created, replaced or removed to match. Empty = the schedules stored are left as they are.",
        values="queue.schedules",
        file="/etc/jetqueue/schedules.json",
    )
    callback_attempts: int = _f(
        20,
        "Attempts to deliver a callback (stored in JetStream) before it becomes a dead letter.",
        values="queue.callbackRetry.maxAttempts",
    )
    callback_max_wait: float = _f(
        300.0,
        "Longest wait between callback attempts (exponential from 1s).",
        kind="duration",
        values="queue.callbackRetry.maxWait",
    )
    callback_timeout: float = _f(
        10.0,
        f"Timeout of one callback POST (at most {format_duration(jetstream.CALLBACK_MAX_TIMEOUT)}).",
        kind="duration",
        not_in_chart=DEFAULT,
    )
    callback_concurrency: int = _f(32, "Callbacks this worker sends at once.", not_in_chart=DEFAULT)
    callback_host_concurrency: int = _f(
        4,
        "Callbacks sent at once to one receiver host, so a slow receiver delays nobody else.",
        not_in_chart=DEFAULT,
    )
    dead_letter_credentials: bool = _f(
        False,
        "Keep `Authorization`, `Cookie` and `Proxy-*` request headers in dead letters (a replay then sends them "
        "again); off, they are stored as `[redacted]`.",
        not_in_chart=DEFAULT,
    )
    callback_signing_keys: str = _f(
        "",
        "Keys that sign callbacks (`X-Jetqueue-Signature`), `id:secret` comma-separated: the current key first, "
        "then the next one during a rotation; every key listed signs. Empty = unsigned.",
        secret=True,
        values={"queue-worker": "queue.callbackSigning"},
        helper=CALLBACK_SIGNING,
    )
    http_port: int = _f(8081, "Port of /metrics, /healthz and /readyz.", values="metrics.port")
    http_host: str = _f("0.0.0.0", "Address the HTTP server binds.", not_in_chart="pods listen on every interface")
    shutdown_timeout: float = _f(
        60.0,
        "On SIGTERM, how long in-flight calls may finish before they are handed back.",
        kind="duration",
        values="queue.shutdownTimeout",
    )

    def __post_init__(self) -> None:
        self.stream = self.stream or contract.stream_name(self.queue)
        self.durable = self.durable or contract.durable_name(self.queue)
        self.dlq_stream = self.dlq_stream or contract.dlq_stream_name(self.queue)
        self.max_ack_pending = self.max_ack_pending or 2 * self.max_inflight

    def check(self) -> None:
        super().check()
        if not contract.QUEUE_NAME.match(self.queue):
            raise SettingsError(f"{PREFIX}QUEUE={self.queue!r}: must be a DNS-1123 label")
        if self.stream_replicas not in (1, 3, 5):
            raise SettingsError(f"{PREFIX}STREAM_REPLICAS={self.stream_replicas}: must be 1, 3 or 5")
        check_partitions(self.partitions)
        if self.priorities and self.mode != "static":
            raise SettingsError(f"{PREFIX}PRIORITIES: static mode only (function mode serves functions, not levels)")
        for name in (
            "max_inflight",
            "max_retry_attempts",
            "max_waiting",
            "callback_attempts",
            "callback_concurrency",
            "callback_host_concurrency",
        ):
            if getattr(self, name) < 1:
                raise SettingsError(f"{PREFIX}{name.upper()}: must be at least 1")
        if self.ack_wait < 1:
            raise SettingsError(f"{PREFIX}ACK_WAIT: must be at least 1s")
        if self.callback_timeout > jetstream.CALLBACK_MAX_TIMEOUT:
            raise SettingsError(
                f"{PREFIX}CALLBACK_TIMEOUT: at most {format_duration(jetstream.CALLBACK_MAX_TIMEOUT)} (a callback "
                "redelivered after a crash is deduplicated within the stream's duplicate window)"
            )
        try:
            signing_keys(self.callback_signing_keys)
        except ValueError as e:
            raise SettingsError(f"{PREFIX}CALLBACK_SIGNING_KEYS: {e}") from None
        if "{function}" not in self.function_url:
            raise SettingsError(f"{PREFIX}FUNCTION_URL={self.function_url!r}: needs a {{function}} placeholder")
        if self.dispatch_rate < 0:
            raise SettingsError(f"{PREFIX}DISPATCH_RATE: must not be negative")
        if self.initial_retry_wait > self.max_retry_wait:
            raise SettingsError(f"{PREFIX}INITIAL_RETRY_WAIT exceeds {PREFIX}MAX_RETRY_WAIT")
