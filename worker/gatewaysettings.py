"""The gateway's settings (settings.py re-exports them)."""

from __future__ import annotations

from dataclasses import dataclass

from jetqueue import contract
from jetqueue.contract import jetstream
from jetqueue.durations import format_duration
from jetqueue.settingfields import DEFAULT, GATEWAY_AUTH, PREFIX, SettingsError
from jetqueue.settingfields import setting as _f
from jetqueue.settingsbase import SharedSettings, check_partitions


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
