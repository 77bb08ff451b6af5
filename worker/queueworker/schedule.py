"""Calls that wait for their time without holding anything: scheduled submissions and long retry waits.

A waiting call is a message schedule in `OF_<queue>_SCHED` (nats-server 2.12+): the server holds it and,
at its time, stores it on `_SCHED.<queue>.due.<function>`. The `Mover` pulls due calls and publishes each
into the work stream of its partition (`contract.choose_partition`, by its `Jq-Partition-Key` or its function;
deduplicated by the due message, so a crash between publish and ack stores it once), then acks it: from there
on a scheduled call is like any other, under maxQueueLength, pause, rate and function mode. A cron schedule's
tick, fired onto the same subject, becomes its call through ticks.py and the same publish. The work stream cannot
hold the schedules itself: the server refuses them on a discard-new stream, and discard new is what keeps a full
queue from dropping calls.

Where the line is: a retry wait of at least `HOLD_AT_LEAST` seconds is held here and the call acked, so it
takes no pending slot (max_ack_pending) and delays no other call; a shorter one stays a NAK with delay,
because a schedule fires on a whole second (up to a second late) and costs two publishes, while a NAK held
for under two seconds costs a slot for under two seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import APIError, NoStreamResponseError

from jetqueue import contract, provision
from jetqueue.contract import Call, jetstream
from jetqueue.queueworker.heartbeat import AckExtender
from jetqueue.queueworker.ticks import Ticks, tick_of

log = logging.getLogger("jetqueue.schedule")
HOLD_AT_LEAST = 2.0
FULL_WAIT = 2.0  # a due call the full work stream refused is offered again after this


class Holder:
    """Holds a call's next attempt until its time (used by handle.py for long retry waits)."""

    def __init__(self, js: JetStreamContext, max_payload: Callable[[], int]) -> None:
        self.js = js
        self.max_payload = max_payload

    async def hold(self, msg: Msg, call: Call, attempts: int, delay: float) -> bool:
        """Publish attempt `attempts + 1` for `delay` seconds from now; False when it cannot be held (too large
        with the schedule's headers: the caller falls back to a NAK with delay). Raises when NATS fails."""
        meta = msg.metadata
        key = "retry-" + contract.stored_message_key(meta.stream, meta.sequence.stream, meta.timestamp)
        subject, headers = contract.held_message(call, dict(msg.headers or {}), time.time() + delay, key)
        headers[contract.H_ATTEMPTS] = str(attempts)
        if len(msg.data) + contract.header_size(headers) > self.max_payload():
            return False
        await self.js.publish(subject, msg.data, headers=headers)
        return True


class Mover:
    """Moves due calls from the schedule stream into the work stream. Driven by a fetch.ConsumerLoop."""

    def __init__(
        self,
        js: JetStreamContext,
        queue: str,
        stream_deleted: Callable[[], Awaitable[None]] | None = None,
        partitions: int = 1,
        ticks: Ticks | None = None,
        levels: Callable[[int], bool] = lambda partition: False,
    ) -> None:
        self.js = js
        self.queue = queue
        self.partitions = partitions
        self.levels = levels  # a partition served by level (static mode, priorities): a due call keeps its level
        self.extender = AckExtender(jetstream.SERVER_ACK_WAIT)
        self.stream_deleted = stream_deleted  # sets the work stream up again when a publish finds none
        self.ticks = ticks  # a cron schedule's ticks, one call each (ticks.py); None: moved like held calls

    async def handle(self, msg: Msg) -> None:
        self.extender.track(msg)
        try:
            await self._move(msg)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(msg.nak())
            raise
        except Exception as e:  # disconnected, no stream leader: the due call is offered again
            log.warning("cannot move a due call into the queue yet: %r", e)
            with contextlib.suppress(Exception):
                await msg.nak(delay=FULL_WAIT)
        finally:
            self.extender.untrack(msg)

    async def _move(self, msg: Msg) -> None:
        function = contract.function_of_due(self.queue, msg.subject)
        headers = {k: v for k, v in (msg.headers or {}).items() if not k.lower().startswith("nats-")}
        tick = tick_of(self.queue, msg) if self.ticks is not None else None
        if tick is not None and self.ticks is not None:  # a cron tick: its calls go through the same publish
            await self.ticks.move(msg, tick, function, headers, lambda h: self._publish(msg, function, h))
            return
        meta = msg.metadata
        headers[contract.H_MSG_ID] = "due-" + contract.stored_message_key(
            meta.stream, meta.sequence.stream, meta.timestamp
        )
        if await self._publish(msg, function, headers):
            await msg.ack()

    async def _publish(self, msg: Msg, function: str, headers: dict[str, str]) -> bool:
        """Store one due call in the work stream of its partition (by its Jq-Partition-Key or its function); False
        when the queue is full (the due message is put back)."""
        partition = contract.choose_partition(function, self.partitions, headers.get(contract.H_PARTITION_KEY, ""))
        level = contract.message_priority(headers) if self.levels(partition) else contract.Priority.NORMAL
        subject = contract.subject(self.queue, function or "_invalid", partition, level)  # unparsable: dead-lettered
        try:
            try:
                await self.js.publish(subject, msg.data, headers=headers)
            except NoStreamResponseError:
                stream, taken = (
                    contract.stream_name(self.queue, partition),
                    contract.queue_subjects(self.queue, partition, level),
                )
                if level is contract.Priority.NORMAL or await provision.lists_subject(self.js, stream, taken):
                    raise
                # That level's subjects were removed from the stream (function mode): a normal call, not stuck here.
                normal = contract.subject(self.queue, function or "_invalid", partition)
                await self.js.publish(normal, msg.data, headers=headers)
        except APIError as e:
            if e.err_code != jetstream.QUEUE_FULL:
                raise
            await msg.nak(delay=FULL_WAIT)  # held here meanwhile: nothing is dropped
            return False
        except NoStreamResponseError:
            if self.stream_deleted is not None:
                await self.stream_deleted()
            raise
        return True
