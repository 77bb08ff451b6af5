"""Pull calls from one consumer and carry each out: invoke, extend, retry, dead-letter, call back.

`Slots` bounds the calls running in the worker; each `ConsumerLoop` (one for the static consumer,
one per function in function mode) fetches only as many messages as there are free slots, so a
fetched message always has a task and `max_inflight` is never exceeded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError
from nats.js import JetStreamContext

from jetqueue import callstatus, contract
from jetqueue.callstatus import StatusStore
from jetqueue.contract import BadMessage, Call
from jetqueue.queueworker.callbacks import CallbackRequest, CallbackSender
from jetqueue.queueworker.deadletter import dead_letter
from jetqueue.queueworker.decision import parse_retry_after
from jetqueue.queueworker.invoke import Invoker, Outcome
from jetqueue.queueworker.metrics import WorkerMetrics, status_class
from jetqueue.queueworker.policy import Policies

log = logging.getLogger("jetqueue.worker")
FETCH_MAX = 256
FETCH_TIMEOUT = 1.0  # also bounds how long shutdown waits for the last fetch
CANCELLED_STATUS = 499  # nginx's "client closed request": the call was cancelled


class Slots:
    """A counting limit that can be asked how much is free (a Semaphore cannot)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._changed = asyncio.Event()

    @property
    def free(self) -> int:
        return max(0, self.limit - self.used)

    def take(self) -> None:
        self.used += 1

    def release(self) -> None:
        self.used -= 1
        self._changed.set()

    async def wait_release(self, timeout: float) -> None:
        """Until the next call finishes (or timeout): then there may be room again."""
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)


@dataclass
class Context:
    queue: str
    js: JetStreamContext
    policies: Policies
    invoker: Invoker
    callbacks: CallbackSender
    status: StatusStore
    metrics: WorkerMetrics
    ack_wait: float
    # Function mode: told every outcome (function, status, had Retry-After) for adaptive concurrency.
    observer: Callable[[str, int | None, bool], None] | None = None


class Processor:
    """Carries out one message. Shared by every consumer loop of a worker."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        # call id -> the task handling it, for cancel; msg -> last time it was acked or extended.
        self.running: dict[str, asyncio.Task[None]] = {}
        self.beats: dict[int, tuple[Msg, float]] = {}  # id(msg): Msg is an unhashable dataclass
        self.cancel_requested: set[str] = set()
        self.stopping = False

    def cancel(self, call_id: str) -> bool:
        task = self.running.get(call_id)
        if task is None:
            return False
        self.cancel_requested.add(call_id)
        task.cancel()
        return True

    async def heartbeat(self) -> None:
        """One ticker for every running call: +WPI once a call has run ack_wait/2 since its last signal,
        so a long call is never redelivered while it runs (cheaper than a timer task per call)."""
        half = max(0.5, self.ctx.ack_wait / 2)
        while True:
            await asyncio.sleep(half / 4)
            now = asyncio.get_running_loop().time()
            for key, (msg, last) in list(self.beats.items()):
                if now - last >= half * 0.75 and key in self.beats:
                    self.beats[key] = (msg, now)
                    with contextlib.suppress(Exception):  # disconnected: the next beat or the ack will do
                        await msg.in_progress()

    async def handle(self, msg: Msg) -> None:
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

    async def _handle(self, msg: Msg) -> None:
        c = self.ctx
        meta = msg.metadata
        attempt = meta.num_delivered or 1
        try:
            call = contract.decode(msg.subject, msg.data, msg.headers, meta.sequence.stream)
        except BadMessage as e:
            log.error("undecodable message on %s: %s; dead-lettered", msg.subject, e)
            function = msg.subject.partition(".")[2]
            label = function if contract.FUNCTION_NAME.match(function) else "_invalid"
            await dead_letter(c.js, msg, c.queue, label, "undecodable", None, attempt, str(e))
            await msg.term()
            c.metrics.dead_letters.labels(c.queue, label, "undecodable").inc()
            return
        policy = c.policies(call.function)
        rec, _ = await c.status.begin(call, attempt, policy.retry.max_attempts)
        if rec is not None and rec.get("state") == "cancelled":
            await msg.term()
            self._finish_cancelled(call, attempt, policy.retry.max_attempts, Outcome(status=None, error="cancelled"))
            return
        outcome = await self._invoke(msg, call, policy.upstream_timeout)
        if c.observer is not None:
            c.observer(call.function, outcome.status, outcome.retry_after is not None)
        labels = (c.queue, call.function)
        c.metrics.duration.labels(*labels, status_class(outcome.status)).observe(outcome.duration)
        max_attempts = policy.retry.max_attempts
        if outcome.error == "cancelled":
            await msg.term()
            await c.status.finish(call, rec, state="cancelled", status_code=None)
            self._finish_cancelled(call, attempt, max_attempts, outcome)
            return
        if outcome.ok:
            await msg.ack()
            await c.status.finish(call, rec, state="succeeded", status_code=outcome.status)
            self._final(call, outcome, attempt, max_attempts)
            return
        log_extra = {
            "call_id": call.call_id,
            "queue": c.queue,
            "function": call.function,
            "attempt": attempt,
            "status": outcome.status,
            "duration": round(outcome.duration, 4),
        }
        if policy.retry.retryable(outcome.status) and attempt < max_attempts:
            retry_after = parse_retry_after(outcome.retry_after) if outcome.status in (429, 503) else None
            delay = policy.retry.delay(attempt, retry_after)
            await msg.nak(delay=delay)
            c.metrics.retries.labels(*labels).inc()
            log.info(
                "attempt failed (%s); retrying",
                outcome.excerpt()[:200] or outcome.status,
                extra={**log_extra, "delay": round(delay, 3)},
            )
            await c.status.finish(
                call,
                rec,
                state="retrying",
                status_code=outcome.status,
                error=outcome.excerpt(),
                next_try=round(callstatus.now() + delay, 3),
            )
            return
        reason = "exhausted" if policy.retry.retryable(outcome.status) else "rejected"
        await dead_letter(c.js, msg, c.queue, call.function, reason, outcome.status, attempt, outcome.excerpt())
        await msg.term()
        c.metrics.dead_letters.labels(*labels, reason).inc()
        log.warning("dead-lettered (%s): %s", reason, outcome.excerpt()[:200], extra={**log_extra, "reason": reason})
        state = "dead-lettered" if reason == "exhausted" else "failed"
        await c.status.finish(call, rec, state=state, status_code=outcome.status, error=outcome.excerpt())
        self._final(call, outcome, attempt, max_attempts)

    async def _invoke(self, msg: Msg, call: Call, timeout: float) -> Outcome:
        c = self.ctx
        inflight = c.metrics.inflight.labels(c.queue, call.function)
        inflight.inc()
        task = asyncio.current_task()
        assert task is not None
        self.running[call.call_id] = task
        self.beats[id(msg)] = (msg, asyncio.get_running_loop().time())
        try:
            return await c.invoker.invoke(call, timeout)
        except asyncio.CancelledError:
            if call.call_id in self.cancel_requested and not self.stopping:
                task.uncancel()
                return Outcome(status=None, error="cancelled")
            raise
        finally:
            self.running.pop(call.call_id, None)
            self.cancel_requested.discard(call.call_id)
            self.beats.pop(id(msg), None)
            inflight.dec()

    def _finish_cancelled(self, call: Call, attempt: int, max_attempts: int, outcome: Outcome) -> None:
        self.ctx.metrics.processed.labels(self.ctx.queue, call.function, "cancelled").inc()
        log.info("cancelled", extra={"call_id": call.call_id, "function": call.function})
        self._final(call, Outcome(status=CANCELLED_STATUS, error="cancelled"), attempt, max_attempts, "cancelled")

    def _final(self, call: Call, outcome: Outcome, attempt: int, max_attempts: int, state: str = "") -> None:
        """Count the finished call and queue its callback (never awaited: callbacks never block)."""
        if state != "cancelled":
            self.ctx.metrics.processed.labels(self.ctx.queue, call.function, status_class(outcome.status)).inc()
        if not call.callback_url:
            return
        headers = {
            "X-Call-Id": call.call_id,
            "X-Function-Name": call.function,
            "X-Function-Status": str(outcome.status if outcome.status is not None else 503),
            "X-Duration-Seconds": f"{outcome.duration:.6f}",
            "X-Start-Time": str(call.start_time_ns),
            "X-Retry": str(attempt),
            "X-Retry-Max": str(max_attempts),
        }
        if state:
            headers["X-Call-Status"] = state
        if outcome.content_type:
            headers["Content-Type"] = outcome.content_type
        body = outcome.body if outcome.status is not None else outcome.error.encode()
        self.ctx.callbacks.submit(CallbackRequest(call.callback_url, body, headers, call.call_id))


class ConsumerLoop:
    """Fetch from one pull subscription into free slots; one task per message, tracked."""

    def __init__(
        self,
        name: str,
        psub: JetStreamContext.PullSubscription,
        slots: Slots,
        processor: Processor,
        share: Callable[[], int] | None = None,
        idle_exit: float | None = None,
    ) -> None:
        self.name = name
        self.psub = psub
        self.slots = slots
        self.processor = processor
        self.share = share  # function mode: how many more calls this consumer may start now
        self.idle_exit = idle_exit  # function mode: stop pulling after this long without a message
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False
        self.has_work = False

    async def run(self) -> None:
        last_message = asyncio.get_running_loop().time()
        try:
            await self._run(last_message)
        finally:
            self.has_work = False

    async def _run(self, last_message: float) -> None:
        clock = asyncio.get_running_loop().time
        while not self.stopping:
            free = self.slots.free if self.share is None else min(self.slots.free, self.share())
            if free <= 0:
                await self.slots.wait_release(FETCH_TIMEOUT)
                continue
            try:
                msgs = await self.psub.fetch(min(free, FETCH_MAX), timeout=FETCH_TIMEOUT)
            except TimeoutError:  # nats' TimeoutError subclasses it; fetch raises either when idle
                self.has_work = bool(self.tasks)
                if self.idle_exit is not None and not self.tasks and clock() - last_message > self.idle_exit:
                    await self._retire("idle")
                    return
                continue
            except ConnectionClosedError:
                break
            except Exception as e:  # disconnected, consumer deleted, ...: keep trying
                if self.idle_exit is not None and "consumer" in str(e).lower() and "deleted" in str(e).lower():
                    await self._retire("consumer deleted by the server")
                    return
                log.warning("fetch from %s failed: %r", self.name, e)
                await asyncio.sleep(1)
                continue
            last_message = clock()
            self.has_work = True
            for m in msgs:
                self.slots.take()
                task = asyncio.create_task(self.processor.handle(m))
                self.tasks.add(task)
                task.add_done_callback(self._done)

    async def _retire(self, why: str) -> None:
        """Stop pulling, so the server's inactive_threshold can remove the idle consumer."""
        log.info("consumer %s stops pulling (%s)", self.name, why)
        with contextlib.suppress(Exception):
            await self.psub.unsubscribe()

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.slots.release()
