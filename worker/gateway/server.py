"""The gateway process: the HTTP app (routes → accept.py, calls.py; auth.py in front), NATS in the
background (backend.py), SIGTERM. The API is described in schemas/gateway.openapi.json.

Requests meet front.py first: plain submissions go from there to accept.py directly, everything else through the
app's router and middlewares below (same answers; the app stays the whole API, and the only one described)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from functools import partial

from aiohttp import web
from prometheus_client import CollectorRegistry

from jetqueue.gateway.accept import Accept
from jetqueue.gateway.auth import auth_middleware, errors_middleware
from jetqueue.gateway.backend import Backend
from jetqueue.gateway.batch import Batch
from jetqueue.gateway.calls import Calls
from jetqueue.gateway.front import SUBMIT_METHODS, front
from jetqueue.gateway.routing import Routing
from jetqueue.openfaas import FunctionCatalog
from jetqueue.probes import add_probes, serve
from jetqueue.settings import GatewaySettings

log = logging.getLogger("jetqueue.gateway")
DASHBOARD = "/dashboard"  # where JETQUEUE_DASHBOARD serves it


class Gateway:
    def __init__(self, settings: GatewaySettings, registry: CollectorRegistry | None = None) -> None:
        self.s = settings
        self.registry = registry or CollectorRegistry()
        routing = Routing.from_settings(settings)
        # com.openfaas.queue of each function (JETQUEUE_OPENFAAS_URL), read in the background for the routing.
        self.catalog = routing.catalog = FunctionCatalog.of(settings, routing.annotations_changed)
        self.backend = Backend(settings, routing)
        self.accept = Accept(settings, routing, self.backend, self.registry)
        self.calls = Calls(settings, self.backend, self.accept.recent)
        self.batch = Batch(settings, self.accept)
        self.runner: web.AppRunner | None = None
        self._connector: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def app(self) -> web.Application:
        middlewares = [errors_middleware(self.s.max_body_size)]
        if self.s.auth_token or self.s.auth_user:
            # The dashboard checks the same credentials itself: it also takes them through its sign-in page.
            middlewares.insert(0, auth_middleware(self.s, DASHBOARD if self.s.dashboard else ""))
        app = web.Application(client_max_size=self.s.max_body_size, middlewares=middlewares)
        if self.s.dashboard:
            from jetqueue.dashboard.app import Dashboard
            from jetqueue.dashboard.guard import LOOPBACK

            open_door = not (self.s.auth_token or self.s.auth_user)
            if open_door:
                log.warning("the dashboard is on without API credentials: whoever reaches the gateway can use it")
            local = open_door and self.s.http_host in LOOPBACK  # `jetqueue dev`: answers only to loopback names
            app.add_subapp(DASHBOARD, Dashboard(self.s, lambda: self.backend.nc, DASHBOARD, local).app())
        r = app.router
        for method in SUBMIT_METHODS:
            r.add_route(method, "/async-function/{name}", self.accept.submit)
            r.add_route(method, "/async-function/{name}/{path:.*}", self.accept.submit)
        r.add_post("/async-batch", self.batch.submit)
        r.add_delete("/async-function/{name}", self.calls.cancel)  # OpenFaaS form: the segment is the call id
        r.add_delete("/async-calls/{call_id}", self.calls.cancel)
        r.add_delete("/async-calls", self.calls.cancel_tagged)
        r.add_get("/async-calls/{call_id}", self.calls.get_status)
        r.add_get("/async-calls/{call_id}/result", self.calls.get_result)
        add_probes(app, self.registry, lambda: True, self._not_ready)
        return app

    def _not_ready(self) -> str | None:
        # Not ready from the moment SIGTERM arrives, so load balancers stop sending before the listener closes.
        return "shutting down" if self._stop.is_set() else self.backend.not_ready()

    async def start(self) -> None:
        s = self.s
        door = partial(front, s, self.accept)
        self.runner = await serve(self.app(), s.http_host, s.http_port, s.shutdown_timeout, front=door)
        self._connector = asyncio.create_task(self.backend.connect())
        if self.catalog is not None:
            self.catalog.start()
        log.info("gateway listening on %s:%d: %r", self.s.http_host, self.s.http_port, self.s)

    def request_stop(self) -> None:
        self._stop.set()

    async def wait(self) -> None:
        await self._stop.wait()

    async def stop(self) -> None:
        if self._connector:
            self._connector.cancel()
            with contextlib.suppress(BaseException):
                await self._connector
        if self.runner:
            await self.runner.shutdown()
            await self.runner.cleanup()
        await self.backend.close()
        if self.catalog is not None:
            await self.catalog.close()


async def run(settings: GatewaySettings) -> int:
    gw = Gateway(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, gw.request_stop)
    try:
        await gw.start()
    except OSError as e:
        log.error("cannot start: %s", e)
        return 1
    await gw.wait()
    await gw.stop()
    return 0
