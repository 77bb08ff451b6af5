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
from jetqueue.egress import DEFAULT_BLOCKED_NETWORKS, Egress
from jetqueue.settingfields import (
    CALLBACK_SIGNING,
    CHARTS,
    DEFAULT,
    GATEWAY_AUTH,
    NATS,
    OPENFAAS_AUTH,
    PREFIX,
    EnvSettings,
    SettingsError,
    chart_values,
)
from jetqueue.settingfields import setting as _f
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


def check_partitions(n: int) -> None:
    if not 1 <= n <= contract.MAX_PARTITIONS:
        raise SettingsError(f"{PREFIX}PARTITIONS={n}: must be 1 to {contract.MAX_PARTITIONS}")


@dataclass(repr=False)
class SharedSettings(EnvSettings):
    """What every process reads: the NATS connection, callbacks' egress, call status, logs."""

    nats_url: str = _f(
        "nats://127.0.0.1:4222",
        "NATS server URL(s), comma-separated (cluster failover).",
        values="nats.url",
        helper=NATS,
    )
    nats_user: str = _f("", "NATS user name (user/password auth).", values="nats.auth", helper=NATS)
    nats_password: str = _f("", "NATS password.", secret=True, values="nats.auth", helper=NATS)
    nats_token: str = _f("", "NATS token (token auth).", secret=True, values="nats.auth", helper=NATS)
    nats_creds: str = _f("", "Path of a NATS .creds file (JWT auth).", values="nats.auth", helper=NATS)
    nats_tls_ca: str = _f(
        "", "Path of the CA certificate that signed the NATS server's certificate.", values="nats.tls", helper=NATS
    )
    nats_tls_cert: str = _f("", "Path of the client certificate (mutual TLS).", values="nats.tls", helper=NATS)
    nats_tls_key: str = _f("", "Path of the client key (mutual TLS).", values="nats.tls", helper=NATS)
    nats_tls_insecure: bool = _f(
        False,
        "Use TLS to NATS without verifying the server's certificate, for a dev NATS with a self-signed one. Never in "
        "production: anyone on the path can read and change every call; logged as a warning at start.",
        values="nats.tls",
        helper=NATS,
    )
    callback_hosts: str = _f(
        "",
        "Comma-separated host names callback URLs may point at (empty = any host); checked by both processes.",
        values={"gateway": "gateway.callbackHosts", "queue-worker": "queue.callbackHosts"},
    )
    callback_blocked_networks: str = _f(
        DEFAULT_BLOCKED_NETWORKS,
        "Comma-separated networks (CIDR) no callback may connect to, checked on the address actually connected "
        "to; empty = none. Default: link-local and cloud metadata addresses.",
        not_in_chart=DEFAULT,
    )
    call_status: bool = _f(
        True,
        "Record each call's status in its queue's JetStream KV buckets `jetqueue-calls-<queue>`.",
        values={"queue-worker": "queue.callStatus.enabled", "gateway": "gateway.callStatus.enabled"},
    )
    status_ttl: float = _f(
        86400.0,
        "How long a call's status is kept.",
        kind="duration",
        values={"queue-worker": "queue.callStatus.ttl", "gateway": "gateway.callStatus.ttl"},
    )
    stream_storage: str = _f(
        "file",
        "Storage of streams this process creates.",
        choices=("file", "memory"),
        values={"queue-worker": "queue.streamStorage"},
        not_in_chart="per queue, in `gateway.queues`",
    )
    openfaas_url: str = _f(
        "",
        "The OpenFaaS gateway (e.g. http://gateway.openfaas:8080) whose function annotations apply: "
        "`com.openfaas.retry.*` and `exec_timeout` (worker), `com.openfaas.queue` (gateway). Empty = not read.",
        values="openfaas.url",
    )
    openfaas_user: str = _f(
        "", "Basic-auth user of the OpenFaaS gateway's API.", values="openfaas.auth", helper=OPENFAAS_AUTH
    )
    openfaas_password: str = _f("", "Its password.", secret=True, values="openfaas.auth", helper=OPENFAAS_AUTH)
    openfaas_refresh: float = _f(
        30.0,
        "How often every function's annotations are read again; a function not yet read is looked up at its first "
        "call (which runs by queues.yaml meanwhile).",
        kind="duration",
        values="openfaas.refreshInterval",
    )
    log_format: str = _f("console", "Log format.", choices=("console", "json"), values="logs.format")
    log_level: str = _f(
        "info", "Minimum log level.", choices=("debug", "info", "warning", "error"), values="logs.level"
    )

    def check(self) -> None:
        super().check()
        try:
            Egress.parse(self.callback_hosts, self.callback_blocked_networks)
        except ValueError as e:
            raise SettingsError(f"{PREFIX}CALLBACK_BLOCKED_NETWORKS: {e}") from None
        if bool(self.nats_tls_cert) != bool(self.nats_tls_key):
            raise SettingsError(f"{PREFIX}NATS_TLS_CERT and {PREFIX}NATS_TLS_KEY go together")
        if self.openfaas_url and not self.openfaas_url.startswith(("http://", "https://")):
            raise SettingsError(f"{PREFIX}OPENFAAS_URL={self.openfaas_url!r}: an http:// or https:// URL")
        if self.openfaas_refresh < 1:
            raise SettingsError(f"{PREFIX}OPENFAAS_REFRESH: at least 1s")

    @property
    def nats_servers(self) -> list[str]:
        return [u.strip() for u in self.nats_url.split(",") if u.strip()]


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


@dataclass(repr=False)
class GatewaySettings(SharedSettings):
    def check(self) -> None:
        super().check()
        check_partitions(self.partitions)
        if self.max_delay > jetstream.MAX_SCHEDULE_AHEAD:
            raise SettingsError(
                f"{PREFIX}MAX_DELAY: at most {format_duration(jetstream.MAX_SCHEDULE_AHEAD)} (cancel requests are kept "
                "a day longer, so a cancelled scheduled call never runs)"
            )

    http_port: int = _f(8080, "Port of the gateway API, /metrics, /healthz and /readyz.", values="gateway.port")
    http_host: str = _f("0.0.0.0", "Address the gateway binds.", not_in_chart="pods listen on every interface")
    routes_file: str = _f(
        "",
        "JSON routing table from the generator: function → queue, and each queue's stream settings.",
        values="gateway.routes",
        file="/etc/jetqueue/routes.json",
    )
    default_queue: str = _f(
        contract.DEFAULT_QUEUE, "Queue for functions the routing table does not list.", values="gateway.defaultQueue"
    )
    strict_routing: bool = _f(
        False, "Answer 404 for functions the routing table does not list.", values="gateway.strictRouting"
    )
    stream_replicas: int = _f(
        1,
        "Replicas of streams the gateway creates for queues the routing table does not describe.",
        not_in_chart="per queue, in `gateway.queues`",
    )
    partitions: int = _f(
        1,
        "Partitions of the queues the routing table does not describe (docs/partitions.md).",
        not_in_chart="per queue, in `gateway.queues`",
    )
    max_body_size: int = _f(
        1024 * 1024, "Largest accepted request body (413 above); e.g. 1Mi.", kind="size", values="gateway.maxBodySize"
    )
    publish_timeout: float = _f(
        5.0,
        "How long to wait for JetStream's PubAck before answering 503.",
        kind="duration",
        not_in_chart=DEFAULT,
    )
    max_batch_calls: int = _f(
        100,
        "Most calls in one `POST /async-batch` (413 above; docs/results.md).",
        values="gateway.maxBatchCalls",
    )
    max_batch_bytes: int = _f(
        8 * 1024 * 1024,
        "Largest `POST /async-batch` request body (413 above); each call's body is held to maxBodySize too.",
        kind="size",
        values="gateway.maxBatchBytes",
    )
    idempotency_window: float = _f(
        86400.0,
        "How long an `Idempotency-Key` is remembered, for queues the routing table does not describe "
        "(docs/results.md).",
        kind="duration",
        not_in_chart="per queue, in `gateway.queues` (queues.yaml `idempotencyWindow`)",
    )
    max_delay: float = _f(
        30 * 86400.0,
        "Longest `X-Delay` (or furthest `X-Not-Before`) a submission may ask for; 400 beyond it.",
        kind="duration",
        values="gateway.maxDelay",
    )
    auth_token: str = _f(
        "",
        "Bearer token required on the API (empty = no bearer auth).",
        secret=True,
        values="gateway.auth",
        helper=GATEWAY_AUTH,
    )
    auth_user: str = _f(
        "", "Basic-auth user required on the API (empty = no basic auth).", values="gateway.auth", helper=GATEWAY_AUTH
    )
    auth_password: str = _f("", "Basic-auth password.", secret=True, values="gateway.auth", helper=GATEWAY_AUTH)
    shutdown_timeout: float = _f(
        10.0, "On SIGTERM, how long open requests may finish.", kind="duration", not_in_chart=DEFAULT
    )
    dashboard: bool = _f(
        False,
        "Serve the dashboard under /dashboard/, behind the API's credentials (docs/dashboard.md).",
        values="gateway.dashboard.enabled",
    )
