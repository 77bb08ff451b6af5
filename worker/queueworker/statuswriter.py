"""The worker's call-status writes, off the call's slot: a call never waits for its status record.

- Coalesced: one write per call at a time, and a newer record replaces one not written yet. A `running`
  record waits `RUNNING_GRACE` first, so a call that finishes sooner costs one write (its final record), not two.
- Compare-and-set: a record is written against the revision this worker last wrote for the call (one round
  trip). A call's first record from this worker is created (one round trip) unless one is known to exist
  (`read_first`: the gateway wrote `queued`, or an earlier attempt ran): then the stored one is read and
  replaced only if ours is further along (a later call under the same id, a later attempt, or final over not
  final): two round trips. A conflict means someone wrote in between: read again and decide again.
- Bounded: at most `limit` calls wait to be written. Past it a `running` or `retrying` record is dropped (they
  are reports; the next one replaces them) and a final record waits up to `FINAL_ROOM_WAIT` for room, then is
  dropped too (logged): a failing bucket slows no call by more than that.
- A final record is retried through a NATS failover; a failing write is logged, never allowed to stop a call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from nats.js.errors import KeyWrongLastSequenceError

from jetqueue.callstatus import Record, StatusStore
from jetqueue.contract import CallState

log = logging.getLogger("jetqueue.status")
RUNNING_GRACE = 0.25
WRITERS = 64
LIMIT = 10_000
FINAL_RETRY_WAITS = (0.2, 0.5, 1.0, 2.0)
CAS_TRIES = 3
FINAL_ROOM_WAIT = 1.0
MAX_REVISIONS = 100_000  # revisions remembered for calls still running here; cleared past this (then: create/read)


class StatusWriter:
    def __init__(self, store: StatusStore, limit: int = LIMIT, grace: float = RUNNING_GRACE) -> None:
        self.store = store
        self.limit = limit
        self.grace = grace
        self._pending: dict[str, Record] = {}  # call id -> the newest record not written yet
        self._ready: asyncio.Queue[str] = asyncio.Queue()  # call ids whose record may be written now
        self._writing: set[str] = set()  # one write per call at a time, so records land in order
        self._revisions: dict[str, int] = {}  # call id -> revision of this worker's last write
        self._read_first: set[str] = set()  # calls known to have a record already (read it before the first write)
        self._room = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.dropped = 0  # final records dropped because the backlog stayed full (the bucket failing)

    @property
    def enabled(self) -> bool:
        return self.store.enabled

    def start(self) -> None:
        if self.enabled and not self._tasks:
            self._tasks = [asyncio.create_task(self._writer(), name=f"status-{i}") for i in range(WRITERS)]

    def report(self, record: Record, read_first: bool = False) -> None:
        """A `running` or `retrying` record: written later, or dropped when the backlog is full."""
        if not self.enabled:
            return
        call_id = record["call_id"]
        if call_id not in self._pending and len(self._pending) >= self.limit:
            return
        self._take(record, read_first)
        if record["state"] == CallState.RUNNING:
            asyncio.get_running_loop().call_later(self.grace, self._ready_now, call_id)
        else:
            self._ready_now(call_id)

    async def final(self, record: Record, read_first: bool = False) -> None:
        """A final record: written unless the backlog stays full for FINAL_ROOM_WAIT (the bucket failing)."""
        if not self.enabled:
            return
        call_id = record["call_id"]
        if call_id not in self._pending and len(self._pending) >= self.limit:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FINAL_ROOM_WAIT):
                    while len(self._pending) >= self.limit:
                        self._room.clear()
                        await self._room.wait()
            if len(self._pending) >= self.limit:
                self.dropped += 1
                log.warning("status backlog full: final record dropped", extra={"call_id": call_id})
                return
        self._take(record, read_first)  # replaces a running record still waiting for its grace
        self._ready_now(call_id)

    def _take(self, record: Record, read_first: bool) -> None:
        """Accept a record for writing; only then is the call remembered (a dropped one leaves nothing behind)."""
        self._pending[record["call_id"]] = record
        if read_first:
            self._read_first.add(record["call_id"])

    def _ready_now(self, call_id: str) -> None:
        """Queue the call's record for writing. An id queued twice is harmless: the writer skips what is gone."""
        if call_id in self._pending and call_id not in self._writing:
            self._ready.put_nowait(call_id)

    async def _writer(self) -> None:
        while True:
            call_id = await self._ready.get()
            if call_id in self._writing or call_id not in self._pending:
                continue  # written already (its id was queued twice), or being written
            record = self._pending.pop(call_id)
            self._room.set()
            self._writing.add(call_id)
            try:
                await self._write(call_id, record)
            except Exception as e:  # never let a writer die
                log.warning("status write failed: %r", e, extra={"call_id": call_id})
            finally:
                self._writing.discard(call_id)
                if call_id in self._pending:  # a newer record came while this one was written
                    self._ready.put_nowait(call_id)

    async def _write(self, call_id: str, record: Record) -> None:
        final = CallState(record["state"]).final
        waits = FINAL_RETRY_WAITS if final else ()
        for attempt in range(len(waits) + 1):
            try:
                revision = await self._cas(call_id, record)
                if final or revision is None:
                    self._revisions.pop(call_id, None)
                    self._read_first.discard(call_id)
                else:
                    if len(self._revisions) >= MAX_REVISIONS:
                        self._revisions.clear()
                    self._revisions[call_id] = revision
                return
            except Exception as e:
                if attempt == len(waits):
                    log.warning("status write failed: %r", e, extra={"call_id": call_id})
                    return
                await asyncio.sleep(waits[attempt])

    async def _cas(self, call_id: str, record: Record) -> int | None:
        """Write `record` by compare-and-set. Returns the new revision, or None when the stored one is ahead."""
        value = json.dumps(record).encode()
        last = self._revisions.get(call_id)
        known = last is not None or call_id not in self._read_first  # else: create, and read only on a conflict
        for _ in range(CAS_TRIES):
            if not known:  # read what is stored (the gateway's record, another worker's) and decide
                entry = await self.store.get(call_id)
                if entry is not None and ahead(entry.record, record):
                    return None
                last = entry.revision if entry is not None else None
            try:
                return await self.store.write(call_id, value, last)
            except KeyWrongLastSequenceError:
                known = False
        return None

    async def close(self, timeout: float) -> None:
        """Write what is pending (up to `timeout` seconds), then stop."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self._pending or self._writing:
                    for call_id in list(self._pending):
                        self._ready_now(call_id)
                    await asyncio.sleep(0.05)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


_ORDER = {CallState.SCHEDULED: 0, CallState.QUEUED: 0, CallState.RUNNING: 1, CallState.RETRYING: 1}  # final: 2


def _rank(record: Record) -> tuple[int, int]:
    return int(record.get("attempt", 0)), _ORDER.get(CallState(record["state"]), 2)


def ahead(stored: Record, ours: Record) -> bool:
    """Is the stored record further along than ours (so ours must not replace it)?"""
    s_start, o_start = stored.get("start"), ours.get("start")
    if s_start is not None and o_start is not None and s_start != o_start:
        return bool(s_start > o_start)  # another call under the same id: the later one's record stays
    return _rank(stored) > _rank(ours)
