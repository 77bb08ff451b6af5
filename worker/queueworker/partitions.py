"""The partitions a worker takes calls from, and the leaders of their streams.

Every worker of a queue serves every partition (docs/partitions.md says why, with the numbers): its queue's
`partitions` work streams, `OF_<queue>`, `OF_<queue>_P1` ..., and any partition beyond them whose stream is still on
the server (`partitioned.found`): left by a larger `partitions` that was lowered, or published to by a gateway not
yet given the new count. Those are drained like the others (nothing new is moved into them: the Mover and held
retries choose among the first `partitions`), so lowering or raising the count loses no call, in any rollout
order. The server is looked at again every `CHECK_EVERY` seconds; a draining partition's count is logged then.

With replicated streams, leaders are spread (leaders.py) over the partitions' streams, and over the queue's
status buckets, at start and at every check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from nats.js import JetStreamContext

from jetqueue import contract, leaders, partitioned
from jetqueue.settings import WorkerSettings

log = logging.getLogger("jetqueue.worker")
CHECK_EVERY = 30.0


class Partitions:
    """`served`: partition -> stream this worker takes calls from (grows when a draining one is found).
    `consume(p)` is awaited once for each partition served, in order, from `start()` on."""

    def __init__(self, js: JetStreamContext, s: WorkerSettings, consume: Callable[[int], Awaitable[None]]) -> None:
        self.js = js
        self.s = s
        self.consume = consume
        self.served: dict[int, str] = {p: self.stream(p) for p in range(s.partitions)}
        self._started: set[int] = set()
        self._task: asyncio.Task[None] | None = None

    def stream(self, partition: int) -> str:
        """The partition's work stream (partition 0 may be named otherwise: an adopted OpenFaaS stream)."""
        return self.s.stream if partition == 0 else contract.stream_name(self.s.queue, partition)

    @property
    def streams(self) -> list[str]:
        return list(self.served.values())

    async def start(self) -> None:
        """Consume the queue's partitions and those found beyond them; then keep looking (`CHECK_EVERY`)."""
        with contextlib.suppress(Exception):  # NATS failing now: the first check finds them
            await self._find()
        await self._consume_new()
        await self._spread()
        self._task = asyncio.create_task(self._run(), name="partitions")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(CHECK_EVERY)
            try:
                await self._find()
                await self._consume_new()
                await self._report()
                await self._spread()
            except Exception as e:
                log.warning("partition check failed (tried again in %.0f s): %r", CHECK_EVERY, e)

    async def _find(self) -> None:
        for p, stream in (await partitioned.found(self.js, self.s.queue)).items():
            if p not in self.served and p > 0:
                self.served[p] = stream
                log.warning(
                    "stream %s is partition %d of queue %s, beyond its %d partition(s): draining it (no call is "
                    "moved into it; it may be removed once empty: nats stream rm %s)",
                    stream,
                    p,
                    self.s.queue,
                    self.s.partitions,
                    stream,
                )

    async def _consume_new(self) -> None:
        for p in sorted(self.served):
            if p not in self._started:
                await self.consume(p)  # raised (its stream refused): tried again at the next check
                self._started.add(p)

    async def _report(self) -> None:
        for p in sorted(q for q in self.served if q >= self.s.partitions):
            left = (await self.js.stream_info(self.served[p])).state.messages
            log.info("draining partition %d of queue %s (%s): %d call(s) left", p, self.s.queue, self.served[p], left)

    async def _spread(self) -> None:
        """Leaders of the partitions' streams, and of the queue's status buckets, on different servers."""
        if self.s.stream_replicas < 2:
            return
        q = self.s.queue
        buckets = [contract.kv_stream_name(contract.status_bucket_name(q, k)) for k in range(self.s.partitions)]
        for group in (self.streams, buckets if self.s.call_status else []):
            with contextlib.suppress(Exception):
                await leaders.spread(self.js, group)
