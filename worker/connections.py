"""The NATS connection: auth, TLS, reconnects for ever (cluster failover), callbacks for metrics."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.aio.client import Client

from worker.settings import _Base

log = logging.getLogger("jetqueue.nats")


def tls_context(s: _Base) -> ssl.SSLContext | None:
    if not (s.nats_tls_ca or s.nats_tls_cert):
        return None
    ctx = ssl.create_default_context(cafile=s.nats_tls_ca or None)
    if s.nats_tls_cert:
        ctx.load_cert_chain(s.nats_tls_cert, s.nats_tls_key)
    return ctx


async def connect(
    s: _Base,
    name: str,
    on_reconnect: Callable[[], Awaitable[None]] | None = None,
    connect_attempts: int = 60,
) -> Client:
    """Connect, retrying for up to `connect_attempts` seconds at start, then reconnecting for ever."""

    async def disconnected() -> None:
        if not (nc.is_closed or nc.is_draining):  # closing on purpose is not news
            log.warning("disconnected from NATS; reconnecting")

    async def reconnected() -> None:
        log.info("reconnected to NATS at %s", nc.connected_url.netloc if nc.connected_url else "?")
        if on_reconnect:
            await on_reconnect()

    async def error(e: Exception) -> None:
        log.debug("NATS client error: %r", e)

    opts: dict[str, Any] = {
        "servers": s.nats_servers,
        "name": name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "allow_reconnect": True,
        "connect_timeout": 2,
        "disconnected_cb": disconnected,
        "reconnected_cb": reconnected,
        "error_cb": error,
        # Publishes (acks included) made while reconnecting are buffered and flushed after.
        "pending_size": 64 * 1024 * 1024,
    }
    if s.nats_user:
        opts["user"], opts["password"] = s.nats_user, s.nats_password
    if s.nats_token:
        opts["token"] = s.nats_token
    if s.nats_creds:
        opts["user_credentials"] = s.nats_creds
    ctx = tls_context(s)
    if ctx is not None:
        opts["tls"] = ctx
    last: Exception | None = None
    nc: Client
    for _ in range(max(1, connect_attempts)):
        try:
            nc = await nats.connect(**opts)
            return nc
        except (OSError, nats.errors.Error, TimeoutError) as e:  # retry: NATS may start after us
            if "authorization" in str(e).lower():
                raise ConnectionError(f"NATS at {s.nats_url} refused our credentials: {e}") from None
            last = e
            await asyncio.sleep(1)
    raise ConnectionError(f"cannot connect to NATS at {s.nats_url}: {last!r}")
