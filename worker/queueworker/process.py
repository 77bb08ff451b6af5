"""The queue-worker process: connect, set up the queue's streams, run consumer loops, shut down cleanly.

SIGTERM/SIGINT: stop fetching, let in-flight calls finish up to the shutdown timeout, hand the rest
back with a NAK (redelivered at once elsewhere), stop sending callbacks (stored ones wait in JetStream),
drain the connection, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import replace

from aiohttp import web
from nats.aio.client import Client
from nats.js import JetStreamContext
from prometheus_client import Gauge

from jetqueue import backlog, contract, provision
from jetqueue.callstatus import StatusStore
from jetqueue.cancels import CancelWatch
from jetqueue.connection import connect
from jetqueue.contract import jetstream
from jetqueue.egress import Egress
from jetqueue.probes import add_probes, serve
from jetqueue.queueworker.callbacks import CallbackSender, CallbackStore
from jetqueue.queueworker.fetch import ConsumerLoop, Slots
from jetqueue.queueworker.functionmode import FunctionMode
from jetqueue.queueworker.handle import Context, Processor
from jetqueue.queueworker.invoke import Invoker
from jetqueue.queueworker.metrics import WorkerMetrics
from jetqueue.queueworker.pauses import PauseFollower
from jetqueue.queueworker.policy import Policies
from jetqueue.queueworker.pullrequests import ConsumerPull
from jetqueue.queueworker.ratelimit import DispatchRate
from jetqueue.queueworker.schedule import Holder, Mover
from jetqueue.queueworker.statuswriter import StatusWriter
from jetqueue.settings import WorkerSettings
from jetqueue.signing import signing_keys

log = logging.getLogger("jetqueue.worker")
PENDING_REFRESH = 5.0
CANCELS_READY_WAIT = 10.0
MOVE_AT_ONCE = 64  # due calls moved into the work stream at once


class Worker:
    def __init__(self, settings: WorkerSettings, metrics: WorkerMetrics | None = None) -> None:
        self.s = settings
        self.metrics = metrics or WorkerMetrics()
        self.policies = Policies.from_settings(settings)
        self.slots = Slots(settings.max_inflight)
        self.loops: list[ConsumerLoop] = []
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self.http: web.AppRunner | None = None
        self._loop_tasks: list[asyncio.Task[None]] = []
        self._timer: asyncio.Task[None] | None = None
        self._beat: asyncio.Task[None] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._mover_beat: asyncio.Task[None] | None = None
        self._cancel_watch: asyncio.Task[None] | None = None
        self.cancels: CancelWatch | None = None
        self.status: StatusWriter | None = None
        self._stop = asyncio.Event()
        self.processor: Processor | None = None
        self.callbacks: CallbackSender | None = None
        self.invoker: Invoker | None = None
        self.function_mode: FunctionMode | None = None
        self.pauses: PauseFollower | None = None
        self.pull: ConsumerPull | None = None  # static mode's source

    async def start(self) -> None:
        s = self.s
        log.info("starting worker for queue %s: %r", s.queue, s)
        self.http = await self._serve_http()

        async def reconnected() -> None:
            self.metrics.reconnects.inc()
            if self.cancels is not None:  # cancels stored while disconnected: watch again from the bucket
                self.cancels.restart()
            if self.pull is not None:
                self.pull.reconnected()

        self.nc = await connect(s, f"jetqueue-worker-{s.queue}", on_reconnect=reconnected)
        js = self.js = self.nc.jetstream()
        self.pauses = PauseFollower(js, s, self.metrics)
        await self.pauses.start()  # before any consumer is created: a paused one is created paused
        ack_wait = await self._provision()
        bucket = jetstream.status_bucket(s.status_ttl, s.stream_replicas, s.stream_storage)
        store = StatusStore(js, bucket) if s.call_status else StatusStore.off()
        await store.bucket()
        self.status = status = StatusWriter(store)
        await status.start()
        self.invoker = Invoker(s.function_url, s.max_inflight)
        self.callbacks = CallbackSender(
            js,
            s.queue,
            self.metrics,
            Egress.parse(s.callback_hosts, s.callback_blocked_networks),
            self.nc.max_payload,
            attempts=s.callback_attempts,
            max_wait=s.callback_max_wait,
            timeout=s.callback_timeout,
            concurrency=s.callback_concurrency,
            host_concurrency=s.callback_host_concurrency,
            signing_keys=signing_keys(s.callback_signing_keys),
        )
        self.callbacks.bind(await self._bind_callbacks(), self._bind_callbacks)
        nc = self.nc
        rates = DispatchRate.of(js, s, self.policies, self.metrics)  # None: no rate set, no bucket touched
        ctx = Context(
            s.queue,
            js,
            self.policies,
            self.invoker,
            CallbackStore(js, s.queue, self.nc.max_payload),
            status,
            self.metrics,
            ack_wait,
            max_payload=lambda: nc.max_payload,
            keep_credentials=s.dead_letter_credentials,
            # With a queue limit a held retry would have to win its place back from new calls when due (it could
            # starve): there, waiting retries keep their place as NAK delays.
            holder=None if s.max_queue_length or s.max_queue_bytes else Holder(js, lambda: nc.max_payload),
            cancelled=lambda call: self.cancels is not None and self.cancels.requested(call),
            admit=rates.admit if rates else None,
        )
        self.processor = Processor(ctx)
        if s.call_status:
            self.cancels = CancelWatch(js, s.stream_replicas, s.stream_storage, self.processor.cancel)
            self._cancel_watch = asyncio.create_task(self.cancels.run(), name="cancels")
            with contextlib.suppress(TimeoutError):  # know the calls cancelled while queued before taking any
                await asyncio.wait_for(self.cancels.ready.wait(), CANCELS_READY_WAIT)
        if s.mode == "static":
            self.pull = await ConsumerPull(js, s.stream, s.durable, orphan=lambda m: loop.adopt(m)).start()
            loop = ConsumerLoop(s.durable, self.pull, self.slots, self.processor, rebind=self._rebind)
            self._add_loop(loop)
        else:
            self.function_mode = FunctionMode(
                s,
                js,
                ctx,
                self.processor,
                self.slots,
                self._provision,
                pause_until=self.pauses.until,
                function_paused=self.pauses.function_paused,
            )
            await self.function_mode.start()
        mover = Mover(js, s.queue, self._restore_work_stream)
        self._add_loop(
            ConsumerLoop(
                contract.due_durable_name(s.queue),
                await self._bind_due(),
                Slots(MOVE_AT_ONCE),
                mover,
                rebind=self._bind_due,
            )
        )
        self._mover_beat = asyncio.create_task(mover.extender.run())
        self._timer = asyncio.create_task(self._refresh_pending(js))
        self._beat = asyncio.create_task(self.processor.extender.run())
        self._sender = asyncio.create_task(self.callbacks.run(), name="callbacks")
        log.info("worker ready: queue=%s stream=%s mode=%s max_inflight=%d", s.queue, s.stream, s.mode, s.max_inflight)

    async def _provision(self) -> float:
        """The queue's streams and (static mode) its consumer, created if missing: at start, and again when
        they were deleted underneath. Returns the consumer's ack wait."""
        s, js = self.s, self.js
        assert js is not None and self.pauses is not None
        # The names may be overridden (an adopted OpenFaaS stream); everything else is the contract's.
        work = jetstream.work_stream(
            s.queue, s.stream_replicas, s.stream_storage, s.max_queue_length, s.max_queue_bytes
        )
        await provision.ensure_stream(js, replace(work, name=s.stream))
        dlq = jetstream.dead_letter_stream(s.queue, s.stream_replicas, s.stream_storage)
        await provision.ensure_dlq_stream(js, replace(dlq, name=s.dlq_stream))
        if s.mode != "static":
            return s.ack_wait
        consumer = jetstream.static_consumer(s.queue, s.ack_wait, s.max_ack_pending, s.max_waiting)
        durable = replace(consumer, stream=s.stream, durable=s.durable)
        return await provision.ensure_consumer(js, durable, self.pauses.until())

    async def _bind_due(self) -> JetStreamContext.PullSubscription:
        """The schedule stream and the consumer that moves due calls into the queue (at start, and when deleted)."""
        s, js = self.s, self.js
        assert js is not None
        await provision.ensure_stream(js, jetstream.schedule_stream(s.queue, s.stream_replicas, s.stream_storage))
        await provision.ensure_consumer(js, jetstream.due_consumer(s.queue, s.max_waiting))
        return await js.pull_subscribe_bind(
            durable=contract.due_durable_name(s.queue), stream=contract.schedule_stream_name(s.queue)
        )

    async def _restore_work_stream(self) -> None:
        """A due call found no work stream (deleted underneath): set the queue up again."""
        with contextlib.suppress(Exception):
            await self._provision()

    async def _bind_callbacks(self) -> JetStreamContext.PullSubscription:
        """The callbacks stream and the sender's consumer, created if missing (at start, and when deleted)."""
        s, js = self.s, self.js
        assert js is not None
        await provision.ensure_stream(js, jetstream.callback_stream(s.queue, s.stream_replicas, s.stream_storage))
        await provision.ensure_consumer(js, jetstream.callback_consumer(s.queue, s.callback_timeout, s.max_waiting))
        return await js.pull_subscribe_bind(
            durable=contract.callback_durable_name(s.queue), stream=contract.callback_stream_name(s.queue)
        )

    async def _rebind(self) -> ConsumerPull:
        """The static consumer vanished (deleted, or lost with the server's state): set it up again (pulls go on
        under the same name)."""
        await self._provision()
        assert self.pull is not None
        return self.pull

    def _add_loop(self, loop: ConsumerLoop) -> None:
        self.loops.append(loop)
        self._loop_tasks.append(asyncio.create_task(loop.run(), name=f"consumer-{loop.name}"))

    async def _serve_http(self) -> web.AppRunner:
        app = web.Application()
        add_probes(app, self.metrics.registry, self._alive, self._ready)
        return await serve(app, self.s.http_host, self.s.http_port)

    def _alive(self) -> bool:
        if self.function_mode is not None:
            return self.function_mode.alive or self._stop.is_set()
        return not any(t.done() for t in self._loop_tasks) or self._stop.is_set()

    def _ready(self) -> str | None:
        if self.nc is None or not self.nc.is_connected:
            return "not connected to NATS"
        if self.processor is None:
            return "consumer not bound"
        lost = [loop.name for loop in self.loops if loop.lost]
        if lost:
            return f"consumer {', '.join(lost)} missing; setting it up again"
        return None

    async def _refresh_pending(self, js: JetStreamContext) -> None:
        """queue_worker_pending_messages and queue_worker_scheduled_messages per function, from the subjects
        holding messages; queue_worker_paused for the queue and those functions (a pause ends by itself)."""
        pending: set[str] = set()
        scheduled: set[str] = set()

        def publish(gauge: Gauge, known: set[str], counts: dict[str, int]) -> None:
            for fn in known - set(counts):  # had calls, has none now
                gauge.labels(self.s.queue, fn).set(0)
            for fn, n in counts.items():
                gauge.labels(self.s.queue, fn).set(n)
            known |= set(counts)

        while True:
            try:
                info = await js.stream_info(self.s.stream, subjects_filter=contract.queue_subjects(self.s.queue))
                counts = {subj.partition(".")[2]: n for subj, n in (info.state.subjects or {}).items()}
                publish(self.metrics.pending, pending, counts)
                publish(self.metrics.scheduled, scheduled, (await backlog.held(js, self.s.queue)).per_function)
                if self.pauses is not None:
                    self.pauses.export(pending | scheduled)
            except Exception as e:
                log.debug("pending refresh failed: %r", e)
            await asyncio.sleep(PENDING_REFRESH)

    def request_stop(self) -> None:
        self._stop.set()

    async def wait(self) -> None:
        await self._stop.wait()

    async def stop(self) -> None:
        """Stop fetching, wait for in-flight calls up to the shutdown timeout, NAK the rest, drain."""
        t0 = time.monotonic()
        for loop in self.loops:
            loop.stopping = True
        if self.function_mode is not None:
            await self.function_mode.stop()
        await asyncio.gather(*self._loop_tasks, return_exceptions=True)
        tasks = {t for loop in self.loops for t in loop.tasks}
        if self.function_mode is not None:  # its calls, one task each
            tasks |= self.function_mode.tasks
        if tasks:
            log.info("shutting down: waiting up to %.0fs for %d in-flight call(s)", self.s.shutdown_timeout, len(tasks))
            _, pending = await asyncio.wait(tasks, timeout=self.s.shutdown_timeout)
            if pending:
                log.warning("handing %d unfinished call(s) back to the queue", len(pending))
                if self.processor:
                    self.processor.stopping = True
                for t in pending:
                    t.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        if self.status is not None:  # the last records, before the connection goes
            await self.status.close(timeout=5.0)
        for timer in (self._timer, self._beat, self._mover_beat, self._cancel_watch):
            if timer:
                timer.cancel()
        if self.pauses:
            await self.pauses.stop()
        if self.callbacks:
            await self.callbacks.close(timeout=5.0)
        if self._sender:
            await asyncio.gather(self._sender, return_exceptions=True)
        if self.invoker:
            await self.invoker.close()
        for loop in self.loops:  # a pull subscription never drains by itself: it has no callback
            with contextlib.suppress(Exception):
                await loop.psub.unsubscribe()
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.nc.drain()
        if self.http:
            await self.http.cleanup()
        log.info("worker stopped in %.1fs", time.monotonic() - t0)


async def run(settings: WorkerSettings) -> int:
    worker = Worker(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.request_stop)
    try:
        await worker.start()
    except (provision.StreamSetupError, ConnectionError, OSError) as e:
        log.error("cannot start: %s", e)
        await worker.stop()
        return 1
    await worker.wait()
    await worker.stop()
    return 0
