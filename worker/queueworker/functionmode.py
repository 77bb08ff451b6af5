"""Function mode: one durable pull consumer per function, so one function's backlog cannot starve another.

Functions are discovered from the subjects that hold messages (stream info with a subject filter,
four times a second: one request whatever the backlog), and consumers are named `<queue>-fn-<function>`
with the server's inactive_threshold: a consumer left idle is removed by the server, and found again
when its function has work. The worker's max_inflight is shared fairly between the functions that
have work, and each function's share is capped by its adaptive concurrency limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import replace

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from jetqueue import contract, provision
from jetqueue.contract import jetstream
from jetqueue.queueworker.adaptive import Adaptive
from jetqueue.queueworker.fetch import ConsumerLoop, Slots
from jetqueue.queueworker.handle import Context, Processor
from jetqueue.settings import WorkerSettings

log = logging.getLogger("jetqueue.functionmode")
DISCOVER_EVERY = 0.25  # one stream-info request, whatever the backlog


class FunctionMode:
    def __init__(
        self,
        s: WorkerSettings,
        js: JetStreamContext,
        ctx: Context,
        processor: Processor,
        slots: Slots,
        provision_streams: Callable[[], Awaitable[object]],
    ) -> None:
        self.s = s
        self.js = js
        self.ctx = ctx
        self.processor = processor
        self.slots = slots
        self.provision_streams = provision_streams  # the streams again, when deleted underneath
        self.adaptive = Adaptive(s.max_inflight, s.adaptive_concurrency)
        self.loops: dict[str, ConsumerLoop] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.retired: list[ConsumerLoop] = []
        self.stopping = False
        self._discover: asyncio.Task[None] | None = None
        # A loop that saw no message for this long stops pulling, so the server can expire its consumer.
        self.idle_exit = max(1.0, min(s.inactive_threshold / 2, 30.0))
        ctx.observer = self._observe

    def _observe(self, function: str, status: int | None, retry_after: bool, duration: float) -> None:
        loop = self.loops.get(function)
        inflight = len(loop.tasks) if loop else 1
        self.adaptive.record(function, status, retry_after, inflight, duration)
        self.ctx.metrics.concurrency_limit.labels(self.s.queue, function).set(self.adaptive.limit(function))

    async def start(self) -> None:
        static = None
        with contextlib.suppress(Exception):
            static = await self.js.consumer_info(self.s.stream, self.s.durable)
        if static is not None:
            raise provision.StreamSetupError(
                f"stream {self.s.stream} has the static-mode consumer {self.s.durable}: a work queue cannot have "
                "both. Stop the static workers, then remove it (nats consumer rm "
                f"{self.s.stream} {self.s.durable}) and start function mode again."
            )
        self._discover = asyncio.create_task(self._discover_loop())

    @property
    def alive(self) -> bool:
        """The discovery loop is running (it ends only on stop)."""
        return self._discover is not None and not self._discover.done()

    def share(self, function: str) -> int:
        """Free slots this function may still take: its fair share of max_inflight among the functions
        with work, capped by its adaptive limit."""
        loop = self.loops[function]
        active = sum(1 for lp in self.loops.values() if lp.tasks or lp.has_work) or 1
        fair = math.ceil(self.s.max_inflight / active)
        return min(fair, self.adaptive.limit(function)) - len(loop.tasks)

    async def _discover_loop(self) -> None:
        while not self.stopping:
            try:
                info = await self.js.stream_info(self.s.stream, subjects_filter=contract.queue_subjects(self.s.queue))
                for subject in sorted(info.state.subjects or {}):
                    function = subject.partition(".")[2]
                    loop = self.loops.get(function)
                    if loop is not None and not self.tasks[function].done():
                        # Its own fetches say whether it has work: a subject that holds only calls waiting
                        # for a retry has none to start, and must not take a share of max_inflight.
                        continue
                    try:
                        await self._start_function(function)
                    except Exception as e:  # this function's problem only: the others are still served
                        log.warning("cannot consume function %r: %r", function[:80], e)
            except NotFoundError:
                log.warning("stream %s is missing; setting it up again", self.s.stream)
                with contextlib.suppress(Exception):
                    await self.provision_streams()
            except provision.StreamSetupError as e:
                log.error("%s", e)
            except Exception as e:
                log.debug("discovery failed: %r", e)
            await asyncio.sleep(DISCOVER_EVERY)

    async def _start_function(self, function: str) -> None:
        s = self.s
        want = jetstream.function_consumer(
            s.queue, function, s.ack_wait, s.max_ack_pending, s.max_waiting, s.inactive_threshold
        )
        name = want.durable
        await provision.ensure_consumer(self.js, replace(want, stream=s.stream))
        psub = await self.js.pull_subscribe_bind(durable=name, stream=self.s.stream)
        old = self.loops.get(function)
        if old is not None:
            self.retired.append(old)
        loop = ConsumerLoop(
            name, psub, self.slots, self.processor, share=lambda: self.share(function), idle_exit=self.idle_exit
        )
        loop.has_work = True
        self.loops[function] = loop
        self.tasks[function] = asyncio.create_task(loop.run(), name=f"consumer-{name}")
        log.info("consuming function %s (consumer %s)", function, name)

    def all_loops(self) -> list[ConsumerLoop]:
        return [*self.loops.values(), *self.retired]

    async def stop(self) -> None:
        self.stopping = True
        if self._discover:
            self._discover.cancel()
            with contextlib.suppress(BaseException):
                await self._discover
        for loop in self.loops.values():
            loop.stopping = True
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
