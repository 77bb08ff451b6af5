"""Function mode: every function's calls served fairly, at thousands of functions.

Which consumers serve a stream of the queue (the design and its cost: sharedconsumer.py): its shared consumer while
every function's calls there fit in max_inflight (and in its adaptive limit, once a 429 set one) and no function is
paused, so a call waits behind at most max_inflight calls of any other function, at static mode's cost; otherwise a
consumer per function with calls (functionconsumers.py makes, hands over and removes them), so one function's
backlog cannot starve another: a work queue hands a consumer its calls in stream order, and only the server's
subject filter reaches another function's call without holding the backlog in front of it. Once no function needs
one any more, the function consumers are given up as they drain (functions without one wait up to CONSOLIDATE_WAIT
for the shared consumer) and the shared consumer is made again.

Which functions hold calls: functiondiscovery.py. How the consumers are pulled from within max_inflight, each
function within its fair share and adaptive limit: functiondispatch.py. At most `max_consumers` function consumers
at once: while functions wait for one, a function that has drained gives its consumer up at once, and one that has
held it ROTATE_AFTER seconds gives it up after its running calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Set
from dataclasses import dataclass

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from jetqueue import provision
from jetqueue.queueworker.adaptive import Adaptive
from jetqueue.queueworker.fetch import Slots
from jetqueue.queueworker.functionconsumers import Consumers
from jetqueue.queueworker.functiondiscovery import DISCOVER_EVERY, Discovery
from jetqueue.queueworker.functiondispatch import WATCH_WAIT, Dispatcher, Lane
from jetqueue.queueworker.handle import Context, Processor
from jetqueue.queueworker.pullrequests import PULL_TIMEOUT, Requests
from jetqueue.queueworker.sharedconsumer import LOOK_EVERY, Shared, State
from jetqueue.settings import WorkerSettings

log = logging.getLogger("jetqueue.functionmode")
MIN_CONSUMERS = 32  # function consumers this worker pulls from at once: 2 × max_inflight, within these bounds
MAX_CONSUMERS = 256
ROTATE_AFTER = 5.0  # while functions wait for a consumer, one held this long is given up after its running calls
CONSOLIDATE_WAIT = 1.0  # back to the shared consumer: functions without a consumer wait for it at most this long,
CONSOLIDATE_EVERY = 10.0  # and when the function consumers were not all gone by then, it is tried again after this


@dataclass(eq=False)
class Part:
    """One stream of the queue: what it holds, and the consumers that serve it."""

    stream: str
    discovery: Discovery
    shared: Shared
    consumers: Consumers
    lane: Lane | None = None  # the shared consumer's, while it exists
    crowded: bool | None = None  # a function has more calls than the shared consumer may serve (last map)
    consolidate_until: float | None = None  # going back to the shared consumer until then
    next_consolidate: float = -math.inf


class FunctionMode:
    def __init__(
        self,
        s: WorkerSettings,
        js: JetStreamContext,
        ctx: Context,
        processor: Processor,
        slots: Slots,
        provision_streams: Callable[[], Awaitable[object]],
        pause_until: Callable[[str | None], str | None] = lambda function: None,
        function_paused: Callable[[], bool] = lambda: False,
        streams: Mapping[int, str] | None = None,
    ) -> None:
        self.s = s
        self.js = js
        self.ctx = ctx
        self.provision_streams = provision_streams  # the streams again, when deleted underneath
        self.pause_until = pause_until  # a function's (None: the whole queue's) pause, for consumers made now
        self.function_paused = function_paused  # some function is paused: the shared consumer stays closed
        self.adaptive = Adaptive(s.max_inflight, s.adaptive_concurrency)
        # Enough consumers for every slot to run a different function, and as many again ready to go: more would
        # make every ack dearer (the server checks each consumer of a work queue on each) and gain nothing.
        self.max_consumers = max(MIN_CONSUMERS, min(MAX_CONSUMERS, 2 * s.max_inflight))
        self.functions: dict[tuple[str, str], Lane] = {}  # (stream, function) → the lane of its own consumer
        self.requests = Requests(js, self._orphan)
        # A function without a call for this long gives its consumer up, so the server can expire it.
        idle_exit = max(1.0, min(s.inactive_threshold / 2, 30.0))
        self.dispatch = Dispatcher(
            s.max_inflight, slots, processor, self.adaptive, self.requests, idle_exit, self._drained, self._lost
        )
        self.dispatch.busy = lambda: any(p.consumers.waiting or p.consumers.opening for p in self.parts.values())
        self._discovery: asyncio.Task[None] | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self.parts: dict[str, Part] = {}  # stream → its part: one per partition of the queue (`add`)
        for partition, stream in (streams or {0: s.stream}).items():
            self.add(partition, stream)
        self._limits: dict[str, int] = {}  # the concurrency limit last exported, per function
        self._observed: set[str] = set()  # functions with calls finished since the limits were last exported
        ctx.observer = self._observe

    def add(self, partition: int, stream: str) -> None:
        """Serve one more partition of the queue (its calls are in `stream`), from now on or from `start`."""
        if stream in self.parts:
            return
        s, send = self.s, self.dispatch.send
        shared = Shared(s, stream, self.requests, send, self._shared_changed, lambda: self.pause_until(None), partition)
        room = lambda: self.max_consumers - len(self.functions)  # noqa: E731
        opened = functools.partial(self._opened, stream)
        pause_until = self.pause_until
        consumers = Consumers(s, stream, shared, self.js, self.requests, send, room, opened, pause_until, partition)
        part = self.parts[stream] = Part(stream, Discovery(self.js, s.queue, stream, partition), shared, consumers)
        if self._dispatcher is not None:  # started: found later (a partition draining beyond the queue's count)
            part.shared.look()

    @property
    def tasks(self) -> set[asyncio.Task[None]]:
        """The calls running, one task each (Worker.stop waits for them)."""
        return self.dispatch.tasks

    def _orphan(self, msg: Msg) -> None:
        self.dispatch.orphan(msg)

    def _observe(self, function: str, status: int | None, retry_after: bool, duration: float) -> None:
        self.adaptive.record(function, status, retry_after, self.dispatch.running.get(function, 1), duration)
        self._observed.add(function)

    def _export_limits(self) -> None:
        """The concurrency limits of the functions that had calls since the last time (a gauge child per call costs
        more than the call's own bookkeeping)."""
        gauge = self.ctx.metrics.concurrency_limit
        for function in self._observed:
            limit = self.adaptive.limit(function)
            if self._limits.get(function) != limit:
                self._limits[function] = limit
                gauge.labels(self.s.queue, function).set(limit)
        self._observed.clear()

    async def start(self) -> None:
        durable = self.s.durable
        for stream in self.parts:
            static = None
            with contextlib.suppress(Exception):
                static = await self.js.consumer_info(stream, durable)
            if static is not None:
                raise provision.StreamSetupError(
                    f"stream {stream} has the static-mode consumer {durable}: a work queue cannot have both. Stop "
                    f"the static workers, then remove it (nats consumer rm {stream} {durable}) and start function "
                    "mode again."
                )
        await self.requests.start()
        for part in self.parts.values():
            part.shared.look()
        self._discovery = asyncio.create_task(self._discover_loop(), name="functions-discovery")
        self._dispatcher = asyncio.create_task(self.dispatch.run(), name="functions-dispatch")

    @property
    def alive(self) -> bool:
        """Discovery and the dispatcher are running (they end only on stop)."""
        return all(t is not None and not t.done() for t in (self._discovery, self._dispatcher))

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    # -- which consumers serve a stream -----------------------------------------------------------------------

    def must_split(self, counts: dict[str, int]) -> bool:
        """Does some function need a consumer of its own: a pause, or more calls than max_inflight, or than its
        adaptive limit once 429s set one?"""
        return self.function_paused() or self.crowded(counts)

    def crowded(self, counts: dict[str, int]) -> bool:
        return any(
            n > self.s.max_inflight or (n > 1 and n > (self.adaptive.ceiling(function) or n))
            for function, n in counts.items()
        )

    def _decide(self, part: Part, now: float, fresh: bool = True) -> None:
        """Bring the stream's consumers to what its calls and the pauses need (sharedconsumer.py); `fresh`: its
        counts were just read (else lanes that found nothing to fetch are not sent to look again)."""
        shared, counts = part.shared, part.discovery.counts
        if shared.state is State.UNKNOWN or shared.asking or self.dispatch.stopping:
            return
        if fresh or part.crowded is None:  # read once per subject map: thousands of functions
            part.crowded = self.crowded(counts)
        split = part.crowded or self.function_paused()
        if shared.state is State.OPEN:
            part.consolidate_until = None
            lane = part.lane
            if split:
                shared.close()
            elif fresh and lane is not None and counts and not lane.pulling:
                # settled again even when it knew of calls: a turn it missed (its pull refused) is taken now
                lane.has_work = lane.has_work or sum(counts.values()) > lane.running
                self.dispatch.settle(lane)
            return
        lanes = [lane for lane in self.functions.values() if lane.stream == part.stream]
        if shared.state is State.ABSENT and not split and now >= max(shared.not_before, part.next_consolidate):
            if not (lanes or part.consumers.opening or part.consumers.closing):
                part.consolidate_until = None
                if counts:
                    shared.open()
                return
            if part.consolidate_until is None:
                part.consolidate_until = now + CONSOLIDATE_WAIT
                part.consumers.waiting.clear()  # they wait for the shared consumer instead
            elif now >= part.consolidate_until:  # function consumers still busy: they serve a while more
                part.consolidate_until, part.next_consolidate = None, now + CONSOLIDATE_EVERY
        else:
            part.consolidate_until = None
        for lane in lanes:
            if fresh and not (lane.has_work or lane.pulling) and counts.get(lane.function or "", 0) > lane.running:
                lane.has_work = True
            self.dispatch.settle(lane)
        if part.consolidate_until is None:
            for function in counts:
                if (part.stream, function) not in self.functions:
                    part.consumers.want(function, now)
            part.consumers.open_waiting()
        self.dispatch.wake()

    def _shared_changed(self, shared: Shared) -> None:
        """An answer about the shared consumer: pull from it while it exists (closed: for the calls it redelivers),
        remove it once closed with nothing pending, and bring the stream's consumers to it."""
        part = self.parts[shared.stream]
        if shared.state in (State.OPEN, State.CLOSED):
            if part.lane is None:
                now = self._now()
                part.lane = Lane(part.stream, shared.name, None, now, now)
                self.dispatch.lanes[(part.stream, shared.name)] = part.lane
            part.lane.waits = shared.state is State.OPEN
            part.lane.has_work = bool(part.discovery.counts) if part.lane.waits else shared.pending > 0
            self.dispatch.settle(part.lane)
            if shared.state is State.CLOSED and not shared.pending:
                shared.remove()
        elif part.lane is not None:
            self.dispatch.drop(part.lane)
            part.lane = None
        self._decide(part, self._now(), fresh=False)

    def _drained(self, lane: Lane) -> None:
        """A lane with nothing to fetch and nothing running: a function's gives its consumer up when another
        function waits for one or the shared consumer waits for it to go; else it waits at the server."""
        part = self.parts[lane.stream]
        if lane.function is None:
            if lane.waits:
                self.dispatch.rest(lane)
        elif lane.retiring or part.consumers.waiting or part.consolidate_until is not None:
            self._close(lane, remove=True)
        else:
            self.dispatch.rest(lane)

    def _opened(self, stream: str, function: str, consumer: str) -> None:
        now = self._now()
        lane = self.functions[(stream, function)] = Lane(stream, consumer, function, opened=now, last_message=now)
        log.debug("consuming function %s (consumer %s)", function, consumer)
        self.dispatch.add(lane)

    def _close(self, lane: Lane, remove: bool) -> None:
        """Stop pulling from a function's consumer; `remove`: others wait for it to go (Consumers.given_up)."""
        assert lane.function is not None
        self.dispatch.drop(lane)
        self.functions.pop((lane.stream, lane.function), None)
        part = self.parts[lane.stream]
        part.consumers.given_up(lane.function, lane.consumer, quiet=lane.delivered == 0, remove=remove)

    def _lost(self, lane: Lane) -> None:
        """Its consumer is gone (deleted underneath, or expired): a function's is made again at once, keeping its
        turn; the shared one is asked again."""
        log.info("consumer %s is missing; setting it up again", lane.consumer)
        part = self.parts[lane.stream]
        if lane.function is None:
            part.shared.look()
            return
        self._close(lane, remove=False)
        part.consumers.want_first(lane.function)

    # -- discovery and upkeep ---------------------------------------------------------------------------------

    async def _discover_loop(self) -> None:
        while not self.dispatch.stopping:
            fresh: set[str] = set()
            for part in self.parts.values():
                try:
                    if await part.discovery.look(self._now()):
                        fresh.add(part.stream)
                except NotFoundError:
                    log.warning("stream %s is missing; setting it up again", part.stream)
                    with contextlib.suppress(Exception):
                        await self.provision_streams()
                except provision.StreamSetupError as e:
                    log.error("%s", e)
                except Exception as e:
                    log.debug("discovery failed: %r", e)
            self._tend(fresh)
            await asyncio.sleep(DISCOVER_EVERY)

    def _tend(self, fresh: Set[str] = frozenset()) -> None:
        """Answers that did not come are given up; the shared consumer's state is asked while unknown or closed,
        and each stream's consumers brought to what it holds; functions idle past idle_exit give their consumer up
        (the server expires it); while others wait for a consumer, those holding one ROTATE_AFTER give it up after
        their running calls."""
        now, dispatch = self._now(), self.dispatch
        self.requests.expire(now)
        for part in self.parts.values():
            part.consumers.forget_past(now, keep=4 * self.max_consumers)
            shared = part.shared
            unknown = shared.state is State.UNKNOWN and now >= shared.not_before
            if unknown or (shared.state is State.CLOSED and now - shared.asked_at >= LOOK_EVERY):
                shared.look()
            self._decide(part, now, part.stream in fresh)
        if len(dispatch.idle) > 2 * len(dispatch.lanes):  # closed since (the rotation only looks when nobody works)
            dispatch.idle = type(dispatch.idle)(lane for lane in dispatch.idle if not lane.closed)
        waiting = sum(len(p.consumers.waiting) for p in self.parts.values())
        opening = sum(len(p.consumers.opening) for p in self.parts.values())
        full = len(self.functions) + opening >= self.max_consumers
        for lane in list(self.functions.values()):
            rotate = waiting > 0 and full and not lane.retiring and now - lane.opened >= ROTATE_AFTER
            if rotate:
                lane.retiring, waiting = True, waiting - 1
            if lane.pulling or lane.running:
                if rotate:
                    dispatch.count(lane)
            elif rotate:
                self._close(lane, remove=True)
            elif not lane.has_work and now - lane.last_message > dispatch.idle_exit:
                self._close(lane, remove=False)
        self._export_limits()
        dispatch.wake()

    async def stop(self) -> None:
        """Stop pulling. Calls running go on (Worker.stop waits for `tasks`); calls fetched but not started are
        handed back with a NAK. Pulls under way end within WATCH_WAIT."""
        self.dispatch.stopping = True
        for part in self.parts.values():
            part.consumers.stop()
        if self._discovery:
            self._discovery.cancel()
            with contextlib.suppress(BaseException):
                await self._discovery
        self.dispatch.wake()
        if self._dispatcher:
            try:
                await asyncio.wait_for(asyncio.shield(self._dispatcher), WATCH_WAIT + PULL_TIMEOUT)
            except (TimeoutError, Exception):
                self.requests.finish_all("stopping")
                self._dispatcher.cancel()
                with contextlib.suppress(BaseException):
                    await self._dispatcher
        await self.requests.stop()
        await self.dispatch.hand_back()
