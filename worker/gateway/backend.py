"""The gateway's side of NATS: the connection, the JetStream context, the status store and the queues'
streams, set up in the background so the HTTP server answers (503, and /readyz says why) meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging

from nats.aio.client import NO_RESPONDERS_STATUS, Client
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import Header
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError
from nats.js.kv import KeyValue

from jetqueue import cancels, contract, provision
from jetqueue.callstatus import StatusStore
from jetqueue.connection import connect
from jetqueue.contract import jetstream
from jetqueue.gateway.routing import Routing
from jetqueue.settings import GatewaySettings

log = logging.getLogger("jetqueue.gateway")
STREAM_CHECK_TIMEOUT = 1.0
PUBACK_START = b'{"stream":'


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

    @classmethod
    async def open(cls, nc: Client) -> PubAcks:
        acks = cls(nc, nc.new_inbox() + ".")
        await nc.subscribe(acks._prefix + "*", cb=acks._answer)  # subscribed again by nats-py on reconnect
        return acks

    async def _answer(self, msg: Msg) -> None:
        waiter = self._waiting.get(msg.subject[len(self._prefix) :])
        if waiter is not None and not waiter.done():
            waiter.set_result(msg)

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
        timer = self._loop.call_later(timeout, self._time_out, waiter)
        try:
            await self._nc.publish(subject, payload, reply=self._prefix + token, headers=headers)
            msg = await waiter
        finally:
            timer.cancel()
            del self._waiting[token]
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
        self.status = StatusStore.off()
        self.ready_streams: set[str] = set()
        self.reconnects = 0  # gateway_nats_reconnect_total
        self._cancels: KeyValue | None = None

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
            bucket = jetstream.status_bucket(self.s.status_ttl, self.s.stream_replicas, self.s.stream_storage)
            self.status = StatusStore(self.js, bucket)
            await self.status.bucket()  # opened now if it can be; otherwise on first use
        for queue in sorted(self.routing.queues):
            await self.ensure_queue(queue)

    async def _reconnected(self) -> None:
        self.reconnects += 1

    async def cancel_requests(self) -> KeyValue:
        """The cancel-request bucket (cancels.py), opened (or created) on first use."""
        if self._cancels is None:
            if self.js is None:
                raise ConnectionError("not connected to NATS")
            s = self.s
            self._cancels = await cancels.open_bucket(self.js, s.stream_replicas, s.stream_storage)
        return self._cancels

    async def stream_deleted(self, queue: str) -> bool:
        """A publish got no answer from any stream: deleted underneath, or only electing a new leader? Only a
        definite 'not found' counts as deleted; then the stream is set up again (True when it is back)."""
        if self.js is None:
            return False
        try:
            for stream in (contract.stream_name(queue), contract.schedule_stream_name(queue)):
                await asyncio.wait_for(self.js.stream_info(stream), STREAM_CHECK_TIMEOUT)
            return False  # they exist: a leader election or a passing fault
        except NotFoundError:
            self.ready_streams.discard(queue)
            return await self.ensure_queue(queue)
        except Exception:
            return False

    async def ensure_queue(self, queue: str) -> bool:
        """Create the queue's streams if missing (its work stream, and the stream that holds scheduled calls), so
        calls are stored even before its worker starts."""
        if queue in self.ready_streams:
            return True
        if self.js is None:
            return False
        info = self.routing.queues.get(queue)
        if info is None:
            want = jetstream.work_stream(queue, self.s.stream_replicas, self.s.stream_storage)
        else:
            want = jetstream.work_stream(queue, info.replicas, info.storage, info.max_length, info.max_bytes)
        try:
            await provision.ensure_stream(self.js, want)
            await provision.ensure_stream(self.js, jetstream.schedule_stream(queue, want.replicas, want.storage))
        except Exception as e:
            log.warning("cannot set up stream for queue %s: %s", queue, e)
            return False
        self.ready_streams.add(queue)
        return True

    async def close(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.nc.drain()
