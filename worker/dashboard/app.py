"""The dashboard's aiohttp application: pages (views.py rendered by the templates) and actions, each action carried
out by the operation the CLI runs (ops/pauses.py, ops/deadletters.py), its output shown as the page's message.

Mounted under `PREFIX` by the gateway (JETQUEUE_DASHBOARD) or served by `jetqueue dashboard` (command.py). Who
may do what, and why a forged POST fails: guard.py.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web
from nats.aio.client import Client
from nats.errors import Error as NatsError

from jetqueue import __version__, contract
from jetqueue.dashboard import views
from jetqueue.dashboard.guard import CSRF_FIELD, HEADERS, Guard
from jetqueue.dashboard.rates import Rates
from jetqueue.ops import deadletters, pauses, status
from jetqueue.ops.queues import OpsError
from jetqueue.settings import GatewaySettings

log = logging.getLogger("jetqueue.dashboard")
PREFIX = "/dashboard"
HERE = Path(__file__).parent
REFRESH_MS = 3000  # the overview's live part is fetched again this often (static/live.js)
# Every viewer's refresh within this long shares one read of the queues (ops/status.collect: stream and consumer
# info, and a pass over up to 10,000 dead letters' headers per queue), so viewers do not multiply the load on NATS.
SHARED_FOR = 2.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
FORM = web.RequestKey("form", dict[str, str])  # a POST's fields, read (and checked) by the guard middleware


class Unavailable(Exception):
    pass


def see_other(location: str) -> web.Response:
    """Post/redirect/get: an action's answer sends the browser to a page (a reload does not repeat the action)."""
    return web.Response(status=303, headers={"Location": location})


class Dashboard:
    def __init__(
        self,
        settings: GatewaySettings,
        nats: Callable[[], Client | None],
        prefix: str = PREFIX,
        local_only: bool = False,
    ) -> None:
        self.guard = Guard(settings, prefix, local_only)
        self.prefix = prefix
        self.nats = nats  # the process's NATS connection (None while not connected)
        self.rates = Rates()
        self._shared: tuple[float, list[status.QueueReport], dict[str, Any]] | None = None
        self._reading = asyncio.Lock()
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,  # every value a page shows is escaped: names, errors and headers come from callers
            undefined=jinja2.StrictUndefined,
        )

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._headers, self._auth])
        r = app.router
        r.add_get("/", self.overview)
        r.add_get("/live", self.live)
        r.add_get("/queues/{queue}/dead-letters", self.dead_letters)
        r.add_post("/queues/{queue}/dead-letters/replay", self.replay)
        r.add_post("/queues/{queue}/dead-letters/purge", self.purge)
        r.add_post("/queues/{queue}/pause", self.pause)
        r.add_post("/queues/{queue}/resume", self.resume)
        r.add_get("/calls", self.call)
        r.add_get("/login", self.login_page)
        r.add_post("/login", self.login)
        r.add_post("/logout", self.logout)
        r.add_static("/static", HERE / "static", append_version=True, name="static")
        return app

    # -- middlewares
    @web.middleware
    async def _headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        response.headers.update(HEADERS)
        return response

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if (why := self.guard.wrong_host(request)) is not None:
            return web.Response(status=403, text=why + "\n")
        public = request.path.startswith(self.prefix + "/static/") or request.path == self.prefix + "/login"
        if not public and not self.guard.signed_in(request):
            if request.method == "GET" and request.path != self.prefix + "/live":
                return see_other(self.prefix + "/login")
            return web.Response(status=401, text="sign in again: " + self.prefix + "/login\n")
        if request.method == "POST":
            form = {k: str(v) for k, v in (await request.post()).items()}
            if (why := self.guard.forged(request, form)) is not None:
                log.warning("dashboard: %s %s refused: %s", request.method, request.path, why)
                return web.Response(status=403, text=why + "\n")
            request[FORM] = form
        return await handler(request)

    # -- rendering
    def _js(self) -> Any:
        nc = self.nats()
        if nc is None or not nc.is_connected:
            raise Unavailable("not connected to NATS")
        return nc.jetstream()

    def _page(
        self, request: web.Request, template: str, status_code: int = 200, part: bool = False, **values: Any
    ) -> web.Response:
        response = web.Response(status=status_code, content_type="text/html", charset="utf-8")
        session = self.guard.session(request)
        if session is None:
            session = self.guard.issue(response, request, signed_in=self.guard.signed_in(request))
        flash = None if part else self.guard.take_flash(request, response)  # a whole page shows it, once
        response.text = self.templates.get_template(template).render(
            prefix=self.prefix,
            csrf_field=CSRF_FIELD,
            csrf=self.guard.csrf(session),
            flash=flash,
            version=__version__,
            signed_in=self.guard.required and session.signed_in,
            refresh_ms=REFRESH_MS,
            static=lambda name: request.app.router["static"].url_for(filename=name),
            **values,
        )
        return response

    def _unavailable(self, request: web.Request, e: Exception) -> web.Response:
        return self._page(request, "error.html", 503, title="Unavailable", error=f"{e}; retry in a moment")

    async def _reports(self) -> tuple[list[status.QueueReport], dict[str, Any]]:
        async with self._reading:
            if self._shared is None or time.monotonic() - self._shared[0] >= SHARED_FOR:
                reports = await status.collect(self._js(), None)
                self._shared = (time.monotonic(), reports, dict(self.rates.update(reports)))
            return self._shared[1], self._shared[2]

    # -- pages
    async def overview(self, request: web.Request) -> web.Response:
        try:
            reports, rates = await self._reports()
        except (Unavailable, OpsError, ConnectionError, TimeoutError) as e:
            return self._unavailable(request, e)
        return self._page(request, "overview.html", title="Queues", reports=reports, rates=rates)

    async def live(self, request: web.Request) -> web.Response:
        """The overview's table alone, fetched by static/live.js."""
        try:
            reports, rates = await self._reports()
        except (Unavailable, OpsError, ConnectionError, TimeoutError) as e:
            return web.Response(status=503, text=str(e))
        return self._page(request, "queues.html", part=True, reports=reports, rates=rates)

    async def dead_letters(self, request: web.Request) -> web.Response:
        queue = self._queue(request)
        function = request.query.get("function", "") or None
        call_id = request.query.get("call_id", "") or None
        if function and not (contract.FUNCTION_NAME.match(function) or function == contract.CALLBACK_DLQ_FUNCTION):
            raise web.HTTPBadRequest(text="not a function name")
        if call_id and not contract.CALL_ID.match(call_id):
            raise web.HTTPBadRequest(text="not a call id")
        try:
            found = await views.dead_letter_page(self._js(), queue, function, call_id)
            total = (await status.collect(self._js(), queue))[0].dead_letters
        except (Unavailable, ConnectionError, TimeoutError) as e:
            return self._unavailable(request, e)
        except OpsError as e:
            return self._page(request, "error.html", 404, title="Dead letters", error=str(e))
        return self._page(
            request,
            "deadletters.html",
            title=f"Dead letters of {queue}",
            queue=queue,
            function=function or "",
            call_id=call_id or "",
            found=found,
            total=total,
            latest=views.LATEST,
        )

    async def call(self, request: web.Request) -> web.Response:
        call_id = request.query.get("id", "").strip()
        values: dict[str, Any] = {"title": "Find a call", "call_id": call_id, "view": None, "problem": ""}
        if call_id and not contract.CALL_ID.match(call_id):
            values["problem"] = "not a call id (letters, digits, _ = . -; at most 128)"
        elif call_id:
            try:
                values["view"] = await views.find_call(self._js(), call_id)
            except (Unavailable, ConnectionError, TimeoutError) as e:
                return self._unavailable(request, e)
            if values["view"] is None:
                values["problem"] = f"no call {call_id} (unknown, or its status expired)"
        return self._page(request, "call.html", when=views.when, **values)

    async def login_page(self, request: web.Request) -> web.Response:
        if not self.guard.required or self.guard.signed_in(request):
            return see_other(self.prefix + "/")
        return self._page(request, "login.html", title="Sign in", problem="", **self._login_fields())

    async def login(self, request: web.Request) -> web.Response:
        form = request[FORM]
        if self.guard.check_credentials(form.get("token", ""), form.get("user", ""), form.get("password", "")):
            response = see_other(self.prefix + "/")
            self.guard.issue(response, request, signed_in=True)
            return response
        log.warning("dashboard: a sign-in with wrong credentials from %s", request.remote)
        fields = self._login_fields()
        return self._page(request, "login.html", 401, title="Sign in", problem="wrong credentials", **fields)

    def _login_fields(self) -> dict[str, bool]:
        return {"token": bool(self.guard.s.auth_token), "basic": bool(self.guard.s.auth_user)}

    async def logout(self, request: web.Request) -> web.Response:
        response = see_other(self.prefix + "/login")
        self.guard.end(response)
        return response

    # -- actions: the CLI's operations, their output shown as the next page's message
    def _queue(self, request: web.Request) -> str:
        queue = request.match_info["queue"]
        if not contract.QUEUE_NAME.match(queue):
            raise web.HTTPBadRequest(text="not a queue name")
        return queue

    def _function(self, form: dict[str, str], extra: tuple[str, ...] = ()) -> str:
        function = form.get("function", "").strip()
        if function and not (contract.FUNCTION_NAME.match(function) or function in extra):
            raise web.HTTPBadRequest(text="not a function name")
        return function

    async def _act(
        self, request: web.Request, back: str, action: Callable[[io.StringIO], Awaitable[int]]
    ) -> web.Response:
        out = io.StringIO()
        self._shared = None  # the page this sends the browser to shows the action's effect
        try:
            ok = await action(out) == 0
            text = out.getvalue().strip()
        except (OpsError, ValueError, ConnectionError, TimeoutError, Unavailable) as e:
            ok, text = False, f"error: {e}"
        except NatsError as e:  # e.g. the gateway's NATS user may not purge or pause: say NATS's reason
            ok, text = False, f"error: NATS refused: {getattr(e, 'description', None) or e!r}"
        log.info("dashboard: %s %s: %s", request.path, "done" if ok else "failed", text.splitlines()[:1])
        response = see_other(back)
        self.guard.flash(response, request, text or "done", ok)
        return response

    async def pause(self, request: web.Request) -> web.Response:
        queue, form = self._queue(request), request[FORM]
        function = self._function(form)
        until_text = form.get("until", "").strip()

        async def go(out: io.StringIO) -> int:
            until = pauses.parse_until(until_text, datetime.now(UTC)) if until_text else None
            return await pauses.pause(self._js(), queue, function, until, out)

        return await self._act(request, self.prefix + "/", go)

    async def resume(self, request: web.Request) -> web.Response:
        queue, form = self._queue(request), request[FORM]
        function = self._function(form)
        return await self._act(request, self.prefix + "/", lambda out: pauses.resume(self._js(), queue, function, out))

    def _dead_letters_page(self, queue: str) -> str:
        return f"{self.prefix}/queues/{queue}/dead-letters"

    async def replay(self, request: web.Request) -> web.Response:
        queue, form = self._queue(request), request[FORM]
        function = self._function(form, (contract.CALLBACK_DLQ_FUNCTION,)) or None
        call_id = form.get("call_id", "").strip() or None
        if call_id and not contract.CALL_ID.match(call_id):
            raise web.HTTPBadRequest(text="not a call id")

        async def go(out: io.StringIO) -> int:
            nc = self.nats()
            if nc is None or not nc.is_connected:
                raise Unavailable("not connected to NATS")
            return await deadletters.dlq_replay(nc, queue, function, call_id, lambda _: True, out)

        return await self._act(request, self._dead_letters_page(queue), go)

    async def purge(self, request: web.Request) -> web.Response:
        queue, form = self._queue(request), request[FORM]
        function = self._function(form, (contract.CALLBACK_DLQ_FUNCTION,)) or None
        return await self._act(
            request,
            self._dead_letters_page(queue),
            lambda out: deadletters.dlq_purge(self._js(), queue, function, lambda _: True, out),
        )
