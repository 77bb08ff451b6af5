"""Pulls from many consumers (of one stream or several), and JetStream API requests, sent without waiting and
answered on one subscription (function mode's dispatcher, functiondispatch.py; `ConsumerPull` for the static
consumer): no task and no wait per call, which nats-py's `fetch` costs for every message (a task, a timer and a uuid
each).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from typing import Any

from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import ServiceUnavailableError

API_TIMEOUT = 5.0  # an API request not answered by then is given up
PULL_TIMEOUT = 5.0  # a pull is answered at once (or at its expiry); beyond this the answer is taken as lost

Message = tuple[str, bytes, str]  # subject, payload, reply subject


class Pull:
    """One pull request: the calls it brought and how it ended (status "" when it got all it asked for)."""

    __slots__ = ("batch", "consumer", "deadline", "description", "done", "msgs", "status", "token")

    def __init__(
        self,
        consumer: tuple[str, str],
        batch: int,
        token: str,
        deadline: float,
        done: Callable[[Pull], None],
        status: str = "",
    ) -> None:
        self.consumer = consumer  # (stream, consumer name)
        self.batch = batch
        self.token = token
        self.deadline = deadline
        self.done = done
        self.msgs: list[Msg] = []
        self.status = status
        self.description = ""

    @property
    def gone(self) -> bool:
        """No such consumer: no responder (503), or deleted while the pull waited (409 Consumer Deleted)."""
        return self.status == "503" or (self.status == "409" and "deleted" in self.description.lower())


class Requests:
    """Pulls from many consumers and JetStream API requests, answered on one subscription.

    Each request gets a reply subject of its own under one wildcard inbox: a pull's status from the server (no
    messages, expired, no such consumer) and an API answer come on it. A call keeps its own subject when it is
    delivered, so it is matched to its pull by the stream and consumer its ack subject names (one pull per
    consumer at a time). The caller sends the messages `pull` and `ask` return; each answer goes to its callback;
    `expire` gives up on answers that did not come."""

    def __init__(self, js: JetStreamContext, orphan: Callable[[Msg], None]) -> None:
        self.nc = js._nc
        self.api = js._prefix
        self.orphan = orphan  # a call delivered to a pull that had given up waiting
        self.inbox = self.nc.new_inbox()
        self.pulls: dict[str, Pull] = {}  # by token
        self.by_consumer: dict[tuple[str, str], Pull] = {}
        self.asks: dict[str, tuple[float, Callable[[bytes | None], None]]] = {}
        self.sub: Any = None
        self._ids = itertools.count()

    async def start(self) -> None:
        self.sub = await self.nc.subscribe(f"{self.inbox}.*", cb=self._receive)

    async def stop(self) -> None:
        if self.sub is not None:
            with contextlib.suppress(Exception):
                await self.sub.unsubscribe()

    def _token(self) -> str:
        return format(next(self._ids), "x")

    def pull(
        self,
        stream: str,
        consumer: str,
        batch: int,
        wait: float | None,
        done: Callable[[Pull], None],
        timeout: float = PULL_TIMEOUT,
        expiring: bool = False,
    ) -> Message:
        """Up to `batch` calls of `consumer` (of `stream`): those deliverable now (`wait` None: the server answers
        at once), or the first to come within `wait` seconds. `done` gets the Pull; an answer not there `timeout`
        seconds after the wait is given up (`expire`). `expiring` (with `wait` None): the pull also expires at the
        server after `timeout`; it then waits up to that long for a first call when there is none (instead of
        answering 404), but never lingers there when the consumer has no room (max_ack_pending reached)."""
        key = (stream, consumer)
        assert key not in self.by_consumer, key  # its calls could not be told apart
        token = self._token()
        deadline = asyncio.get_running_loop().time() + (wait or 0.0) + timeout
        self.pulls[token] = self.by_consumer[key] = Pull(key, batch, token, deadline, done)
        if wait is None and expiring:
            payload = b'{"batch":%d,"no_wait":true,"expires":%d}' % (batch, int(timeout * 1e9))
        elif wait is None:
            payload = b'{"batch":%d,"no_wait":true}' % batch
        else:
            payload = b'{"batch":%d,"expires":%d}' % (batch, int(wait * 1e9))
        return f"{self.api}.CONSUMER.MSG.NEXT.{stream}.{consumer}", payload, f"{self.inbox}.{token}"

    def ask(self, subject: str, done: Callable[[bytes | None], None], payload: bytes = b"") -> Message:
        """`$JS.API.<subject>`; `done` gets the answer's body (b"": no JetStream answered; None: no answer)."""
        token = self._token()
        self.asks[token] = (asyncio.get_running_loop().time() + API_TIMEOUT, done)
        return f"{self.api}.{subject}", payload, f"{self.inbox}.{token}"

    def forget(self, p: Pull) -> None:
        """Stop waiting for `p` (its waiter was cancelled): calls it still brings are orphans."""
        self._finish(p, "forgotten")

    def _finish(self, p: Pull, status: str = "", description: str = "") -> None:
        if self.pulls.pop(p.token, None) is None:
            return
        self.by_consumer.pop(p.consumer, None)
        p.status, p.description = status, description
        p.done(p)

    async def _receive(self, msg: Msg) -> None:
        if msg.reply.startswith("$JS.ACK."):  # a call, on its own subject
            try:
                md = msg.metadata
                p = self.by_consumer.get((md.stream, md.consumer))
            except Exception:  # an ack subject nats-py cannot read: no consumer to match
                p = None
            if p is None:
                self.orphan(msg)
                return
            p.msgs.append(msg)
            if len(p.msgs) >= p.batch:
                self._finish(p)
            return
        token = msg.subject.rpartition(".")[2]
        headers = msg.headers
        status = headers.get("Status") if headers else None
        pull = self.pulls.get(token)
        if pull is not None:
            if status and status != "100":  # 100: a heartbeat (never asked for)
                self._finish(pull, status, (headers or {}).get("Description", ""))
            return
        ask = self.asks.pop(token, None)
        if ask is not None:
            ask[1](b"" if status else msg.data)

    def expire(self, now: float) -> None:
        for p in [p for p in self.pulls.values() if p.deadline <= now]:
            self._finish(p, "timeout")
        for token in [t for t, (deadline, _) in self.asks.items() if deadline <= now]:
            self.asks.pop(token)[1](None)

    def finish_all(self, status: str) -> None:
        for p in list(self.pulls.values()):
            self._finish(p, status)


NO_MESSAGES = ("404", "408")  # nothing deliverable now; the wait expired
GAVE_UP = ("timeout", "reconnected")
STATIC_PULL_TIMEOUT = 1.0  # the static consumer's pulls are answered at once or at their expiry
DISCONNECTED_WAIT = 0.25


class PullRefused(Exception):
    """The server answered a pull with a status other than "no messages" (e.g. 409 leadership change)."""


class ConsumerPull:
    """`fetch` for one durable consumer on `Requests` (fetch.ConsumerLoop's source in static mode): the calls
    deliverable now, else the first to come within the timeout, with one awaited future per pull, not per call.
    Calls delivered after their pull was given up go to `orphan` (the loop starts them when slots free up)."""

    def __init__(self, js: JetStreamContext, stream: str, consumer: str, orphan: Callable[[Msg], None]) -> None:
        self.stream = stream
        self.consumer = consumer
        self.requests = Requests(js, orphan)

    async def start(self) -> ConsumerPull:
        await self.requests.start()
        return self

    async def fetch(self, batch: int, timeout: float) -> list[Msg]:
        """Raises TimeoutError when nothing came, ServiceUnavailableError when the consumer is gone. A timeout
        under STATIC_PULL_TIMEOUT bounds the first pull's wait at the server too (a partition's idle loop)."""
        p = await self._pull(batch, None, min(timeout, STATIC_PULL_TIMEOUT))
        if not p.msgs and (p.status in NO_MESSAGES or p.status in GAVE_UP) and timeout >= STATIC_PULL_TIMEOUT:
            p = await self._pull(1, timeout)
        if p.msgs:
            return p.msgs
        if p.gone:
            raise ServiceUnavailableError
        if p.status in NO_MESSAGES or p.status in GAVE_UP:
            raise NatsTimeoutError
        raise PullRefused(f"{p.status} {p.description}".strip())

    async def _pull(self, batch: int, wait: float | None, expires: float = 0.0) -> Pull:
        r = self.requests
        answered: asyncio.Future[Pull] = asyncio.get_running_loop().create_future()

        def done(p: Pull) -> None:
            if not answered.done():
                answered.set_result(p)

        if r.nc.is_closed:
            raise ConnectionClosedError
        if not r.nc.is_connected:  # a pull sent now would wait in the client's buffer and be answered late
            await asyncio.sleep(DISCONNECTED_WAIT)
            return Pull((self.stream, self.consumer), batch, "", 0.0, done, "timeout")
        # Expiring: a pull the server cannot answer (another worker holds every max_ack_pending slot) would
        # otherwise wait there for ever, one more each second, until the consumer refuses every pull (409).
        subject, payload, reply = r.pull(
            self.stream, self.consumer, batch, wait, done, expires or STATIC_PULL_TIMEOUT, expiring=True
        )
        pull = r.by_consumer[(self.stream, self.consumer)]
        try:
            await r.nc.publish(subject, payload, reply=reply)
            async with asyncio.timeout((wait or 0.0) + STATIC_PULL_TIMEOUT):
                return await answered
        except BaseException:
            r.forget(pull)
            for m in pull.msgs:  # delivered before the failure: started later, never dropped
                r.orphan(m)
            raise

    async def unsubscribe(self) -> None:
        await self.requests.stop()

    def reconnected(self) -> None:
        """Pulls under way at a disconnect may never be answered: give them up now, not at their deadline."""
        self.requests.finish_all("reconnected")
