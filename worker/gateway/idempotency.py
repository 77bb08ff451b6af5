"""Idempotency keys (`Idempotency-Key`, the IETF httpapi draft): a submission repeated with the same key within its
queue's idempotency window (queues.yaml `idempotencyWindow`, 24h by default) answers the first call's id and status
and enqueues nothing, across gateway replicas and restarts. JetStream's own Nats-Msg-Id dedup (the call id) holds
only for the stream's duplicate window (2 minutes); this holds for the window.

One record per key in the queue's bucket `jetqueue-idempotency-<queue>` (TTL: the window), keyed by a hash of the
function and the key, holding the call id and start time the key stands for, a fingerprint of the request, and
whether the call is known stored:

1. The first submission *creates* the record, `pending` (a KV create: of two gateways racing, one wins; the other
   is a repeat). Only then is the call published (Nats-Msg-Id = its call id), and on its PubAck the record is
   marked `stored` (compare-and-set) before the 202. A publish refused for sure (no stream, queue full, too large)
   deletes the record: nothing stands for a call not stored. No answer at all leaves it `pending`.
2. A repeat finds the record: another request under the key (a different fingerprint) is refused 422; a `stored`
   one is answered 202 with the first call's id, start time and status, no publish.
3. A `pending` one means its gateway is publishing right now, died before its PubAck, or died after it before
   marking. Within `REPUBLISH_WITHIN` of the record (inside the stream's duplicate window) the repeat publishes the
   same call again under the same call id: the server drops it if the first was stored, stores it if not; either
   way the call is stored once, and the record is marked. Later than that the stream no longer remembers the id:
   the call's status records tell (the gateway's submission record follows every PubAck). Found: it was stored
   (marked now). None: the first gateway died before its PubAck, so the repeat takes the record over
   (compare-and-set) and publishes the call itself.

What is left: a gateway that dies between a PubAck and its next write (the submission record, then the mark),
followed by no repeat for `REPUBLISH_WITHIN` and a call not yet run by the time a repeat comes, would be stored twice
by that repeat. That needs a crash inside one event-loop step and a queue backed up for minutes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from jetqueue import contract, provision
from jetqueue.contract import jetstream
from jetqueue.gateway.auth import problem

log = logging.getLogger("jetqueue.gateway")
HEADER = "Idempotency-Key"
MAX_KEY = 255
REPLAYED = "Idempotent-Replayed"
PENDING, STORED = "pending", "stored"
REPUBLISH_WITHIN = jetstream.DUPLICATE_WINDOW - 30.0  # a publish up to publish_timeout late still lands inside
TAKE_OVER_TRIES = 3
Store = Callable[[contract.Call], Awaitable[web.Response]]
Lookup = Callable[[str], Awaitable[dict[str, Any] | None]]


class BadKey(ValueError):
    pass


def parse(value: str) -> str:
    """The key of an `Idempotency-Key` header: a structured-field string (`"..."`, as the draft says) or, as many
    clients send it, the bare value; 1-255 printable ASCII characters."""
    key = value.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        inner = key[1:-1]
        if '"' in inner.replace('\\"', "").replace("\\\\", ""):
            raise BadKey(f"{HEADER}: not a structured-field string")
        key = inner.replace('\\"', '"').replace("\\\\", "\\")
    if not 1 <= len(key) <= MAX_KEY or not all(" " <= ch <= "~" for ch in key):
        raise BadKey(f"{HEADER} must be 1-{MAX_KEY} printable ASCII characters")
    return key


def record_key(function: str, key: str) -> str:
    """The bucket key of an idempotency key: scoped to the function, hashed into the bucket's alphabet."""
    return hashlib.sha256(f"{function}\n{key}".encode()).hexdigest()[:48]


def fingerprint(call: contract.Call) -> str:
    """What makes a repeat the same request: method, path, query and body (headers vary between tries)."""
    h = hashlib.sha256()
    for part in (call.method, call.path, call.query):
        h.update(part.encode() + b"\0")
    h.update(call.body)
    return h.hexdigest()[:32]


class IdempotencyKeys:
    def __init__(self, js: Callable[[], JetStreamContext | None], window: Callable[[str], tuple[float, int, str]]):
        self._js = js
        self._window = window  # queue -> (window, replicas, storage)
        self._buckets: dict[str, KeyValue] = {}

    async def bucket(self, queue: str) -> KeyValue:
        kv = self._buckets.get(queue)
        if kv is not None:
            return kv
        js = self._js()
        if js is None:
            raise ConnectionError("not connected to NATS")
        window, replicas, storage = self._window(queue)
        config = jetstream.idempotency_bucket(queue, window, replicas, storage)
        kv = await provision.ensure_bucket(js, config)
        stream = contract.kv_stream_name(config.bucket)
        info = await js.stream_info(stream)
        if abs((info.config.max_age or 0) - window) > 1:  # the window changed in queues.yaml: the TTL follows
            info.config.max_age = window
            await js.update_stream(info.config)
            log.info("idempotency window of queue %s set to %gs", queue, window)
        self._buckets[queue] = kv
        return kv

    async def submit(self, call: contract.Call, key: str, store: Store, lookup: Lookup) -> web.Response:
        try:
            kv = await self.bucket(call.queue)
        except Exception:
            self._buckets.pop(call.queue, None)
            return _unavailable()
        rkey, print_ = record_key(call.function, key), fingerprint(call)
        mine = {"call_id": call.call_id, "start": call.start_time_ns, "fingerprint": print_, "at": time.time()}
        for _ in range(TAKE_OVER_TRIES):
            try:
                revision = await kv.create(rkey, _encode(mine, PENDING))
            except KeyWrongLastSequenceError:
                pass  # a repeat
            except Exception:
                return _unavailable()
            else:
                return await self._publish(kv, rkey, revision, mine, call, store)
            try:
                found = await kv.get(rkey)
            except NotFoundError:
                continue  # expired or deleted in between: create again
            except Exception:
                return _unavailable()
            rec = json.loads(found.value or b"{}")
            if rec.get("fingerprint") != print_:
                return problem(422, f"{HEADER} {key!r} was used for a different request to {call.function!r}")
            first = _as(call, rec)
            if rec.get("state") == STORED:
                return await _replay(first, lookup)
            if time.time() - float(rec.get("at", 0)) < REPUBLISH_WITHIN:
                return await self._publish(kv, rkey, int(found.revision or 0), rec, first, store, replay=True)
            try:
                seen = await lookup(first.call_id)
            except Exception:
                return _unavailable()
            if seen is not None:  # its status records say it was stored
                await _mark(kv, rkey, int(found.revision or 0), rec)
                return await _replay(first, lookup)
            took = {**rec, "at": time.time()}  # its gateway died before the PubAck: publish it here
            try:
                revision = await kv.update(rkey, _encode(took, PENDING), last=found.revision)
            except KeyWrongLastSequenceError:
                continue  # another repeat took it over first: look again
            except Exception:
                return _unavailable()
            return await self._publish(kv, rkey, revision, took, first, store)
        return problem(409, f"{HEADER} {key!r} is being used by requests right now; retry", **{"Retry-After": "1"})

    async def _publish(
        self,
        kv: KeyValue,
        rkey: str,
        revision: int,
        rec: dict[str, Any],
        call: contract.Call,
        store: Store,
        replay: bool = False,
    ) -> web.Response:
        answer = await store(call)
        if answer.status == 202:
            await _mark(kv, rkey, revision, rec)
            if replay:
                answer.headers[REPLAYED] = "true"
        elif "X-Call-Id" not in answer.headers and not replay:  # refused for sure: nothing stands for it
            try:
                await kv.delete(rkey, last=revision)
            except Exception as e:  # expires with the window; a repeat meanwhile publishes it again
                log.warning("idempotency record not removed: %r", e)
        return answer


def _encode(rec: dict[str, Any], state: str) -> bytes:
    return json.dumps({**rec, "state": state}).encode()


async def _mark(kv: KeyValue, rkey: str, revision: int, rec: dict[str, Any]) -> None:
    """Mark the record stored; a repeat finding it pending meanwhile publishes again (deduped), so a failure here
    is not the caller's."""
    try:
        await kv.update(rkey, _encode(rec, STORED), last=revision)
    except KeyWrongLastSequenceError:
        # Marked (or taken over) by another repeat first; or deleted by a first publish refused meanwhile while this
        # one, a repeat, stored the call: then the key must stand for it again.
        with contextlib.suppress(Exception):
            await kv.create(rkey, _encode(rec, STORED))
    except Exception as e:
        log.warning("idempotency record not marked stored: %r", e, extra={"call_id": rec.get("call_id")})


def _as(call: contract.Call, rec: dict[str, Any]) -> contract.Call:
    """The call as the key's first submission made it: its call id and start time."""
    call.call_id, call.start_time_ns = str(rec["call_id"]), int(rec["start"])
    return call


async def _replay(call: contract.Call, lookup: Lookup) -> web.Response:
    """The first call's answer: its id and start time, as its 202 said, and its status now."""
    try:
        status = await lookup(call.call_id)
    except Exception:  # NATS failing now: the id is what the caller needs
        status = None
    body = status or {"call_id": call.call_id}  # status switched off, or NATS failing now
    headers = {
        "X-Call-Id": call.call_id,
        "X-Start-Time": str(call.start_time_ns),
        "X-Queue": call.queue,
        "X-Duplicate": "true",
        REPLAYED: "true",
    }
    return web.json_response(body, status=202, headers=headers)


def _unavailable() -> web.Response:
    return problem(503, "NATS is unavailable; nothing was stored, retry later", **{"Retry-After": "5"})
