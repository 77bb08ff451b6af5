"""Call status in JetStream key-value buckets of the call's queue (`jetqueue-calls-<queue>`, and one more per
partition: `QueueStatus`, a call's bucket chosen by its id), with a TTL. Two keys per call:

- the call's record, under its id: written by the workers running it (queueworker/statuswriter.py) and by a
  cancel, each write a compare-and-set;
- its submission record (`contract.submission_key`): the gateway's `queued` or `scheduled`, written once per
  accepted call and by nobody else, so a plain put. Apart, a worker's first write for a call is a create
  (one round trip), not a read of the gateway's record and a compare-and-set against it (two).

A reader shows the call's record, or the submission record while the call has none yet (or has only an earlier
call's under the same id: `start` tells). The states are `contract.CallState`. Status is observability: a
failing write is logged, never allowed to stop a call. Finding a call's records from its id alone, across queues,
buckets of an earlier partition count and the bucket of before partitions: statuslookup.py.
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
from nats.js.errors import BucketNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from jetqueue import contract, keyvalue, provision, tags
from jetqueue.contract import CallState, jetstream

log = logging.getLogger("jetqueue.status")
Record = dict[str, Any]


def now() -> float:
    return round(time.time(), 3)


@dataclass
class Entry:
    record: Record  # what the call's status is: its own record, or its submission record
    revision: int  # of the call's own record (0: none yet): what a compare-and-set on it is made against
    store: StatusStore | None = None  # the bucket that compare-and-set goes to (the record's, or the call's own)


class StatusStore:
    """One call-status bucket, opened (and created) on first use and again whenever it is found missing:
    deleted by hand, or lost with a dev NATS's memory store. `create=False`: only opened, never created (a bucket
    looked in for records written before: statuslookup.py). `StatusStore.off()` when status is switched off."""

    def __init__(self, js: JetStreamContext | None, config: KeyValueConfig | None, create: bool = True) -> None:
        self.js = js
        self.config = config
        self.create = create
        self.kv: KeyValue | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def off(cls) -> StatusStore:
        return cls(None, None)

    @property
    def enabled(self) -> bool:
        return self.config is not None

    @property
    def name(self) -> str:
        return self.config.bucket if self.config is not None else ""

    async def bucket(self) -> KeyValue | None:
        """The open bucket; None when switched off, missing (`create=False`) or NATS cannot open it now."""
        if self.kv is not None or self.js is None or self.config is None:
            return self.kv
        async with self._lock:
            if self.kv is None:
                try:
                    if self.create:
                        self.kv = await provision.ensure_bucket(self.js, self.config)
                    else:
                        self.kv = await self.js.key_value(self.config.bucket)
                except BucketNotFoundError:
                    pass
                except Exception as e:
                    log.warning("cannot open the call-status bucket %s: %r", self.name, e)
        return self.kv

    def _failed(self, kv: KeyValue) -> None:
        """An operation failed in a way other than a missing key or a lost race: maybe the bucket is gone.
        The next operation opens it again (creating it if it is missing), so status heals by itself."""
        if self.kv is kv:
            self.kv = None

    async def get(self, call_id: str) -> Entry | None:
        """The call's status: its own record, or its submission record where that is newer (the call has not
        written one yet, or the one there is an earlier call's under the same id)."""
        kv = await self.bucket()
        if kv is None:
            if self.enabled:
                raise ConnectionError("the call-status bucket is unavailable")
            return None
        own, submitted = await asyncio.gather(self._read(kv, call_id), self._read(kv, contract.submission_key(call_id)))
        if submitted is not None and (own is None or submitted[0].get("start", 0) > own[0].get("start", 0)):
            return Entry(submitted[0], own[1] if own else 0, self)
        return Entry(own[0], own[1], self) if own else None

    async def _read(self, kv: KeyValue, key: str) -> tuple[Record, int] | None:
        assert self.js is not None
        try:
            found = await keyvalue.latest(self.js, self.name, key)
        except Exception:
            self._failed(kv)
            raise
        return (json.loads(found[0]), found[1]) if found else None

    async def update(self, call_id: str, record: Record, last: int | None) -> int | None:
        """Compare-and-set; raises KeyWrongLastSequenceError when someone wrote in between. None when off."""
        if not self.enabled:
            return None
        return await self.write(call_id, json.dumps(record).encode(), last)

    async def submitted(self, nc: Client, record: Record) -> None:
        """Put a call's submission record without waiting for the server's answer: a plain publish on the
        bucket's subject, no reply inbox, no round trip; lost if the connection is (the worker's records follow)."""
        if not self.enabled:
            return
        subject = contract.kv_subject(self.name, contract.submission_key(record["call_id"]))
        with contextlib.suppress(Exception):
            await nc.publish(subject, json.dumps(record).encode())

    async def submitted_confirmed(self, record: Record) -> None:
        """Put a call's submission record and wait until it is stored."""
        kv = await self.bucket()
        if kv is None:
            raise ConnectionError("the call-status bucket is unavailable")
        try:
            await kv.put(contract.submission_key(record["call_id"]), json.dumps(record).encode())
        except Exception:
            self._failed(kv)
            raise

    async def index(self, keys: list[str], value: bytes) -> None:
        """Put index keys (tags.py), all at once, and wait until each is stored."""
        kv = await self.bucket()
        if kv is None:
            raise ConnectionError("the call-status bucket is unavailable")
        try:
            await asyncio.gather(*(kv.put(k, value) for k in keys))
        except Exception:
            self._failed(kv)
            raise

    async def indexed(self, pattern: str) -> list[str]:
        """The keys matching `pattern` (a filter such as `contract.tag_keys`), as the server lists them."""
        kv = await self.bucket()
        if kv is None:
            return []
        watcher = await kv.watch(pattern, ignore_deletes=True, meta_only=True)
        keys: list[str] = []
        try:
            async for entry in watcher:
                if entry is None:
                    break
                if entry.operation is None:
                    keys.append(entry.key)
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]
        return keys

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


class QueueStatus:
    """A queue's call-status buckets: one per partition of the queue, a call's chosen by its id
    (`contract.status_shard`), so a queue of many partitions has no one bucket leader as its ceiling either."""

    def __init__(self, stores: list[StatusStore]) -> None:
        self.stores = stores

    @classmethod
    def of(
        cls, js: JetStreamContext, queue: str, shards: int, ttl: float, replicas: int = 1, storage: str = "file"
    ) -> QueueStatus:
        return cls([StatusStore(js, jetstream.status_bucket(queue, ttl, replicas, storage, k)) for k in range(shards)])

    @classmethod
    def off(cls) -> QueueStatus:
        return cls([StatusStore.off()])

    @property
    def enabled(self) -> bool:
        return self.stores[0].enabled

    @property
    def js(self) -> JetStreamContext | None:
        return self.stores[0].js

    def store(self, call_id: str) -> StatusStore:
        """The bucket that holds (or is to hold) the records of `call_id`."""
        return self.stores[contract.status_shard(call_id, len(self.stores))]

    async def open(self) -> None:
        """Open (creating) every bucket now if NATS lets us; otherwise each on first use."""
        await asyncio.gather(*(s.bucket() for s in self.stores))


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
    if call.headers and (found := tags.of_headers(call.headers)):
        rec["tags"] = found
    rec.update(fields)
    if state.final:
        rec["finished_at"] = rec["updated_at"]
    return rec
