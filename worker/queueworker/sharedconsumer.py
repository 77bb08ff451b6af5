"""Function mode's shared consumer: one consumer takes every function's calls while no function needs one of its
own, and hands over to per-function consumers (functionconsumers.py) when one does.

Why: a consumer costs nats-server far more to make and remove than to pull from (measured on 2.15.1 with 5,000
functions: about 400 µs of server CPU per function made, pulled, asked and removed, against about 15 µs per call
pulled and acked from one consumer), and one consumer filtered on several subjects pays on every call pulled for
every subject in the stream's blocks (300-700 µs per call there), so neither a consumer per function nor grouped
filters come near static mode. A shared consumer filtered on `<queue>.>` drains as fast as static mode's.

What it costs: it hands calls over in stream order, so a function's backlog delays the others' calls behind it. It
is therefore open only while every function's calls in the stream fit in max_inflight (and in its adaptive limit
once a 429 has set one) and no function is paused: then a call waits for at most that many calls of any other
function, which run at once. When a function crosses it, or a function is paused, the worker closes the shared
consumer and gives each function with calls a consumer of its own (named `contract.function_consumer_name`: what
pauses, `jetqueue status` and KEDA's lag per function act on), as before this consumer existed.

States, the same for every worker (read from the consumer itself): absent; open (filter `<queue>.>`); closed
(filter `contract.closed_subject`, which no call has). Open → closed is a filter update: the consumer then delivers
nothing new but keeps the calls it had delivered, redelivering them itself after a NAK or its ack wait. Closed →
absent once nothing is pending on it (removed then, losing nothing). Absent → open by a create, which the server
refuses while any function consumer exists (a work queue's filters must not overlap, error 10100). Never closed →
open in place: widening a filter skips the calls before the consumer's position (verified on 2.15.1), so they
would wait for ever.

The hand-over: a function's own consumer starts at the stream's first call of that function, so made while a call
of it is still pending on the closed shared consumer it would deliver that call again. A closed shared consumer's
calls are all at or below the last sequence it delivered (`delivered`): a function's consumer is made once its
first call in the stream is above that, or once the shared consumer's ack floor has passed it (`handover`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Callable
from dataclasses import replace
from enum import StrEnum

from jetqueue import contract
from jetqueue.contract import jetstream
from jetqueue.queueworker.pullrequests import Message, Requests
from jetqueue.settings import WorkerSettings

log = logging.getLogger("jetqueue.functionmode")
LOOK_EVERY = 0.5  # a closed shared consumer's info (ack floor, pending) is asked again after this
OPEN_RETRY = 2.0  # it could not be made (function consumers of another worker): not tried again before this
NOT_FOUND = (10014, 10149)  # nats-server: consumer not found; (an update) consumer does not exist
OVERLAP = 10100  # nats-server: filtered consumer not unique on workqueue stream
EXISTS = 10148  # nats-server: consumer already exists (with another config)


class State(StrEnum):
    UNKNOWN = "unknown"  # not asked yet, or the last answer did not say
    ABSENT = "absent"
    OPEN = "open"
    CLOSED = "closed"


class Shared:
    """The shared consumer of one stream, as this worker last learnt it; `changed(self)` is told after every
    answer. Requests go out through `send` (the dispatcher's outbox), one at a time."""

    def __init__(
        self,
        s: WorkerSettings,
        stream: str,
        requests: Requests,
        send: Callable[[Message], None],
        changed: Callable[[Shared], None],
        pause_until: Callable[[], str | None],
        partition: int = 0,
    ) -> None:
        self.s = s
        self.stream = stream
        self.partition = partition  # of the queue, whose calls the stream holds
        self.requests = requests
        self.send = send
        self.changed = changed
        self.pause_until = pause_until  # the whole queue's pause: a shared consumer is made with it
        self.name = contract.shared_consumer_name(s.queue)
        self.state = State.UNKNOWN
        self.delivered = 0  # the last call it delivered (stream sequence)
        self.floor = 0  # its ack floor: every call it delivered at or below this is acked
        self.pending = 0  # calls it delivered that are not acked yet
        self.asking = False
        self.asked_at = -math.inf
        self.not_before = -math.inf  # not made again before this (loop time)

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    @property
    def handover(self) -> int | None:
        """Closed with calls maybe still pending on it: a function's own consumer may be made only once the
        function's first call in the stream is above this sequence. None: any may be made now."""
        if self.state is State.CLOSED and self.floor < self.delivered:
            return self.delivered
        return None

    def spec(self, closed: bool) -> jetstream.ConsumerSpec:
        s = self.s
        spec = jetstream.shared_function_consumer(
            s.queue, s.ack_wait, s.max_ack_pending, s.max_waiting, closed, self.partition
        )
        return replace(spec, stream=self.stream)

    def look(self) -> None:
        """Ask its info."""
        self._ask(f"CONSUMER.INFO.{self.stream}.{self.name}", b"", "look")

    def open(self) -> None:
        """Make it, open (refused while function consumers exist: then absent until OPEN_RETRY)."""
        config = self.spec(closed=False).to_nats().as_dict()
        until = self.pause_until()
        if until:
            config["pause_until"] = until
        self._ask_config(config, "create")

    def close(self) -> None:
        """Stop it delivering anything new: what it delivered stays with it until acked."""
        self._ask_config(self.spec(closed=True).to_nats().as_dict(), "update")

    def remove(self) -> None:
        """Closed, with nothing pending on it: it can go."""
        self._ask(f"CONSUMER.DELETE.{self.stream}.{self.name}", b"", "remove")

    def _ask_config(self, config: dict[str, object], action: str) -> None:
        body = json.dumps({"stream_name": self.stream, "config": config, "action": action}).encode()
        self._ask(f"CONSUMER.CREATE.{self.stream}.{self.name}", body, action)

    def _ask(self, subject: str, payload: bytes, what: str) -> None:
        if self.asking:
            return
        self.asking, self.asked_at = True, self._now()
        self.send(self.requests.ask(subject, lambda answer: self._answered(what, answer), payload))

    def _answered(self, what: str, answer: bytes | None) -> None:
        self.asking = False
        try:
            doc = json.loads(answer) if answer else {}
        except ValueError:
            doc = {}
        error = doc.get("error") or {}
        code = error.get("err_code")
        if code in NOT_FOUND or (what == "remove" and doc.get("success")):
            self._learn(State.ABSENT)
        elif what == "create" and code == OVERLAP:  # another worker's function consumers are still there
            self.not_before = self._now() + OPEN_RETRY
            self._learn(State.ABSENT)
        elif what == "create" and code == EXISTS:  # made by another worker meanwhile
            self.look()
        elif "config" in doc:
            self._read(doc)
        else:  # no answer, or another refusal: asked again later
            if error:
                log.warning("shared consumer %s on %s: %s", self.name, self.stream, error.get("description"))
            self.not_before = self._now() + OPEN_RETRY
            self.changed(self)

    def _read(self, info: dict[str, object]) -> None:
        config = info.get("config")
        subject = config.get("filter_subject") if isinstance(config, dict) else None
        self.delivered = _seq(info.get("delivered"))
        self.floor = _seq(info.get("ack_floor"))
        pending = info.get("num_ack_pending")
        self.pending = pending if isinstance(pending, int) else 0
        self._learn(State.OPEN if subject == contract.queue_subjects(self.s.queue, self.partition) else State.CLOSED)

    def _learn(self, state: State) -> None:
        if state is not self.state:
            log.info("shared consumer %s on %s: %s", self.name, self.stream, state.value)
        self.state = state
        self.changed(self)


def _seq(position: object) -> int:
    """The stream sequence of a consumer info's `delivered` or `ack_floor`."""
    seq = position.get("stream_seq") if isinstance(position, dict) else None
    return seq if isinstance(seq, int) else 0
