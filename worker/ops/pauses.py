"""`jetqueue pause` and `jetqueue resume`: write the pause record, then bring the consumers that exist now to it
(the design: jetqueue/pauses.py).

TIME (`--until`) is read generously: a duration from now (Go syntax, plus days: `90s`, `1h30m`, `2d`), an RFC 3339
time (`2026-11-23T18:00:00Z`, `...+01:00`), a date and time without a zone (local time), a date alone (its local
midnight) or a time of day (`18:00`: the next one, local). What it resolved to is always printed, in UTC.
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from typing import TextIO

from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from jetqueue import contract, partitioned, pauses
from jetqueue.durations import format_duration, parse_duration
from jetqueue.ops.queues import OpsError
from jetqueue.pauses import Pause

TIME_HELP = (
    "a duration from now (90s, 15m, 1h30m, 2d) or a time: RFC 3339 (2026-11-23T18:00:00Z, "
    "2026-11-23T18:00:00+01:00), a local date and time (2026-11-23 18:00), or a local time of day (18:00, the next one)"
)
PAUSE_HELP = textwrap.fill(
    "Calls are still accepted and kept while paused; none is started until `jetqueue resume`, or until TIME, when "
    "the pause ends by itself. Calls running when it lands finish. The pause is recorded in the key-value bucket "
    f"{contract.PAUSE_BUCKET} and applied as JetStream consumer pause (nats-server 2.11+), so it holds across worker "
    "restarts and function-mode consumers coming and going, with or without a worker running. Time paused counts "
    "toward maxEventAge: calls older than that when resumed expire.",
    width=80,
)
PAUSE_EXAMPLES = """examples:
  jetqueue pause faas-request                  # until `jetqueue resume faas-request`
  jetqueue pause faas-request --until 30m      # ends by itself in 30 minutes
  jetqueue pause ml-batch --function resize --until 2026-11-23T18:00:00Z
  jetqueue status ml-batch                     # PAUSED: until when
  jetqueue resume ml-batch"""
_DAYS = re.compile(r"([0-9]+(?:\.[0-9]+)?)d(.*)")
_TIME_OF_DAY = re.compile(r"[0-9]{1,2}:[0-9]{2}(:[0-9]{2})?")


def utcnow() -> datetime:
    return datetime.now(UTC)


def _seconds(text: str) -> float | None:
    """A duration's seconds (Go syntax, with days in front: 2d, 1d12h), or None when `text` is not one."""
    text = text.removeprefix("+").removeprefix("in ").strip()
    days = 0.0
    if m := _DAYS.fullmatch(text):
        days, text = float(m.group(1)), m.group(2)
        if not text:
            return days * 86400
    try:
        return days * 86400 + parse_duration(text)
    except ValueError:
        return None


def _time(text: str, now: datetime) -> datetime | None:
    """A time (see the module), or None when `text` is not one."""
    try:
        if _TIME_OF_DAY.fullmatch(text):
            local = now.astimezone()
            clock = datetime.strptime(text, "%H:%M:%S" if text.count(":") == 2 else "%H:%M").time()
            when = datetime.combine(local.date(), clock, local.tzinfo)
            return when if when > now else when + timedelta(days=1)
        when = datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", text.upper().replace("Z", "+00:00")))
    except ValueError:  # 25:00, 2026-13-01, ...
        return None
    return when if when.tzinfo else when.astimezone()  # no zone: the local time


def parse_until(text: str, now: datetime) -> datetime:
    """When a pause given as TIME ends; ValueError saying what is accepted."""
    text = text.strip()
    seconds = _seconds(text)
    try:
        when = now + timedelta(seconds=seconds) if seconds is not None else _time(text, now)
    except OverflowError:
        raise ValueError(f"{text!r} is too far away; leave --until out to pause until resumed") from None
    if when is None:
        raise ValueError(f"{text!r} is neither a duration nor a time. Use {TIME_HELP}")
    if when <= now:
        raise ValueError(f"{text!r} has passed: {pauses.rfc3339(when)} is before now, {pauses.rfc3339(now)}")
    return min(when, pauses.FOREVER)


def until_argument(text: str) -> datetime:
    """argparse type of --until: a bad TIME is a usage error, before anything connects."""
    try:
        return parse_until(text, utcnow())
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def queue_argument(text: str) -> str:
    if not contract.QUEUE_NAME.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a queue name (a DNS-1123 label: a-z, 0-9 and -)")
    return text


def function_argument(text: str) -> str:
    if not contract.FUNCTION_NAME.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a function name (name or name.namespace)")
    return text


def _in(until: datetime, now: datetime) -> str:
    return "" if until >= pauses.FOREVER else f" (in {format_duration(round((until - now).total_seconds()))})"


def _scope(queue: str, function: str) -> str:
    return f"function {function} of queue {queue}" if function else f"queue {queue}"


async def _queue_stream(js: JetStreamContext, queue: str) -> tuple[int, str]:
    """The queue's stream replicas and storage (the pause bucket, when created, follows them)."""
    stream = contract.stream_name(queue)
    try:
        cfg = (await js.stream_info(stream)).config
    except NotFoundError:
        raise OpsError(
            f"queue {queue!r} has no stream {stream}: nothing to pause (is the name right? `jetqueue status` lists "
            "the queues)"
        ) from None
    return cfg.num_replicas or 1, getattr(cfg.storage, "value", cfg.storage) or "file"


async def _bring(js: JetStreamContext, queue: str, records: list[Pause], now: datetime, out: TextIO) -> None:
    """Every partition's consumers brought to the records."""
    try:
        changed = []
        for stream in (await partitioned.found(js, queue)).values() or [contract.stream_name(queue)]:
            changed += await pauses.bring_consumers(js, queue, stream, contract.durable_name(queue), records, now)
    except NotFoundError:
        raise OpsError(f"queue {queue!r} has no stream {contract.stream_name(queue)} (deleted meanwhile?)") from None
    except APIError as e:
        raise OpsError(
            f"the pause records are updated, but a consumer of {queue} could not be changed: {e.description or e!r} "
            "(consumer pause needs nats-server 2.11 or later); running workers try again every "
            f"{pauses.RESYNC:.0f}s"
        ) from None
    for name, what in changed:
        out.write(f"consumer {name}: {what}\n")
    if not changed:
        out.write("no consumer needed a change now; workers apply the pause records to every consumer they create\n")


async def pause(
    js: JetStreamContext,
    queue: str,
    function: str,
    until: datetime | None,
    out: TextIO = sys.stdout,
    now: datetime | None = None,
) -> int:
    """Pause a queue (function '') or one function until `until` (None: until resumed)."""
    now = now or utcnow()
    replicas, storage = await _queue_stream(js, queue)
    consumers = await pauses.all_consumers(js, contract.stream_name(queue))
    if function and any(c.name == contract.durable_name(queue) for c in consumers):
        raise OpsError(
            f"queue {queue} runs in static mode (consumer {contract.durable_name(queue)}): one consumer takes every "
            f"function's calls, so one function cannot be paused alone. Pause the whole queue: jetqueue pause {queue}"
        )
    record = Pause(queue, function, until or pauses.FOREVER, now.replace(microsecond=0))
    kv = await pauses.open_bucket(js, replicas, storage)
    others = [p for p in await pauses.records(js) if p.queue == queue and p.key != record.key]
    await kv.put(record.key, record.encode())
    out.write(
        f"paused {_scope(queue, function)} {pauses.describe(record.until)}{_in(record.until, now)}: calls are "
        f"still accepted and kept, none is started until then (calls running now finish). "
        f"`jetqueue resume {queue}{' --function ' + function if function else ''}` ends it.\n"
    )
    await _bring(js, queue, [*others, record], now, out)
    return 0


async def resume(
    js: JetStreamContext, queue: str, function: str, out: TextIO = sys.stdout, now: datetime | None = None
) -> int:
    """End the pause of a queue (function '': the queue's and every function's) or of one function."""
    now = now or utcnow()
    await _queue_stream(js, queue)
    records = [p for p in await pauses.records(js) if p.queue == queue]
    ending = [p for p in records if p.function == function or not function]
    if ending:
        kv = await js.key_value(contract.PAUSE_BUCKET)
        for p in ending:
            await kv.delete(p.key)
    left = [p for p in records if p not in ending]
    ended = ", ".join(f"function {p.function}" if p.function else "the whole queue" for p in ending if p.active(now))
    out.write(
        f"resumed {_scope(queue, function)} (ended: {ended})\n"
        if ended
        else f"{_scope(queue, function)} was not paused\n"
    )
    still = pauses.pause_until(left, queue, function or None, now)
    if still is not None:
        out.write(
            f"the whole queue is still paused {pauses.describe(still)}: `jetqueue resume {queue}` resumes it, with "
            "every function\n"
        )
    await _bring(js, queue, left, now, out)
    return 0
