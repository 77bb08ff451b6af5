"""The queue-worker process: connect, set up the queue's streams, run consumer loops (one per partition, or one
function mode per partition: queueworker/partitions.py), shut down cleanly.

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

from aiohttp import web
from nats.aio.client import Client
from nats.js import JetStreamContext

from jetqueue import contract, provision, schedules
from jetqueue.callstatus import QueueStatus
from jetqueue.cancels import CancelWatch
from jetqueue.connection import connect
from jetqueue.contract import jetstream
from jetqueue.egress import Egress
from jetqueue.openfaas import FunctionCatalog
from jetqueue.probes import add_probes, serve
from jetqueue.queueworker import gauges
from jetqueue.queueworker.callbacks import CallbackSender, CallbackStore
from jetqueue.queueworker.fetch import ConsumerLoop, Slots
from jetqueue.queueworker.functionmode import FunctionMode
from jetqueue.queueworker.handle import Context, Processor
from jetqueue.queueworker.invoke import Invoker
from jetqueue.queueworker.keylimit import KeyLimits
from jetqueue.queueworker.metrics import WorkerMetrics
from jetqueue.queueworker.partitions import Partitions
from jetqueue.queueworker.pauses import PauseFollower
from jetqueue.queueworker.policy import Policies
from jetqueue.queueworker.priorities import Turns
from jetqueue.queueworker.pullrequests import ConsumerPull
from jetqueue.queueworker.ratelimit import DispatchRate
from jetqueue.queueworker.schedule import Holder, Mover
from jetqueue.queueworker.statuswriter import StatusWriter
from jetqueue.queueworker.streams import QueueStreams
from jetqueue.queueworker.ticks import Ticks
from jetqueue.results import ResultBodies
from jetqueue.settings import WorkerSettings
from jetqueue.signing import signing_keys

log = logging.getLogger("jetqueue.worker")
CANCELS_READY_WAIT = 10.0
MOVE_AT_ONCE = 64  # due calls moved into the work stream at once
SCHEDULES_RETRY = 5.0  # seconds between attempts to apply queues.yaml's schedules
FLUSH_TIMEOUT = 5.0  # on shutdown, for the last status records and the callbacks being sent


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
        self._schedules: asyncio.Task[None] | None = None  # applying queues.yaml's schedules
        self.cancels: CancelWatch | None = None
        self.status: StatusWriter | None = None
        self._stop = asyncio.Event()
        self.processor: Processor | None = None
        self.callbacks: CallbackSender | None = None
        self.invoker: Invoker | None = None
        self.function_mode: FunctionMode | None = None  # serves every partition
        self.pauses: PauseFollower | None = None
        self.pulls: dict[tuple[int, contract.Priority | None], ConsumerPull] = {}  # static: per partition (, level)
        self.partition_loops: list[ConsumerLoop] = []  # static mode's loops, per partition (and level), sharing slots
        self.turns = Turns()  # which level's loops take free slots next (priorities.py)
        self.partitions: Partitions | None = None
        self.streams: QueueStreams | None = None  # the queue's streams and static consumers (streams.py)
        self.ctx: Context | None = None
        # The functions' OpenFaaS annotations (JETQUEUE_OPENFAAS_URL), read in the background for the policies.
        self.catalog = FunctionCatalog.of(settings, self.policies.annotations_changed)
        self.policies.catalog = self.catalog

    async def start(self) -> None:
        s = self.s
        log.info("starting worker for queue %s: %r", s.queue, s)
        self.http = await self._serve_http()
        if self.catalog is not None:
            self.catalog.start()

        async def reconnected() -> None:
            self.metrics.reconnects.inc()
            if self.cancels is not None:  # cancels stored while disconnected: watch again from the bucket
                self.cancels.restart()
            for pull in self.pulls.values():
                pull.reconnected()

        self.nc = await connect(s, f"jetqueue-worker-{s.queue}", on_reconnect=reconnected)
        js = self.js = self.nc.jetstream()
        partitions = self.partitions = Partitions(js, s, self._consume)
        self.pauses = PauseFollower(js, s, self.metrics, lambda: partitions.streams)
        await self.pauses.start()  # before any consumer is created: a paused one is created paused
        streams = self.streams = QueueStreams(js, s, partitions, self.pauses)
        ack_wait = await self._provision()
        store = (
            QueueStatus.of(js, s.queue, s.partitions, s.status_ttl, s.stream_replicas, s.stream_storage)
            if s.call_status
            else QueueStatus.off()
        )
        await store.open()
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
        ctx = self.ctx = Context(
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
            results=ResultBodies.of(js, s.queue, s.status_ttl, s.stream_replicas, s.stream_storage),
            result_limit=s.result_max_bytes if s.call_status else 0,
            keys=KeyLimits.of(js, s, self.policies),
        )
        self.processor = Processor(ctx)
        if s.call_status:
            self.cancels = CancelWatch(js, s.queue, s.stream_replicas, s.stream_storage, self.processor.cancel)
            self._cancel_watch = asyncio.create_task(self.cancels.run(), name="cancels")
            with contextlib.suppress(TimeoutError):  # know the calls cancelled while queued before taking any
                await asyncio.wait_for(self.cancels.ready.wait(), CANCELS_READY_WAIT)
        await partitions.start()  # a consumer loop (or a function mode) for each partition: _consume
        ticks = Ticks(js, s.queue, jetstream.schedule_bucket(s.stream_replicas, s.stream_storage), self.metrics, store)
        mover = Mover(js, s.queue, self._restore_work_stream, s.partitions, ticks, streams.served_by_level)
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
        self._timer = asyncio.create_task(gauges.refresh(js, s.queue, self.metrics, partitions, self.pauses))
        self._beat = asyncio.create_task(self.processor.extender.run())
        self._sender = asyncio.create_task(self.callbacks.run(), name="callbacks")
        log.info(
            "worker ready: queue=%s streams=%s mode=%s max_inflight=%d",
            s.queue,
            ",".join(partitions.streams),
            s.mode,
            s.max_inflight,
        )

    async def _consume(self, partition: int) -> None:
        """Take calls from one partition: its static consumer's loop (loops share the worker's slots, so
        max_inflight holds over every partition), or a part of the one function mode."""
        s, js, ctx = self.s, self.js, self.ctx
        assert js is not None and ctx is not None and self.processor is not None and self.partitions is not None
        assert self.pauses is not None and self.streams is not None
        stream = self.partitions.stream(partition)
        if partition >= s.partitions:  # found beyond the queue's partitions: its stream and consumer, as for others
            await self.streams.provision_partition(partition)
        if s.mode == "static":
            for level in contract.LEVELS if partition in self.streams.leveled else (None,):
                await self._consume_static(partition, level)
            return
        if self.function_mode is not None:  # one function mode serves every partition: a part each
            self.function_mode.add(partition, stream)
            return
        self.function_mode = FunctionMode(
            s,
            js,
            ctx,
            self.processor,
            self.slots,
            self._provision,
            pause_until=self.pauses.until,
            function_paused=self.pauses.function_paused,
            streams={partition: stream},
        )
        await self.function_mode.start()

    async def _consume_static(self, partition: int, level: contract.Priority | None) -> None:
        """One static consumer's loop: the partition's, or one level's of it (`level`, taking slots in turns)."""
        js, processor = self.js, self.processor
        assert js is not None and processor is not None and self.partitions is not None and self.streams is not None
        stream = self.partitions.stream(partition)
        durable = self.streams.durable(level)
        pull = self.pulls[(partition, level)] = await ConsumerPull(
            js, stream, durable, orphan=lambda m: loop.adopt(m)
        ).start()
        name = durable if partition == 0 else f"{durable} on {stream}"
        # Loops share the slots: an idle one waits for its next call holding one slot, not every free one (it
        # would starve the other partitions' loops for its whole wait), and takes as many as are free once busy.
        loop = ConsumerLoop(
            name,
            pull,
            self.slots,
            processor,
            share=lambda: self.slots.limit,
            rebind=lambda: self._rebind(partition, level),
            contended=lambda: any(other.has_work for other in self.partition_loops if other is not loop),
            turn=None if level is None else self.turns.turn(level),
        )
        self.partition_loops.append(loop)
        self._add_loop(loop)

    async def _provision(self) -> float:
        """The queue's streams and consumers (streams.py), at start and when deleted underneath."""
        assert self.streams is not None
        return await self.streams.provision()

    async def _bind_due(self) -> JetStreamContext.PullSubscription:
        """The schedule stream, the consumer that moves due calls into the queue and the schedules queues.yaml
        declares (at start, and when deleted)."""
        s, js = self.s, self.js
        assert js is not None
        await provision.ensure_stream(js, jetstream.schedule_stream(s.queue, s.stream_replicas, s.stream_storage))
        await provision.ensure_consumer(js, jetstream.due_consumer(s.queue, s.max_waiting))
        if s.schedules_file and (self._schedules is None or self._schedules.done()):  # in the stream just ensured
            self._schedules = asyncio.create_task(self._apply_schedules(js), name="schedules")
        return await js.pull_subscribe_bind(
            durable=contract.due_durable_name(s.queue), stream=contract.schedule_stream_name(s.queue)
        )

    async def _apply_schedules(self, js: JetStreamContext) -> None:
        """queues.yaml's schedules of this queue (schedules.apply), beside the start: calls flow meanwhile, and a
        failure (NATS, the bucket) is tried again until they are applied."""
        s = self.s
        egress = Egress.parse(s.callback_hosts, s.callback_blocked_networks)
        bucket = jetstream.schedule_bucket(s.stream_replicas, s.stream_storage)
        while True:
            try:
                revision, wanted = schedules.load_file(s.schedules_file)
                done = await schedules.apply(js, s.queue, wanted, egress, revision, bucket)
                log.info("schedules from %s: %s", s.schedules_file, {k: v for k, v in done.items() if v} or "unchanged")
                return
            except Exception as e:
                log.warning("cannot apply the schedules of %s yet: %r", s.schedules_file, e)
                await asyncio.sleep(SCHEDULES_RETRY)

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

    async def _rebind(self, partition: int, level: contract.Priority | None) -> ConsumerPull:
        """A static consumer vanished (deleted, or lost with the server's state): set it up again (pulls go on
        under the same name)."""
        await self._provision()
        return self.pulls[(partition, level)]

    def _add_loop(self, loop: ConsumerLoop) -> None:
        self.loops.append(loop)
        self._loop_tasks.append(asyncio.create_task(loop.run(), name=f"consumer-{loop.name}"))

    async def _serve_http(self) -> web.AppRunner:
        app = web.Application()
        add_probes(app, self.metrics.registry, self._alive, self._ready)
        return await serve(app, self.s.http_host, self.s.http_port)

    def _alive(self) -> bool:
        if self._stop.is_set():
            return True
        return (self.function_mode is None or self.function_mode.alive) and not any(t.done() for t in self._loop_tasks)

    def _ready(self) -> str | None:
        if self.nc is None or not self.nc.is_connected:
            return "not connected to NATS"
        if self.processor is None:
            return "consumer not bound"
        lost = [loop.name for loop in self.loops if loop.lost]
        if lost:
            return f"consumer {', '.join(lost)} missing; setting it up again"
        return None

    def request_stop(self) -> None:
        self._stop.set()

    async def wait(self) -> None:
        await self._stop.wait()

    async def stop(self) -> None:
        """Stop fetching, wait for in-flight calls up to the shutdown timeout, NAK the rest, drain."""
        t0 = time.monotonic()
        for loop in self.loops:
            loop.stopping = True
        if self.partitions is not None:
            await self.partitions.stop()
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
        for timer in (self._timer, self._beat, self._mover_beat, self._cancel_watch, self._schedules):
            if timer:
                timer.cancel()
        # The last status records and the callbacks being sent, at once, before the connection goes: with the
        # drain (DRAIN_TIMEOUT) the worker is gone within shutdown_timeout + about 10 s (the chart's grace: + 15 s).
        await asyncio.gather(
            *([self.status.close(timeout=FLUSH_TIMEOUT)] if self.status else []),
            *([self.callbacks.close(timeout=FLUSH_TIMEOUT)] if self.callbacks else []),
        )
        if self.pauses:
            await self.pauses.stop()
        if self._sender:
            await asyncio.gather(self._sender, return_exceptions=True)
        if self.invoker:
            await self.invoker.close()
        if self.catalog is not None:
            await self.catalog.close()
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
