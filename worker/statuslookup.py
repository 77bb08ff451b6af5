"""Find a call's status from its id alone (`GET /async-calls/{id}`, a cancel, the chaos ledger).

Where the records of a call are: in one bucket of its queue, `contract.status_shard(call_id, partitions)` of the
queue's `partitions` status buckets (callstatus.QueueStatus). Which queue: an id made by jetqueue starts with its
queue's hint (contract/partitions.py), so the hinted queue's bucket is read first, two reads; a caller's own id
has none, so every routed queue's bucket is read at once (two reads each; docs/partitions.md).

What else is looked in, so no record is lost to a change:
- the queue's other status buckets, when the call's own bucket has no record of the call, or only the gateway's
  submission record: a bucket of an earlier partition count (records written before the queue's `partitions`
  changed, or by a worker still running with the old count). Which buckets exist is listed (one request) at most
  every `LIST_EVERY` seconds, so this costs reads only where such buckets exist;
- the bucket of before partitions, `jetqueue-calls` (every queue's), while it exists and holds records: an
  upgrade keeps every record readable until it expires (its TTL) or the bucket is deleted.

Where several buckets hold a record of the call, the latest call (`start`) wins, and of one call its own record
over the gateway's submission record.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig
from nats.js.errors import NotFoundError

from jetqueue import contract, partitioned
from jetqueue.callstatus import Entry, QueueStatus, StatusStore

LIST_EVERY = 60.0  # which status buckets exist beyond a queue's current count, listed this often
LEGACY_RECHECK = 60.0  # whether the bucket of before partitions still holds records, asked this often


def best(entries: list[Entry | None]) -> Entry | None:
    """The entry that tells the call's status: the latest call's, its own record over its submission record."""
    found = [e for e in entries if e is not None]
    if not found:
        return None
    return max(found, key=lambda e: (e.record.get("start", 0), e.revision > 0))


class StatusLookup:
    """A call's status across the routed queues (`queues`: each queue's status buckets as they are written now)."""

    def __init__(self, js: JetStreamContext, queues: dict[str, QueueStatus]) -> None:
        self.js = js
        self.queues = queues
        self.hinted: dict[str, list[str]] = defaultdict(list)
        for queue in sorted(queues):
            self.hinted[contract.queue_hint(queue)].append(queue)
        self._others: dict[str, StatusStore] = {}  # buckets beyond a queue's current count, opened when found
        self._streams: set[str] = set()  # every stream's name, as last listed
        self._listed = -LIST_EVERY
        self.legacy = StatusStore(js, KeyValueConfig(bucket=contract.LEGACY_STATUS_BUCKET), create=False)
        self._legacy_live = False
        self._legacy_checked = -LEGACY_RECHECK

    async def get(self, call_id: str) -> Entry | None:
        """The call's status entry, or None when no bucket has a record of it. Raises when NATS fails."""
        hinted = self.hinted.get(contract.hint_of(call_id), [])
        entry = await self._find(call_id, hinted or list(self.queues))
        if entry is None and hinted:  # a caller's own id that happens to look like one of ours
            entry = await self._find(call_id, [q for q in self.queues if q not in hinted])
        return entry

    async def _find(self, call_id: str, queues: list[str]) -> Entry | None:
        stores = [self.queues[q].store(call_id) for q in queues]
        if await self._legacy_holds_records():
            stores.append(self.legacy)
        entry = best(list(await asyncio.gather(*(self._read(s, call_id) for s in stores))))
        if entry is not None and entry.revision > 0:
            return entry
        others = [s for q in queues for s in await self._other_buckets(q, call_id)]
        return best([entry, *await asyncio.gather(*(self._read(s, call_id) for s in others))])

    async def _other_buckets(self, queue: str, call_id: str) -> list[StatusStore]:
        """The queue's status buckets other than the call's own: those of its current count, and those beyond it
        that exist."""
        status = self.queues[queue]
        own = status.store(call_id)
        out = [s for s in status.stores if s is not own]
        if time.monotonic() - self._listed >= LIST_EVERY:
            self._streams = set(await partitioned.stream_names(self.js))
            self._listed = time.monotonic()
        for shard in range(len(status.stores), contract.MAX_PARTITIONS):
            name = contract.status_bucket_name(queue, shard)
            if contract.kv_stream_name(name) in self._streams:
                if name not in self._others:
                    self._others[name] = StatusStore(self.js, KeyValueConfig(bucket=name), create=False)
                out.append(self._others[name])
        return out

    async def _read(self, store: StatusStore, call_id: str) -> Entry | None:
        if not store.create and await store.bucket() is None:  # removed since it was listed
            return None
        return await store.get(call_id)

    async def _legacy_holds_records(self) -> bool:
        now = time.monotonic()
        if now - self._legacy_checked >= LEGACY_RECHECK:
            self._legacy_checked = now
            try:
                info = await self.js.stream_info(contract.kv_stream_name(contract.LEGACY_STATUS_BUCKET))
                self._legacy_live = bool(info.state.messages)
            except NotFoundError:
                self._legacy_live = False
            except Exception:  # NATS failing now: the last answer stands, asked again at the next read
                self._legacy_checked = -LEGACY_RECHECK
        return self._legacy_live
