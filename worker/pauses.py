"""Pauses: a queue, or one function of it, is not invoked until a time or until resumed; calls are still
accepted and kept.

Where a pause lives: a record in the JetStream key-value bucket `jetqueue-pauses` (`contract.PAUSE_BUCKET`), key
`<queue>` for the whole queue or `<queue>.<function>` for one function (function mode), value the time it ends
(none: until resumed). The record is the fact, not the consumer: a function-mode consumer is removed by the server
once idle (inactive_threshold) and made again by a worker later, and a pause set only on it would go with it.

How it is applied: as JetStream consumer pause (nats-server 2.11+): the consumer delivers nothing while the stream
keeps storing calls, and the server lifts the pause at its time by itself. A consumer is paused until the latest
end among the records that cover it (`pause_until`): the static consumer by `<queue>`; a function consumer by
`<queue>` and `<queue>.<function>`. A partitioned queue's consumers on every partition's stream are paused alike.

- `jetqueue pause|resume` (ops/pauses.py) writes the record, then pauses or resumes the consumers that exist, so
  it works with no worker running.
- Workers (queueworker/pauses.py) follow the bucket and bring their queue's consumers to it on every change and
  every `RESYNC` seconds, and create new consumers already paused (`provision.ensure_consumer(pause_until=...)`).
- A worker restart cannot un-pause: the server keeps a consumer's pause across config updates (only the pause
  API changes it), so ensure_consumer's create-or-update leaves it as it is; a deleted consumer comes back
  paused from the record.

A record past its end is inert (nothing reads it as a pause) until `resume` removes it. Calls running when a pause
lands finish; the time a call waits paused counts toward maxEventAge.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo
from nats.js.errors import APIError, NotFoundError
from nats.js.kv import KeyValue

from jetqueue import contract, keyvalue, provision
from jetqueue.contract import jetstream

log = logging.getLogger("jetqueue.pauses")
RESYNC = 30.0  # seconds between a worker's full comparisons of records and consumers
# "Until resumed": the server takes a far end as well as any other (it reports the time left as the longest duration).
FOREVER = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
CONSUMER_PAGE = 256  # consumers the server lists per request
# A consumer deleted and made again under the same name, or updated by two clients at once, can refuse an update
# ("error creating store for consumer ... meta.inf.tmp: no such file": nats-server 2.15.1 on a loaded machine):
# tried again, and where it persists its store is gone on the server: a worker then removes the consumer, which it
# makes again with the pause the records say (nothing pending on it is lost: a work queue keeps unacked calls).
STORE_RACE = "error creating store"
STORE_RACE_TRIES, STORE_RACE_WAIT = 5, 0.5


def rfc3339(when: datetime) -> str:
    """Whole seconds in UTC, as records and the pause API carry them."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> datetime:
    """A time as nats-server writes it (RFC 3339, up to nanoseconds, `Z`); Python keeps microseconds."""
    text = re.sub(r"(\.\d{6})\d+", r"\1", text.strip()).replace("z", "Z")
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Pause:
    queue: str
    function: str  # "" for the whole queue
    until: datetime  # FOREVER: until resumed
    since: datetime

    @property
    def key(self) -> str:
        return contract.pause_key(self.queue, self.function)

    @property
    def indefinite(self) -> bool:
        return self.until >= FOREVER

    def active(self, now: datetime) -> bool:
        return self.until > now

    def encode(self) -> bytes:
        return json.dumps(
            {"until": None if self.indefinite else rfc3339(self.until), "since": rfc3339(self.since)}
        ).encode()

    @classmethod
    def decode(cls, key: str, value: bytes) -> Pause:
        queue, function = contract.pause_of_key(key)
        doc = json.loads(value)
        until = FOREVER if doc.get("until") is None else parse_rfc3339(doc["until"])
        return cls(queue, function, until, parse_rfc3339(doc["since"]))


def describe(until: datetime | None) -> str:
    """How a pause reads in `jetqueue status` and the commands' output."""
    if until is None:
        return "-"
    return "until resumed" if until >= FOREVER else f"until {rfc3339(until)}"


def pause_until(pauses: Iterable[Pause], queue: str, function: str | None, now: datetime) -> datetime | None:
    """When a consumer's pause ends: the latest end among the active records that cover it, or None (not paused).
    `function` None is the static consumer, which only the whole-queue record covers."""
    ends = [
        p.until for p in pauses if p.queue == queue and (p.function == "" or p.function == function) and p.active(now)
    ]
    return max(ends, default=None)


async def open_bucket(js: JetStreamContext, replicas: int, storage: str) -> KeyValue:
    """The pause bucket, created if missing (with the replicas and storage of the queue that needs it first)."""
    return await provision.ensure_bucket(js, jetstream.pause_bucket(replicas, storage))


async def records(js: JetStreamContext) -> list[Pause]:
    """Every pause record in the bucket now (any queue, ended ones included): its keys from the stream's subjects,
    each read from the leader. Not a watch: nats-py's watcher can say "no more" before the entries it already
    received (seen under load: a pause just made looked absent); none when the bucket does not exist."""
    bucket = contract.PAUSE_BUCKET
    stream, prefix = contract.kv_stream_name(bucket), contract.kv_subject(bucket, "")
    try:
        info = await js.stream_info(stream, subjects_filter=prefix + ">")
    except NotFoundError:
        return []
    found: list[Pause] = []
    for subject in info.state.subjects or {}:
        key = subject.removeprefix(prefix)
        try:
            value = await keyvalue.latest(js, bucket, key)
        except NotFoundError:
            continue  # the bucket removed meanwhile
        if value is None:  # DEL or PURGE: resumed
            continue
        try:
            found.append(Pause.decode(key, value[0]))
        except (ValueError, KeyError, TypeError) as e:
            log.warning("ignoring pause record %r: %r", key, e)
    return found


def decoded(entry: KeyValue.Entry) -> Pause | None:
    """The record of a watched entry; None for a removed one or one that cannot be read (logged)."""
    if entry.operation is not None or not entry.value:  # DEL or PURGE: resumed
        return None
    try:
        return Pause.decode(entry.key, entry.value)
    except (ValueError, KeyError, TypeError) as e:
        log.warning("ignoring pause record %r: %r", entry.key, e)
        return None


def consumer_function(queue: str, info: ConsumerInfo, static_durable: str) -> str | None:
    """Which pause scope a consumer is: '' for the static consumer, the function for a function-mode consumer,
    None for a consumer jetqueue did not make for this queue (never touched)."""
    levels = (contract.level_durable_name(queue, level) for level in contract.LEVEL_MARKS)  # priorities' consumers
    if info.name in (static_durable, contract.shared_consumer_name(queue), *levels):  # every function's calls
        return ""
    token, _, function = (info.config.filter_subject or "").partition(".")  # on any partition of the queue
    ours = contract.split_token(token)
    if function and ours and ours[0] == queue and info.name == contract.function_consumer_name(queue, function):
        return function
    return None


def consumer_pause(info: ConsumerInfo) -> datetime | None:
    """When a consumer's pause ends, as the server has it; None when not paused."""
    if not info.paused or not info.config.pause_until:
        return None
    return parse_rfc3339(info.config.pause_until)


async def set_pause(
    js: JetStreamContext, stream: str, consumer: str, until: datetime | None, repair: bool = False
) -> bool:
    """Pause a consumer until `until`, or resume it (None). False when the consumer does not exist. `repair` (a
    worker, which makes its consumers again): a consumer whose store is gone on the server is removed."""
    tries = 0
    while True:
        try:
            if until is None:
                await js.resume_consumer(stream, consumer)
            else:
                await js.pause_consumer(stream, consumer, rfc3339(until))
        except NotFoundError:
            return False
        except APIError as e:
            tries += 1
            if STORE_RACE not in (e.description or ""):
                raise
            if tries >= STORE_RACE_TRIES:
                if not repair:
                    raise
                log.warning(
                    "consumer %s on %s cannot be changed (%s): removing it, to be made again as the records say",
                    consumer,
                    stream,
                    e.description,
                )
                with contextlib.suppress(NotFoundError):
                    await js.delete_consumer(stream, consumer)
                return True
            await asyncio.sleep(STORE_RACE_WAIT * tries)
        else:
            return True


def same_end(a: datetime | None, b: datetime | None) -> bool:
    if a is None or b is None:
        return a is b
    return abs((a - b).total_seconds()) < 1


async def all_consumers(js: JetStreamContext, stream: str) -> list[ConsumerInfo]:
    """Every consumer of a stream (the server lists them a page at a time)."""
    found: list[ConsumerInfo] = []
    while True:
        page = await js.consumers_info(stream, offset=len(found))
        found.extend(page)
        if not page or len(page) < CONSUMER_PAGE:
            return found


async def bring_consumers(
    js: JetStreamContext,
    queue: str,
    stream: str,
    static_durable: str,
    pauses: list[Pause],
    now: datetime,
    repair: bool = False,
) -> list[tuple[str, str]]:
    """Pause or resume each of the queue's consumers whose pause differs from what the records say (compared to
    the second, as records carry whole seconds), and close function mode's shared consumer while a function is
    paused: it would deliver that function's calls with the others'. Returns each consumer changed with what was
    done ("resumed", "paused until ...", "closed ...")."""
    changed: list[tuple[str, str]] = []
    function_paused = any(p.queue == queue and p.function and p.active(now) for p in pauses)
    for info in await all_consumers(js, stream):
        function = consumer_function(queue, info, static_durable)
        if function is None:
            continue
        if function_paused and info.name == contract.shared_consumer_name(queue):
            if await close_shared(js, stream, info):
                changed.append(
                    (
                        info.name,
                        "closed to new calls: while a function is paused, each function with "
                        "calls gets a consumer of its own",
                    )
                )
        want = pause_until(pauses, queue, function or None, now)
        have = consumer_pause(info)
        if have is not None and have <= now:
            have = None  # its end has passed: the server lifts it
        if same_end(want, have):
            continue
        if await set_pause(js, stream, info.name, want, repair):
            changed.append((info.name, "resumed" if want is None else f"paused {describe(want)}"))
    return changed


async def close_shared(js: JetStreamContext, stream: str, info: ConsumerInfo) -> bool:
    """Close an open shared consumer (queueworker/sharedconsumer.py): its filter becomes one no call has, so it
    delivers nothing new; what it delivered stays with it. False when it was closed already (or is gone)."""
    token = (info.config.filter_subject or "").partition(".")[0]  # its partition's (the stream may be adopted)
    closed = contract.closed_subject(*(contract.split_token(token) or (contract.queue_of_stream(stream) or "", 0)))
    if info.config.filter_subject == closed and not info.config.filter_subjects:
        return False
    config = replace(info.config, filter_subject=closed, filter_subjects=None)
    try:
        await js.add_consumer(stream, config)  # an update: same name, the server keeps its state and its pause
    except NotFoundError:
        return False
    return True
