"""Pull calls from one consumer into free slots and hand each to the Processor (handle.py).

`Slots` bounds the calls running in the worker; each `ConsumerLoop` (one per static consumer: per partition, and
per level on a queue with priorities) fetches only as many messages as there are free slots, so a fetched message
has a task at once and `max_inflight` is never exceeded. The one exception is a level's loop looking for its next
call while it has none: it asks for one holding no slot (a slot held through that wait is one the other levels
could use), and the call it finds waits in `surplus`, its ack extended, for a free slot and the level's turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError
from nats.js.errors import NotFoundError, ServiceUnavailableError

from jetqueue.queueworker.heartbeat import AckExtender
from jetqueue.queueworker.priorities import Turn

log = logging.getLogger("jetqueue.worker")
FETCH_MAX = 256
FETCH_TIMEOUT = 1.0  # also bounds how long shutdown waits for the last fetch
CONTENDED_WAIT = 0.02  # an idle loop's wait for a call while another loop (partition) wants the slots
RECOVER_FIRST_WAIT = 0.5
RECOVER_MAX_WAIT = 5.0  # a consumer deleted underneath is back within this once NATS lets us create it


class Slots:
    """A counting limit that can be asked how much is free (a Semaphore cannot)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.waiting = 0  # loops waiting for a slot to be released
        self._changed = asyncio.Event()

    @property
    def free(self) -> int:
        return max(0, self.limit - self.used)

    def take(self, n: int = 1) -> None:
        self.used += n

    def release(self, n: int = 1) -> None:
        if n:
            self.used -= n
            self._changed.set()

    async def wait_release(self, timeout: float) -> None:
        """Until the next call finishes (or timeout): then there may be room again."""
        self._changed.clear()
        self.waiting += 1
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)
        finally:
            self.waiting -= 1


class Source(Protocol):
    """Where a loop fetches from: a nats-py pull subscription, or pullrequests.ConsumerPull (static mode)."""

    async def fetch(self, batch: int, timeout: float) -> list[Msg]: ...

    async def unsubscribe(self) -> None: ...


class Handler(Protocol):
    """What a loop hands each message to: handle.Processor (calls), schedule.Mover (due calls)."""

    extender: AckExtender

    async def handle(self, msg: Msg) -> None: ...


class ConsumerLoop:
    """Fetch from one pull subscription into free slots; one task per message, tracked."""

    def __init__(
        self,
        name: str,
        psub: Source,
        slots: Slots,
        processor: Handler,
        share: Callable[[], int] | None = None,
        idle_exit: float | None = None,
        rebind: Callable[[], Awaitable[Source]] | None = None,
        contended: Callable[[], bool] | None = None,
        turn: Turn | None = None,
    ) -> None:
        self.name = name
        self.psub = psub
        self.slots = slots
        self.processor = processor
        self.share = share  # function mode: how many more calls this consumer may start now
        self.idle_exit = idle_exit  # function mode: stop pulling after this long without a message
        self.rebind = rebind  # static mode: set the consumer up again when it is found missing
        # Partitions: another loop has calls. An idle loop then waits for its next call only briefly, since the
        # slot it holds meanwhile is one the other loop could use; idle everywhere, it waits FETCH_TIMEOUT.
        self.contended = contended
        self.turn = turn  # a level of a queue with priorities: slots are reserved in turns (priorities.py)
        self.lost = False  # the consumer is missing and not set up again yet (readiness says so)
        self.tasks: set[asyncio.Task[None]] = set()
        self.surplus: deque[Msg] = deque()  # delivered beyond what was asked for; started first
        self._naks: set[asyncio.Task[None]] = set()
        self.stopping = False
        self.has_work = False

    def adopt(self, msg: Msg) -> None:
        """A message delivered after its fetch gave up: it waits for a free slot, its ack extended meanwhile.
        Stopping: handed back at once, for another worker."""
        if self.stopping:
            task = asyncio.create_task(msg.nak())
            self._naks.add(task)
            task.add_done_callback(self._naks.discard)
            return
        self.processor.extender.track(msg)
        self.surplus.append(msg)

    async def run(self) -> None:
        last_message = asyncio.get_running_loop().time()
        try:
            await self._run(last_message)
        finally:
            self.has_work = False
            if self.turn is not None:
                self.turn.idle()
            while self.surplus:  # stopping: hand back what never started, for another worker at once
                msg = self.surplus.popleft()
                self.processor.extender.untrack(msg)
                with contextlib.suppress(Exception):
                    await msg.nak()

    async def _run(self, last_message: float) -> None:
        clock = asyncio.get_running_loop().time
        while not self.stopping:
            free = self.slots.free if self.share is None else min(self.slots.free, self.share())
            # A level without calls looks for one holding no slot (what it finds waits in `surplus` for its turn):
            # a slot held through its wait would be one the other levels cannot use.
            probe = self.turn is not None and not self.has_work and not self.surplus
            if self.turn is not None:
                if probe:  # looking for a call, without a turn: not a level that waits
                    self.turn.idle()
                elif not self.turn.may(free > 0):  # no slot, or another level's turn: it takes the slots first
                    await self.slots.wait_release(CONTENDED_WAIT)
                    continue
            if free <= 0:  # a full worker looks for no call: another replica may have room for it
                await self.slots.wait_release(FETCH_TIMEOUT)
                continue
            if self.surplus:  # messages already delivered go first
                started = min(free, len(self.surplus))
                for _ in range(started):
                    self.slots.take()
                    self._start(self.surplus.popleft())
                if self.turn is not None:
                    self.turn.took(started)
                continue
            # Reserve the slots before the fetch: loops fetching at once must not together ask for more than is
            # free. An idle function-mode loop asks for one; its fair share once it has work.
            n = 0 if probe else min(free, FETCH_MAX) if self.share is None or self.has_work else 1
            self.slots.take(n)
            msgs: list[Msg] = []
            # Another loop has calls, or waits for a slot: an idle loop asks briefly, then lets the slot go (it would
            # hold it for the whole wait). A level given a turn always asks briefly: the slots it holds while its
            # stream may be empty are slots another level may want; it waits for calls as a probe, holding none.
            others = self.contended is not None and (self.slots.waiting > 0 or self.contended())
            brief = not probe and (self.turn is not None or (others and not self.has_work))
            try:
                msgs = await self.psub.fetch(max(n, 1), timeout=CONTENDED_WAIT if brief else FETCH_TIMEOUT)
                if len(msgs) > n:  # nats-py can hand over messages of an earlier, timed-out pull as well:
                    msgs, surplus = msgs[:n], msgs[n:]  # they wait here (acks extended) for free slots
                    for m in surplus:
                        self.processor.extender.track(m)
                    self.surplus.extend(surplus)
            except TimeoutError:  # nats' TimeoutError subclasses it; fetch raises either when idle
                # A level found nothing: it has no turn to take until it finds calls (running ones are not wanting).
                self.has_work = bool(self.tasks) and self.turn is None
                if brief:  # the slot goes to the loop that wants it before this one asks again
                    self.slots.release(n)
                    n = 0
                    await self.slots.wait_release(CONTENDED_WAIT)
                if self.idle_exit is not None and not self.tasks and clock() - last_message > self.idle_exit:
                    await self._retire("idle")
                    return
                continue
            except ConnectionClosedError:
                break
            except (ServiceUnavailableError, NotFoundError):  # no consumer answers the pull: it was deleted
                if self.rebind is None:
                    await self._retire("consumer deleted")  # function mode: discovery makes it again if needed
                    return
                self._pause_turns()
                await self._recover(self.rebind)
                continue
            except Exception as e:  # disconnected, ...: keep trying
                log.warning("fetch from %s failed: %r", self.name, e)
                self._pause_turns()
                await asyncio.sleep(1)
                continue
            finally:
                self.slots.release(n - len(msgs))  # each fetched message keeps its reserved slot
            last_message = clock()
            self.has_work = True
            if self.turn is not None:
                self.turn.took(len(msgs))
            for m in msgs:
                self._start(m)

    def _pause_turns(self) -> None:
        """Fetching failed: a level takes no turns meanwhile, and comes back without the credit of the time."""
        if self.turn is not None:
            self.has_work = False
            self.turn.idle()

    def _start(self, msg: Msg) -> None:
        """Handle a message in a task of its own; its slot is already taken."""
        task = asyncio.create_task(self.processor.handle(msg))
        self.tasks.add(task)
        task.add_done_callback(self._done)

    async def _recover(self, rebind: Callable[[], Awaitable[Source]]) -> None:
        """Set the consumer (and its stream) up again, retrying until it works or the worker stops."""
        self.lost = True
        log.warning("consumer %s is missing; setting it up again", self.name)
        wait = RECOVER_FIRST_WAIT
        while not self.stopping:
            try:
                old, self.psub = self.psub, await rebind()
            except Exception as e:
                log.warning("cannot set up consumer %s yet: %r", self.name, e)
                await asyncio.sleep(wait)
                wait = min(wait * 2, RECOVER_MAX_WAIT)
                continue
            if old is not self.psub:
                with contextlib.suppress(Exception):
                    await old.unsubscribe()
            log.info("consumer %s set up again", self.name)
            break
        self.lost = False

    async def _retire(self, why: str) -> None:
        """Stop pulling, so the server's inactive_threshold can remove the idle consumer."""
        log.info("consumer %s stops pulling (%s)", self.name, why)
        with contextlib.suppress(Exception):
            await self.psub.unsubscribe()

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.slots.release()
