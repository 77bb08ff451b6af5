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
from functools import partial

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from jetqueue import callstatus, contract, results
from jetqueue.contract import BadMessage, Call, CallState
from jetqueue.queueworker.callbacks import CallbackStore
from jetqueue.queueworker.deadletter import dead_letter
from jetqueue.queueworker.decision import Ack, Cancelled, DeadLetter, Decision, Retry, decide
from jetqueue.queueworker.heartbeat import AckExtender
from jetqueue.queueworker.invoke import CANCELLED, Invoker, Outcome
from jetqueue.queueworker.metrics import WorkerMetrics, status_class
from jetqueue.queueworker.policy import Policies
from jetqueue.queueworker.schedule import HOLD_AT_LEAST, Holder
from jetqueue.queueworker.statuswriter import StatusWriter
from jetqueue.results import ResultBodies

log = logging.getLogger("jetqueue.worker")
CANCELLED_STATUS = 499  # nginx's "client closed request": the X-Function-Status of a cancelled call
UNDECODABLE = "undecodable"
EXPIRED = "expired: older than maxEventAge, not invoked"
# The ends a failure callback (X-Failure-Callback-Url) is sent for: not a cancel, which the caller asked for.
FAILED_STATES = frozenset({CallState.DEAD_LETTERED, CallState.FAILED, CallState.EXPIRED})


@dataclass
class Context:
    queue: str
    js: JetStreamContext
    policies: Policies
    invoker: Invoker
    callbacks: CallbackStore
    status: StatusWriter
    metrics: WorkerMetrics
    ack_wait: float
    max_payload: Callable[[], int]  # the server's limit on one message, from its INFO (dead letters fit it)
    keep_credentials: bool = False  # in dead letters (settings.dead_letter_credentials)
    # Function mode: told every outcome (function, status, had Retry-After, duration) for adaptive concurrency.
    observer: Callable[[str, int | None, bool, float], None] | None = None
    holder: Holder | None = None  # long retry waits are held as message schedules (schedule.py); None: NAK
    # The dispatch rate: awaited before each invocation with the function's name (ratelimit.py).
    admit: Callable[[str], Awaitable[None]] | None = None
    # Was this call cancelled before it came (cancels.CancelWatch.requested)? None: cancel is off.
    cancelled: Callable[[Call], bool] | None = None
    results: ResultBodies | None = None  # where result bodies too large for the status record go (results.py)
    result_limit: int = 0  # bytes of a function's answer kept as the call's result; 0: none kept


def _stored_ns(msg: Msg) -> int:
    return int(msg.metadata.timestamp.timestamp() * 1_000_000) * 1000


def _attempt(attempt: int, max_attempts: int, started: float) -> dict[str, object]:
    return {"attempt": attempt, "max_attempts": max_attempts, "started_at": started}


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
        # call id -> the task invoking it and the call's start time, for cancel
        self.running: dict[str, tuple[asyncio.Task[None], int]] = {}
        self.cancel_requested: set[str] = set()
        self.stopping = False

    def cancel(self, call_id: str, start_ns: int | None = None) -> bool:
        """Abort the call if this worker is invoking it (`start_ns`: only that call, not a later one of the id)."""
        task, start = self.running.get(call_id, (None, None))
        if task is None or (start_ns is not None and start != start_ns):
            return False
        self.cancel_requested.add(call_id)
        task.cancel()
        log.info("cancelling running call", extra={"call_id": call_id})
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
            h = msg.headers or {}
            named = bool(h.get(contract.H_CALL_ID) or h.get(contract.H_MSG_ID))  # else the id comes from the storage
            fallback = "" if named else contract.derived_call_id(c.queue, meta.sequence.stream, meta.timestamp)
            # Only a message without a start time needs its storage time (parsed from the ack subject).
            stored_ns = 0 if contract.H_START in h else _stored_ns(msg)
            call = contract.decode(msg.subject, msg.data, msg.headers, fallback, stored_ns)
        except BadMessage as e:
            await self._undecodable(msg, meta.num_delivered or 1, e)
            return
        attempt = call.prior_attempts + (meta.num_delivered or 1)  # a held retry counts the attempts before it
        policy = c.policies(call.function)
        max_attempts, max_age = policy.retry.max_attempts, policy.retry.max_event_age
        started = callstatus.now()
        # The call's record exists already when an earlier attempt ran: read it before writing. (The gateway's
        # record is its submission record, under a key of its own: a first attempt creates the call's record.)
        seen = attempt > 1
        if c.cancelled is not None and c.cancelled(call):  # cancelled while queued
            outcome = Outcome(status=None, error=CANCELLED)
        elif max_age and call.age(time.time()) >= max_age:
            outcome = Outcome(status=None, error=EXPIRED)
        else:
            if c.status.enabled:  # written only if the call still runs after a grace (most are over by then)
                fields = _attempt(attempt, max_attempts, started)
                c.status.started(call.call_id, partial(callstatus.base_record, call, CallState.RUNNING, **fields), seen)
            outcome = await self._invoke(call, policy.upstream_timeout)
            if c.observer is not None:
                c.observer(call.function, outcome.status, outcome.retry_after is not None, outcome.duration)
            m = c.metrics
            m.child(m.duration, c.queue, call.function, status_class(outcome.status)).observe(outcome.duration)
        decision = decide(outcome, attempt, policy.retry, age=call.age(time.time()))
        state = state_of(decision)
        if state.final and (call.callback_url or call.failure_callback_url):  # stored before the ack: none is lost
            await self._store_callback(msg, call, state, outcome, attempt, policy.retry.max_attempts)
        await self._settle(msg, call, decision, outcome, attempt)
        if c.status.enabled:
            await self._record(call, state, decision, outcome, _attempt(attempt, max_attempts, started), seen)
        self._report(call, decision, outcome, attempt)

    async def _record(
        self,
        call: Call,
        state: CallState,
        decision: Decision,
        outcome: Outcome,
        fields: dict[str, object],
        seen: bool,
    ) -> None:
        """The status record of the attempt's end (statuswriter.py writes it off the call's slot)."""
        fields["status_code"] = outcome.status
        if not outcome.ok and not outcome.cancelled:
            fields["error"] = outcome.excerpt()
        if isinstance(decision, Retry):
            fields["next_try"] = round(callstatus.now() + decision.delay, 3)
            self.ctx.status.report(callstatus.base_record(call, state, **fields), read_first=seen)
        else:
            c = self.ctx
            if c.result_limit and outcome.status is not None and not outcome.cancelled:
                found = await results.make(
                    call, outcome.status, outcome.body, outcome.headers, c.result_limit, c.results
                )
                if found is not None:
                    fields["result"] = found
            await c.status.final(callstatus.base_record(call, state, **fields), read_first=seen)

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
        c, m = self.ctx, self.ctx.metrics
        labels = (c.queue, call.function)
        if isinstance(decision, Ack):  # the common case: one counter, no log line
            m.child(m.processed, *labels, status_class(outcome.status)).inc()
            return
        extra = {
            "call_id": call.call_id,
            "queue": c.queue,
            "function": call.function,
            "attempt": attempt,
            "status": outcome.status,
            "duration": round(outcome.duration, 4),
        }
        match decision:
            case Retry(delay=delay):
                m.child(m.retries, *labels).inc()
                why = outcome.excerpt()[:200] or outcome.status
                log.info("attempt failed (%s); retrying", why, extra={**extra, "delay": round(delay, 3)})
            case DeadLetter(reason=reason):
                m.child(m.dead_letters, *labels, reason).inc()
                m.child(m.processed, *labels, status_class(outcome.status)).inc()
                why = outcome.excerpt()[:200]
                log.warning("dead-lettered (%s): %s", reason, why, extra={**extra, "reason": reason})
            case Cancelled():
                m.child(m.processed, *labels, CallState.CANCELLED.value).inc()
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
        self.running[call.call_id] = (task, call.start_time_ns)
        inflight = c.metrics.child(c.metrics.inflight, c.queue, call.function)
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
        """The callbacks of a finished call, stored in JetStream; callbacks.py sends them. The failure callback (only
        for a failed end) is the same callback to its own URL, with `X-Call-Status`, under a key of its own."""
        status = CANCELLED_STATUS if outcome.cancelled else outcome.status
        headers = {
            "X-Call-Id": call.call_id,
            "X-Function-Name": call.function,
            "X-Function-Status": str(status if status is not None else 503),
            "X-Duration-Seconds": f"{outcome.duration:.6f}",
            "X-Start-Time": str(call.start_time_ns),
            # As OpenFaaS documents them: retries made, and retries allowed (equal: this was the last attempt).
            "X-Retry": str(attempt - 1),
            "X-Retry-Max": str(max_attempts - 1),
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
        if call.callback_url:
            await self.ctx.callbacks.store(key, call.callback_url, body, headers)
        if call.failure_callback_url and state in FAILED_STATES:
            failed = {**headers, "X-Call-Status": state.value}
            await self.ctx.callbacks.store(f"{key}-failure", call.failure_callback_url, body, failed)
