"""Callbacks, durable: a finished call's callback is stored in JetStream (`OF_<queue>_CB`) before the call
is acked, and a sender delivers it with retries, so neither a worker killed after the ack nor a receiver
down for minutes loses it.

- `CallbackStore.store` (used by handle.py): one message per finished call, deduplicated by the call's
  stored message, so a redelivered call does not store a second callback. A body too large is cut, with
  room left for the headers its later attempts carry.
- `CallbackSender`: pulls into at most `callback_concurrency` sends, at most `callback_host_concurrency`
  per receiver (scheme, host, port): a callback for a busy receiver is handed on (not an attempt) for 2-4 s,
  so a hanging receiver delays nobody else; while that receiver has not answered within a timeout, the wait
  doubles (up to max_wait), so its backlog costs few writes. A failed attempt is handed on with its attempt
  count in a header; the last one becomes a dead letter (`jetqueue dlq list QUEUE --callbacks`; one per
  callback within the duplicate window), as does a callback refused by the egress rules (checked on every
  connection), redirected (never followed) or rejected with a 4xx. Bodies are held only while being sent.
- Handing on = publishing the stored message's one successor as a message schedule (it holds nothing
  meanwhile), with an id derived from that stored message, then acking. A message delivered a second time
  may have had its successor stored by a handler that died before its ack arrived, so it is not sent: it
  is handed on under the same id, which the server drops as a duplicate when that successor was stored.
  This holds within the stream's duplicate window (2 minutes) of a server that did not restart meanwhile;
  later, the callback may be sent twice (at least once, as always).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError, ServiceUnavailableError

from jetqueue import contract, openfaas, signing
from jetqueue.egress import Egress, EgressRefused
from jetqueue.queueworker.deadletter import dead_letter
from jetqueue.queueworker.heartbeat import AckExtender
from jetqueue.queueworker.metrics import WorkerMetrics

log = logging.getLogger("jetqueue.callback")
H_URL = contract.H_CALLBACK
H_ATTEMPT = contract.H_CALLBACK_ATTEMPT
H_TRUNCATED = "X-Callback-Body-Truncated"  # the original body length, when the body had to be cut to fit
H_KEY = contract.H_CALLBACK_KEY
H_BUSY = contract.H_CALLBACK_BUSY
FIRST_WAIT = 1.0
HOST_BUSY_WAIT = 2.0  # a callback for a busy receiver is offered again after 2-4 s; doubling while it does not answer
FETCH_TIMEOUT = 1.0
ANSWERS_KEPT = 1024
MAX_TIME = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)  # the longest a stored time is written
DEFAULT_PORTS = {"http": 80, "https": 443}


def _count(headers: dict[str, str], name: str, least: int) -> int:
    try:
        return max(least, int(headers.get(name, "") or least))
    except ValueError:
        return least


def receiver(url: str) -> str:
    """The receiver a callback goes to, for the per-receiver limit: scheme, host (lower case, no trailing dot)
    and port (the scheme's default when absent), so spellings of one URL share one limit."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    host = (parts.hostname or "").lower().rstrip(".")
    return f"{parts.scheme}://{host}:{port or DEFAULT_PORTS.get(parts.scheme, '')}"


def successor(queue: str, headers: dict[str, str], key: str, attempt: int, busy: int, at: float) -> dict[str, str]:
    """The headers of a stored callback's next message: `attempt`, due at unix time `at`, deduplicated by `key`
    (the stored message it follows)."""
    h = {k: v for k, v in headers.items() if not k.startswith(("Nats-Schedule", "Nats-Scheduler", H_BUSY))}
    h.update(
        {
            H_ATTEMPT: str(attempt),
            contract.H_MSG_ID: f"cb-next-{key}",
            **contract.schedule_headers(at, contract.callback_subject(queue)),
        }
    )
    if busy:
        h[H_BUSY] = str(busy)
    return h


def busy_wait(busy: int, max_wait: float) -> float:
    """How long a callback waits before it is offered again, having found its receiver busy and not answering
    `busy` times in a row (0: busy, but answering). Spread over twice the wait (within max_wait): schedules
    fire on whole seconds, and a backlog handed on at once would come back at once."""
    return min(max_wait, HOST_BUSY_WAIT * 2.0 ** min(max(busy, 1) - 1, 32) * random.uniform(1, 2))


def cut_to_fit(headers: dict[str, str], body: bytes, limit: int) -> bytes:
    """The body, cut so that it fits `limit` with `headers` (marked with its original length, once)."""
    if contract.header_size(headers) + len(body) <= limit:
        return body
    headers.setdefault(H_TRUNCATED, str(len(body)))
    return body[: max(0, limit - contract.header_size(headers))]


class CallbackStore:
    def __init__(self, js: JetStreamContext, queue: str, max_payload: int) -> None:
        self.js = js
        self.queue = queue
        self.max_payload = max_payload

    async def store(self, key: str, url: str, body: bytes, headers: dict[str, str]) -> None:
        """Store a callback and wait for the PubAck; `key` identifies the call's stored message (dedup). The
        body is cut to leave room for the headers its later attempts carry."""
        h = {**headers, H_URL: url, H_ATTEMPT: "1", H_KEY: key, contract.H_MSG_ID: f"cb-{key}"}
        longest = contract.stored_message_key(contract.callback_stream_name(self.queue), 10**20, MAX_TIME)
        # The longest headers a later attempt carries (a superset of these, each value at its longest).
        later = successor(self.queue, {**h, H_TRUNCATED: str(len(body))}, longest, 10**9, 10**9, MAX_TIME.timestamp())
        room = self.max_payload - contract.header_size(later)
        if len(body) > room:
            h[H_TRUNCATED] = str(len(body))
            body = body[: max(0, room)]
        await self.js.publish(contract.callback_subject(self.queue), body, headers=h)


class CallbackSender:
    def __init__(
        self,
        js: JetStreamContext,
        queue: str,
        metrics: WorkerMetrics,
        egress: Egress,
        max_payload: int,
        attempts: int = 20,
        max_wait: float = 300.0,
        timeout: float = 10.0,
        concurrency: int = 32,
        host_concurrency: int = 4,
        signing_keys: dict[str, bytes] | None = None,
    ) -> None:
        self.js = js
        self.queue = queue
        self.metrics = metrics
        self.egress = egress
        self.max_payload = max_payload
        self.attempts = attempts
        self.max_wait = max_wait
        self.timeout = timeout
        self.concurrency = concurrency
        self.host_concurrency = host_concurrency
        self.signing_keys = signing_keys or {}
        self.per_host: Counter[str] = Counter()
        self.answers: dict[str, float] = {}  # receiver -> when it last answered (monotonic)
        self.tasks: set[asyncio.Task[None]] = set()
        self.extender = AckExtender(timeout + 30.0)
        self.stopping = False
        self._psub: JetStreamContext.PullSubscription | None = None
        self._rebind: Callable[[], Awaitable[JetStreamContext.PullSubscription]] | None = None
        self._runner: asyncio.Task[Any] | None = None
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency, socket_factory=egress.socket_factory),
            timeout=aiohttp.ClientTimeout(total=timeout),
        )

    def bind(
        self,
        psub: JetStreamContext.PullSubscription,
        rebind: Callable[[], Awaitable[JetStreamContext.PullSubscription]],
    ) -> None:
        """Pull from `psub`; `rebind` sets the stream and consumer up again if they are deleted underneath."""
        self._psub, self._rebind = psub, rebind

    async def run(self) -> None:
        self._runner = asyncio.current_task()
        beat = asyncio.create_task(self.extender.run())
        try:
            while not self.stopping:
                free = self.concurrency - len(self.tasks)
                if free <= 0 or self._psub is None:
                    await asyncio.sleep(0.05)
                    continue
                try:
                    msgs = await self._psub.fetch(free, timeout=FETCH_TIMEOUT)
                except TimeoutError:
                    continue
                except (ServiceUnavailableError, NotFoundError):  # deleted underneath: set it up again
                    await self._recover()
                    continue
                except Exception as e:  # disconnected: keep trying
                    log.warning("callback fetch failed: %r", e)
                    await asyncio.sleep(1)
                    continue
                for m in msgs:
                    task = asyncio.create_task(self._handle(m))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
        finally:
            beat.cancel()

    def _answered(self, host: str) -> None:
        now = time.monotonic()
        if len(self.answers) >= ANSWERS_KEPT:  # bounded: forget receivers not heard from within a timeout
            self.answers = {h: t for h, t in self.answers.items() if now - t <= self.timeout}
        self.answers[host] = now

    def _answering(self, host: str) -> bool:
        """Whether the receiver answered a callback within the last timeout: busy, but not hanging."""
        return time.monotonic() - self.answers.get(host, -math.inf) <= self.timeout

    async def _recover(self) -> None:
        log.warning("the callback consumer is missing; setting it up again")
        while not self.stopping and self._rebind is not None:
            try:
                old, self._psub = self._psub, await self._rebind()
                if old is not None and old is not self._psub:  # never read again: left, it would hold the drain
                    with contextlib.suppress(Exception):
                        await old.unsubscribe()
                return
            except Exception as e:
                log.warning("cannot set up the callback consumer yet: %r", e)
                await asyncio.sleep(2)

    async def _handle(self, msg: Msg) -> None:
        headers = dict(msg.headers or {})
        url = headers.get(H_URL, "")
        host = receiver(url)
        again = msg.metadata.num_delivered is not None and msg.metadata.num_delivered > 1
        if again or self.per_host[host] >= self.host_concurrency:
            busy = _count(headers, H_BUSY, 0)
            if not again:  # doubling only while it does not answer: a backlog for one that hangs costs few writes
                busy = 0 if self._answering(host) else busy + 1
            wait = FIRST_WAIT if again else busy_wait(busy, self.max_wait)
            try:
                await self._later(msg, headers, _count(headers, H_ATTEMPT, 1), wait, busy)
            except Exception as e:  # not acked: it comes back after the ack wait, and is handed on then
                log.warning("cannot hand a callback on yet: %r", e)
            return
        self.per_host[host] += 1
        self.extender.track(msg)
        try:
            await self._attempt(msg, headers, url, host)
        except Exception:
            log.exception("callback handling failed; it is offered again after the ack wait")
        finally:
            self.extender.untrack(msg)
            self.per_host[host] -= 1
            if not self.per_host[host]:
                del self.per_host[host]

    async def _attempt(self, msg: Msg, headers: dict[str, str], url: str, host: str) -> None:
        attempt = _count(headers, H_ATTEMPT, 1)
        call_id = headers.get("X-Call-Id", "")
        if refused := self.egress.url_problem(url):
            await self._give_up(msg, headers, "refused", refused, attempt)
            return
        sent = {k: v for k, v in headers.items() if not k.startswith(("Jq-", "Nats-"))}
        sent.setdefault("User-Agent", openfaas.USER_AGENT)
        if self.signing_keys:  # signed at each attempt: the timestamp says when it was sent
            sent[signing.HEADER] = signing.signature(msg.data, self.signing_keys)
        try:
            async with self._session.post(url, data=msg.data, headers=sent, allow_redirects=False) as resp:
                await resp.read()
                status, location = resp.status, resp.headers.get("Location", "")
            self._answered(host)
        except aiohttp.ClientConnectorError as e:
            if isinstance(e.os_error, EgressRefused) or "blocked network" in str(e):
                await self._give_up(msg, headers, "refused", str(e.os_error), attempt)
                return
            status, error = 0, f"{type(e).__name__}: {e}"
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            status, error = 0, f"{type(e).__name__}: {e}"
        if 200 <= status < 300:
            await msg.ack()
            self.metrics.callbacks.labels(self.queue, "delivered").inc()
            return
        if 300 <= status < 400:  # never followed: a redirect could lead anywhere the egress rules forbid
            await self._give_up(msg, headers, "redirected", f"HTTP {status} to {location[:200]!r}", attempt)
            return
        if 400 <= status < 500 and status not in (408, 429):
            await self._give_up(msg, headers, "rejected", f"HTTP {status}", attempt)
            return
        if status:
            error = f"HTTP {status}"
        if attempt >= self.attempts:
            await self._give_up(msg, headers, "exhausted", error, attempt)
            return
        wait = min(self.max_wait, FIRST_WAIT * 2.0 ** min(attempt - 1, 32))
        await self._later(msg, headers, attempt + 1, wait)
        self.metrics.callbacks.labels(self.queue, "retried").inc()
        log.info(
            "callback to %s failed (%s); attempt %d in %.0fs", url, error, attempt + 1, wait, extra={"call_id": call_id}
        )

    async def _later(self, msg: Msg, headers: dict[str, str], attempt: int, wait: float, busy: int = 0) -> None:
        """Hand the callback on: publish its successor, `attempt`, as a message schedule (held by the server,
        holding no slot) under an id unique to this stored message, then ack."""
        meta = msg.metadata
        key = contract.stored_message_key(meta.stream, meta.sequence.stream, meta.timestamp)
        h = successor(self.queue, headers, key, attempt, busy, time.time() + max(1.0, wait))
        body = cut_to_fit(h, msg.data, self.max_payload)  # stored by an older version without the room
        await self.js.publish(contract.callback_schedule_subject(self.queue, key), body, headers=h)
        await msg.ack()

    async def _give_up(self, msg: Msg, headers: dict[str, str], reason: str, error: str, attempt: int) -> None:
        log.warning(
            "callback to %s %s: %s",
            headers.get(H_URL, ""),
            reason,
            error,
            extra={"call_id": headers.get("X-Call-Id", "")},
        )
        origin = headers.get(H_KEY)  # one dead letter per callback, even if handed on after a crash
        await dead_letter(
            self.js,
            msg,
            self.queue,
            contract.CALLBACK_DLQ_FUNCTION,
            reason,
            None,
            attempt,
            error,
            self.max_payload,
            key=f"cb-{origin}" if origin else None,
        )
        await msg.ack()
        self.metrics.callbacks.labels(self.queue, "failed").inc()

    async def close(self, timeout: float) -> None:
        """Stop fetching; callbacks being sent get up to `timeout` seconds, the rest stay stored for later."""
        self.stopping = True
        if self._psub is not None:  # a pull subscription never drains by itself: without this, drain times out
            with contextlib.suppress(Exception):
                await self._psub.unsubscribe()
        if self.tasks:
            _, pending = await asyncio.wait(set(self.tasks), timeout=timeout)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._runner is not None:  # it may be waiting on NATS to set the consumer up again: not worth waiting for
            self._runner.cancel()
        await self._session.close()
