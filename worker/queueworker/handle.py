"""Carry out one message: decode it, run the call, then do what `decision.decide` says, always in the
same order: store the callback (a finished call's), settle the message in JetStream, record the status,
count and log.

The callback is stored before settling so a worker that dies after the ack loses no callback; settling
keeps the promise of the 202 (ack, retry later, or the dead letter stored before the message is
terminated); status and metrics are reports about it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from jetqueue import callstatus, contract
from jetqueue.callstatus import StatusStore
from jetqueue.contract import BadMessage, Call, CallState
from jetqueue.queueworker.callbacks import CallbackStore
from jetqueue.queueworker.deadletter import dead_letter
from jetqueue.queueworker.decision import Ack, Cancelled, DeadLetter, Decision, Retry, decide
from jetqueue.queueworker.heartbeat import AckExtender
from jetqueue.queueworker.invoke import CANCELLED, Invoker, Outcome
from jetqueue.queueworker.metrics import WorkerMetrics, status_class
from jetqueue.queueworker.policy import Policies
from jetqueue.queueworker.schedule import HOLD_AT_LEAST, Holder

log = logging.getLogger("jetqueue.worker")
CANCELLED_STATUS = 499  # nginx's "client closed request": the X-Function-Status of a cancelled call
UNDECODABLE = "undecodable"
EXPIRED = "expired: older than maxEventAge, not invoked"


@dataclass
class Context:
    queue: str
    js: JetStreamContext
    policies: Policies
    invoker: Invoker
    callbacks: CallbackStore
    status: StatusStore
    metrics: WorkerMetrics
    ack_wait: float
    max_payload: Callable[[], int]  # the server's limit on one message, from its INFO (dead letters fit it)
    keep_credentials: bool = False  # in dead letters (settings.dead_letter_credentials)
    # Function mode: told every outcome (function, status, had Retry-After, duration) for adaptive concurrency.
    observer: Callable[[str, int | None, bool, float], None] | None = None
    holder: Holder | None = None  # long retry waits are held as message schedules (schedule.py); None: NAK
    # The dispatch rate: awaited before each invocation with the function's name (ratelimit.py).
    admit: Callable[[str], Awaitable[None]] | None = None


def state_of(decision: Decision) -> CallState:
    match decision:
        case Ack():
            return CallState.SUCCEEDED
        case Retry():
            return CallState.RETRYING
        case DeadLetter(reason="exhausted"):
            return CallState.DEAD_LETTERED
        case DeadLetter(reason="expired"):
            return CallState.EXPIRED
        case DeadLetter():
            return CallState.FAILED
        case Cancelled():
            return CallState.CANCELLED
    raise AssertionError(decision)


class Processor:
    """Carries out one message. Shared by every consumer loop of a worker."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.extender = AckExtender(ctx.ack_wait)
        self.running: dict[str, asyncio.Task[None]] = {}  # call id -> the task handling it, for cancel
        self.cancel_requested: set[str] = set()
        self.stopping = False

    def cancel(self, call_id: str) -> bool:
        task = self.running.get(call_id)
        if task is None:
            return False
        self.cancel_requested.add(call_id)
        task.cancel()
        return True

    async def handle(self, msg: Msg) -> None:
        self.extender.track(msg)
        try:
            await self._handle(msg)
        except asyncio.CancelledError:
            if self.stopping:  # shutdown timeout: hand the call back for another worker, at once
                with contextlib.suppress(Exception):
                    await asyncio.shield(msg.nak())
            raise
        except Exception:
            # A bug or a lost connection: the message is redelivered after ack_wait. Never crash the loop.
            log.exception("unexpected error handling message on %s", msg.subject)
        finally:
            self.extender.untrack(msg)

    async def _handle(self, msg: Msg) -> None:
        c = self.ctx
        meta = msg.metadata
        try:
            fallback = contract.derived_call_id(c.queue, meta.sequence.stream, meta.timestamp)
            call = contract.decode(msg.subject, msg.data, msg.headers, fallback)
        except BadMessage as e:
            await self._undecodable(msg, meta.num_delivered or 1, e)
            return
        attempt = call.prior_attempts + (meta.num_delivered or 1)  # a held retry counts the attempts before it
        policy = c.policies(call.function)
        # A call that waited for its time (held) is the same call as its record, whatever its sequence now.
        seq = None if call.prior_attempts or call.not_before else meta.sequence.stream
        rec, _ = await c.status.begin(call, attempt, policy.retry.max_attempts, seq)
        max_age = policy.retry.max_event_age
        if rec is not None and rec.get("state") == CallState.CANCELLED:  # cancelled while queued
            outcome = Outcome(status=None, error=CANCELLED)
        elif max_age and call.age(time.time()) >= max_age:
            outcome = Outcome(status=None, error=EXPIRED)
        else:
            outcome = await self._invoke(call, policy.upstream_timeout)
            if c.observer is not None:
                c.observer(call.function, outcome.status, outcome.retry_after is not None, outcome.duration)
            c.metrics.duration.labels(c.queue, call.function, status_class(outcome.status)).observe(outcome.duration)
        decision = decide(outcome, attempt, policy.retry, age=call.age(time.time()))
        state = state_of(decision)
        if state.final and call.callback_url:  # stored before the ack: a worker dying after it loses nothing
            await self._store_callback(msg, call, state, outcome, attempt, policy.retry.max_attempts)
        await self._settle(msg, call, decision, outcome, attempt)
        fields: dict[str, object] = {"state": state, "status_code": outcome.status}
        if not outcome.ok and not outcome.cancelled:
            fields["error"] = outcome.excerpt()
        if isinstance(decision, Retry):
            fields["next_try"] = round(callstatus.now() + decision.delay, 3)
        await c.status.finish(call, rec, **fields)
        self._report(call, decision, outcome, attempt)

    async def _settle(self, msg: Msg, call: Call, decision: Decision, outcome: Outcome, attempt: int) -> None:
        """Keep the 202's promise in JetStream: removed, redelivered later, or stored as a dead letter first."""
        match decision:
            case Ack():
                await msg.ack()
            case Retry(delay=delay):
                holder = self.ctx.holder
                if holder is not None and delay >= HOLD_AT_LEAST and await holder.hold(msg, call, attempt, delay):
                    await msg.ack()  # the next attempt is stored as a schedule: nothing is held meanwhile
                else:
                    await msg.nak(delay=delay)
            case DeadLetter(reason=reason):
                c, status, why = self.ctx, outcome.status, outcome.excerpt()
                await dead_letter(
                    c.js, msg, c.queue, call.function, reason, status, attempt, why, c.max_payload(), c.keep_credentials
                )
                await msg.term()
            case Cancelled():
                await msg.term()

    def _report(self, call: Call, decision: Decision, outcome: Outcome, attempt: int) -> None:
        c = self.ctx
        labels = (c.queue, call.function)
        extra = {
            "call_id": call.call_id,
            "queue": c.queue,
            "function": call.function,
            "attempt": attempt,
            "status": outcome.status,
            "duration": round(outcome.duration, 4),
        }
        match decision:
            case Ack():
                c.metrics.processed.labels(*labels, status_class(outcome.status)).inc()
            case Retry(delay=delay):
                c.metrics.retries.labels(*labels).inc()
                why = outcome.excerpt()[:200] or outcome.status
                log.info("attempt failed (%s); retrying", why, extra={**extra, "delay": round(delay, 3)})
            case DeadLetter(reason=reason):
                c.metrics.dead_letters.labels(*labels, reason).inc()
                c.metrics.processed.labels(*labels, status_class(outcome.status)).inc()
                why = outcome.excerpt()[:200]
                log.warning("dead-lettered (%s): %s", reason, why, extra={**extra, "reason": reason})
            case Cancelled():
                c.metrics.processed.labels(*labels, CallState.CANCELLED.value).inc()
                log.info("cancelled", extra=extra)

    async def _undecodable(self, msg: Msg, attempt: int, error: BadMessage) -> None:
        """A message no attempt can deliver: stored as a dead letter, never retried, never a crash loop."""
        c = self.ctx
        log.error("undecodable message on %s: %s; dead-lettered", msg.subject, error)
        function = msg.subject.partition(".")[2]
        label = function if contract.FUNCTION_NAME.match(function) else "_invalid"
        await dead_letter(
            c.js, msg, c.queue, label, UNDECODABLE, None, attempt, str(error), c.max_payload(), c.keep_credentials
        )
        await msg.term()
        c.metrics.dead_letters.labels(c.queue, label, UNDECODABLE).inc()

    async def _invoke(self, call: Call, timeout: float) -> Outcome:
        c = self.ctx
        task = asyncio.current_task()
        assert task is not None
        self.running[call.call_id] = task
        inflight = c.metrics.inflight.labels(c.queue, call.function)
        try:
            if c.admit is not None:  # waiting for the dispatch rate can be cancelled like the call
                await c.admit(call.function)
            inflight.inc()
            try:
                return await c.invoker.invoke(call, timeout)
            finally:
                inflight.dec()
        except asyncio.CancelledError:
            if call.call_id in self.cancel_requested and not self.stopping:
                task.uncancel()
                return Outcome(status=None, error=CANCELLED)
            raise
        finally:
            self.running.pop(call.call_id, None)
            self.cancel_requested.discard(call.call_id)

    async def _store_callback(
        self, msg: Msg, call: Call, state: CallState, outcome: Outcome, attempt: int, max_attempts: int
    ) -> None:
        """The callback of a finished call, stored in JetStream; callbacks.py sends it."""
        status = CANCELLED_STATUS if outcome.cancelled else outcome.status
        headers = {
            "X-Call-Id": call.call_id,
            "X-Function-Name": call.function,
            "X-Function-Status": str(status if status is not None else 503),
            "X-Duration-Seconds": f"{outcome.duration:.6f}",
            "X-Start-Time": str(call.start_time_ns),
            "X-Retry": str(attempt),
            "X-Retry-Max": str(max_attempts),
        }
        if state in (CallState.CANCELLED, CallState.EXPIRED):
            headers["X-Call-Status"] = state.value
        if outcome.content_type:
            headers["Content-Type"] = outcome.content_type
        if outcome.content_encoding:
            headers["Content-Encoding"] = outcome.content_encoding
        if outcome.cancelled:
            body = b""
        else:
            body = outcome.body if outcome.status is not None else outcome.error.encode()
        meta = msg.metadata
        key = contract.stored_message_key(meta.stream, meta.sequence.stream, meta.timestamp)
        await self.ctx.callbacks.store(key, call.callback_url, body, headers)
