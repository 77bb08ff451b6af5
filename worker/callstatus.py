"""Call status in a JetStream key-value bucket (`jetqueue-calls`), one key per call id, with a TTL.

The states are `contract.CallState`. Every write is compare-and-set: the gateway's (a call's first record,
a cancel) here, the worker's in queueworker/statuswriter.py. Status is observability: a failing write is
logged, never allowed to stop a call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig
from nats.js.errors import KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from jetqueue import contract, provision
from jetqueue.contract import CallState

log = logging.getLogger("jetqueue.status")
Record = dict[str, Any]
STREAM_NOT_FOUND = 10059  # JetStream's error code (a missing key is 10037)
CREATE_ONLY = {"Nats-Expected-Last-Subject-Sequence": "0"}


def now() -> float:
    return round(time.time(), 3)


@dataclass
class Entry:
    record: Record
    revision: int


class StatusStore:
    """The call-status bucket, opened (and created) on first use and again whenever it is found missing:
    deleted by hand, or lost with a dev NATS's memory store. `StatusStore.off()` when status is switched off."""

    def __init__(self, js: JetStreamContext | None, config: KeyValueConfig | None) -> None:
        self.js = js
        self.config = config
        self.kv: KeyValue | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def off(cls) -> StatusStore:
        return cls(None, None)

    @property
    def enabled(self) -> bool:
        return self.config is not None

    async def bucket(self) -> KeyValue | None:
        """The open bucket; None when switched off or NATS cannot open or create it now."""
        if self.kv is not None or self.js is None or self.config is None:
            return self.kv
        async with self._lock:
            if self.kv is None:
                try:
                    self.kv = await provision.ensure_bucket(self.js, self.config)
                except Exception as e:
                    log.warning("cannot open the call-status bucket: %r", e)
        return self.kv

    def _failed(self, kv: KeyValue) -> None:
        """An operation failed in a way other than a missing key or a lost race: maybe the bucket is gone.
        The next operation opens it again (creating it if it is missing), so status heals by itself."""
        if self.kv is kv:
            self.kv = None

    async def get(self, call_id: str) -> Entry | None:
        kv = await self.bucket()
        if kv is None:
            if self.enabled:
                raise ConnectionError("the call-status bucket is unavailable")
            return None
        assert self.js is not None
        bucket = contract.STATUS_BUCKET
        try:  # from the stream's leader: a direct get may come from a replica a moment behind (no going back)
            m = await self.js.get_last_msg(contract.kv_stream_name(bucket), contract.kv_subject(bucket, call_id))
        except NotFoundError as e:
            if e.err_code != STREAM_NOT_FOUND:
                return None  # no record under this key
            self._failed(kv)
            raise
        except Exception:
            self._failed(kv)
            raise
        if not m.data or (m.headers and "KV-Operation" in m.headers):  # deleted or purged
            return None
        return Entry(json.loads(m.data), m.seq or 0)

    async def update(self, call_id: str, record: Record, last: int | None) -> int | None:
        """Compare-and-set; raises KeyWrongLastSequenceError when someone wrote in between. None when off."""
        if not self.enabled:
            return None
        return await self.write(call_id, json.dumps(record).encode(), last)

    async def create_unconfirmed(self, nc: Client, call_id: str, record: Record) -> None:
        """Create a record without waiting for the server's answer (create-only: an existing record stays). A
        plain publish on the bucket's subject: no reply inbox, no round trip; lost if the connection is."""
        if not self.enabled:
            return
        subject = contract.kv_subject(contract.STATUS_BUCKET, call_id)
        with contextlib.suppress(Exception):
            await nc.publish(subject, json.dumps(record).encode(), headers=CREATE_ONLY)

    async def write(self, call_id: str, value: bytes, last: int | None) -> int:
        """Compare-and-set of an encoded record: create when `last` is None. Raises KeyWrongLastSequenceError
        when someone wrote in between (the worker's statuswriter.py decides then)."""
        kv = await self.bucket()
        if kv is None:
            raise ConnectionError("the call-status bucket is unavailable")
        try:
            if last is None:
                return int(await kv.create(call_id, value))
            return int(await kv.update(call_id, value, last=last))
        except KeyWrongLastSequenceError:
            raise
        except Exception:
            self._failed(kv)
            raise


def base_record(call: contract.Call, state: CallState = CallState.QUEUED, **fields: Any) -> Record:
    """A record of `call`, whole: every writer builds it from the call, so nothing is read before a write.
    `start` (the call's X-Start-Time, ns) tells this call from a later one sent under the same id."""
    rec: Record = {
        "call_id": call.call_id,
        "state": state,
        "function": call.function,
        "queue": call.queue,
        "start": call.start_time_ns,
        "submitted_at": round(call.start_time_ns / 1e9, 3),
        "updated_at": now(),
        "attempt": 0,
    }
    if call.not_before:
        rec["not_before"] = round(call.not_before, 3)
    rec.update(fields)
    if state.final:
        rec["finished_at"] = rec["updated_at"]
    return rec
