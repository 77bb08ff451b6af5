"""The settings every process shares (NATS, status, logs, OpenFaaS): `SharedSettings`, the base of each process's
settings (settings.py re-exports it; how a setting is declared and parsed is in settingfields.py)."""

from __future__ import annotations

from dataclasses import dataclass

from jetqueue import contract
from jetqueue.egress import DEFAULT_BLOCKED_NETWORKS, Egress
from jetqueue.settingfields import (
    DEFAULT,
    NATS,
    OPENFAAS_AUTH,
    PREFIX,
    EnvSettings,
    SettingsError,
)
from jetqueue.settingfields import setting as _f


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
