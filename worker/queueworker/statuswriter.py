"""The worker's call-status writes, off the call's slot: a call never waits for its status record.

- Coalesced: one write per call at a time, and a newer record replaces one not written yet. A `running`
  record is written only once the call has run `RUNNING_GRACE` (`started`), so a call that finishes sooner
  costs one write (its final record), not two.
- Compare-and-set: a record is written against the revision this worker last wrote for the call (one round
  trip). A call's first record from this worker is created (one round trip: the gateway's record is under a
  key of its own, callstatus.py) unless one is known to exist (`read_first`: an earlier attempt ran): then the
  stored one is read and replaced only if ours is further along (a later call under the same id, a later
  attempt, or final over not final): two round trips. A conflict (a cancel, another worker, an earlier call
  under the same id) means someone wrote in between: read again and decide again.
- Cheap: reads and writes are sent without waiting (one sender task) and answered on one subscription, each
  answer handled by a callback: no task, future or timer per record.
- Bounded: at most `limit` calls wait to be written and `IN_FLIGHT` are being written. Past the limit a
  `running` or `retrying` record is dropped (they are reports; the next one replaces them) and a final record
  waits up to `FINAL_ROOM_WAIT` for room, then is dropped too (logged): a failing bucket slows no call by more.
- A final record is retried through a NATS failover; a failing write is logged, never allowed to stop a call.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from nats.aio.msg import Msg

from jetqueue import contract
from jetqueue.callstatus import QueueStatus, Record
from jetqueue.contract import CallState

log = logging.getLogger("jetqueue.status")
RUNNING_GRACE = 0.25
SWEEP_AT_MOST = 0.01  # seconds between sweeps for running records, at the least (a grace of 0 must not spin)
IN_FLIGHT = 512  # records being written at once
LIMIT = 10_000
FINAL_RETRY_WAITS = (0.2, 0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0)  # ~32 s: through a leader cut-off and election
CAS_TRIES = 3
FINAL_ROOM_WAIT = 1.0
ANSWER_WAIT = 5.0  # a read or write not answered by then has failed (the connection was lost)
MAX_REVISIONS = 100_000  # revisions remembered for calls still running here; cleared past this (then: create/read)
WRONG_LAST_SEQUENCE = 10071  # JetStream's error code when the expected last subject sequence differs
EXPECTED = "Nats-Expected-Last-Subject-Sequence"
WRITE, READ = "write", "read"  # what an answer is to: a compare-and-set, a get of the stored record


class _Write:
    """One record being written: read (when needed), then compare-and-set, retried as the rules say."""

    __slots__ = ("call_id", "conflicts", "failures", "final", "last", "read_first", "record", "value")

    def __init__(self, record: Record, last: int | None, read_first: bool) -> None:
        self.call_id: str = record["call_id"]
        self.record = record
        self.value = json.dumps(record).encode()
        self.final = CallState(record["state"]).final
        self.last = last
        self.read_first = read_first and last is None
        self.conflicts = 0
        self.failures = 0


class StatusWriter:
    def __init__(self, store: QueueStatus, limit: int = LIMIT, grace: float = RUNNING_GRACE) -> None:
        self.store = store  # the queue's status buckets: each call's records go to its own (by its id)
        self.limit = limit
        self.grace = grace
        self._pending: dict[str, Record] = {}  # call id -> the newest record not written yet
        self._waiting: deque[str] = deque()  # call ids with a pending record, waiting for a write in flight to end
        self._writing: set[str] = set()  # one write per call at a time, so records land in order
        self._revisions: dict[str, int] = {}  # call id -> revision of this worker's last write
        self._read_first: set[str] = set()  # calls known to have a record already (read it before the first write)
        self._starting: OrderedDict[str, tuple[float, Callable[[], Record], bool]] = OrderedDict()
        self._room = asyncio.Event()
        self._outbox: deque[tuple[str, bytes, str, dict[str, str] | None]] = deque()
        self._wake = asyncio.Event()
        self._answers: dict[str, tuple[_Write, str]] = {}  # token -> (the write, WRITE/READ)
        self._deadlines: deque[tuple[float, str]] = deque()  # (deadline, token) of every request, in send order
        self._ids = itertools.count()
        self._inbox = ""
        self._sub: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._helpers: set[asyncio.Task[None]] = set()
        self.dropped = 0  # final records dropped because the backlog stayed full (the bucket failing)
        self.gave_up = 0  # records not written because others wrote the call's record each time in between

    @property
    def enabled(self) -> bool:
        return self.store.enabled

    async def start(self) -> None:
        js = self.store.js
        if not self.enabled or self._tasks or js is None:
            return
        nc = js._nc
        self._inbox = nc.new_inbox()
        self._sub = await nc.subscribe(f"{self._inbox}.*", cb=self._answer)
        self._tasks = [
            asyncio.create_task(self._send_loop(), name="status-sender"),
            asyncio.create_task(self._sweep_loop(), name="status-running"),
        ]

    # -- what the handler reports -----------------------------------------------------------------------------

    def started(self, call_id: str, make: Callable[[], Record], read_first: bool = False) -> None:
        """A call started: its `running` record (`make()`) is written if it still runs after the grace."""
        if self.enabled:
            deadline = asyncio.get_running_loop().time() + self.grace
            self._starting.pop(call_id, None)  # started again (a retry here): the sweep keeps start order
            self._starting[call_id] = (deadline, make, read_first)

    def report(self, record: Record, read_first: bool = False) -> None:
        """A `running` or `retrying` record: written soon, or dropped when the backlog is full."""
        if not self.enabled:
            return
        call_id = record["call_id"]
        self._starting.pop(call_id, None)
        if call_id not in self._pending and len(self._pending) >= self.limit:
            return
        self._take(record, read_first)
        self._ready_now(call_id)

    async def final(self, record: Record, read_first: bool = False) -> None:
        """A final record: written unless the backlog stays full for FINAL_ROOM_WAIT (the bucket failing)."""
        if not self.enabled:
            return
        call_id = record["call_id"]
        self._starting.pop(call_id, None)
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
        self._take(record, read_first)  # replaces a running record not written yet
        self._ready_now(call_id)

    def _take(self, record: Record, read_first: bool) -> None:
        """Accept a record for writing; only then is the call remembered (a dropped one leaves nothing behind)."""
        self._pending[record["call_id"]] = record
        if read_first:
            if len(self._read_first) >= MAX_REVISIONS:  # calls whose next attempt ran elsewhere: bounded
                self._read_first.clear()
            self._read_first.add(record["call_id"])

    async def _sweep_loop(self) -> None:
        """Turn calls running longer than the grace into `running` records (one timer for all of them)."""
        clock = asyncio.get_running_loop().time
        while True:
            await asyncio.sleep(max(self.grace / 2, SWEEP_AT_MOST))
            now = clock()
            while self._starting:
                call_id = next(iter(self._starting))
                deadline, make, read_first = self._starting[call_id]
                if deadline > now:
                    break
                del self._starting[call_id]
                try:
                    self.report(make(), read_first)
                except Exception as e:  # a report, never worth stopping the sweep for
                    log.warning("running record failed: %r", e, extra={"call_id": call_id})

    # -- writing ---------------------------------------------------------------------------------------------

    def _ready_now(self, call_id: str) -> None:
        """Start writing the call's record, or queue it behind the writes in flight."""
        if call_id not in self._pending or call_id in self._writing or not self._tasks:
            return
        if len(self._writing) >= IN_FLIGHT:
            self._waiting.append(call_id)  # an id queued twice is harmless: skipped once written
            return
        record = self._pending.pop(call_id)
        self._room.set()
        self._writing.add(call_id)
        self._step(_Write(record, self._revisions.get(call_id), call_id in self._read_first))

    def _step(self, w: _Write) -> None:
        """Send what the write needs next: a read of the stored record, or the compare-and-set."""
        store = self.store.store(w.call_id)
        if store.kv is None:  # the bucket is missing (deleted, or NATS lost it): open it again first
            task = asyncio.create_task(self._reopen(w))
            self._helpers.add(task)
            task.add_done_callback(self._helpers.discard)
            return
        js = store.js
        assert js is not None
        token = format(next(self._ids), "x")
        reply = f"{self._inbox}.{token}"
        self._deadlines.append((asyncio.get_running_loop().time() + ANSWER_WAIT, token))
        bucket = store.name
        key = contract.kv_subject(bucket, w.call_id)
        if not w.read_first:
            self._answers[token] = (w, WRITE)
            self._send(key, w.value, reply, {EXPECTED: str(w.last or 0)})  # 0: create (there must be no record)
        else:  # from the stream's leader (rare: a later attempt, or a conflict), never a replica a moment behind
            self._answers[token] = (w, READ)
            self._send(
                f"{js._prefix}.STREAM.MSG.GET.{contract.kv_stream_name(bucket)}",
                b'{"last_by_subj":"%s"}' % key.encode(),
                reply,
                None,
            )

    async def _reopen(self, w: _Write) -> None:
        if await self.store.store(w.call_id).bucket() is None:
            self._failed(w, "the call-status bucket is unavailable")
        else:
            self._step(w)

    def _send(self, subject: str, payload: bytes, reply: str, headers: dict[str, str] | None) -> None:
        self._outbox.append((subject, payload, reply, headers))
        self._wake.set()

    async def _send_loop(self) -> None:
        assert self.store.js is not None
        nc = self.store.js._nc
        clock = asyncio.get_running_loop().time
        while True:
            self._wake.clear()
            while self._outbox:
                subject, payload, reply, headers = self._outbox.popleft()
                try:
                    await nc.publish(subject, payload, reply=reply, headers=headers)
                except Exception as e:  # disconnected: the answer never comes, and the write fails at its deadline
                    log.debug("status write not sent: %r", e)
            now = clock()
            deadlines = self._deadlines  # in send order, so in deadline order: only the overdue are looked at
            while deadlines and deadlines[0][0] <= now:
                found = self._answers.pop(deadlines.popleft()[1], None)
                if found is not None:  # else answered in time
                    self._failed(found[0], "no answer from NATS")
            if not self._wake.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 1.0)

    async def _answer(self, msg: Msg) -> None:
        found = self._answers.pop(msg.subject.rpartition(".")[2], None)
        if found is None:  # answered after its deadline: that write was failed (and retried) already
            return
        w, kind = found
        status = msg.headers.get("Status") if msg.headers else None
        try:
            if status == "503":  # no stream: the bucket is gone
                self.store.store(w.call_id).kv = None
                self._failed(w, "no responders (the call-status bucket is missing)")
            elif kind == READ:
                self._read(w, json.loads(msg.data))
            else:
                self._written(w, json.loads(msg.data))
        except Exception as e:  # never let one answer stop the subscription
            self._failed(w, repr(e))

    def _read(self, w: _Write, answer: dict[str, Any]) -> None:
        """The stored record came: replace it only if ours is further along."""
        error = answer.get("error")
        if error and error.get("code") != 404:
            self._failed(w, str(error.get("description")))
            return
        w.read_first = False
        if error:
            w.last = None  # no record: create it
        else:
            message = answer["message"]
            w.last = int(message["seq"])
            hdrs = base64.b64decode(message.get("hdrs") or "")
            if b"KV-Operation" not in hdrs:  # a deleted or purged key counts as no record
                stored = json.loads(base64.b64decode(message.get("data") or ""))
                if ahead(stored, w.record):
                    self._done(w, None)
                    return
        self._step(w)

    def _written(self, w: _Write, answer: dict[str, Any]) -> None:
        error = answer.get("error")
        if not error:
            self._done(w, int(answer["seq"]))
        elif error.get("err_code") == WRONG_LAST_SEQUENCE:  # someone wrote in between: read and decide again
            w.conflicts += 1
            if w.conflicts >= CAS_TRIES:
                self.gave_up += 1
                log.warning(
                    "status record changed %d times while written: given up", CAS_TRIES, extra={"call_id": w.call_id}
                )
                self._done(w, None)
            else:
                w.read_first, w.last = True, None
                self._step(w)
        else:
            self._failed(w, str(error.get("description")))

    def _failed(self, w: _Write, why: str) -> None:
        """A final record is tried again after a wait (a NATS failover); any other is given up."""
        if w.final and w.failures < len(FINAL_RETRY_WAITS):
            w.failures += 1
            asyncio.get_running_loop().call_later(FINAL_RETRY_WAITS[w.failures - 1], self._step, w)
            return
        log.warning("status write failed: %s", why, extra={"call_id": w.call_id})
        self._done(w, None)

    def _done(self, w: _Write, revision: int | None) -> None:
        """The write is over (`revision`: what it stored; None: nothing, or nothing worth remembering)."""
        call_id = w.call_id
        if w.final or revision is None:
            self._revisions.pop(call_id, None)
            self._read_first.discard(call_id)
        else:
            if len(self._revisions) >= MAX_REVISIONS:
                self._revisions.clear()
            self._revisions[call_id] = revision
        self._writing.discard(call_id)
        self._ready_now(call_id)  # a newer record came while this one was written
        while self._waiting and len(self._writing) < IN_FLIGHT:
            self._ready_now(self._waiting.popleft())

    async def close(self, timeout: float) -> None:
        """Write what is pending (up to `timeout` seconds), then stop."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self._pending or self._writing:
                    for call_id in list(self._pending):
                        self._ready_now(call_id)
                    await asyncio.sleep(0.05)
        if self._pending or self._writing:
            log.warning("stopping with %d status records not written", len(self._pending) + len(self._writing))
        for t in [*self._tasks, *self._helpers]:
            t.cancel()
        await asyncio.gather(*self._tasks, *self._helpers, return_exceptions=True)
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()


_ORDER = {CallState.SCHEDULED: 0, CallState.QUEUED: 0, CallState.RUNNING: 1, CallState.RETRYING: 1}  # final: 2


def _rank(record: Record) -> tuple[int, int]:
    return int(record.get("attempt", 0)), _ORDER.get(CallState(record["state"]), 2)


def ahead(stored: Record, ours: Record) -> bool:
    """Is the stored record further along than ours (so ours must not replace it)?"""
    s_start, o_start = stored.get("start"), ours.get("start")
    if s_start is not None and o_start is not None and s_start != o_start:
        return bool(s_start > o_start)  # another call under the same id: the later one's record stays
    return _rank(stored) > _rank(ours)
