"""Concurrency and rate by key: a function's `keyConcurrency` (calls with the same `X-Concurrency-Key` running at
once) and `keyRate` (calls of one key started per second), across every worker replica of the queue.

State is shared in the key-value bucket `jetqueue-keys`, one record per (queue, function, key) and kind
(`contract.key_limit_key`; the key itself is hashed):
- concurrency: the record holds the key's leases, `{lease id: expiry (wall time)}`. A worker takes a lease with a
  compare-and-set (kv.update on the revision it read; a lost race reads again) when fewer than `keyConcurrency`
  unexpired ones are there, renews the leases it holds every `ttl / 3` and removes its lease when the call ends.
  A worker killed while holding one cannot remove it: it expires `ttl` after its last renewal, and the slot is free.
- rate: the record holds the key's next free start (GCRA without burst, as ratelimit.py's TAT): a call starts only
  at or after it, and moves it 1/keyRate on, with one compare-and-set.

A call over its key's limit waits in its worker for at most `wait` seconds, unless half the worker's max_inflight
calls of its key wait there already (for a rate: or as many as the key's starts within `wait`), so other keys
always find slots; one waiter per key and worker polls the record, and a lease ended in this worker wakes it at
once. Otherwise, or once its wait is over, it goes back to the queue for a few seconds (handle.py: held as a
message schedule, its attempt not spent), so the messages behind it, other keys' calls, are taken. The bounded wait
is the trade-off: each waiting call holds one of the worker's max_inflight slots, and it lets a key's backlog run
near its limit rather than by hops through the queue.

The bucket unavailable: a call is treated as over its limit (it waits in the queue; nothing runs unlimited). Leases
not renewed for `ttl` (the bucket down that long) expire: other workers may then exceed the limit by the calls still
running.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig

from jetqueue import contract
from jetqueue.contract import jetstream
from jetqueue.queueworker.policy import FunctionPolicy, Policies
from jetqueue.queueworker.ratelimit import CasBucket, Conflict, RateBucket, grant
from jetqueue.settings import WorkerSettings

log = logging.getLogger("jetqueue.keylimit")
LEASE_TTL = 30.0  # a lease not renewed for this long has expired: its worker is gone
LOCAL_WAIT = 1.0  # a call over its key's limit waits this long in its worker before it goes back to the queue
POLL = 0.05  # while a call waits, its key's record is read again this often (and when a local lease ends)
HOLD = (2.0, 4.0)  # then it goes back to the queue for a random time in this range (replicas do not return together)
LATE = 0.05  # a rate slot starting this soon is taken at once
CAS_TRIES = 5  # compare-and-set races lost in a row: the key is busy, as if over its limit
WARN_EVERY = 60.0


@dataclass(frozen=True)
class Lease:
    """What a call holds while it runs: its concurrency lease ('' when only a rate applies)."""

    record: str = ""
    lease_id: str = ""


class Leases(CasBucket):
    """The concurrency records: `{lease id: expiry}` JSON, compare-and-set by revision."""

    async def read(self, record: str) -> tuple[dict[str, float], int]:
        value, revision = await self.get(record)
        try:
            leases = {str(k): float(v) for k, v in json.loads(value or b"{}").items()}
        except (ValueError, TypeError, AttributeError):  # not ours (written by hand): taken over by its revision
            leases = {}
        return leases, revision

    async def write(self, record: str, leases: dict[str, float], last: int) -> None:
        value = json.dumps({k: round(v, 3) for k, v in leases.items()}, separators=(",", ":")).encode()
        await self.put(record, value, last)


class KeyLimits:
    """A worker's key limits. `enter` before a call of a key runs, `leave` when it ends (handle.py)."""

    def __init__(
        self,
        js: JetStreamContext,
        queue: str,
        config: KeyValueConfig,
        ttl: float = LEASE_TTL,
        wait: float = LOCAL_WAIT,
        slots: int = 2,
    ) -> None:
        self.queue = queue
        self.waiters = max(1, slots // 2)  # calls of one key waiting in this worker at most: half its slots
        self.leases = Leases(js, config)
        self.rates = RateBucket(js, config)
        self.ttl = ttl
        self.wait = wait
        self.worker = uuid.uuid4().hex[:12]
        self._seq = itertools.count(1)
        self.held: dict[str, str] = {}  # lease id -> record, renewed while held
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}  # record -> (its local waiters' lock, users)
        self._freed: dict[str, asyncio.Event] = {}
        self._rate_waiters: dict[str, int] = {}  # record -> local calls waiting for its rate
        self._renewer: asyncio.Task[None] | None = None
        self._warn_at = 0.0

    @classmethod
    def of(cls, js: JetStreamContext, s: WorkerSettings, policies: Policies) -> KeyLimits | None:
        """None when no function of the queue has a key limit: the bucket is never touched."""
        if not any(p.key_concurrency > 0 or p.key_rate > 0 for p in policies.overrides.values()):
            return None
        return cls(js, s.queue, jetstream.key_bucket(s.stream_replicas, s.stream_storage), slots=s.max_inflight)

    async def enter(self, function: str, key: str, policy: FunctionPolicy) -> Lease | float:
        """A Lease when the call may start now; else how long it should wait in the queue (it is over its limit)."""
        deadline = time.monotonic() + self.wait
        lease = Lease()
        try:
            if policy.key_concurrency > 0:
                record = contract.key_limit_key("c", self.queue, function, key)
                got = await self._lease(record, policy.key_concurrency, deadline)
                if got is None:
                    return random.uniform(*HOLD)
                lease = got
            if policy.key_rate > 0:
                record = contract.key_limit_key("r", self.queue, function, key)
                wait = await self._rate(record, policy.key_rate, deadline)
                if wait > 0:
                    await self.leave(lease)
                    return max(wait, random.uniform(*HOLD))
        except Exception as e:  # the bucket does not answer: the call waits in the queue; none runs unlimited
            await self.leave(lease)
            now = time.monotonic()
            if now >= self._warn_at:
                self._warn_at = now + WARN_EVERY
                log.warning("key limits of %s: the bucket does not answer (%r); calls with a key wait", function, e)
            return random.uniform(*HOLD)
        except BaseException:  # cancelled (shutdown) holding a lease: not renewed, so it expires after the ttl
            self.held.pop(lease.lease_id, None)
            raise
        return lease

    async def leave(self, lease: Lease) -> None:
        """The call ended: its lease is removed (if that fails, it expires after the ttl)."""
        if not lease.lease_id or self.held.pop(lease.lease_id, None) is None:
            return
        with contextlib.suppress(Exception):
            await self._change(lease.record, lambda leases: leases.pop(lease.lease_id, None) is not None)
        freed = self._freed.get(lease.record)
        if freed is not None:
            freed.set()

    async def _lease(self, record: str, limit: int, deadline: float) -> Lease | None:
        lock, users = self._locks.get(record, (asyncio.Lock(), 0))
        self._locks[record] = (lock, users + 1)
        try:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or users >= self.waiters:  # enough of the key wait here: the rest go back to the queue
                return await self._try(record, limit)
            try:  # one waiter per key polls; the others queue behind it, first come first served
                async with asyncio.timeout(remaining):
                    await lock.acquire()
            except TimeoutError:
                return None
            try:  # not under the timeout: a cancel there could land between a lease's write and its being held
                return await self._poll(record, limit, deadline)
            finally:
                lock.release()
        finally:
            lock, users = self._locks[record]
            if users <= 1:
                del self._locks[record]
                self._freed.pop(record, None)
            else:
                self._locks[record] = (lock, users - 1)

    async def _poll(self, record: str, limit: int, deadline: float) -> Lease | None:
        freed = self._freed.setdefault(record, asyncio.Event())
        while True:
            freed.clear()
            got = await self._try(record, limit)
            if got is not None:
                return got
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(freed.wait(), min(remaining, POLL * random.uniform(1, 2)))

    async def _try(self, record: str, limit: int) -> Lease | None:
        lease_id = f"{self.worker}-{next(self._seq)}"

        def take(leases: dict[str, float]) -> bool:
            now = time.time()
            for k in [k for k, expiry in leases.items() if expiry <= now]:  # their workers are gone
                del leases[k]
            if len(leases) >= limit:
                return False
            leases[lease_id] = now + self.ttl
            return True

        if not await self._change(record, take):
            return None
        self.held[lease_id] = record
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew(), name="key-leases")
        return Lease(record, lease_id)

    async def _change(self, record: str, change: Callable[[dict[str, float]], bool]) -> bool:
        """Read the record, apply `change` (False: nothing to write), write it back by its revision."""
        for _ in range(CAS_TRIES):
            leases, rev = await self.leases.read(record)
            if not change(leases):
                return False
            try:
                await self.leases.write(record, leases, rev)
                return True
            except Conflict:
                continue
        return False

    async def _rate(self, record: str, rate: float, deadline: float) -> float:
        """0 once a start of the key's rate is taken; else how long until its next one (past the deadline)."""
        waiting = self._rate_waiters.get(record, 0)
        if waiting >= min(math.ceil(rate * self.wait), self.waiters):  # the key's starts within the wait are taken
            deadline = 0.0
        self._rate_waiters[record] = waiting + 1
        try:
            return await self._rate_wait(record, 1.0 / rate, deadline)
        finally:
            if self._rate_waiters[record] <= 1:
                del self._rate_waiters[record]
            else:
                self._rate_waiters[record] -= 1

    async def _rate_wait(self, record: str, interval: float, deadline: float) -> float:
        while True:
            tat, rev = await self.rates.read(record)
            now = time.time()
            if tat > now + LATE:
                wait = tat - now
                if time.monotonic() + wait > deadline:
                    return wait
                await asyncio.sleep(wait)
                continue
            try:
                await self.rates.write(record, grant(tat, now, interval, 1)[0] + interval, rev)
                return 0.0
            except Conflict:
                continue

    async def _renew(self) -> None:
        """Every ttl/3, the expiry of each lease this worker holds is moved on; stops when it holds none."""
        while self.held:
            await asyncio.sleep(self.ttl / 3)
            records: dict[str, set[str]] = {}
            for lease_id, record in list(self.held.items()):
                records.setdefault(record, set()).add(lease_id)
            for record, mine in records.items():

                def renew(leases: dict[str, float], mine: set[str] = mine) -> bool:
                    expiry = time.time() + self.ttl
                    for lease_id in mine & set(self.held):  # one that ended meanwhile is not put back
                        leases[lease_id] = expiry
                    return True

                try:
                    await self._change(record, renew)
                except Exception as e:  # tried again at the next round; the lease expires if the bucket stays away
                    log.warning("key limits: cannot renew leases (%r)", e)

    async def stop(self) -> None:
        """Shutdown: the renewals stop (leases of calls still running expire after the ttl)."""
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
