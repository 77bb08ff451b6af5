"""`jetqueue dashboard`: the dashboard on its own (the gateway serves the same one under /dashboard/ when
JETQUEUE_DASHBOARD is on). NATS and the credentials it asks for come from the gateway's settings (JETQUEUE_NATS_*,
JETQUEUE_AUTH_TOKEN or JETQUEUE_AUTH_USER/PASSWORD), so it signs people in exactly as the API does."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from aiohttp import web
from nats.aio.client import Client

from jetqueue import logs
from jetqueue.dashboard.app import PREFIX, Dashboard, see_other
from jetqueue.dashboard.guard import LOOPBACK
from jetqueue.settings import GatewaySettings, SettingsError

log = logging.getLogger("jetqueue.dashboard")
DEFAULT_PORT = 8090


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "dashboard",
        help="serve the dashboard: queues live, dead letters (replay, purge), call lookup, pause and resume",
        description="A web page for operating the queues: every action runs the same operation as the CLI. "
        "Sign-in takes the gateway's credentials (JETQUEUE_AUTH_TOKEN, or JETQUEUE_AUTH_USER and "
        "JETQUEUE_AUTH_PASSWORD); without them anyone who reaches the port can act, so it listens on 127.0.0.1 "
        "unless told otherwise. See docs/dashboard.md.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--nats-url", help="NATS URL(s) (default: JETQUEUE_NATS_URL or nats://127.0.0.1:4222)")
    p.set_defaults(func=cmd_dashboard)


def cmd_dashboard(args: argparse.Namespace) -> int:
    try:
        settings = GatewaySettings.from_env()
    except SettingsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.nats_url:
        settings.nats_url = args.nats_url
    logs.setup(settings.log_format, settings.log_level)
    return asyncio.run(run(settings, args.host, args.port))


def standalone_app(dashboard: Dashboard) -> web.Application:
    """The root application: the dashboard under PREFIX, `/` sending there, /healthz."""

    async def root(_: web.Request) -> web.Response:
        return see_other(PREFIX + "/")

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_get("/", root)
    app.router.add_get("/healthz", healthz)
    app.add_subapp(PREFIX, dashboard.app())
    return app


async def run(settings: GatewaySettings, host: str, port: int) -> int:
    from jetqueue.connection import connect

    open_door = not (settings.auth_token or settings.auth_user)
    if open_door and host not in LOOPBACK:
        log.warning("dashboard on %s without credentials: anyone who reaches it can pause and purge", host)
    found: list[Client] = []
    dashboard = Dashboard(settings, lambda: found[0] if found else None, local_only=open_door and host in LOOPBACK)
    runner = web.AppRunner(standalone_app(dashboard), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_address=True).start()
    except OSError as e:
        await runner.cleanup()
        print(f"error: cannot listen on {host}:{port}: {e.strerror or e}", file=sys.stderr)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"dashboard on http://{host}:{port}{PREFIX}/", flush=True)

    async def connecting() -> None:
        while not found:
            try:
                found.append(await connect(settings, "jetqueue-dashboard", connect_attempts=1))
            except ConnectionError as e:
                log.warning("%s; retrying", e)
                await asyncio.sleep(1)

    task = asyncio.create_task(connecting())
    await stop.wait()
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    await runner.cleanup()
    for nc in found:
        await nc.close()
    return 0
