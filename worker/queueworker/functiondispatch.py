"""Function mode's dispatcher: serve every consumer the worker pulls from (a `Lane`) in turn, within max_inflight.

Lanes with calls wait in a ready queue and are served in turn, each turn one no-wait pull (answered at once: no
slot is held while nothing comes). Every request (pulls, and the consumers made and removed by functionmode.py)
goes out from the dispatcher and is answered on one subscription (`Requests`), handed to a callback: nothing waits
on a request. A function's lane takes at most its fair share of max_inflight among the functions with calls
(counted from sets kept as lanes change, not by walking them) and its adaptive limit (adaptive.py); a stream's
shared lane takes what is free. When no lane has calls, idle lanes wait at the server for their next call (a pull
with expiry, one slot each), so a call starts at once rather than at the next discovery.

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
from collections.abc import Callable
from dataclasses import dataclass

from nats.aio.msg import Msg

from jetqueue import contract
from jetqueue.queueworker.adaptive import Adaptive
from jetqueue.queueworker.fetch import FETCH_MAX, Slots
from jetqueue.queueworker.handle import Processor
from jetqueue.queueworker.pullrequests import NO_MESSAGES, Message, Pull, Requests

log = logging.getLogger("jetqueue.functionmode")
MIN_TURN = 2  # calls a function may take at once however many functions have calls (at most max_inflight)
WATCH_WAIT = 1.0  # an idle lane's pull waits this long at the server; also bounds stop's wait for it
PULL_RETRY = 1.0  # after a transient refusal (leadership change, too many waiting pulls), pull again after this
WAKE_EVERY = 0.5  # the dispatcher looks again at least this often


@dataclass(eq=False, slots=True)
class Lane:
    """A consumer this worker pulls from: one function's, or its stream's shared consumer (`function` None)."""

    stream: str
    consumer: str
    function: str | None
    opened: float
    last_message: float
    has_work: bool = True  # calls may be deliverable: pull when its turn comes
    queued: bool = False  # in the ready queue
    pulling: bool = False  # one pull at a time
    running: int = 0  # calls it delivered that run here
    delivered: int = 0  # calls fetched since it was opened
    idle: bool = False  # in the idle rotation (waiting pulls)
    waits: bool = True  # may wait at the server for its next call when idle
    retiring: bool = False  # gives its consumer up once its running calls are done (others wait for one)
    closed: bool = False


class Dispatcher:
    """`drained(lane)` is told when a lane has nothing to fetch and nothing running (it may `rest` it, or close
    it); `gone(lane)` when its consumer no longer exists."""

    def __init__(
        self,
        max_inflight: int,
        slots: Slots,
        processor: Processor,
        adaptive: Adaptive,
        requests: Requests,
        idle_exit: float,
        drained: Callable[[Lane], None],
        gone: Callable[[Lane], None],
    ) -> None:
        self.max_inflight = max_inflight
        self.slots = slots
        self.processor = processor
        self.adaptive = adaptive
        self.requests = requests
        self.idle_exit = idle_exit  # a function's lane idle this long stops waiting at the server
        self.drained = drained
        self.gone = gone
        self.lanes: dict[tuple[str, str], Lane] = {}  # (stream, consumer) → lane
        self.running: dict[str, int] = {}  # calls running per function, whatever lane brought them
        self.ready: deque[Lane] = deque()  # have calls to fetch: served in turn
        self.idle: deque[Lane] = deque()  # no calls: wait at the server in turn when nobody has calls
        self.active: set[str] = set()  # functions with calls or running some: max_inflight is shared among them
        self.working: set[Lane] = set()  # lanes with calls to fetch
        self.tasks: set[asyncio.Task[None]] = set()  # one per call
        self.surplus: deque[Msg] = deque()  # delivered after their pull gave up: started first
        self.stopping = False
        self.busy: Callable[[], bool] = lambda: False  # consumers being made: no lane waits at the server meanwhile
        self._outbox: deque[Message] = deque()  # sent by the dispatcher, in order
        self._wake = asyncio.Event()

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def send(self, message: Message) -> None:
        self._outbox.append(message)
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def add(self, lane: Lane) -> None:
        self.lanes[(lane.stream, lane.consumer)] = lane
        self.settle(lane)

    def drop(self, lane: Lane) -> None:
        """Pull from it no more (calls it brought still run)."""
        lane.closed = True
        self.lanes.pop((lane.stream, lane.consumer), None)
        self.working.discard(lane)
        if lane.function is not None and not self.running.get(lane.function):
            self.active.discard(lane.function)

    # -- shares ---------------------------------------------------------------------------------------------

    def fair(self, active: int | None = None) -> int:
        """max_inflight shared among the functions with calls (`active` of them; by default those now), in turns of
        at least MIN_TURN calls each: with more functions than slots, one call per turn would cost a pull per call."""
        m = self.max_inflight
        return math.ceil(m / max(1, min(len(self.active) if active is None else active, m // MIN_TURN)))

    def share(self, lane: Lane) -> int:
        """Free slots this lane may still take: a function's fair share of max_inflight among the functions with
        calls, capped by its adaptive limit; for a shared lane, every free slot."""
        if lane.function is None:
            return self.slots.free
        return min(self.fair(), self.adaptive.limit(lane.function)) - self.running.get(lane.function, 0)

    def count(self, lane: Lane) -> None:
        """Keep `active` and `working` as this lane now is; when the fair share grows, the lanes held back by it
        get their turn again."""
        wants = lane.has_work and not lane.retiring and not lane.closed
        (self.working.add if wants else self.working.discard)(lane)
        if lane.function is None:
            return
        before = len(self.active)
        (self.active.add if wants or lane.running else self.active.discard)(lane.function)
        if len(self.active) < before and self.fair() > self.fair(before):
            for other in self.working:
                if not (other.queued or other.pulling):
                    self._queue(other)

    def _queue(self, lane: Lane) -> None:
        if not lane.queued and not lane.closed:
            lane.queued = True
            self.ready.append(lane)
            self._wake.set()

    def settle(self, lane: Lane) -> None:
        """Decide what the lane does next, after anything changed it."""
        if lane.closed:
            return
        self.count(lane)
        if lane.pulling:
            return
        if lane.has_work and not lane.retiring:
            if self.share(lane) > 0:
                self._queue(lane)  # otherwise when one of its calls finishes
        elif lane.running == 0:
            self.drained(lane)

    def rest(self, lane: Lane) -> None:
        """Into the idle rotation: it waits at the server for its next call when nobody has calls."""
        if not lane.idle:
            lane.idle = True
            self.idle.append(lane)

    # -- dispatch -------------------------------------------------------------------------------------------

    async def run(self) -> None:
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
                self.send((msg.reply, b"-NAK", ""))
                continue
            slots.take()
            self._start(self.lanes.get(_lane_key(msg)), msg)
        if self.stopping:
            return
        while self.ready and slots.free > 0:
            lane = self.ready.popleft()
            lane.queued = False
            if lane.closed or lane.pulling or not lane.has_work or lane.retiring:
                continue
            room = self.share(lane)
            if room > 0:  # else queued again when one of its calls finishes
                self._pull(lane, min(slots.free, room, FETCH_MAX))
        if not (self.working or self.surplus or self.busy()):
            self._watch()

    def _watch(self) -> None:
        """Nobody has calls to fetch: idle lanes, in turn, wait at the server for their next call (one slot each),
        so it starts at once. Function lanes idle too long drop out (functionmode.py removes their consumer)."""
        now = self._now()
        for _ in range(len(self.idle)):
            if self.slots.free <= 0:
                return
            lane = self.idle.popleft()
            lane.idle = False
            if lane.closed or lane.has_work or lane.pulling or lane.retiring or not lane.waits:
                continue
            if lane.function is not None and now - lane.last_message > self.idle_exit:
                continue
            self._pull(lane, 1, WATCH_WAIT)

    def _pull(self, lane: Lane, n: int, wait: float | None = None) -> None:
        message = self.requests.pull(lane.stream, lane.consumer, n, wait, functools.partial(self._pulled, lane, n))
        self.slots.take(n)  # before the pull is sent: every call it brings has its slot
        lane.pulling = True
        self.send(message)

    def _pulled(self, lane: Lane, n: int, p: Pull) -> None:
        lane.pulling = False
        msgs = p.msgs
        self.slots.release(n - len(msgs))
        if self.stopping:  # never started: back to the queue at once, for another worker
            for m in msgs:
                self.slots.release()
                self.send((m.reply, b"-NAK", ""))
            return
        if msgs:
            lane.last_message = self._now()
            lane.delivered += len(msgs)
            for m in msgs:
                self._start(lane, m)
            lane.has_work = not p.status and _pending(msgs[-1]) > 0
        elif p.gone:
            self.gone(lane)
            return
        elif p.status in NO_MESSAGES:
            lane.has_work = False
        else:  # no answer in time, or a transient refusal: the same pull again shortly
            log.debug("pull from %s: %s %s", lane.consumer, p.status, p.description)
            self.count(lane)
            asyncio.get_running_loop().call_later(PULL_RETRY, self.settle, lane)
            return
        self.settle(lane)

    def _start(self, lane: Lane | None, msg: Msg) -> None:
        """Handle a call in a task of its own; its slot is already taken."""
        function = lane.function if lane is not None else None
        function = function if function is not None else contract.function_of_subject(msg.subject)
        self.running[function] = self.running.get(function, 0) + 1
        if lane is not None:
            lane.running += 1
        task = asyncio.create_task(self.processor.handle(msg))
        self.tasks.add(task)
        task.add_done_callback(functools.partial(self._done, lane, function))

    def _done(self, lane: Lane | None, function: str, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.slots.release()
        left = self.running[function] = self.running[function] - 1
        if not left:
            del self.running[function]
        if lane is not None:
            lane.running -= 1
            self.settle(lane)
        if lane is None or lane.function is None:  # a call the shared consumer had: its function's lane has room
            for other in self.working:
                if other.function == function:
                    self.settle(other)
                    break
        self._wake.set()

    def orphan(self, msg: Msg) -> None:
        """A call delivered after its pull gave up: it waits for a free slot, its ack extended meanwhile."""
        if not self.stopping:
            self.processor.extender.track(msg)
        self.surplus.append(msg)
        self._wake.set()

    async def hand_back(self) -> None:
        """Stopped: calls delivered after the last look (none, unless the dispatcher was cut short) go back."""
        while self.surplus:
            msg = self.surplus.popleft()
            self.processor.extender.untrack(msg)
            with contextlib.suppress(Exception):
                await msg.nak()


def _lane_key(msg: Msg) -> tuple[str, str]:
    try:
        return msg.metadata.stream, msg.metadata.consumer
    except Exception:  # an ack subject nats-py cannot read
        return "", ""


def _pending(msg: Msg) -> int:
    """The consumer's calls not yet delivered after this one (from its ack subject); 1 when it cannot tell."""
    try:
        return int(msg.metadata.num_pending or 0)
    except Exception:
        return 1
