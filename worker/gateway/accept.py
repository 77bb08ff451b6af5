"""Where the 202 is decided: a submission is checked (name, route, call id, callback URL), stored in
JetStream, and answered 202 only once JetStream acknowledged it (PubAck). Anything else gets a 4xx
with the reason, or 503 with Retry-After when the call could not be stored."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Protocol

from aiohttp import web
from multidict import CIMultiDictProxy
from nats.js.errors import APIError, NoStreamResponseError
from prometheus_client import CollectorRegistry

from jetqueue import callstatus, contract, results, tags
from jetqueue.contract import CallState, jetstream
from jetqueue.egress import Egress
from jetqueue.gateway import idempotency
from jetqueue.gateway.auth import problem
from jetqueue.gateway.backend import Backend, PubAcks
from jetqueue.gateway.idempotency import IdempotencyKeys
from jetqueue.gateway.metrics import GatewayMetrics
from jetqueue.gateway.records import SubmissionRecords
from jetqueue.gateway.routing import Routing
from jetqueue.gateway.scheduling import NOT_BEFORE, BadSchedule, not_before
from jetqueue.settings import GatewaySettings

log = logging.getLogger("jetqueue.gateway")
RETRY_AFTER = "5"
MAX_FUNCTION_NAME = 253  # a DNS-1123 subdomain
PREFIX = "/async-function/"
FAILURE_CALLBACK = "X-Failure-Callback-Url"  # called only when the call ends failed (QStash's Upstash-Failure-Callback)
# Room kept in every stored call for the metadata a dead letter adds (deadletter.py fits it in this).
DEAD_LETTER_ROOM = 1024
STORED_OVERHEAD = 64  # what JetStream adds to a stored message's size beyond subject, headers and body (bound)
MAX_RECENT = 10_000  # records of calls just accepted, kept in memory (`recent`)
RECENT_FOR = 10.0


class Submitted(Protocol):
    """What a submission is read from: an HTTP request, or one call of a batch (batch.py)."""

    @property
    def headers(self) -> CIMultiDictProxy[str]: ...

    @property
    def method(self) -> str: ...

    async def read(self) -> bytes: ...


class Accept:
    def __init__(self, s: GatewaySettings, routing: Routing, backend: Backend, registry: CollectorRegistry) -> None:
        self.s = s
        self.routing = routing
        self.backend = backend
        self.metrics = GatewayMetrics(registry, lambda: backend.reconnects)
        self.egress = Egress.parse(s.callback_hosts, s.callback_blocked_networks)
        self.records = SubmissionRecords(lambda: backend.nc)  # sent with the next call
        self._recent: OrderedDict[str, tuple[float, bytes]] = OrderedDict()  # encoded records
        self.idempotency = IdempotencyKeys(lambda: backend.js, self._idempotency_window)

    async def submit(self, request: web.Request) -> web.Response:
        """The submission routes' handler (server.py); most submissions come by the front door instead (front.py)."""
        url = request.rel_url
        return await self.submit_as(request, request.match_info["name"], url.raw_path, url.raw_query_string)

    async def submit_as(self, request: Submitted, name: str, raw_path: str, query: str) -> web.Response:
        """A submission to function `name` at `raw_path`?`query` (still percent-encoded, as the client sent them)."""
        if not contract.FUNCTION_NAME.match(name) or len(name) > MAX_FUNCTION_NAME:
            self.metrics.count("_invalid", "", 400, request.method)
            return problem(400, "function name must be a DNS-1123 name, optionally with .namespace")
        queue = self.routing.queue_for(name)
        if queue is None:
            self.metrics.count("_unrouted", "", 404, request.method)
            return problem(404, f"function {name!r} is not routed to any queue (strict routing)")
        given = request.headers.get("X-Call-Id")
        if given and not contract.CALL_ID.match(given):
            self.metrics.count(name, queue, 400, request.method)
            return problem(
                400, "X-Call-Id must be 1-128 characters of [A-Za-z0-9_=.-], starting with a letter or digit"
            )
        call_id = given or contract.new_call_id(queue)  # ours carry the queue's hint: status finds it by id alone
        key = request.headers.get(contract.PARTITION_KEY, "")
        if key and (reason := contract.partition_key_problem(key)):
            self.metrics.count(name, queue, 400, request.method)
            return problem(400, reason)
        ckey = request.headers.get(contract.CONCURRENCY_KEY, "")
        if ckey and (reason := contract.concurrency_key_problem(ckey)):
            self.metrics.count(name, queue, 400, request.method)
            return problem(400, reason)
        level = contract.Priority.NORMAL
        if (given_level := request.headers.get(contract.PRIORITY_HEADER)) is not None:
            if (reason := contract.priority_problem(given_level)) is not None:
                self.metrics.count(name, queue, 400, request.method)
                return problem(400, reason)
            level = contract.parse_priority(given_level) or level
            info = self.routing.queues.get(queue)
            if level is not contract.Priority.NORMAL and not (info and info.priorities):
                self.metrics.count(name, queue, 400, request.method)
                return problem(400, f"queue {queue!r} has no priorities (queues.yaml: priorities: true)")
        callback = request.headers.get("X-Callback-Url", "")
        if callback and (reason := self.egress.url_problem(callback)):
            self.metrics.count(name, queue, 400, request.method)
            return problem(400, reason)
        failure_callback = request.headers.get(FAILURE_CALLBACK, "")
        if failure_callback and (reason := self.egress.url_problem(failure_callback, FAILURE_CALLBACK)):
            self.metrics.count(name, queue, 400, request.method)
            return problem(400, reason)
        # The path as the client sent it (still percent-encoded): what the worker will send on, unchanged.
        own = PREFIX + name
        if not raw_path.startswith(own):
            self.metrics.count(name, queue, 400, request.method)
            return problem(400, "the function name in the path must not be percent-encoded")
        path = raw_path[len(own) :]
        if (path or query) and (reason := contract.path_problem(path) or contract.query_problem(query)) is not None:
            self.metrics.count(name, queue, 400, request.method)
            return problem(400, reason)
        try:
            when = not_before(request.headers, time.time(), self.s.max_delay)
        except BadSchedule as e:
            self.metrics.count(name, queue, 400, request.method)
            return problem(400, str(e))
        body = await request.read()
        headers = contract.forwardable(request.headers)
        if self.s.auth_token or self.s.auth_user:  # the credential was for the gateway, not the function
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        # The value as forwarded (repeated headers folded into one): what the status records and index will read.
        if (tagged := next((v for k, v in headers.items() if k.lower() == tags.HEADER.lower()), None)) is not None:
            try:
                tags.parse(tagged)
            except tags.BadTags as e:
                self.metrics.count(name, queue, 400, request.method)
                return problem(400, str(e))
        idem = request.headers.get(idempotency.HEADER)
        try:
            idem_key = idempotency.parse(idem) if idem is not None else ""
        except idempotency.BadKey as e:
            self.metrics.count(name, queue, 400, request.method)
            return problem(400, str(e))
        call = contract.Call(
            call_id=call_id,
            queue=queue,
            function=name,
            body=body,
            method=request.method,
            path=path,
            query=query,
            callback_url=callback,
            failure_callback_url=failure_callback,
            headers=headers,
            not_before=when,
            partition_key=key,
            concurrency_key=ckey,
            priority=level,
        )
        if idem_key:  # the first call's answer to a repeat, across gateways (idempotency.py)
            return await self.idempotency.submit(call, idem_key, self._store, self._status_of)
        return await self._store(call)

    async def _status_of(self, call_id: str) -> callstatus.Record | None:
        """A call's status as GET /async-calls/{id} shows it (None: no record); raises when NATS fails."""
        record = self.recent(call_id)
        if record is not None:
            return record
        if not self.backend.status_enabled:
            return None
        if self.backend.lookup is None:
            raise ConnectionError("not connected to NATS")
        entry = await self.backend.lookup.get(call_id)
        return results.summary(entry.record) if entry is not None else None

    def _idempotency_window(self, queue: str) -> tuple[float, int, str]:
        info = self.routing.queues.get(queue)
        if info is None:
            return self.s.idempotency_window, self.s.stream_replicas, self.s.stream_storage
        return info.idempotency_window, info.replicas, info.storage

    def _too_large(self, body: int, header_map: dict[str, str]) -> web.Response | None:
        """413 when body + headers (+ room for a dead letter's metadata) exceed the server's max_payload:
        nats-server would close the connection instead of refusing the one message."""
        limit = self.backend.max_payload
        # A bound first (4 bytes per character, 8 per header line): the exact count only when it might matter.
        bound = sum(len(k) + len(v) for k, v in header_map.items()) * 4 + 8 * len(header_map) + 16
        if body + bound + DEAD_LETTER_ROOM <= limit:
            return None
        headers = contract.header_size(header_map)
        if body + headers + DEAD_LETTER_ROOM <= limit:
            return None
        largest = max(0, limit - headers - DEAD_LETTER_ROOM)
        return problem(
            413,
            f"request too large: a {body}-byte body with {headers} bytes of headers does not fit the NATS "
            f"server's max_payload of {limit} bytes ({DEAD_LETTER_ROOM} kept for dead-letter metadata); "
            f"the largest body with these headers is {largest} bytes",
        )

    def _over_queue_bytes(self, call: contract.Call, headers: dict[str, str], subject: str) -> web.Response | None:
        """413 for a call larger than its partition's share of the queue's maxQueueBytes: the stream would refuse
        it every time (a 503 "queue full" that no retry cures), and a scheduled one would wait for ever to be
        moved in."""
        info = self.routing.queues.get(call.queue)
        if info is None or not info.max_bytes:
            return None
        size = len(call.body) + contract.header_size(headers) + len(subject) + STORED_OVERHEAD
        limit = jetstream.partition_limit(info.max_bytes, info.partitions)
        if size <= limit:
            return None
        share = f" (its share of {info.max_bytes} among {info.partitions} partitions)" if info.partitions > 1 else ""
        return problem(
            413, f"request too large for queue {call.queue!r}: about {size} bytes stored; maxQueueBytes {limit}{share}"
        )

    async def _store(self, call: contract.Call) -> web.Response:
        b, name, queue = self.backend, call.function, call.queue
        partition = contract.choose_partition(name, b.partitions(queue), call.partition_key)
        subject, headers = contract.subject(queue, name, partition, call.priority), call.to_headers()
        stored_on = subject
        if call.not_before:  # held by the server until its time (OF_<queue>_SCHED), then moved into its partition
            subject, headers = contract.held_message(call, headers, call.not_before, call.call_id)
        too_large = self._too_large(len(call.body), headers) or self._over_queue_bytes(call, headers, stored_on)
        if too_large is not None:
            self.metrics.count(name, queue, 413, call.method)
            return too_large
        # The set looked up here first: ensure_queue is a coroutine, and the queue is nearly always ready.
        if b.acks is None or not b.connected or (queue not in b.ready_streams and not await b.ensure_queue(queue)):
            self.metrics.count(name, queue, 503, call.method)
            return problem(503, "NATS is unavailable; nothing was stored, retry later", **{"Retry-After": RETRY_AFTER})
        if self.records.held:  # the records of calls just accepted go out in this call's write
            await self.records.send()
        if b.status_enabled and (call_tags := tags.of_headers(call.headers)):
            try:  # before the call: a tagged call the index missed would escape a cancel by tag (tags.py)
                keys = [contract.tag_key(t, call.call_id) for t in call_tags]
                value = json.dumps({"start": call.start_time_ns}).encode()
                await b.queue_status(queue).store(call.call_id).index(keys, value)
            except Exception:
                self.metrics.count(name, queue, 503, call.method)
                return problem(503, "the call's tags could not be stored; nothing was stored, retry later")
        t0 = time.perf_counter()
        try:
            duplicate = await self._publish(b.acks, call, subject, headers, partition)
        except Exception as e:
            self.metrics.count(name, queue, 503, call.method)
            return self._not_accepted(call, e)
        self.metrics.observe(time.perf_counter() - t0)
        if not duplicate and b.status_enabled:
            await self._record_queued(call)
        self.metrics.count(name, queue, 202, call.method)
        answer = {"X-Call-Id": call.call_id, "X-Start-Time": str(call.start_time_ns), "X-Queue": queue}
        if call.not_before:
            answer[NOT_BEFORE] = datetime.fromtimestamp(math.ceil(call.not_before), UTC).isoformat()
        if duplicate:
            answer["X-Duplicate"] = "true"
        return web.Response(status=202, headers=answer)

    async def _record_queued(self, call: contract.Call) -> None:
        """Write the call's submission record, `queued` (or `scheduled`), under its own key (callstatus.py): sent
        with the next call on the same connection without waiting (records.py), costing no round trip (the
        worker's own records follow if it is lost). Until it can be read back, `recent()` answers for it, so a
        status or cancel request right after the 202 finds it."""
        store = self.backend.queue_status(call.queue).store(call.call_id)
        if call.not_before:  # rare, and followed by no worker's record for a while: written and confirmed
            record = callstatus.base_record(call, CallState.SCHEDULED)
            self._remember(call.call_id, json.dumps(record).encode())
            with contextlib.suppress(Exception):
                await store.submitted_confirmed(record)
            return
        encoded = callstatus.queued_record(call)
        self._remember(call.call_id, encoded)
        self.records.add(store, call.call_id, encoded)

    def _remember(self, call_id: str, record: bytes) -> None:
        self._recent[call_id] = (time.monotonic(), record)
        if len(self._recent) > MAX_RECENT:
            self._recent.popitem(last=False)

    def recent(self, call_id: str) -> callstatus.Record | None:
        """The record of a call accepted here RECENT_FOR seconds ago at most (its own may not be readable yet)."""
        found = self._recent.get(call_id)
        if found is None or time.monotonic() - found[0] > RECENT_FOR:
            return None
        record: callstatus.Record = json.loads(found[1])  # kept encoded: read back for a few calls only
        return record

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

    async def _publish(
        self, acks: PubAcks, call: contract.Call, subject: str, headers: dict[str, str], partition: int
    ) -> bool:
        """Publish and wait for the PubAck (True: a duplicate). A stream deleted underneath (`jetqueue reset`, a
        dev NATS restarted empty) answers no-responders: set it up again and publish once more."""
        try:
            return await acks.publish(subject, call.body, headers, self.s.publish_timeout)
        except NoStreamResponseError:
            if not await self.backend.stream_deleted(call.queue, partition):
                raise
            return await acks.publish(subject, call.body, headers, self.s.publish_timeout)
