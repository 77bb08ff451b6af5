"""One call per cron tick, exactly: what the Mover does with a due message a cron schedule fired (schedules.py).

Which tick a due message is: the server writes the next tick into it (`Nats-Schedule-Next`), so the tick is the
one before that (cron.py, in the schedule's zone); a due message without it (a schedule made by hand) is the tick
of its storage second. The tick's call id is derived from the queue, the schedule and the tick
(`contract.cron_call_id`), and so is its `Nats-Msg-Id` in the work stream.

Exactly once, against every way a tick could come twice or not at all:
- The schedules bucket holds each schedule's last tick that became a call. It moves only forward, tick by
  tick, by compare-and-set, after each tick's call is stored, and before the due message is acked. A due message for a
  tick at or before it is acked and makes nothing: a redelivery (a worker died before its ack, another replica
  took it after the ack wait), or the server firing a tick again, however late.
- A crash between the call's publish and the record's write: the redelivered due message publishes the call
  again under the same `Nats-Msg-Id`, which the work stream drops as a duplicate (within its 2-minute window;
  the due consumer redelivers after 30 s).
- Missed ticks: nats-server fires a schedule once when it missed several (it was down, or its stream had no
  leader across them). The first tick after a gap makes each missed one's call too (the latest `MAX_CATCH_UP`,
  none before the schedule was stored), each under its own id; older ones are counted as skipped and logged.
- Worker replicas share one due consumer, so one of them moves a given due message at a time; two moving
  different ticks of one schedule meet at the record, whose compare-and-set lets one write at a time.
When the bucket cannot be read or written, the due message is put back and offered again: a tick waits, rather
than risk a second call.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig
from nats.js.errors import KeyWrongLastSequenceError

from jetqueue import callstatus, contract, cron, keyvalue, provision, schedules
from jetqueue.callstatus import QueueStatus
from jetqueue.contract import CallState
from jetqueue.queueworker.metrics import WorkerMetrics

log = logging.getLogger("jetqueue.ticks")
H_NEXT = "Nats-Schedule-Next"
H_SCHEDULER = "Nats-Scheduler"
MAX_CATCH_UP = 100  # missed ticks made up after a gap, the latest first
MAX_COUNTED = 100_000  # skipped ticks counted beyond that (a bound on the work)
CAS_TRIES = 5


@dataclass(frozen=True)
class Tick:
    schedule: str
    at: float  # unix seconds
    expr: cron.Cron | None  # None: no expression known (made by hand): nothing is made up
    since: float  # when the schedule was stored: no tick before it is made up

    def missed(self, last: float) -> tuple[list[float], int]:
        """The ticks after `last` (and after `since`) before this one that the server did not fire: the latest
        MAX_CATCH_UP, oldest first, and how many older ones are left out."""
        after = max(last, self.since)
        if self.expr is None or not last or after >= self.at:
            return [], 0
        recent: list[float] = []
        t = self.at
        while len(recent) < MAX_CATCH_UP:
            t = self.expr.previous_before(t)
            if t <= after:
                return recent[::-1], 0
            recent.append(t)
        skipped, t = 0, self.expr.next_after(after)
        while t < recent[-1] and skipped < MAX_COUNTED:
            skipped, t = skipped + 1, self.expr.next_after(t)
        return recent[::-1], skipped


def tick_of(queue: str, msg: Msg) -> Tick | None:
    """The tick a due message is, or None when no cron schedule fired it (a call held for later)."""
    h = msg.headers or {}
    name = contract.schedule_of_cron(queue, h.get(H_SCHEDULER, ""))
    if not name:
        return None
    stored = msg.metadata.timestamp.timestamp()
    try:
        since = float(h.get(schedules.H_SINCE, "") or 0.0)
    except ValueError:
        since = 0.0
    try:
        expr: cron.Cron | None = cron.parse(h[schedules.H_CRON], h.get(schedules.H_ZONE, "UTC"))
        nxt = datetime.fromisoformat(h[H_NEXT]).timestamp()
        assert expr is not None
        at = expr.previous_before(nxt)
        if expr.next_after(at) != nxt:  # not the server's reading of the expression (a corner cron.py misses)
            raise ValueError(f"tick {at} is not followed by {nxt}")
    except (KeyError, ValueError):
        expr, at = None, float(math.floor(stored))
    return Tick(name, at, expr, since)


def call_headers(due: dict[str, str], queue: str, tick: Tick, at: float) -> dict[str, str]:
    """The call of tick `at`: the schedule's call headers, with its own id and start time."""
    h = {k: v for k, v in due.items() if k not in schedules.DEFINITION_HEADERS}
    call_id = contract.cron_call_id(queue, tick.schedule, at)
    h.update({contract.H_CALL_ID: call_id, contract.H_MSG_ID: call_id, contract.H_START: str(int(at) * 10**9)})
    return h


class Ticks:
    """Makes the calls of a cron schedule's due messages, one per tick (the Mover hands them here)."""

    def __init__(
        self,
        js: JetStreamContext,
        queue: str,
        bucket: KeyValueConfig,
        metrics: WorkerMetrics,
        status: QueueStatus | None = None,
    ) -> None:
        self.js = js
        self.queue = queue
        self.config = bucket
        self.metrics = metrics
        self.status = status

    async def move(
        self,
        msg: Msg,
        tick: Tick,
        function: str,
        headers: dict[str, str],
        publish: Callable[[dict[str, str]], Awaitable[bool]],
    ) -> None:
        """Publish the calls of the ticks missed before `tick`, oldest first, then its own, with `publish` (False:
        the queue is full and the due message was put back), the record moving to each tick once its call is
        stored (so no call is stored twice, however long the queue stays full); then ack. Raises when NATS fails."""
        key = contract.cron_key(self.queue, tick.schedule)
        kv = await provision.ensure_bucket(self.js, self.config)
        made: list[float] = []
        skipped, conflicts = 0, 0
        try:
            while True:
                found = await keyvalue.latest(self.js, contract.SCHEDULE_BUCKET, key)
                record = json.loads(found[0]) if found else {}
                last = float(record.get("last", 0.0))
                if last >= tick.at:  # made already: a redelivery, a repeated firing, or made up by a later tick
                    await msg.ack()
                    return
                missed, gap = tick.missed(last)
                at = (missed or [tick.at])[0]
                if not await publish(call_headers(headers, self.queue, tick, at)):
                    return
                value = {
                    "last": at,
                    "call_id": contract.cron_call_id(self.queue, tick.schedule, at),
                    "ticks": int(record.get("ticks", 0)) + 1,
                    "skipped": int(record.get("skipped", 0)) + gap,
                    "updated_at": callstatus.now(),
                }
                try:
                    if found is None:
                        await kv.create(key, json.dumps(value).encode())
                    else:
                        await kv.update(key, json.dumps(value).encode(), last=found[1])
                except KeyWrongLastSequenceError:  # another replica moved a tick of this schedule meanwhile
                    conflicts += 1
                    if conflicts > CAS_TRIES:
                        raise RuntimeError(f"the record of schedule {tick.schedule} kept changing") from None
                    continue
                made.append(at)
                skipped += gap
        finally:
            self._report(tick, made, skipped)
            for at in made:
                await self._queued(function, tick, at)

    def _report(self, tick: Tick, made: list[float], skipped: int) -> None:
        counter = self.metrics.schedule_ticks
        if made:
            counter.labels(self.queue, tick.schedule, "called").inc(len(made))
        if skipped:
            counter.labels(self.queue, tick.schedule, "skipped").inc(skipped)
            log.warning(
                "schedule %s: %d missed tick(s) before %s not made up (the latest %d were)",
                tick.schedule,
                skipped,
                datetime.fromtimestamp(made[0]).isoformat(),
                MAX_CATCH_UP,
            )
        made_up = len([at for at in made if at < tick.at])
        if made_up:
            log.info("schedule %s: made up %d missed tick(s)", tick.schedule, made_up)

    async def _queued(self, function: str, tick: Tick, at: float) -> None:
        """The tick's call's submission record (`queued`), as the gateway writes one for a submission."""
        if self.status is None or not self.status.enabled:
            return
        call = contract.Call(
            call_id=contract.cron_call_id(self.queue, tick.schedule, at),
            queue=self.queue,
            function=function,
            start_time_ns=int(at) * 10**9,
        )
        record = callstatus.base_record(call, CallState.QUEUED, schedule=tick.schedule)
        with contextlib.suppress(Exception):  # status is a report: the call is stored already
            await self.status.store(call.call_id).submitted_confirmed(record)
