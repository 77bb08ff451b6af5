"""/metrics, /healthz and /readyz on one aiohttp server (worker), or added to the gateway's app."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def add_probes(
    app: web.Application, registry: CollectorRegistry, alive: Callable[[], bool], ready: Callable[[], str | None]
) -> None:
    """`ready` returns None when ready, else the reason it is not."""

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n") if alive() else web.Response(status=503, text="loop stopped\n")

    async def readyz(_: web.Request) -> web.Response:
        reason = ready()
        return web.Response(text="ready\n") if reason is None else web.Response(status=503, text=reason + "\n")

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)


async def serve(
    app: web.Application,
    host: str,
    port: int,
    shutdown_timeout: float = 60.0,
    front: Callable[[Handler], Handler] | None = None,
) -> web.AppRunner:
    """Serve `app`; on shutdown, requests in flight get `shutdown_timeout` seconds to finish. `front` wraps the
    application's request handler (router and middlewares) before the first connection (gateway/front.py)."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    if front is not None and runner.server is not None:
        runner.server.request_handler = front(runner.server.request_handler)
    try:
        await web.TCPSite(runner, host, port, reuse_address=True).start()
    except OSError as e:
        await runner.cleanup()
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return runner
