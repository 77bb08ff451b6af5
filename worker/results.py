"""Call results: the function's answer (status, headers, body), kept with the call's final status record for the
status TTL (`GET /async-calls/{id}/result`, `jetqueue result ID`).

Where it is: in the final status record itself, under `result` (callstatus.py; found from the id alone like the
status: statuslookup.py), so keeping a small answer costs no write beyond the record the worker writes anyway. A
body over `INLINE` bytes goes to the queue's object store `jetqueue-results-<queue>` (one object per call, named
`contract.result_object_name`, same TTL) and the record names the object: a key-value record stays small, and
nothing near max_payload is ever written to a status bucket. A body over the worker's `resultMaxBytes` is cut
there and marked (`truncated`, and `size`: what the function sent). The object is written before the record that
names it, so a record never points at an object not stored; a failed object write leaves a record saying so
(`lost`), never a stalled call.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Mapping
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import ObjectStoreConfig
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.object_store import ObjectStore

from jetqueue import contract
from jetqueue.contract import jetstream

log = logging.getLogger("jetqueue.results")
INLINE = 4096  # bytes of body kept in the status record itself; larger ones go to the object store
HEADERS_MAX = 8192  # bytes of the function's response headers kept (the rest dropped, and marked)
PUT_TIMEOUT = 10.0
# Response headers that describe the HTTP hop, not the answer.
_HOP = frozenset(
    h.lower()
    for h in ("Connection", "Keep-Alive", "Transfer-Encoding", "TE", "Trailer", "Upgrade", "Content-Length", "Date")
)
Result = dict[str, Any]


def kept_headers(headers: Mapping[str, str]) -> tuple[dict[str, str], bool]:
    """The function's response headers worth keeping, at most HEADERS_MAX bytes (True: some were dropped)."""
    out: dict[str, str] = {}
    size, dropped = 0, False
    for k, v in headers.items():
        if k.lower() in _HOP:
            continue
        size += len(k) + len(v) + 4
        if size > HEADERS_MAX:
            dropped = True
            break
        out[k] = f"{out[k]}, {v}" if k in out else v
    return out, dropped


class ResultBodies:
    """A queue's object store of large result bodies, opened (created, with `config`) on first use and again after a
    failure. `config=None`: only opened, never created (the gateway's reads)."""

    def __init__(self, js: JetStreamContext, bucket: str, config: ObjectStoreConfig | None = None) -> None:
        self.js = js
        self.bucket = bucket
        self.config = config
        self._obs: ObjectStore | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def of(cls, js: JetStreamContext, queue: str, ttl: float, replicas: int, storage: str) -> ResultBodies:
        config = jetstream.result_bucket(queue, ttl, replicas, storage)
        return cls(js, contract.result_bucket_name(queue), config)

    async def _open(self) -> ObjectStore:
        if self._obs is not None:
            return self._obs
        async with self._lock:
            if self._obs is None:
                try:
                    self._obs = await self.js.object_store(self.bucket)
                except BucketNotFoundError:
                    if self.config is None:
                        raise
                    try:
                        self._obs = await self.js.create_object_store(self.bucket, self.config)
                        log.info("created the object store %s", self.bucket)
                    except Exception:  # another worker created it first
                        self._obs = await self.js.object_store(self.bucket)
            return self._obs

    async def put(self, name: str, body: bytes) -> None:
        obs = await self._open()
        try:
            await obs.put(name, body)
        except Exception:
            self._obs = None  # maybe deleted: opened (created) again next time
            raise

    async def get(self, name: str) -> bytes | None:
        """The body, or None when the object is gone (expired, or its bucket deleted)."""
        try:
            obs = await self._open()
            return bytes((await obs.get(name)).data or b"")
        except (NotFoundError, BucketNotFoundError):
            self._obs = None
            return None


async def make(
    call: contract.Call,
    status: int | None,
    body: bytes,
    headers: Mapping[str, str],
    limit: int,
    bodies: ResultBodies | None,
) -> Result | None:
    """The `result` of a call's final status record: None when results are off (`limit` 0) or the function never
    answered (refused, timed out, cancelled). A large body is stored in `bodies` first."""
    if status is None or limit <= 0:
        return None
    kept, dropped = kept_headers(headers)
    cut = body[:limit]
    result: Result = {"status": status, "headers": kept, "size": len(body), "truncated": len(body) > limit}
    if dropped:
        result["headers_truncated"] = True
    if len(cut) <= INLINE or bodies is None:
        result["body"] = base64.b64encode(cut[:INLINE]).decode()
        if len(cut) > INLINE:  # no object store to put it in: kept cut at INLINE
            result["truncated"] = True
        return result
    name = contract.result_object_name(call.call_id, call.start_time_ns)
    try:
        await asyncio.wait_for(bodies.put(name, cut), PUT_TIMEOUT)
        result["object"] = name
    except Exception as e:  # a report, never worth stalling the call for
        log.warning("result body not stored: %r", e, extra={"call_id": call.call_id})
        result["lost"] = f"the body ({len(cut)} bytes) could not be stored: {type(e).__name__}"
    return result


async def body_of(result: Result, bodies: ResultBodies | None) -> bytes | None:
    """A result's body: inline, or read from its object (None: the object is gone)."""
    if "object" in result:
        return None if bodies is None else await bodies.get(str(result["object"]))
    return base64.b64decode(result.get("body") or "")


def summary(record: Mapping[str, Any]) -> dict[str, Any]:
    """A status record as `GET /async-calls/{id}` shows it: the result's facts, not its body."""
    result = record.get("result")
    if not isinstance(result, dict):
        return dict(record)
    return {**record, "result": {k: v for k, v in result.items() if k not in ("body", "object")}}
