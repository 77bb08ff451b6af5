"""Cancel requests, durable: the gateway stores one per cancelled call in its queue's KV bucket
`jetqueue-cancels-<queue>` (key: call id, value: the call's start time; kept 32 days, longer than any call can be
scheduled ahead), and every worker of the queue watches that bucket.

Why a bucket and a watch: a worker learns of a cancel without reading anything per call (the status
record used to be read before every invocation), and a cancel is not lost when it is sent while the worker
running the call is reconnecting (it used to be a plain publish): the watch starts again after a reconnect
and delivers every cancel the bucket holds. The start time tells a cancelled call from a later call sent
under the same id. Cancels are rare; each worker keeps those its buckets hold in memory. A bucket per queue: a
worker watches only its own queue's cancels, and queues share no bucket leader.

The upgrade from one bucket for every queue (`jetqueue-cancels`, before partitions): while it exists, the gateway
stores a cancel there too (a worker not upgraded yet watches only it) and workers watch it as well; nothing
creates it any more.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue

from jetqueue import contract, provision
from jetqueue.contract import jetstream

log = logging.getLogger("jetqueue.cancels")
RETRY_WAIT = 1.0
LEGACY_RECHECK = 60.0  # how often a worker looks for the bucket of before partitions, while it is missing
PRUNE_ABOVE = 10_000  # cancels remembered before those older than the bucket's TTL are forgotten


async def open_bucket(js: JetStreamContext, queue: str, replicas: int, storage: str) -> KeyValue:
    return await provision.ensure_bucket(js, jetstream.cancel_bucket(queue, replicas, storage))


async def open_legacy(js: JetStreamContext) -> KeyValue | None:
    """The cancel bucket of before partitions, if it still exists (never created)."""
    try:
        return await js.key_value(contract.LEGACY_CANCEL_BUCKET)
    except BucketNotFoundError:
        return None


async def request(kv: KeyValue, call_id: str, start_ns: int | None) -> None:
    """Store a cancel request (waits for the PubAck: once this returns, every worker will see it)."""
    await kv.put(call_id, json.dumps({"start": start_ns}).encode())


class CancelWatch:
    """The cancels a worker knows of, kept current by a watch of its queue's bucket (and of the bucket of before
    partitions while it exists). `on_cancel(call_id, start_ns)` is told each new one (the processor aborts the call
    if it is running it)."""

    def __init__(
        self,
        js: JetStreamContext,
        queue: str,
        replicas: int,
        storage: str,
        on_cancel: Callable[[str, int | None], object],
    ) -> None:
        self.js = js
        self.config = jetstream.cancel_bucket(queue, replicas, storage)
        self.on_cancel = on_cancel
        self.known: dict[str, int | None] = {}  # call id -> start time (ns) of the cancelled call; None: any
        self._seen: dict[str, float] = {}  # call id -> when its cancel was stored (to forget it after the TTL)
        self._restart = asyncio.Event()
        self.ready = asyncio.Event()  # the cancels stored before the watch began are known (both buckets)
        self._read: set[str] = set()  # buckets read to their end since the watch began

    def requested(self, call: contract.Call) -> bool:
        if call.call_id not in self.known:
            return False
        start = self.known[call.call_id]
        return start is None or start == call.start_time_ns

    def restart(self) -> None:
        """Watch again from the buckets' current contents (after a reconnect: the watch may have lost messages)."""
        self._restart.set()

    async def run(self) -> None:
        await asyncio.gather(self._watch(self.config), self._watch(None))

    async def _watch(self, config: KeyValueConfig | None) -> None:
        """Follow one bucket: the queue's (`config`), or the one of before partitions (None) while it exists."""
        name = config.bucket if config is not None else contract.LEGACY_CANCEL_BUCKET
        while True:
            try:
                kv = await (provision.ensure_bucket(self.js, config) if config else open_legacy(self.js))
                if kv is None:  # no bucket of before partitions (any more): nothing to watch there
                    self._ended(name)
                    await asyncio.sleep(LEGACY_RECHECK)
                    continue
                watcher = await kv.watchall()
            except Exception as e:
                log.warning("cannot watch cancel requests in %s yet: %r", name, e)
                await asyncio.sleep(RETRY_WAIT)
                continue
            try:
                await self._follow(name, watcher)
            finally:
                with contextlib.suppress(Exception):
                    await watcher.stop()  # type: ignore[no-untyped-call]

    def _ended(self, name: str) -> None:
        self._read.add(name)
        if len(self._read) == 2:
            self.ready.set()

    async def _follow(self, name: str, watcher: KeyValue.KeyWatcher) -> None:
        restart = asyncio.create_task(self._restart.wait())
        try:
            while not restart.done():
                update = asyncio.create_task(watcher.updates(timeout=3600))  # type: ignore[no-untyped-call]
                await asyncio.wait({update, restart}, return_when=asyncio.FIRST_COMPLETED)
                if not update.done():
                    update.cancel()
                    return
                try:
                    entry = update.result()
                except Exception:  # nats' TimeoutError after an hour of no cancels: keep watching
                    continue
                if entry is None:  # the end of what the bucket held when the watch began
                    self._ended(name)
                else:
                    self._learn(entry)
        finally:
            restart.cancel()
            self._restart.clear()  # set() woke both buckets' watches already: each starts again once

    def _learn(self, entry: KeyValue.Entry) -> None:
        if entry.operation is not None or not entry.value:  # deleted or purged
            self.known.pop(entry.key, None)
            self._seen.pop(entry.key, None)
            return
        try:
            start = json.loads(entry.value).get("start")
        except (ValueError, AttributeError):
            start = None
        start = start if isinstance(start, int) else None
        if entry.key in self.known and self.known[entry.key] == start:
            return  # seen before this watch started again
        self.known[entry.key] = start
        self._seen[entry.key] = time.time()
        if len(self.known) > PRUNE_ABOVE:
            old = time.time() - jetstream.CANCEL_KEEP
            for key in [k for k, t in self._seen.items() if t < old]:
                self.known.pop(key, None)
                self._seen.pop(key, None)
        self.on_cancel(entry.key, start)
