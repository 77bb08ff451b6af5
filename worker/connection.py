"""The NATS connection: auth, TLS, reconnects for ever (cluster failover), callbacks for metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.aio.client import Client

from jetqueue.settings import SharedSettings

log = logging.getLogger("jetqueue.nats")
PING_INTERVAL = 5
MAX_OUTSTANDING_PINGS = 2
DRAIN_TIMEOUT = 5


def tls_context(s: SharedSettings) -> ssl.SSLContext | None:
    if not (s.nats_tls_ca or s.nats_tls_cert or s.nats_tls_insecure):
        return None
    ctx = ssl.create_default_context(cafile=s.nats_tls_ca or None)
    if s.nats_tls_insecure:  # a dev NATS with a self-signed certificate: encrypted, but to whoever answers
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if s.nats_tls_cert:
        ctx.load_cert_chain(s.nats_tls_cert, s.nats_tls_key)
    return ctx


async def connect(
    s: SharedSettings,
    name: str,
    on_reconnect: Callable[[], Awaitable[None]] | None = None,
    connect_attempts: int = 60,
) -> Client:
    """Connect, trying for up to `connect_attempts` seconds at start, then reconnecting for ever.

    Raises ConnectionError when NATS cannot be reached in time or refuses the credentials."""

    current: list[Client] = []  # set once connected; callbacks may fire before

    async def disconnected() -> None:
        if current and not (current[0].is_closed or current[0].is_draining):  # closing on purpose is not news
            log.warning("disconnected from NATS; reconnecting")

    async def reconnected() -> None:
        url = current[0].connected_url if current else None
        log.info("reconnected to NATS at %s", url.netloc if url else "?")
        if on_reconnect:
            await on_reconnect()

    auth_refused = asyncio.Event()

    async def error(e: Exception) -> None:
        if "authorization" in str(e).lower() or "authentication" in str(e).lower():
            auth_refused.set()
            log.error("NATS refused our credentials: %s", e)
        else:
            log.debug("NATS client error: %r", e)

    opts: dict[str, Any] = {
        "servers": s.nats_servers,
        "name": name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "allow_reconnect": True,
        "connect_timeout": 2,
        # A server cut off by a partition sends no error: only missed pings reveal it. nats-py's default (a ping
        # every 2 minutes) left a partitioned client on a dead server for minutes; this fails over in ~10 s.
        "ping_interval": PING_INTERVAL,
        "max_outstanding_pings": MAX_OUTSTANDING_PINGS,
        "disconnected_cb": disconnected,
        "reconnected_cb": reconnected,
        "error_cb": error,
        # Publishes (acks included) made while reconnecting are buffered and flushed after.
        "pending_size": 64 * 1024 * 1024,
        # A drain waits until every subscription is read empty; one nobody reads would hold it for nats-py's 30 s,
        # past the pod's grace. What is sent is flushed after the drain either way.
        "drain_timeout": DRAIN_TIMEOUT,
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
    if s.nats_tls_insecure:
        log.warning(
            "INSECURE: TLS to NATS without verifying the server's certificate (JETQUEUE_NATS_TLS_INSECURE); anyone "
            "on the path can read and change every call. For a development NATS only, never in production."
        )
    last: BaseException | None = None
    deadline = asyncio.get_running_loop().time() + max(1, connect_attempts)
    while asyncio.get_running_loop().time() < deadline:
        # nats-py keeps retrying a server that refuses our credentials: watch for that and give up at once.
        attempt = asyncio.ensure_future(nats.connect(**opts))
        refused = asyncio.ensure_future(auth_refused.wait())
        remaining = deadline - asyncio.get_running_loop().time()
        done, _ = await asyncio.wait(
            {attempt, refused}, timeout=max(0.1, remaining), return_when=asyncio.FIRST_COMPLETED
        )
        refused.cancel()
        if attempt in done and attempt.exception() is None:
            nc: Client = attempt.result()
            current.append(nc)
            return nc
        if not attempt.done():
            attempt.cancel()
            with contextlib.suppress(BaseException):
                await attempt
        if auth_refused.is_set():
            raise ConnectionError(f"NATS at {s.nats_url} refused our credentials (check JETQUEUE_NATS_*)")
        if attempt.done() and not attempt.cancelled():
            last = attempt.exception()
            if last is not None and "authorization" in str(last).lower():
                raise ConnectionError(f"NATS at {s.nats_url} refused our credentials: {last}") from None
        await asyncio.sleep(min(1.0, max(0.0, deadline - asyncio.get_running_loop().time())))
    raise ConnectionError(f"cannot connect to NATS at {s.nats_url}: {last!r}")
