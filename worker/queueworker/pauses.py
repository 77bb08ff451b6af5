"""A worker's side of pauses (the design is in jetqueue/pauses.py): follow the queue's pause records, keep its
consumers (on every partition's stream) paused as they say, tell a consumer being created how long to stay
paused, export queue_worker_paused.

The records are followed with a key-value watch (a change lands within milliseconds), started again every
`pauses.RESYNC` seconds: each start reads every record afresh and compares each consumer with them, so a missed
change, a consumer made elsewhere without its pause, or a pause lifted by hand is set right within that time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from jetqueue import contract, pauses
from jetqueue.pauses import Pause
from jetqueue.queueworker.metrics import WorkerMetrics
from jetqueue.settings import WorkerSettings

log = logging.getLogger("jetqueue.pauses")
FIRST_READ_WAIT = 5.0  # at start, how long consumers wait to be created with their pause
RETRY_FIRST_WAIT = 0.5
RETRY_MAX_WAIT = 10.0
# Python 3.11's asyncio.wait_for (under the watch's updates()) can swallow a cancel that races a result, so the loops
# also check a flag: each wait for an update is this short, and stop() waits for the task no longer than twice it.
POLL = 1.0
QUEUE_LABEL = "*"  # function_name of the whole queue's series, as `jetqueue status` shows it


def utcnow() -> datetime:
    return datetime.now(UTC)


class PauseFollower:
    def __init__(
        self,
        js: JetStreamContext,
        s: WorkerSettings,
        metrics: WorkerMetrics,
        streams: Callable[[], list[str]] | None = None,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self.js = js
        self.s = s
        self.metrics = metrics
        self.streams = streams or (lambda: [s.stream])  # the work streams whose consumers are brought to the records
        self.now = now
        self.records: list[Pause] = []
        self.functions: set[str] = set()  # exported so far: each keeps its series, 0 when not paused
        self._read = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def until(self, function: str | None = None) -> str | None:
        """The pause_until (RFC 3339) of a consumer created now, or None: not paused. `function` None is the
        static consumer."""
        end = pauses.pause_until(self.records, self.s.queue, function, self.now())
        return pauses.rfc3339(end) if end else None

    def function_paused(self) -> bool:
        """Some function of the queue is paused now (function mode's shared consumer must then stay closed)."""
        now = self.now()
        return any(p.queue == self.s.queue and p.function and p.active(now) for p in self.records)

    def paused(self, function: str | None = None) -> bool:
        return self.until(None if self.s.mode == "static" else function) is not None

    def export(self, functions: Iterable[str] = ()) -> None:
        """queue_worker_paused: the whole queue (function_name "*") and each function known to be paused or to
        have had calls; a static worker's functions are paused with the queue."""
        self.functions.update(functions, (p.function for p in self.records if p.function))
        gauge = self.metrics.paused
        gauge.labels(self.s.queue, QUEUE_LABEL).set(int(self.paused()))
        for function in self.functions:
            gauge.labels(self.s.queue, function).set(int(self.paused(function)))

    async def start(self) -> None:
        """Follow the records; returns once they are read (or after FIRST_READ_WAIT, still following)."""
        self._task = asyncio.create_task(self._run(), name="pauses")
        try:
            await asyncio.wait_for(self._read.wait(), FIRST_READ_WAIT)
        except TimeoutError:
            log.warning("pause records not read yet: consumers created meanwhile are paused only once they are")

    async def stop(self) -> None:
        self._stopping = True
        if self._task:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=2 * POLL)

    async def _run(self) -> None:
        wait = RETRY_FIRST_WAIT
        while not self._stopping:
            try:
                kv = await pauses.open_bucket(self.js, self.s.stream_replicas, self.s.stream_storage)
                await self._follow(kv)
                wait = RETRY_FIRST_WAIT
            except asyncio.CancelledError:
                raise
            except Exception as e:  # NATS away, bucket deleted underneath: open it again
                log.warning("cannot follow pause records: %r", e)
                await asyncio.sleep(wait)
                wait = min(wait * 2, RETRY_MAX_WAIT)

    async def _follow(self, kv: KeyValue) -> None:
        """One watch for RESYNC seconds: every record first (then the consumers are compared), then changes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + pauses.RESYNC
        watcher = await kv.watchall()
        found: dict[str, Pause] = {}
        complete = False
        try:
            while not self._stopping and loop.time() < deadline:
                try:
                    entry = await watcher.updates(POLL)  # type: ignore[no-untyped-call]
                except TimeoutError:
                    continue
                if entry is None:  # every record read
                    complete = True
                elif contract.pause_of_key(entry.key)[0] != self.s.queue:
                    continue
                elif (pause := pauses.decoded(entry)) is None:
                    found.pop(entry.key, None)
                else:
                    found[entry.key] = pause
                if complete:
                    self.records = list(found.values())
                    self._read.set()
                    await self.apply()
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    async def apply(self) -> None:
        """Bring the queue's consumers to the records."""
        s = self.s
        changed: list[tuple[str, str]] = []
        for stream in self.streams():
            try:
                changed += await pauses.bring_consumers(self.js, s.queue, stream, s.durable, self.records, self.now())
            except NotFoundError:  # no stream now (deleted underneath): its consumers come back paused from the records
                pass
        for name, what in changed:
            log.info("consumer %s %s", name, what)
        self.export()
