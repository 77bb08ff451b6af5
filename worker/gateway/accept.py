"""Where the 202 is decided: a submission is checked (name, route, call id, callback URL), stored in
JetStream, and answered 202 only once JetStream acknowledged it (PubAck). Anything else gets a 4xx
with the reason, or 503 with Retry-After when the call could not be stored."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from datetime import UTC, datetime

from aiohttp import web
from nats.js.api import PubAck
from nats.js.errors import APIError, KeyWrongLastSequenceError, NoStreamResponseError
from prometheus_client import CollectorRegistry, Counter, Histogram

from jetqueue import callstatus, contract
from jetqueue.contract import CallState, jetstream
from jetqueue.egress import Egress
from jetqueue.gateway.auth import problem
from jetqueue.gateway.backend import Backend
from jetqueue.gateway.routing import Routing
from jetqueue.gateway.scheduling import NOT_BEFORE, BadSchedule, not_before
from jetqueue.settings import GatewaySettings

log = logging.getLogger("jetqueue.gateway")
RETRY_AFTER = "5"
MAX_FUNCTION_NAME = 253  # a DNS-1123 subdomain
PREFIX = "/async-function/"
# Room kept in every stored call for the metadata a dead letter adds (deadletter.py fits it in this).
DEAD_LETTER_ROOM = 1024
MAX_STATUS_WRITES = 1000
RECORD_WAIT = 5.0


class Accept:
    def __init__(self, s: GatewaySettings, routing: Routing, backend: Backend, registry: CollectorRegistry) -> None:
        self.s = s
        self.routing = routing
        self.backend = backend
        self.requests = Counter(
            "gateway_async_requests_total",
            "Async requests by outcome.",
            ["function_name", "queue_name", "code"],
            registry=registry,
        )
        self.publish_seconds = Histogram(
            "gateway_publish_seconds",
            "Time to store a call (publish to PubAck).",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
            registry=registry,
        )
        self.egress = Egress.parse(s.callback_hosts, s.callback_blocked_networks)
        self._status_writes: dict[str, asyncio.Task[None]] = {}  # call id -> its queued record being written

    def _count(self, function: str, queue: str, code: int) -> None:
        self.requests.labels(function, queue, str(code)).inc()

    async def submit(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if not contract.FUNCTION_NAME.match(name) or len(name) > MAX_FUNCTION_NAME:
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
        if callback and (reason := self.egress.url_problem(callback)):
            self._count(name, queue, 400)
            return problem(400, reason)
        # The path as the client sent it (still percent-encoded): what the worker will send on, unchanged.
        raw_path = request.rel_url.raw_path
        if not raw_path.startswith(PREFIX + name):
            self._count(name, queue, 400)
            return problem(400, "the function name in the path must not be percent-encoded")
        path, query = raw_path[len(PREFIX + name) :], request.rel_url.raw_query_string
        if (reason := contract.path_problem(path) or contract.query_problem(query)) is not None:
            self._count(name, queue, 400)
            return problem(400, reason)
        try:
            when = not_before(request.headers, time.time(), self.s.max_delay)
        except BadSchedule as e:
            self._count(name, queue, 400)
            return problem(400, str(e))
        body = await request.read()
        headers = contract.forwardable(request.headers)
        if self.s.auth_token or self.s.auth_user:  # the credential was for the gateway, not the function
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        call = contract.Call(
            call_id=call_id,
            queue=queue,
            function=name,
            body=body,
            method=request.method,
            path=path,
            query=query,
            callback_url=callback,
            headers=headers,
            not_before=when,
        )
        return await self._store(call)

    def _too_large(self, body: int, headers: int) -> web.Response | None:
        """413 when body + headers (+ room for a dead letter's metadata) exceed the server's max_payload:
        nats-server would close the connection instead of refusing the one message."""
        limit = self.backend.max_payload
        if body + headers + DEAD_LETTER_ROOM <= limit:
            return None
        largest = max(0, limit - headers - DEAD_LETTER_ROOM)
        return problem(
            413,
            f"request too large: a {body}-byte body with {headers} bytes of headers does not fit the NATS "
            f"server's max_payload of {limit} bytes ({DEAD_LETTER_ROOM} kept for dead-letter metadata); "
            f"the largest body with these headers is {largest} bytes",
        )

    async def _store(self, call: contract.Call) -> web.Response:
        b, name, queue = self.backend, call.function, call.queue
        retry = {"Retry-After": RETRY_AFTER}
        subject, headers = contract.subject(call.queue, call.function), call.to_headers()
        if call.not_before:  # held by the server until its time (OF_<queue>_SCHED), then moved into the queue
            subject, headers = contract.held_message(call, headers, call.not_before, call.call_id)
        if (too_large := self._too_large(len(call.body), contract.header_size(headers))) is not None:
            self._count(name, queue, 413)
            return too_large
        if b.js is None or not b.connected or not await b.ensure_queue(queue):
            self._count(name, queue, 503)
            return problem(503, "NATS is unavailable; nothing was stored, retry later", **retry)
        t0 = time.perf_counter()
        try:
            ack = await self._publish(call, subject, headers)
        except Exception as e:
            self._count(name, queue, 503)
            return self._not_accepted(call, e)
        self.publish_seconds.observe(time.perf_counter() - t0)
        if not ack.duplicate and b.status.enabled:
            self._record_queued(call, None if call.not_before else ack.seq)
        self._count(name, queue, 202)
        answer = {"X-Call-Id": call.call_id, "X-Start-Time": str(call.start_time_ns), "X-Queue": queue}
        if call.not_before:
            answer[NOT_BEFORE] = datetime.fromtimestamp(math.ceil(call.not_before), UTC).isoformat()
        if ack.duplicate:
            answer["X-Duplicate"] = "true"
        return web.Response(status=202, headers=answer)

    def _record_queued(self, call: contract.Call, seq: int | None) -> None:
        """Write the `queued` (or `scheduled`) record without holding the 202 (a status write waits for its own
        PubAck, seconds during a failover). Create-only: if the worker has begun already, its record stays.
        Bounded: past MAX_STATUS_WRITES in flight a record is skipped (status is observability; the call is stored)."""
        if len(self._status_writes) >= MAX_STATUS_WRITES:
            return
        task = asyncio.create_task(self._create_queued(call, seq))
        self._status_writes[call.call_id] = task
        task.add_done_callback(lambda _: self._status_writes.pop(call.call_id, None))

    async def _create_queued(self, call: contract.Call, seq: int | None) -> None:
        """`seq` None: a scheduled call, whose stored message changes streams; its record goes by its id."""
        status = self.backend.status
        if call.not_before:
            record = callstatus.base_record(call, CallState.SCHEDULED)
            record["not_before"] = round(call.not_before, 3)
        else:
            record = callstatus.base_record(call, seq=seq)
        with contextlib.suppress(Exception):
            try:
                await status.update(call.call_id, record, None)
            except KeyWrongLastSequenceError:  # a record exists: the worker's for this call, or an earlier call's
                entry = await status.get(call.call_id)
                same = seq is not None and entry is not None and entry.record.get("seq") == seq
                if entry is not None and not same and CallState(entry.record["state"]).final:
                    await status.update(call.call_id, record, entry.revision)  # a new call under an old id

    async def recorded(self, call_id: str) -> None:
        """Until the queued record of a call accepted here is written: a status or cancel request sent right
        after the 202 must find it (a few ms; bounded by the status store's own timeouts)."""
        task = self._status_writes.get(call_id)
        if task is not None:
            await asyncio.wait({task}, timeout=RECORD_WAIT)

    async def close(self) -> None:
        """Let the queued-record writes in flight finish."""
        await asyncio.gather(*self._status_writes.values(), return_exceptions=True)

    def _not_accepted(self, call: contract.Call, e: Exception) -> web.Response:
        """The 503 for a publish that got no PubAck, saying only what is known about the call."""
        retry = {"Retry-After": RETRY_AFTER}
        if isinstance(e, NoStreamResponseError):  # no stream answered (e.g. electing a leader): not stored
            return problem(503, "the queue's stream is unavailable; nothing was stored, retry later", **retry)
        if isinstance(e, APIError):  # JetStream answered, and refused it
            what = "queue full" if e.err_code == jetstream.QUEUE_FULL else "JetStream refused the call"
            return problem(503, f"{what} ({e.description}); nothing was stored, retry later", **retry)
        # No answer at all: the server may or may not have stored it. Retrying under the same call id within
        # the duplicate window is safe: a stored call is not stored twice.
        log.warning("publish failed: %r", e, extra={"call_id": call.call_id, "function": call.function})
        return problem(
            503,
            f"no acknowledgement from JetStream: the call may or may not be stored; retry with X-Call-Id: "
            f"{call.call_id} within {int(jetstream.DUPLICATE_WINDOW)}s and it runs at most once",
            **retry,
            **{"X-Call-Id": call.call_id},
        )

    async def _publish(self, call: contract.Call, subject: str, headers: dict[str, str]) -> PubAck:
        """Publish and wait for the PubAck. A stream deleted underneath (`jetqueue reset`, a dev NATS restarted
        empty) answers no-responders: set it up again and publish once more."""
        b = self.backend
        assert b.js is not None
        try:
            return await b.js.publish(subject, call.body, headers=headers, timeout=self.s.publish_timeout)
        except NoStreamResponseError:
            if not await b.stream_deleted(call.queue):
                raise
            return await b.js.publish(subject, call.body, headers=headers, timeout=self.s.publish_timeout)
