"""Call status in a JetStream key-value bucket (`jetqueue-calls`), one key per call id, with a TTL.

The states are `contract.CallState`. Writes are compare-and-set where a cancel may race with them.
Status is observability: a failing write is logged, never allowed to stop a call.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from jetqueue import contract
from jetqueue.contract import CallState

log = logging.getLogger("jetqueue.status")
Record = dict[str, Any]


async def open_bucket(js: JetStreamContext, config: KeyValueConfig) -> KeyValue:
    """The call-status bucket, created if missing (config: `contract.jetstream.status_bucket`)."""
    try:
        return await js.key_value(contract.STATUS_BUCKET)
    except BucketNotFoundError:
        pass
    try:
        return await js.create_key_value(config)
    except Exception:  # another process created it first
        return await js.key_value(contract.STATUS_BUCKET)


def now() -> float:
    return round(time.time(), 3)


@dataclass
class Entry:
    record: Record
    revision: int


class StatusStore:
    def __init__(self, kv: KeyValue | None) -> None:
        self.kv = kv  # None: status tracking switched off

    async def get(self, call_id: str) -> Entry | None:
        if self.kv is None:
            return None
        try:
            e = await self.kv.get(call_id)
        except KeyNotFoundError:
            return None
        if not e.value:
            return None
        return Entry(json.loads(e.value), e.revision or 0)

    async def update(self, call_id: str, record: Record, last: int | None) -> int | None:
        """Compare-and-set; raises KeyWrongLastSequenceError when someone wrote in between."""
        if self.kv is None:
            return None
        if last is None:
            return int(await self.kv.create(call_id, json.dumps(record).encode()))
        return int(await self.kv.update(call_id, json.dumps(record).encode(), last=last))

    async def begin(self, call: contract.Call, attempt: int, max_attempts: int) -> tuple[Record | None, int | None]:
        """Mark a call running. Returns (record, revision); record['state'] == 'cancelled' means skip it."""
        if self.kv is None:
            return None, None
        for _ in range(3):
            try:
                entry = await self.get(call.call_id)
                if entry and entry.record.get("state") == CallState.CANCELLED:
                    return entry.record, entry.revision
                rec: Record = dict(entry.record) if entry else base_record(call)
                rec.update(state=CallState.RUNNING, attempt=attempt, max_attempts=max_attempts, updated_at=now())
                rec.setdefault("started_at", rec["updated_at"])
                rec.pop("next_try", None)
                rev = await self.update(call.call_id, rec, entry.revision if entry else None)
                return rec, rev
            except KeyWrongLastSequenceError:
                continue
            except Exception as e:
                log.warning("status read failed: %r", e, extra={"call_id": call.call_id})
                return None, None
        return None, None

    async def finish(self, call: contract.Call, rec: Record | None, **fields: Any) -> None:
        """Record a transition. Retried a few times: a NATS failover must not leave a call `running`."""
        if self.kv is None:
            return
        rec = {**(rec or base_record(call)), **fields, "updated_at": now()}
        if CallState(rec["state"]).final:
            rec["finished_at"] = rec["updated_at"]
        value = json.dumps(rec).encode()
        for pause in (0.2, 0.5, 1.0, 2.0, None):
            try:
                await self.kv.put(call.call_id, value)
                return
            except Exception as e:
                if pause is None:
                    log.warning("status write failed: %r", e, extra={"call_id": call.call_id})
                    return
                await asyncio.sleep(pause)


def base_record(call: contract.Call, state: CallState = CallState.QUEUED) -> Record:
    return {
        "call_id": call.call_id,
        "state": state,
        "function": call.function,
        "queue": call.queue,
        "submitted_at": round(call.start_time_ns / 1e9, 3),
        "updated_at": now(),
        "attempt": 0,
    }
