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
                    self.kv = await self._open(self.js, self.config)
                except Exception as e:
                    log.warning("cannot open the call-status bucket: %r", e)
        return self.kv

    @staticmethod
    async def _open(js: JetStreamContext, config: KeyValueConfig) -> KeyValue:
        try:
            return await js.key_value(contract.STATUS_BUCKET)
        except BucketNotFoundError:
            pass
        try:
            kv = await js.create_key_value(config)
            log.info("created the call-status bucket %s", contract.STATUS_BUCKET)
            return kv
        except Exception:  # another process created it first
            return await js.key_value(contract.STATUS_BUCKET)

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
        try:
            e = await kv.get(call_id)
        except KeyNotFoundError:
            return None
        except Exception:
            self._failed(kv)
            raise
        if not e.value:
            return None
        return Entry(json.loads(e.value), e.revision or 0)

    async def update(self, call_id: str, record: Record, last: int | None) -> int | None:
        """Compare-and-set; raises KeyWrongLastSequenceError when someone wrote in between."""
        kv = await self.bucket()
        if kv is None:
            if self.enabled:
                raise ConnectionError("the call-status bucket is unavailable")
            return None
        value = json.dumps(record).encode()
        try:
            if last is None:
                return int(await kv.create(call_id, value))
            return int(await kv.update(call_id, value, last=last))
        except KeyWrongLastSequenceError:
            raise
        except Exception:
            self._failed(kv)
            raise

    async def begin(
        self, call: contract.Call, attempt: int, max_attempts: int, seq: int | None
    ) -> tuple[Record | None, int | None]:
        """Mark the call stored at stream sequence `seq` running. Returns (record, revision); record['state'] ==
        'cancelled' means skip it. A record of another stored message with the same call id (a call sent again
        after the duplicate window) is a finished story: this call starts a new record. `seq` None: a call that
        waited for its time (moved between streams) continues whatever record its id has."""
        if not self.enabled:
            return None, None
        for _ in range(3):
            try:
                entry = await self.get(call.call_id)
                same = entry is not None and (seq is None or entry.record.get("seq") in (None, seq))
                if entry and same and entry.record.get("state") == CallState.CANCELLED:
                    return entry.record, entry.revision
                rec: Record = dict(entry.record) if entry and same else base_record(call, seq=seq)
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
        if not self.enabled:
            return
        rec = {**(rec or base_record(call)), **fields, "updated_at": now()}
        if CallState(rec["state"]).final:
            rec["finished_at"] = rec["updated_at"]
        value = json.dumps(rec).encode()
        for pause in (0.2, 0.5, 1.0, 2.0, None):
            kv = await self.bucket()
            try:
                if kv is None:
                    raise ConnectionError("the call-status bucket is unavailable")
                await kv.put(call.call_id, value)
                return
            except Exception as e:
                if kv is not None:
                    self._failed(kv)
                if pause is None:
                    log.warning("status write failed: %r", e, extra={"call_id": call.call_id})
                    return
                await asyncio.sleep(pause)


def base_record(call: contract.Call, state: CallState = CallState.QUEUED, seq: int | None = None) -> Record:
    """A new record; `seq`, the stream sequence of the stored message it describes, tells a cancel of this call
    from a later call sent under the same id."""
    rec: Record = {
        "call_id": call.call_id,
        "state": state,
        "function": call.function,
        "queue": call.queue,
        "submitted_at": round(call.start_time_ns / 1e9, 3),
        "updated_at": now(),
        "attempt": 0,
    }
    if seq is not None:
        rec["seq"] = seq
    return rec
