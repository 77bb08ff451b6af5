"""The gateway's side of NATS: the connection, the JetStream context, each queue's status buckets and cancel
bucket, and the queues' streams (every partition's), set up in the background so the HTTP server answers (503, and
/readyz says why) meanwhile."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import logging
import time

from nats.aio.client import NO_RESPONDERS_STATUS, Client
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import Header
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError
from nats.js.kv import KeyValue

from jetqueue import cancels, contract, provision
from jetqueue.callstatus import QueueStatus
from jetqueue.connection import connect
from jetqueue.contract import jetstream
from jetqueue.gateway.routing import QueueInfo, Routing
from jetqueue.settings import GatewaySettings
from jetqueue.statuslookup import StatusLookup

log = logging.getLogger("jetqueue.gateway")
STREAM_CHECK_TIMEOUT = 1.0
LEGACY_RECHECK = 60.0  # whether the cancel bucket of before partitions still exists, asked this often
PUBACK_START = b'{"stream":'
SWEEP = 0.05  # seconds: how late a PubAck's timeout may be noticed (PubAcks._sweep)


class PubAcks:
    """JetStream publishes that wait for their PubAck, every answer on one reply subscription: what js.publish
    does, without its cost per call (a random token, i.e. a getrandom system call, asyncio.wait_for and three
    more coroutines), which was a sixth of the gateway's CPU per submission."""

    def __init__(self, nc: Client, prefix: str) -> None:
        self._nc = nc
        self._prefix = prefix
        self._loop = asyncio.get_running_loop()
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._tokens = itertools.count()  # unique under this connection's own random inbox prefix
        # Deadlines in the order they fall, looked at by one timer at least every SWEEP seconds: a timer per
        # publish (call_later, cancel) cost more. A publish whose deadline falls before the last one's (its
        # timeout is shorter) gets a timer of its own.
        self._deadlines: collections.deque[tuple[float, asyncio.Future[Msg]]] = collections.deque()
        self._sweeper: asyncio.TimerHandle | None = None

    @classmethod
    async def open(cls, nc: Client) -> PubAcks:
        acks = cls(nc, nc.new_inbox() + ".")
        await nc.subscribe(acks._prefix + "*", cb=acks._answer)  # subscribed again by nats-py on reconnect
        return acks

    async def _answer(self, msg: Msg) -> None:
        waiter = self._waiting.get(msg.subject[len(self._prefix) :])
        if waiter is not None and not waiter.done():
            waiter.set_result(msg)

    def _sweep(self) -> None:
        """Time out the waiters whose deadline passed; forget the answered ones ahead of the first still waiting."""
        self._sweeper = None
        deadlines, now = self._deadlines, self._loop.time()
        while deadlines and (deadlines[0][1].done() or deadlines[0][0] <= now):
            waiter = deadlines.popleft()[1]
            if not waiter.done():
                waiter.set_exception(NatsTimeoutError())
        if deadlines:
            self._sweeper = self._loop.call_at(min(deadlines[0][0], now + SWEEP), self._sweep)

    @staticmethod
    def _time_out(waiter: asyncio.Future[Msg]) -> None:
        if not waiter.done():
            waiter.set_exception(NatsTimeoutError())

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str], timeout: float) -> bool:
        """Store a message and wait for its PubAck: True when the stream already held its Nats-Msg-Id (a
        duplicate). Raises what js.publish raises: NoStreamResponseError, APIError, nats.errors.TimeoutError."""
        token = str(next(self._tokens))
        waiter = self._loop.create_future()
        self._waiting[token] = waiter
        now = self._loop.time()
        deadline, timer = now + timeout, None
        if self._deadlines and deadline < self._deadlines[-1][0]:
            timer = self._loop.call_at(deadline, self._time_out, waiter)
        else:
            self._deadlines.append((deadline, waiter))
            if self._sweeper is None:
                self._sweeper = self._loop.call_at(min(deadline, now + SWEEP), self._sweep)
        try:
            await self._nc.publish(subject, payload, reply=self._prefix + token, headers=headers)
            msg = await waiter
        finally:
            del self._waiting[token]
            if timer is not None:
                timer.cancel()
            if not waiter.done():  # the publish failed: nobody waits, and the sweep forgets it
                waiter.cancel()
        if msg.headers and msg.headers.get(Header.STATUS) == NO_RESPONDERS_STATUS:
            raise NoStreamResponseError
        data = msg.data
        # Parsed only when it says more than "stored": json.loads of these bytes was 2-3% of a submission's CPU.
        # Only a PubAck's own shape takes that path: any other answer (a stray responder) is not a 202.
        if data.startswith(PUBACK_START) and b"duplicate" not in data and b'"error"' not in data:
            return False
        try:
            ack = json.loads(data)
        except ValueError as e:
            raise NatsTimeoutError(f"not a PubAck: {data[:80]!r}") from e
        if not isinstance(ack, dict):
            raise NatsTimeoutError(f"not a PubAck: {data[:80]!r}")
        if "error" in ack:
            raise APIError.from_error(ack["error"])
        if "stream" not in ack or "seq" not in ack:
            raise NatsTimeoutError(f"not a PubAck: {data[:80]!r}")
        return bool(ack.get("duplicate"))


class Backend:
    def __init__(self, settings: GatewaySettings, routing: Routing) -> None:
        self.s = settings
        self.routing = routing
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self.acks: PubAcks | None = None
        self.status: dict[str, QueueStatus] = {}  # each routed queue's status buckets, once connected
        self.lookup: StatusLookup | None = None  # a call's status from its id alone
        self.ready_streams: set[str] = set()  # queues whose streams (every partition's) are set up
        self._cancels: dict[str, KeyValue] = {}
        self._legacy_cancels: KeyValue | None = None
        self._legacy_checked = -LEGACY_RECHECK
        self.reconnects = 0  # gateway_nats_reconnect_total

    @property
    def status_enabled(self) -> bool:
        return self.s.call_status

    def queue_status(self, queue: str) -> QueueStatus:
        """The queue's status buckets (switched off until connected, or with call status off)."""
        return self.status.get(queue) or QueueStatus.off()

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    @property
    def max_payload(self) -> int:
        """The server's limit on headers + body of one message (from its INFO; the default until connected)."""
        return self.nc.max_payload if self.nc is not None else contract.NATS_DEFAULT_MAX_PAYLOAD

    def not_ready(self) -> str | None:
        return None if self.connected else "not connected to NATS"

    async def connect(self) -> None:
        """Connect, open the status bucket and create the routed queues' streams; retries until NATS answers."""
        while self.nc is None:
            try:
                self.nc = await connect(self.s, "jetqueue-gateway", self._reconnected, connect_attempts=1)
            except ConnectionError as e:
                log.warning("%s; retrying", e)
                await asyncio.sleep(1)
        self.js = self.nc.jetstream()  # publish_timeout applies to publishes (accept.py), not to API calls
        self.acks = await PubAcks.open(self.nc)
        if self.s.call_status:
            status = {
                queue: QueueStatus.of(self.js, queue, info.partitions, self.s.status_ttl, info.replicas, info.storage)
                for queue, info in self.routing.queues.items()
            }
            for queue_status in status.values():  # opened now if they can be; otherwise on first use
                await queue_status.open()
            self.status, self.lookup = status, StatusLookup(self.js, status)
        for queue in sorted(self.routing.queues):
            await self.ensure_queue(queue)

    async def cancel_requests(self, queue: str) -> list[KeyValue]:
        """Where a cancel of the queue's call is stored (cancels.py): the queue's bucket, opened (or created) on
        first use, and the bucket of before partitions while it exists (workers not upgraded yet watch it)."""
        if self.js is None:
            raise ConnectionError("not connected to NATS")
        if queue not in self._cancels:
            info = self.routing.queues.get(queue)
            replicas, storage = (info.replicas, info.storage) if info else (self.s.stream_replicas, "file")
            self._cancels[queue] = await cancels.open_bucket(self.js, queue, replicas, storage)
        if time.monotonic() - self._legacy_checked >= LEGACY_RECHECK:
            self._legacy_cancels = await cancels.open_legacy(self.js)
            self._legacy_checked = time.monotonic()
        return [self._cancels[queue], *([self._legacy_cancels] if self._legacy_cancels else [])]

    async def _reconnected(self) -> None:
        self.reconnects += 1

    def partitions(self, queue: str) -> int:
        info = self.routing.queues.get(queue)
        return info.partitions if info else 1

    async def stream_deleted(self, queue: str, partition: int = 0) -> bool:
        """A publish got no answer from any stream: deleted underneath, or only electing a new leader? Only a
        definite 'not found' counts as deleted; then the streams are set up again (True when they are back)."""
        if self.js is None:
            return False
        try:
            for stream in (contract.stream_name(queue, partition), contract.schedule_stream_name(queue)):
                await asyncio.wait_for(self.js.stream_info(stream), STREAM_CHECK_TIMEOUT)
            return False  # they exist: a leader election or a passing fault
        except NotFoundError:
            self.ready_streams.discard(queue)
            return await self.ensure_queue(queue)
        except Exception:
            return False

    async def ensure_queue(self, queue: str) -> bool:
        """Create the queue's streams if missing (the work stream of each partition, and the stream that holds
        scheduled calls), so calls are stored even before its worker starts. Never the subjects of priority levels:
        the workers add them once their consumers are ready for them (queueworker/streams.py); a high or low call
        before that is answered 503, not stored where nothing takes it."""
        if queue in self.ready_streams:
            return True
        if self.js is None:
            return False
        info = self.routing.queues.get(queue) or QueueInfo(self.s.stream_replicas, self.s.stream_storage)
        wants = [
            jetstream.work_stream(
                queue, info.replicas, info.storage, info.max_length, info.max_bytes, p, info.partitions
            )
            for p in range(info.partitions)
        ]
        try:
            for want in wants:
                await provision.ensure_stream(self.js, want)
            await provision.ensure_stream(
                self.js, jetstream.schedule_stream(queue, wants[0].replicas, wants[0].storage)
            )
        except Exception as e:
            log.warning("cannot set up stream for queue %s: %s", queue, e)
            return False
        self.ready_streams.add(queue)
        return True

    async def close(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.nc.drain()
