"""The async gateway: accept calls over HTTP, store them in JetStream, answer 202 only once stored.

Also cancel (`DELETE /async-function/{id}`, `DELETE /async-calls/{id}`) and status
(`GET /async-calls/{id}`). The API is described in schemas/gateway.openapi.json.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError
from prometheus_client import CollectorRegistry, Counter, Histogram

from jetqueue import callstatus, contract, provision
from jetqueue.callstatus import StatusStore, open_bucket
from jetqueue.connection import connect
from jetqueue.gateway.routing import Routing
from jetqueue.probes import add_probes, serve
from jetqueue.settings import GatewaySettings

log = logging.getLogger("jetqueue.gateway")
RETRY_AFTER = "5"
INVOKE_METHODS = ("POST", "PUT", "PATCH", "GET")
PUBLIC = frozenset({"/healthz", "/readyz", "/metrics"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def problem(status_code: int, reason: str, **headers: str) -> web.Response:
    return web.json_response({"error": reason}, status=status_code, headers=headers)


class Gateway:
    def __init__(self, settings: GatewaySettings, registry: CollectorRegistry | None = None) -> None:
        self.s = settings
        self.routing = Routing.from_settings(settings)
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "gateway_async_requests_total",
            "Async requests by outcome.",
            ["function_name", "queue_name", "code"],
            registry=self.registry,
        )
        self.publish_seconds = Histogram(
            "gateway_publish_seconds",
            "Time to store a call (publish to PubAck).",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
            registry=self.registry,
        )
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self.status = StatusStore(None)
        self.ready_streams: set[str] = set()
        self.runner: web.AppRunner | None = None
        self._connector: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    # ---- lifecycle ------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.s.max_body_size, middlewares=[self._auth, self._errors])
        r = app.router
        for method in INVOKE_METHODS:
            r.add_route(method, "/async-function/{name}", self.submit)
            r.add_route(method, "/async-function/{name}/{path:.*}", self.submit)
        r.add_delete("/async-function/{name}", self.cancel)  # OpenFaaS form: the segment is the call id
        r.add_delete("/async-calls/{call_id}", self.cancel)
        r.add_get("/async-calls/{call_id}", self.get_status)
        add_probes(app, self.registry, lambda: True, self._ready)
        return app

    async def start(self) -> None:
        self.runner = await serve(self.app(), self.s.http_host, self.s.http_port)
        self._connector = asyncio.create_task(self._connect())
        log.info("gateway listening on %s:%d: %r", self.s.http_host, self.s.http_port, self.s)

    async def _connect(self) -> None:
        """Connect in the background: until NATS answers, submissions get 503 and /readyz says why."""
        while self.nc is None:
            try:
                self.nc = await connect(self.s, "jetqueue-gateway", connect_attempts=1)
            except ConnectionError as e:
                log.warning("%s; retrying", e)
                await asyncio.sleep(1)
        self.js = self.nc.jetstream(timeout=self.s.publish_timeout)
        if self.s.call_status:
            with contextlib.suppress(Exception):
                self.status = StatusStore(
                    await open_bucket(self.js, self.s.status_ttl, self.s.stream_replicas, self.s.stream_storage)
                )
        for queue in sorted(self.routing.queues):
            await self._ensure_queue(queue)

    async def _ensure_queue(self, queue: str) -> bool:
        """Create the queue's stream if missing, so calls are stored even before its worker starts."""
        if queue in self.ready_streams:
            return True
        if self.js is None:
            return False
        info = self.routing.queues.get(queue)
        qs = provision.QueueStreams(
            queue,
            contract.stream_name(queue),
            contract.dlq_stream_name(queue),
            info.replicas if info else self.s.stream_replicas,
            info.storage if info else self.s.stream_storage,
        )
        try:
            await provision.ensure_stream(self.js, qs)
        except Exception as e:
            log.warning("cannot set up stream for queue %s: %s", queue, e)
            return False
        self.ready_streams.add(queue)
        return True

    def _ready(self) -> str | None:
        if self.nc is None or not self.nc.is_connected:
            return "not connected to NATS"
        return None

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
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.nc.drain()

    # ---- middleware ------------------------------------------------------------------------------

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PUBLIC or not (self.s.auth_token or self.s.auth_user):
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, cred = header.partition(" ")
        if self.s.auth_token and scheme.lower() == "bearer" and hmac.compare_digest(cred.strip(), self.s.auth_token):
            return await handler(request)
        if self.s.auth_user and scheme.lower() == "basic":
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                user, _, password = base64.b64decode(cred.strip(), validate=True).decode().partition(":")
                if hmac.compare_digest(user, self.s.auth_user) and hmac.compare_digest(password, self.s.auth_password):
                    return await handler(request)
        challenge = 'Bearer realm="jetqueue"' if self.s.auth_token else 'Basic realm="jetqueue"'
        return problem(401, "authentication required", **{"WWW-Authenticate": challenge})

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return problem(413, f"body larger than {self.s.max_body_size} bytes")
        except web.HTTPException as e:
            if e.status >= 400 and e.content_type != "application/json":
                return problem(e.status, e.reason, **{k: v for k, v in e.headers.items() if k == "Allow"})
            raise

    # ---- submit --------------------------------------------------------------------------------

    def _count(self, function: str, queue: str, code: int) -> None:
        self.requests.labels(function, queue, str(code)).inc()

    def _callback_problem(self, url: str) -> str | None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return "X-Callback-Url must be an absolute http:// or https:// URL"
        if any(c in url for c in "\r\n "):
            return "X-Callback-Url must not contain spaces or line breaks"
        allowed = [h.strip().lower() for h in self.s.callback_hosts.split(",") if h.strip()]
        if allowed and parts.hostname.lower() not in allowed:
            return f"X-Callback-Url host {parts.hostname!r} is not in the allowed callback hosts"
        return None

    async def submit(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if not contract.FUNCTION_NAME.match(name) or len(name) > 253:
            self._count("_invalid", "", 400)
            return problem(400, "function name must be a DNS-1123 name, optionally with .namespace")
        queue = self.routing.queue_for(name)
        if queue is None:
            self._count("_unrouted", "", 404)
            return problem(404, f"function {name!r} is not routed to any queue (strict routing)")
        call_id = request.headers.get("X-Call-Id") or contract.new_call_id()
        if not contract.CALL_ID.match(call_id):
            self._count(name, queue, 400)
            return problem(
                400, "X-Call-Id must be 1-128 characters of [A-Za-z0-9_=.-], starting with a letter or digit"
            )
        callback = request.headers.get("X-Callback-Url", "")
        if callback and (reason := self._callback_problem(callback)):
            self._count(name, queue, 400)
            return problem(400, reason)
        body = await request.read()
        path = request.match_info.get("path", "")
        headers = contract.forwardable(request.headers)
        if self.s.auth_token or self.s.auth_user:  # the credential was for the gateway, not the function
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        call = contract.Call(
            call_id=call_id,
            queue=queue,
            function=name,
            body=body,
            method=request.method,
            path=f"/{path}" if path else "",
            query=request.query_string,
            callback_url=callback,
            headers=headers,
        )
        if self.js is None or self.nc is None or not self.nc.is_connected or not await self._ensure_queue(queue):
            self._count(name, queue, 503)
            return problem(503, "NATS is unavailable; nothing was stored, retry later", **{"Retry-After": RETRY_AFTER})
        t0 = time.perf_counter()
        try:
            ack = await self.js.publish(
                contract.subject(queue, name), body, headers=call.to_headers(), timeout=self.s.publish_timeout
            )
        except Exception as e:
            log.warning("publish failed: %r", e, extra={"call_id": call_id, "function": name})
            self._count(name, queue, 503)
            return problem(
                503,
                "could not store the call in JetStream; nothing was stored, retry later",
                **{"Retry-After": RETRY_AFTER},
            )
        self.publish_seconds.observe(time.perf_counter() - t0)
        if not ack.duplicate and self.status.kv is not None:
            with contextlib.suppress(Exception):  # the worker may have begun already: its write wins
                await self.status.update(call_id, callstatus.base_record(call), None)
        self._count(name, queue, 202)
        answer = {"X-Call-Id": call_id, "X-Start-Time": str(call.start_time_ns), "X-Queue": queue}
        if ack.duplicate:
            answer["X-Duplicate"] = "true"
        return web.Response(status=202, headers=answer)

    # ---- status and cancel --------------------------------------------------------------------

    def _check_id(self, call_id: str) -> web.Response | None:
        if not contract.CALL_ID.match(call_id):
            return problem(400, "not a valid call id")
        if self.status.kv is None:
            if not self.s.call_status:
                return problem(501, "call status is switched off on this gateway (JETQUEUE_CALL_STATUS=false)")
            return problem(503, "NATS is unavailable", **{"Retry-After": RETRY_AFTER})
        return None

    async def _lookup(self, call_id: str) -> callstatus.Entry | web.Response:
        """The call's status entry, or the answer to give when there is none (404) or NATS fails (503)."""
        try:
            entry = await self.status.get(call_id)
        except Exception:
            return problem(503, "NATS is unavailable", **{"Retry-After": RETRY_AFTER})
        if entry is None:
            return problem(404, f"no call {call_id!r} (unknown, or its status expired)")
        return entry

    async def get_status(self, request: web.Request) -> web.Response:
        call_id = request.match_info["call_id"]
        if (bad := self._check_id(call_id)) is not None:
            return bad
        entry = await self._lookup(call_id)
        return entry if isinstance(entry, web.Response) else web.json_response(entry.record)

    async def cancel(self, request: web.Request) -> web.Response:
        call_id = request.match_info.get("call_id") or request.match_info["name"]
        if (bad := self._check_id(call_id)) is not None:
            return bad
        assert self.nc is not None
        for _ in range(5):
            entry = await self._lookup(call_id)
            if isinstance(entry, web.Response):
                return entry
            state = entry.record.get("state")
            if state in callstatus.FINAL:
                return problem(409, f"call {call_id!r} already {state}")
            if state == "running":
                # The worker running it aborts the HTTP call, then records `cancelled` itself.
                await self.nc.publish(contract.CANCEL_SUBJECT, call_id.encode())
                return web.json_response({"call_id": call_id, "state": "cancelling"}, status=202)
            rec = {**entry.record, "state": "cancelled", "updated_at": callstatus.now()}
            rec["finished_at"] = rec["updated_at"]
            try:
                await self.status.update(call_id, rec, entry.revision)
            except KeyWrongLastSequenceError:
                continue  # the worker moved it on meanwhile: look again
            return web.json_response({"call_id": call_id, "state": "cancelled"}, status=202)
        return problem(409, f"call {call_id!r} is changing state too fast to cancel; retry")


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
