"""Function mode: a durable pull consumer per function, so one function's backlog cannot starve another,
at thousands of functions.

Why a consumer per function rather than fair scheduling over one: a work queue hands a consumer its calls in
stream order, so behind 5,000 calls of one function only the server's subject filter reaches another's call
without holding the 5,000. The per-function consumer (`contract.function_consumer_name`) is also what a pause
(jetqueue/pauses.py) and KEDA's lag per function act on.

What keeps it cheap as functions grow:

- Discovery asks the stream for its state (one small answer) every DISCOVER_EVERY seconds, and for its subject
  map (one entry per function holding calls, whatever the backlog) only when its last sequence moved, or every
  RECHECK_EVERY seconds for calls that became deliverable again without a publish (redeliveries).
- At most MAX_CONSUMERS consumers at once (nats-server 2.15 allows 1,000 per stream unless told otherwise).
  While functions wait for one, a function that has drained gives its consumer up at once, and one that has
  held it ROTATE_AFTER seconds gives it up after its running calls: more functions with calls than consumers
  still take turns. Which function gets a consumer next, how it is made and when it may be removed:
  queueworker/functionconsumers.py.
- Consumers have memory storage and the stream's replicas. Losing a consumer's state (every replica restarted)
  loses no call: the stream keeps each call until it is acked, and a consumer made again delivers what is still
  there. What it costs: calls in flight then run again (as after an ack_wait), and the attempt count of a call
  waiting on a short retry (a NAK with delay, under schedule.HOLD_AT_LEAST; longer waits carry their count in
  the held message) starts again. File storage keeps that count but costs the server 2.5-5× more per consumer
  made and removed. R1 would be cheaper still but not safe: an R1 consumer does not move when its server is
  lost, so that function's calls would wait for the server to come back.
- One dispatcher instead of a task polling each consumer: functions with calls wait in a ready queue and are
  served in turn; each turn is one no-wait pull (answered at once: no slot is held while nothing comes). Every
  request (pulls, consumers made and removed) goes out from the dispatcher and is answered on one subscription
  (`Requests`), handed to a callback: nothing waits on a request. The share of max_inflight is counted from sets
  kept as functions gain and lose calls, not by walking them.
- When no function has calls, idle functions wait at the server for their next call (a pull with expiry, one
  slot each), so a call to a known function starts at once rather than at the next discovery.

max_inflight holds as in fetch.py: slots are taken before a pull asks for calls, a pull asks for no more than
it took, and a call delivered after its pull gave up (a lost answer) waits for a free slot with its ack
extended. Every fetched call is handled, or handed back with a NAK when the worker stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from jetqueue import contract, provision
from jetqueue.queueworker.adaptive import Adaptive
from jetqueue.queueworker.fetch import FETCH_MAX, Slots
from jetqueue.queueworker.functionconsumers import Consumers
from jetqueue.queueworker.handle import Context, Processor
from jetqueue.queueworker.pullrequests import NO_MESSAGES, PULL_TIMEOUT, Message, Pull, Requests
from jetqueue.settings import WorkerSettings

log = logging.getLogger("jetqueue.functionmode")
DISCOVER_EVERY = 0.25  # the stream's state: one small request
RECHECK_EVERY = 2.0  # the subject map even when nothing was published: redeliveries need no publish
MIN_TURN = 2  # calls a function may take at once however many functions have calls (at most max_inflight)
MIN_CONSUMERS = 32  # consumers this worker pulls from at once: 2 × max_inflight, within these bounds
MAX_CONSUMERS = 256
ROTATE_AFTER = 5.0  # while functions wait for a consumer, one held this long is given up after its running calls
WATCH_WAIT = 1.0  # an idle function's pull waits this long at the server; also bounds stop's wait for it
PULL_RETRY = 1.0  # after a transient refusal (leadership change, too many waiting pulls), pull again after this
WAKE_EVERY = 0.5  # the dispatcher looks again at least this often


@dataclass(eq=False, slots=True)
class Function:
    """A function this worker holds a consumer for."""

    name: str
    consumer: str
    opened: float
    last_message: float
    has_work: bool = True  # calls may be deliverable: pull when its turn comes
    queued: bool = False  # in the ready queue
    pulling: bool = False  # one pull at a time
    running: int = 0
    delivered: int = 0  # calls fetched since its consumer was opened
    idle: bool = False  # in the idle rotation (waiting pulls)
    retiring: bool = False  # gives its consumer up once its running calls are done (others wait for one)
    closed: bool = False


class FunctionMode:
    def __init__(
        self,
        s: WorkerSettings,
        js: JetStreamContext,
        ctx: Context,
        processor: Processor,
        slots: Slots,
        provision_streams: Callable[[], Awaitable[object]],
        pause_until: Callable[[str], str | None] = lambda function: None,
        partition: int = 0,  # of the queue, whose stream is `s.stream` (one function mode per partition)
        busy_elsewhere: Callable[[], bool] = lambda: False,  # another partition's has calls: no slot for watching
    ) -> None:
        self.s = s
        self.partition = partition
        self.busy_elsewhere = busy_elsewhere
        self.js = js
        self.ctx = ctx
        self.processor = processor
        self.slots = slots
        self.provision_streams = provision_streams  # the streams again, when deleted underneath
        self.adaptive = Adaptive(s.max_inflight, s.adaptive_concurrency)
        # Enough consumers for every slot to run a different function, and as many again ready to go: more would
        # make every ack dearer (the server checks each consumer of a work queue on each) and gain nothing.
        self.max_consumers = max(MIN_CONSUMERS, min(MAX_CONSUMERS, 2 * s.max_inflight))
        self.functions: dict[str, Function] = {}  # holding a consumer (at most max_consumers, with those opening)
        self.ready: deque[Function] = deque()  # have calls to fetch: served in turn
        self.idle: deque[Function] = deque()  # no calls: wait at the server in turn when nobody has calls
        self.active: set[str] = set()  # have calls or run some: max_inflight is shared among them
        self.working: set[str] = set()  # have calls to fetch
        self.tasks: set[asyncio.Task[None]] = set()  # one per call
        self.surplus: deque[Msg] = deque()  # delivered after their pull gave up: started first
        self.stopping = False
        self.requests = Requests(js, s.stream, self._orphan)
        self._outbox: deque[Message] = deque()  # sent by the dispatcher, in order
        self._wake = asyncio.Event()
        self._discovery: asyncio.Task[None] | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self.seen_seq: int | None = None
        self.mapped_at = -math.inf
        # A function without a call for this long gives its consumer up, so the server can expire it.
        self.idle_exit = max(1.0, min(s.inactive_threshold / 2, 30.0))
        self.consumers = Consumers(
            s,
            js,
            self.requests,
            self._send,
            lambda: self.max_consumers - len(self.functions),
            self._opened,
            pause_until,
            partition,
        )
        self._limits: dict[str, int] = {}  # the concurrency limit last exported, per function
        self._other = ctx.observer  # another partition's function mode: every one learns from every outcome
        ctx.observer = self._observe

    def _observe(self, function: str, status: int | None, retry_after: bool, duration: float) -> None:
        if self._other is not None:
            self._other(function, status, retry_after, duration)
        fn = self.functions.get(function)
        self.adaptive.record(function, status, retry_after, fn.running if fn else 1, duration)
        limit = self.adaptive.limit(function)
        if self._limits.get(function) != limit:  # a gauge child per call costs more than the call's bookkeeping
            self._limits[function] = limit
            self.ctx.metrics.concurrency_limit.labels(self.s.queue, function).set(limit)

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
        await self.requests.start()
        self._discovery = asyncio.create_task(self._discover_loop(), name="functions-discovery")
        self._dispatcher = asyncio.create_task(self._dispatch_loop(), name="functions-dispatch")

    @property
    def alive(self) -> bool:
        """Discovery and the dispatcher are running (they end only on stop)."""
        return all(t is not None and not t.done() for t in (self._discovery, self._dispatcher))

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _send(self, message: Message) -> None:
        self._outbox.append(message)
        self._wake.set()

    # -- shares ---------------------------------------------------------------------------------------------

    def fair(self) -> int:
        """max_inflight shared among the functions with calls, in turns of at least MIN_TURN calls each: with more
        functions than slots, one call per turn would cost a pull per call."""
        m = self.s.max_inflight
        return math.ceil(m / max(1, min(len(self.active), m // MIN_TURN)))

    def share(self, fn: Function) -> int:
        """Free slots this function may still take: its fair share of max_inflight among the functions with
        calls, capped by its adaptive limit."""
        return min(self.fair(), self.adaptive.limit(fn.name)) - fn.running

    def _count(self, fn: Function) -> None:
        """Keep `active` and `working` as this function now is; when the fair share grows, the functions held
        back by it get their turn again."""
        before = self.fair()
        wants = fn.has_work and not fn.retiring and not fn.closed
        (self.working.add if wants else self.working.discard)(fn.name)
        (self.active.add if wants or fn.running else self.active.discard)(fn.name)
        if self.fair() > before:
            for other in self.functions.values():
                if other.has_work and not (other.queued or other.pulling or other.retiring):
                    self._queue(other)

    def _queue(self, fn: Function) -> None:
        if not fn.queued and not fn.closed:
            fn.queued = True
            self.ready.append(fn)
            self._wake.set()

    def _settle(self, fn: Function) -> None:
        """Decide what the function does next, after anything changed it."""
        if fn.closed:
            return
        self._count(fn)
        if fn.pulling:
            return
        if fn.has_work and not fn.retiring:
            if self.share(fn) > 0:
                self._queue(fn)  # otherwise when one of its calls finishes
        elif fn.running == 0:
            if fn.retiring or self.consumers.waiting:  # its consumer is wanted by a function waiting for one
                self._close(fn, remove=True)
            elif not fn.idle:
                fn.idle = True
                self.idle.append(fn)

    # -- dispatch -------------------------------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        """Start what can start, send what is to be sent; on stop, until no pull is under way."""
        while True:
            self._wake.clear()
            try:
                self._dispatch_once()
            except Exception:  # a bug must not stop every function
                log.exception("function dispatch failed")
            while self._outbox:
                subject, payload, reply = self._outbox.popleft()
                try:
                    await self.requests.nc.publish(subject, payload, reply=reply)
                except Exception as e:  # disconnected: the request is given up at its deadline
                    log.debug("cannot send to %s: %r", subject, e)
            if self.stopping:
                self.requests.expire(self._now())
                if not self.requests.pulls and not self._outbox:
                    return
            if not self._wake.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 0.05 if self.stopping else WAKE_EVERY)

    def _dispatch_once(self) -> None:
        slots = self.slots
        while self.surplus and (slots.free > 0 or self.stopping):
            msg = self.surplus.popleft()
            if self.stopping:  # never started: back to the queue at once, for another worker
                self.processor.extender.untrack(msg)
                self._send((msg.reply, b"-NAK", ""))
                continue
            slots.take()
            self._start(self.functions.get(_function_of(msg.subject)), msg)
        if self.stopping:
            return
        while self.ready and slots.free > 0:
            fn = self.ready.popleft()
            fn.queued = False
            if fn.closed or fn.pulling or not fn.has_work or fn.retiring:
                continue
            room = self.share(fn)
            if room > 0:  # else queued again when one of its calls finishes
                self._pull(fn, min(slots.free, room, FETCH_MAX))
        if not (
            self.working or self.consumers.waiting or self.consumers.opening or self.surplus or self.busy_elsewhere()
        ):
            self._watch()

    def _watch(self) -> None:
        """Nobody has calls to fetch: idle functions, in turn, wait at the server for their next call (one slot
        each), so it starts at once. Those idle too long drop out and give their consumer up."""
        now = self._now()
        for _ in range(len(self.idle)):
            if self.slots.free <= 0:
                return
            fn = self.idle.popleft()
            fn.idle = False
            if fn.closed or fn.has_work or fn.pulling or fn.retiring or now - fn.last_message > self.idle_exit:
                continue
            self._pull(fn, 1, WATCH_WAIT)

    def _pull(self, fn: Function, n: int, wait: float | None = None) -> None:
        message = self.requests.pull(fn.consumer, n, wait, functools.partial(self._pulled, fn, n))
        self.slots.take(n)  # before the pull is sent: every call it brings has its slot
        fn.pulling = True
        self._send(message)

    def _pulled(self, fn: Function, n: int, p: Pull) -> None:
        fn.pulling = False
        msgs = p.msgs
        self.slots.release(n - len(msgs))
        if self.stopping:  # never started: back to the queue at once, for another worker
            for m in msgs:
                self.slots.release()
                self._send((m.reply, b"-NAK", ""))
            return
        if msgs:
            fn.last_message = self._now()
            fn.delivered += len(msgs)
            for m in msgs:
                self._start(fn, m)
            fn.has_work = not p.status and _pending(msgs[-1]) > 0
        elif p.gone:
            self._lost(fn)
            return
        elif p.status in NO_MESSAGES:
            fn.has_work = False
        else:  # no answer in time, or a transient refusal: the same pull again shortly
            log.debug("pull from %s: %s %s", fn.consumer, p.status, p.description)
            self._count(fn)
            asyncio.get_running_loop().call_later(PULL_RETRY, self._settle, fn)
            return
        self._settle(fn)

    def _start(self, fn: Function | None, msg: Msg) -> None:
        """Handle a call in a task of its own; its slot is already taken."""
        if fn is not None:
            fn.running += 1
        task = asyncio.create_task(self.processor.handle(msg))
        self.tasks.add(task)
        task.add_done_callback(functools.partial(self._done, fn))

    def _done(self, fn: Function | None, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.slots.release()
        if fn is not None:
            fn.running -= 1
            self._settle(fn)
        self._wake.set()

    def _orphan(self, msg: Msg) -> None:
        """A call delivered after its pull gave up: it waits for a free slot, its ack extended meanwhile."""
        if not self.stopping:
            self.processor.extender.track(msg)
        self.surplus.append(msg)
        self._wake.set()

    # -- consumers (functionconsumers.py makes and removes them) ----------------------------------------------

    def _opened(self, function: str, consumer: str) -> None:
        now = self._now()
        fn = self.functions[function] = Function(function, consumer, opened=now, last_message=now)
        log.debug("consuming function %s (consumer %s)", function, consumer)
        self._settle(fn)

    def _close(self, fn: Function, remove: bool) -> None:
        """Stop pulling from the function's consumer; `remove`: others wait for one (Consumers.given_up)."""
        fn.closed = True
        self.functions.pop(fn.name, None)
        self.active.discard(fn.name)
        self.working.discard(fn.name)
        self.consumers.given_up(fn.name, fn.consumer, quiet=fn.delivered == 0, remove=remove)

    def _lost(self, fn: Function) -> None:
        """Its consumer is gone (deleted underneath, or expired): made again at once, keeping its turn."""
        log.info("consumer %s is missing; setting it up again", fn.consumer)
        self._close(fn, remove=False)
        self.consumers.want_first(fn.name)

    # -- discovery ------------------------------------------------------------------------------------------

    async def _discover_loop(self) -> None:
        while not self.stopping:
            try:
                await self._discover()
            except NotFoundError:
                log.warning("stream %s is missing; setting it up again", self.s.stream)
                with contextlib.suppress(Exception):
                    await self.provision_streams()
            except provision.StreamSetupError as e:
                log.error("%s", e)
            except Exception as e:
                log.debug("discovery failed: %r", e)
            self._tend()
            await asyncio.sleep(DISCOVER_EVERY)

    async def _discover(self) -> None:
        """Functions with calls: from the subject map, fetched only when the stream changed (or to recheck)."""
        state = (await self.js.stream_info(self.s.stream)).state
        now = self._now()
        if state.last_seq == self.seen_seq and now - self.mapped_at < RECHECK_EVERY:
            return
        self.seen_seq, self.mapped_at = state.last_seq, now  # a publish from here on moves it again
        if not state.messages:
            return
        subjects = contract.queue_subjects(self.s.queue, self.partition)
        info = await self.js.stream_info(self.s.stream, subjects_filter=subjects)
        self._found((info.state.subjects or {}).items(), now)

    def _found(self, subjects: Iterable[tuple[str, int]], now: float) -> None:
        """The stream holds `count` calls on each subject: a function with more than it runs has calls to fetch;
        one without a consumer waits for one."""
        for subject, count in subjects:
            function = _function_of(subject)
            fn = self.functions.get(function)
            if fn is not None:
                if not fn.has_work and not fn.pulling and count > fn.running:
                    fn.has_work = True
                    self._settle(fn)
            else:
                self.consumers.want(function, now)
        self.consumers.open_waiting()
        self._wake.set()

    def _tend(self) -> None:
        """Answers that did not come are given up; functions idle past idle_exit give their consumer up (the
        server expires it); while others wait for a consumer, those holding one ROTATE_AFTER give it up after their
        running calls."""
        now = self._now()
        self.requests.expire(now)
        self.consumers.forget_past(now, keep=4 * self.max_consumers)
        if len(self.idle) > 2 * len(self.functions):  # closed since (the rotation only looks when nobody works)
            self.idle = deque(fn for fn in self.idle if not fn.closed)
        waiting = len(self.consumers.waiting)
        full = len(self.functions) + len(self.consumers.opening) >= self.max_consumers
        for fn in list(self.functions.values()):
            rotate = waiting > 0 and full and not fn.retiring and now - fn.opened >= ROTATE_AFTER
            if fn.pulling or fn.running:
                if rotate:
                    fn.retiring, waiting = True, waiting - 1
                    self._count(fn)
            elif rotate:
                fn.retiring, waiting = True, waiting - 1
                self._close(fn, remove=True)
            elif not fn.has_work and now - fn.last_message > self.idle_exit:
                self._close(fn, remove=False)
        self._wake.set()

    async def stop(self) -> None:
        """Stop pulling. Calls running go on (Worker.stop waits for `tasks`); calls fetched but not started are
        handed back with a NAK. Pulls under way end within WATCH_WAIT."""
        self.stopping = True
        self.consumers.stop()
        if self._discovery:
            self._discovery.cancel()
            with contextlib.suppress(BaseException):
                await self._discovery
        self._wake.set()
        if self._dispatcher:
            try:
                await asyncio.wait_for(asyncio.shield(self._dispatcher), WATCH_WAIT + PULL_TIMEOUT)
            except (TimeoutError, Exception):
                self.requests.finish_all("stopping")
                self._dispatcher.cancel()
                with contextlib.suppress(BaseException):
                    await self._dispatcher
        await self.requests.stop()
        while self.surplus:  # delivered after the last look (none, unless the dispatcher was cut short)
            msg = self.surplus.popleft()
            self.processor.extender.untrack(msg)
            with contextlib.suppress(Exception):
                await msg.nak()


def _function_of(subject: str) -> str:
    """`<queue>.<function>` → the function."""
    return subject.partition(".")[2]


def _pending(msg: Msg) -> int:
    """The consumer's calls not yet delivered after this one (from its ack subject); 1 when it cannot tell."""
    try:
        return int(msg.metadata.num_pending or 0)
    except Exception:
        return 1
