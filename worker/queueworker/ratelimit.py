"""The dispatch rate: at most `rate` invocations per second of a queue (all its functions together), and of a
function with a rate of its own, across every worker replica of the queue, without a round trip per call.

Design: GCRA (virtual scheduling) with the state shared in the JetStream key-value bucket `jetqueue-rates`, one
key per limited scope (`<queue>`, `<queue>.<function>`), whose value is the theoretical arrival time (TAT): the
wall-clock time at which the scope's next free slot starts. A slot is 1/rate seconds long and admits one call. A
worker claims a batch of consecutive slots with one compare-and-set (kv.update on the revision it last saw: from
max(TAT, now), which saves no burst for an idle scope, to a new TAT), and gives them to its waiting calls one at a
time, each at its slot's start (a local timer: no round trip per call). A batch is a `LEASE` of the rate (one slot
at least) and never more than the calls waiting, so a claim costs one or two round trips per LEASE per worker and
claimed slots are rarely left unused. Slots are claimed at most `AHEAD` seconds before they start: a worker that
finds the near future taken waits (with jitter, so replicas do not wake together) instead of queueing far ahead.
A lost compare-and-set reads the key and tries again.

Both limits: a call takes a slot of its function's own rate first (the scarcer one), then, before that slot's
usable time ends, one of the queue's; calls waiting with such a deadline are served first (earliest deadline
first). Missing it loses the function's slot, never the queue's, and the call tries with the function's next one.

A call waiting for a slot holds one of its worker's max_inflight slots. In static mode a backlog of a function with
a low rate of its own can therefore hold back the queue's other functions (head-of-line); function mode gives each
function its own consumer and share of the slots (docs/concepts.md, "Dispatch rate").

Precision, per scope (the moment is when the worker starts the HTTP request):
- Slots never overlap, and a slot is given only until it ends, or `LATE` after its start if that is later (then it
  is lost), so any interval of W seconds holds at most rate × W + 2 invocations (rate × (W + LATE) + 1 above
  1/LATE = 20 per second). Calls of a backlog start 1/rate apart; two come closer only when a call was late in its
  slot: the event loop lagged, or (both limits) the queue gave it a slot late in its function's.
- Pods' wall clocks set slot times: clocks differing by d let up to rate × d calls more into a window (NTP keeps
  d at milliseconds). Waits are monotonic durations, so a clock step during a wait does not stretch it. A TAT
  more than `CLOCK_SKEW` beyond where any claim can put it means a clock is wrong: rather than let every other
  replica wait that long, it is claimed over from now (and logged), so a pod with a wrong clock adds up to its
  own rate instead of stalling the queue.
- Never faster, sometimes slower: slots claimed and unused (a worker stopping, a call cancelled while waiting)
  are lost, at most one batch per pod (a pod claims again only once its batch is handed out); when the queue's
  rate is what holds calls back, a function with its own rate can get less than it.
- The bucket deleted or lost (a dev NATS restarted): it is created again, and once, the batch each pod holds may
  overlap new claims.
- The bucket unavailable: calls wait (nothing goes unlimited) for `STRICT_FOR` seconds, then each pod limits
  itself alone, at the full rate, until the bucket answers again (tried every `RETRY_EVERY` seconds): N replicas
  may then dispatch up to N × rate. An outage delays calls for a bounded time and loses none: waiting calls keep
  their messages, whose acks are extended.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from jetqueue import contract, provision
from jetqueue.contract import jetstream
from jetqueue.queueworker.metrics import WorkerMetrics
from jetqueue.queueworker.policy import Policies
from jetqueue.settings import WorkerSettings

log = logging.getLogger("jetqueue.ratelimit")
LEASE = 0.25  # one claim takes at most this much of the rate (one slot at least)
AHEAD = 0.25  # slots are claimed at most this long before they start
JITTER = 0.02  # added to a wait for the near future to free up, so replicas do not claim at the same instant
CLOCK_SKEW = 1.0  # a TAT further ahead than a claim can put it by more than this is a wrong clock (`_trusted`)
LATE = 0.05  # a slot is given to a call until it ends, or this long after its start if later; then it is lost
OP_TIMEOUT = 2.0  # one key-value operation
UNAVAILABLE_WAIT = 0.5  # between tries while the bucket does not answer
STRICT_FOR = 10.0  # the bucket unavailable this long: each pod limits itself alone until it is back
RETRY_EVERY = 5.0  # meanwhile the bucket is tried this often
WARN_EVERY = 60.0  # a warning that would repeat at every claim


def batch(rate: float) -> int:
    """Slots one claim takes at most: a lease of the rate, one at least."""
    return max(1, math.floor(rate * LEASE))


def grant(tat: float, now: float, interval: float, n: int) -> list[float]:
    """Virtual scheduling: the starts of `n` slots of `interval` seconds from the scope's first free one (`tat`), or
    from now when that has passed: an idle scope saves up no burst. The scope's new TAT is the last start + interval."""
    start = max(tat, now)
    return [start + i * interval for i in range(n)]


class Conflict(Exception):
    """Another worker wrote the key after the revision the write expected."""


class Store(Protocol):
    """Where a scope's TAT is shared: the bucket (`RateBucket`), or a dict in the unit tests."""

    async def read(self, key: str) -> tuple[float, int]:
        """(TAT, revision); (0.0, 0) when the key does not exist."""
        ...

    async def write(self, key: str, tat: float, last: int) -> int:
        """Compare-and-set (`last` 0: the key must not exist); the new revision, or `Conflict`."""
        ...


class CasBucket:
    """A bucket of compare-and-set records (`jetqueue-rates`, `jetqueue-keys`), opened (created if missing) on first
    use, and again after any failure: it may have been deleted underneath."""

    def __init__(self, js: JetStreamContext, config: KeyValueConfig) -> None:
        self.js = js
        self.config = config
        self.kv: KeyValue | None = None

    async def _bucket(self) -> KeyValue:
        if self.kv is None:
            self.kv = await asyncio.wait_for(provision.ensure_bucket(self.js, self.config), OP_TIMEOUT)
        return self.kv

    async def get(self, key: str) -> tuple[bytes | None, int]:
        """(value, revision); (None, 0) when the key does not exist."""
        kv = await self._bucket()
        try:
            entry = await asyncio.wait_for(kv.get(key), OP_TIMEOUT)
        except KeyNotFoundError:
            return None, 0
        except Exception:
            self.kv = None
            raise
        return entry.value, entry.revision or 0

    async def put(self, key: str, value: bytes, last: int) -> int:
        """Compare-and-set (`last` 0: the key must not exist); the new revision, or `Conflict`."""
        kv = await self._bucket()
        try:  # create() also takes over a deleted or expired key (its tombstone has a revision)
            op = kv.create(key, value) if last == 0 else kv.update(key, value, last=last)
            return int(await asyncio.wait_for(op, OP_TIMEOUT))
        except KeyWrongLastSequenceError:
            raise Conflict(key) from None
        except Exception:
            self.kv = None
            raise


class RateBucket(CasBucket):
    """The scopes' TATs, as text."""

    async def read(self, key: str) -> tuple[float, int]:
        value, revision = await self.get(key)
        try:
            tat = float(value or 0)
        except ValueError:  # not ours (written by hand): claimed over, by its revision
            tat = 0.0
        return tat, revision

    async def write(self, key: str, tat: float, last: int) -> int:
        return await self.put(key, f"{tat:.6f}".encode(), last)


@dataclass(order=True)
class _Waiter:
    deadline: float  # wall time by which the slot must start; inf: none
    seq: int  # first come, first served among equal deadlines
    fut: asyncio.Future[float | None] = field(compare=False)


class Scope:
    """One limited scope (a queue, or a function's own rate): slots claimed from the shared key a batch at a time,
    given to the waiting calls at their starts, earliest deadline first, by one task that runs while calls wait."""

    def __init__(self, store: Store, key: str, rate: float) -> None:
        self.store = store
        self.key = key
        self.interval = 1.0 / rate
        self.batch = batch(rate)
        self.usable = max(LATE, self.interval)  # how long after its start a slot can still be given
        self.slots: deque[float] = deque()  # starts of claimed slots not given yet, ascending
        self.waiters: list[_Waiter] = []  # a heap
        self.tat = 0.0  # the key's value as last seen
        self.rev: int | None = None  # its revision; None: read it before the next write
        self.held = 0.0  # end of the last slot this worker claimed (shared or alone)
        self.down_since: float | None = None  # the bucket has not answered since
        self.retry_at = 0.0  # alone until then
        self._warn_at = 0.0  # the next warning about a clock
        self._seq = itertools.count()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def take(self, before: float = math.inf) -> float | None:
        """Wait for a slot of this scope and return its end (wall time): the call starts now, before that. None when
        no slot starts before `before`. Cancelling the wait gives up the place (a slot already given is lost)."""
        fut: asyncio.Future[float | None] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(lambda _: self._changed.set())
        heapq.heappush(self.waiters, _Waiter(before, next(self._seq), fut))
        self._changed.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"dispatch-rate-{self.key}")
        return await fut

    async def _run(self) -> None:
        try:
            while self._waiting():
                self._changed.clear()
                now = time.time()
                while self.slots and self.slots[0] + self.usable <= now:  # nobody took it in time
                    self.slots.popleft()
                if not self.slots:
                    await self._idle(await self._claim())
                    continue
                start = self.slots[0]
                self._miss(max(start, now))
                if start > now:
                    await self._idle(start - now)
                    continue
                waiter = self._first()
                if waiter is not None:
                    waiter.fut.set_result(self.slots.popleft() + self.usable)
        except Exception as e:  # a bug: fail the waiting calls (redelivered) rather than leave them waiting for ever
            log.exception("dispatch rate of %s failed", self.key)
            for w in self.waiters:
                if not w.fut.done():
                    w.fut.set_exception(e)

    async def _claim(self) -> float:
        """Claim slots for the waiting calls. Returns how long to wait before looking again (0: slots claimed)."""
        now = time.time()
        if self.down_since is not None and now < self.retry_at:
            return self._alone(now)
        try:
            if self.rev is None:
                self.tat, self.rev = await self.store.read(self.key)
            now = time.time()
            first = max(self._trusted(now), self.held, now)
            self._miss(first)
            n = min(self._waiting(), self.batch)
            if n == 0:
                return 0.0
            if first > now + AHEAD:  # the near future is claimed already
                return first - AHEAD - now + random.uniform(0, JITTER)
            slots = grant(first, now, self.interval, n)
            end = slots[-1] + self.interval
            self.rev = await self.store.write(self.key, end, self.rev)
        except Conflict:
            self.rev = None  # claimed by another worker meanwhile: read it again
            return 0.0
        except Exception as e:
            return self._unavailable(e)
        if self.down_since is not None:
            log.info("dispatch rate of %s: the bucket answers again; shared by every replica", self.key)
            self.down_since = None
        self.tat = self.held = end
        self.slots.extend(slots)
        return 0.0

    def _trusted(self, now: float) -> float:
        """The key's TAT, unless it is further ahead than any claim puts it: then a replica's clock is wrong (or a
        lower rate is being rolled out), and waiting for it could hold every call for as long; claimed over."""
        if self.tat <= now + AHEAD + max(LEASE, self.interval) + CLOCK_SKEW:
            return self.tat
        if now >= self._warn_at:
            self._warn_at = now + WARN_EVERY
            log.warning(
                "dispatch rate of %s: its next slot is %.1fs ahead of this pod's clock; a replica's clock is wrong "
                "(or a lower rate is being rolled out): claiming from now",
                self.key,
                self.tat - now,
            )
        return 0.0

    def _unavailable(self, error: Exception) -> float:
        """The bucket did not answer: calls wait (strict) for STRICT_FOR, then this pod limits itself alone."""
        self.rev = None
        now = time.time()
        if self.down_since is None:
            self.down_since = now
            log.warning("dispatch rate of %s: the bucket does not answer (%r); calls wait", self.key, error)
        if now - self.down_since < STRICT_FOR:
            return UNAVAILABLE_WAIT
        if self.retry_at <= self.down_since:
            log.warning("dispatch rate of %s: the bucket still does not answer; this pod limits itself", self.key)
        self.retry_at = now + RETRY_EVERY
        return self._alone(now)

    def _alone(self, now: float) -> float:
        slots = grant(self.held, now, self.interval, min(self._waiting(), self.batch))
        if slots:
            self.held = slots[-1] + self.interval
            self.slots.extend(slots)
        return 0.0

    def _miss(self, start: float) -> None:
        """Calls whose deadline comes at or before `start`, the earliest slot there can be, get None."""
        while self.waiters and (self.waiters[0].fut.done() or self.waiters[0].deadline <= start):
            waiter = heapq.heappop(self.waiters)
            if not waiter.fut.done():
                waiter.fut.set_result(None)

    def _first(self) -> _Waiter | None:
        while self.waiters:
            waiter = heapq.heappop(self.waiters)
            if not waiter.fut.done():
                return waiter
        return None

    def _waiting(self) -> int:
        """Calls waiting; forgets those that gave up."""
        live = [w for w in self.waiters if not w.fut.done()]
        if len(live) != len(self.waiters):
            heapq.heapify(live)
            self.waiters = live
        return len(live)

    async def _idle(self, seconds: float) -> None:
        """Wait this long, or until a call comes or gives up."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), seconds)


class DispatchRate:
    """A worker's dispatch rates: the queue's and each function's own. `admit` is handle.Context.admit."""

    def __init__(self, store: Store, queue: str, rate: float, policies: Policies, metrics: WorkerMetrics) -> None:
        self.store = store
        self.queue = queue
        self.policies = policies
        self.metrics = metrics
        self.whole = Scope(store, contract.rate_key(queue), rate) if rate > 0 else None
        self.own: dict[str, Scope | None] = {}

    @classmethod
    def of(
        cls, js: JetStreamContext, s: WorkerSettings, policies: Policies, metrics: WorkerMetrics
    ) -> DispatchRate | None:
        """None when no rate is set: nothing waits, and the bucket is never touched."""
        if s.dispatch_rate <= 0 and not any(p.dispatch_rate > 0 for p in policies.overrides.values()):
            return None
        bucket = RateBucket(js, jetstream.rate_bucket(s.stream_replicas, s.stream_storage))
        return cls(bucket, s.queue, s.dispatch_rate, policies, metrics)

    async def admit(self, function: str) -> None:
        """Return at a moment when every rate that applies to `function` admits one more call."""
        own = self._own(function)
        if own is None and self.whole is None:
            return
        t0 = time.monotonic()
        try:
            while not await self._slot(own):
                pass
        finally:
            self.metrics.rate_wait.labels(self.queue, function).inc(time.monotonic() - t0)

    async def _slot(self, own: Scope | None) -> bool:
        """One try: the function's slot, then the queue's before it ends. False: the function's slot passed."""
        before = math.inf
        if own is not None:
            end = await own.take()
            before = math.inf if end is None else end
        return self.whole is None or await self.whole.take(before) is not None

    def _own(self, function: str) -> Scope | None:
        if function not in self.own:
            rate = self.policies(function).dispatch_rate
            key = contract.rate_key(self.queue, function)
            self.own[function] = Scope(self.store, key, rate) if rate > 0 else None
        return self.own[function]
