"""Function mode's per-function consumers (used while the stream's shared consumer is not open,
sharedconsumer.py): which function gets one next, how it is made, and when it may be removed.

- Functions with calls and no consumer wait in turn (`waiting`); consumers are made OPEN_AT_ONCE at a time while
  the worker holds fewer than its maximum, each in one request (`CONSUMER.DURABLE.CREATE`, answered on the
  shared `Requests` subscription). A request refused for another reason than the stream's consumer limit
  (tried again after CONSUMER_RETRY) is made again the careful way (provision.ensure_consumer: an existing
  consumer that differs but can work is adopted, settings brought up to date in place); one not answered is
  tried again after OPEN_RETRY.
- A consumer given up is removed only if its info says no call is pending on it, no pull waits on it and it is
  not paused: removing it with a call pending (an ack sent just before, a NAK's delay, another worker's call)
  would run that call again. Otherwise the server's inactive_threshold removes it once nothing is pending.
- Every consumer is made with its function's pause (`pause_until`): a paused function stays paused.
- While a closed shared consumer may still hold calls it delivered (`Shared.handover`), a function's consumer is
  made only once the stream's first call of that function is above what the shared one delivered (one message get
  first): else the new consumer would deliver again a call the shared one had delivered. A create refused because
  a filter overlaps (the shared consumer was made open meanwhile) has the shared consumer asked again.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import math
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace

from nats.js import JetStreamContext

from jetqueue import contract, provision
from jetqueue.contract import jetstream
from jetqueue.queueworker.pullrequests import Message, Requests
from jetqueue.queueworker.sharedconsumer import OVERLAP, Shared, State
from jetqueue.settings import WorkerSettings

log = logging.getLogger("jetqueue.functionmode")
OPEN_AT_ONCE = 32  # consumers being created at once
OPEN_RETRY = 5.0  # a function whose consumer could not be made is tried again after this
QUIET_RETRY = 5.0  # a function that gave nothing (paused, served elsewhere) is not opened again before this
CONSUMER_RETRY = 1.0  # the stream has as many consumers as it allows: tried again after this
REMOVE_TRIES = 3  # a consumer's info is asked again after REMOVE_RETRY while a call shows pending on it
REMOVE_RETRY = 0.2  # (mostly an ack sent just before its info was asked: not counted by the server yet)
LIMIT_WARN_EVERY = 30.0  # "as many consumers as the stream allows" is logged at most this often
CONSUMER_LIMIT = 10026  # nats-server: "maximum consumers limit reached"
HANDOVER_RETRY = 0.25  # a function whose calls may still be pending on the closed shared consumer: asked again after

NO_MESSAGE = 10037  # nats-server: no message found


def _first_seq(answer: bytes | None) -> int | None:
    """The sequence of the message a STREAM.MSG.GET found; None: there is none; 0: no answer, or another error."""
    try:
        doc = json.loads(answer) if answer else {}
    except ValueError:
        return 0
    seq = (doc.get("message") or {}).get("seq")
    if isinstance(seq, int):
        return seq
    return None if (doc.get("error") or {}).get("err_code") == NO_MESSAGE else 0


# A consumer's info, read without parsing it all: anything else than these leaves the consumer alone.
_NO_ACK_PENDING = re.compile(rb'"num_ack_pending":0[,}]')
_NO_WAITING = re.compile(rb'"num_waiting":0[,}]')
_PAUSED = re.compile(rb'"paused":true')


class Consumers:
    """Makes and removes the function consumers of one stream. `room()` says how many more the worker may hold;
    `opened(function, consumer)` is told when one is ready; requests go out through `send` (the dispatcher's
    outbox)."""

    def __init__(
        self,
        s: WorkerSettings,
        stream: str,
        shared: Shared,
        js: JetStreamContext,
        requests: Requests,
        send: Callable[[Message], None],
        room: Callable[[], int],
        opened: Callable[[str, str], None],
        pause_until: Callable[[str], str | None],
        partition: int = 0,
    ) -> None:
        self.s = s
        self.stream = stream
        self.partition = partition  # of the queue, whose calls `stream` holds
        self.shared = shared
        self.js = js
        self.requests = requests
        self.send = send
        self.room = room
        self.on_opened = opened
        self.pause_until = pause_until
        self.waiting: OrderedDict[str, None] = OrderedDict()  # have calls, wait for a consumer: in turn
        self.opening: set[str] = set()
        self.closing: set[str] = set()  # consumer being removed: opened again once that is done
        self.not_before: dict[str, float] = {}  # not opened again before (loop time)
        self.stopping = False
        self.limit_warned = -math.inf
        self._helpers: set[asyncio.Task[None]] = set()  # consumers made the careful way
        # Every function's consumer has the same settings but for its name and subject: encoded once, around them.
        self._create_parts = self._create_template()

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    # -- which function next ----------------------------------------------------------------------------------

    def want(self, function: str, now: float) -> None:
        """The function has calls and no consumer here: it waits for one, unless it is being made, or is not to be
        made again yet."""
        if (
            function not in self.waiting
            and function not in self.opening
            and self.not_before.get(function, -math.inf) <= now
        ):
            self.waiting[function] = None

    def want_first(self, function: str) -> None:
        """Its consumer went missing: made again at once, keeping its turn."""
        self.not_before.pop(function, None)
        self.waiting[function] = None
        self.waiting.move_to_end(function, last=False)
        self.open_waiting()

    def forget_past(self, now: float, keep: int) -> None:
        """Forget the waits of functions that never came back, once more than `keep` are remembered."""
        if len(self.not_before) > keep:
            self.not_before = {f: t for f, t in self.not_before.items() if t > now}

    def open_waiting(self) -> None:
        """Consumers for functions waiting for one, while there is room (OPEN_AT_ONCE created at once)."""
        room = min(OPEN_AT_ONCE - len(self.opening), self.room() - len(self.opening))
        if room <= 0 or not self.waiting or self.stopping or self.shared.state not in (State.ABSENT, State.CLOSED):
            return
        for function in list(itertools.islice(self.waiting, room + len(self.closing))):
            if room <= 0:
                break
            if function in self.closing:  # opened once its removal is done
                continue
            del self.waiting[function]
            self.opening.add(function)
            room -= 1
            self._ask_create(function)

    # -- making one -------------------------------------------------------------------------------------------

    def spec(self, function: str) -> jetstream.ConsumerSpec:
        s = self.s
        spec = jetstream.function_consumer(
            s.queue, function, s.ack_wait, s.max_ack_pending, s.max_waiting, s.inactive_threshold, self.partition
        )
        return replace(spec, stream=self.stream)

    def _create_template(self) -> tuple[str, str, str]:
        """The create request of any function's consumer, split where its name and subject go."""
        name, subject = "\x00name\x00", "\x00subject\x00"
        config = self.spec("_").to_nats().as_dict()
        config.update(durable_name=name, filter_subject=subject)
        text = json.dumps({"stream_name": self.stream, "config": config})
        head, _, rest = text.partition(json.dumps(name))
        middle, _, tail = rest.partition(json.dumps(subject))
        assert tail and middle, text
        return head, middle, tail

    def _ask_create(self, function: str) -> None:
        """Make the function's consumer, once the closed shared consumer holds none of its calls."""
        handover = self.shared.handover
        if handover is None:
            self._send_create(function)
            return
        done = functools.partial(self._first_call, function, handover)
        body = json.dumps({"next_by_subj": contract.subject(self.s.queue, function, self.partition), "seq": 0}).encode()
        self.send(self.requests.ask(f"STREAM.MSG.GET.{self.stream}", done, body))

    def _first_call(self, function: str, handover: int, answer: bytes | None) -> None:
        """The stream's first call of the function: above `handover` (or none left), none of its calls is pending
        on the shared consumer, which delivered nothing above it."""
        if function not in self.opening:
            return
        seq = _first_seq(answer)
        if seq is not None and seq <= handover:  # pending there still (or no answer): asked again shortly
            self._not_opened(function, HANDOVER_RETRY, "")
        else:
            self._send_create(function)

    def _send_create(self, function: str) -> None:
        """Create the function's consumer, or find it as wanted (an existing one keeps its pause): one request."""
        s = self.s
        durable = contract.function_consumer_name(s.queue, function)
        until = self.pause_until(function)
        if until:
            config = self.spec(function).to_nats().as_dict()
            config["pause_until"] = until
            payload = json.dumps({"stream_name": self.stream, "config": config}).encode()
        else:
            head, middle, tail = self._create_parts
            subject = contract.subject(s.queue, function, self.partition)
            payload = (head + json.dumps(durable) + middle + json.dumps(subject) + tail).encode()
        done = functools.partial(self._created, function, durable)
        self.send(self.requests.ask(f"CONSUMER.DURABLE.CREATE.{self.stream}.{durable}", done, payload))

    async def _create_carefully(self, function: str) -> None:
        try:
            await provision.ensure_consumer(self.js, self.spec(function), self.pause_until(function))
        except Exception as e:  # this function's problem only: the others are still served
            self._not_opened(function, OPEN_RETRY, f"cannot consume function {function[:80]!r}: {e!r}")
            return
        self._opened(function, contract.function_consumer_name(self.s.queue, function))

    def _created(self, function: str, consumer: str, answer: bytes | None) -> None:
        if function not in self.opening:
            return
        if answer and b'"error":' not in answer:  # names never hold a quote: only an error answer matches
            self._opened(function, consumer)
            return
        error = json.loads(answer)["error"] if answer else {}
        if error.get("err_code") == OVERLAP:  # the shared consumer is open (made by another worker meanwhile)
            self._not_opened(function, CONSUMER_RETRY, "")
            self.shared.look()
        elif error.get("err_code") == CONSUMER_LIMIT:
            why = ""
            if self._now() - self.limit_warned >= LIMIT_WARN_EVERY:
                self.limit_warned = self._now()
                why = f"stream {self.stream} has as many consumers as it allows; functions wait for one"
            self._not_opened(function, CONSUMER_RETRY, why)
        elif answer is None or not error:  # no answer, or no JetStream: tried again later
            self._not_opened(function, OPEN_RETRY, f"cannot consume function {function[:80]!r}: no answer")
        else:
            task = asyncio.create_task(self._create_carefully(function))
            self._helpers.add(task)
            task.add_done_callback(self._helpers.discard)

    def _opened(self, function: str, consumer: str) -> None:
        self.opening.discard(function)
        if self.stopping:
            return
        self.not_before.pop(function, None)
        self.on_opened(function, consumer)
        self.open_waiting()

    def _not_opened(self, function: str, retry_after: float, why: str) -> None:
        self.opening.discard(function)
        self.not_before[function] = self._now() + retry_after
        if why:
            log.warning("%s", why)
        self.open_waiting()

    # -- giving one up ----------------------------------------------------------------------------------------

    def given_up(self, function: str, consumer: str, quiet: bool, remove: bool) -> None:
        """The worker no longer pulls from the function's consumer. `quiet`: it gave nothing (paused, or served by
        another worker): not opened again at once. `remove`: others wait for one, so remove it now rather than at
        the server's inactive_threshold, if its info says nothing is pending on it (an ack sent just before shows
        as pending until the server has counted it)."""
        if quiet:
            self.not_before[function] = self._now() + QUIET_RETRY
        if remove:
            self.closing.add(function)
            self._ask_info(function, consumer, REMOVE_TRIES)
        log.debug("function %s gives consumer %s up", function, consumer)
        self.open_waiting()

    def _ask_info(self, function: str, consumer: str, tries: int) -> None:
        if self.stopping:
            self._removed(function, None)
            return
        done = functools.partial(self._removable, function, consumer, tries - 1)
        self.send(self.requests.ask(f"CONSUMER.INFO.{self.stream}.{consumer}", done))

    def _removable(self, function: str, consumer: str, tries: int, answer: bytes | None) -> None:
        """Removed if no call is pending on it, no pull waits on it and it is not paused; else the server's
        inactive_threshold removes it once that is so."""
        if not answer or not _NO_WAITING.search(answer) or _PAUSED.search(answer):
            self._removed(function, None)
            return
        if not _NO_ACK_PENDING.search(answer):
            if tries > 0 and b'"error":' not in answer:
                asyncio.get_running_loop().call_later(REMOVE_RETRY, self._ask_info, function, consumer, tries)
            else:
                self._removed(function, None)
            return
        done = functools.partial(self._removed, function)
        self.send(self.requests.ask(f"CONSUMER.DELETE.{self.stream}.{consumer}", done))

    def _removed(self, function: str, answer: bytes | None) -> None:
        self.closing.discard(function)
        self.open_waiting()

    def stop(self) -> None:
        self.stopping = True
        for task in set(self._helpers):
            task.cancel()
