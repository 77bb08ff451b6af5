"""Cron schedules: a call made at every tick of a cron expression, in a time zone.

A schedule is one message in the queue's schedule stream `OF_<queue>_SCHED`, on `_SCHED.<queue>.cron.<name>`,
made a repeating message schedule by its `Nats-Schedule` header (ADR-51; the expression as cron.py reads it):
nats-server keeps it and, at every tick, stores a copy of it on the function's due subject. The worker's Mover
moves that into the queue as the tick's call (queueworker/ticks.py: one call per tick, whatever is redelivered).
A new message on the subject replaces the schedule (the server rolls the subject up); purging the subject ends it.

The message is the call to make: body, `Jq-Header-*`, callback URLs, as the message contract says, plus the
schedule's own `Jq-Schedule-*` headers (name, expression as written, zone, owner, when it was stored, digest).

Who owns a schedule: one declared in queues.yaml (`schedules:` of a queue) is applied by that queue's workers at
start (created, replaced when it changed, removed when no longer declared); `jetqueue schedule add|rm` manage
others and refuse to change one queues.yaml owns (it would come back at the next worker start).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig
from nats.js.errors import APIError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from jetqueue import contract, cron, keyvalue, provision
from jetqueue.contract import jetstream
from jetqueue.cron import Cron
from jetqueue.egress import Egress

log = logging.getLogger("jetqueue.schedules")
FROM_FILE = "queues.yaml"  # the owner of a schedule applied from queues.yaml
FROM_CLI = "cli"
H_NAME = "Jq-Schedule"  # on the schedule and on every tick's call: the schedule's name
H_CRON = "Jq-Schedule-Cron"  # the expression as written
H_ZONE = "Jq-Schedule-Zone"
H_OWNER = "Jq-Schedule-Owner"
H_SINCE = "Jq-Schedule-Since"  # unix seconds when this definition was stored: no tick before it is made up
H_DIGEST = "Jq-Schedule-Digest"
H_ZONE_SERVER = "Nats-Schedule-Time-Zone"
DEFINITION_HEADERS = (H_CRON, H_ZONE, H_OWNER, H_SINCE, H_DIGEST)  # not carried into a tick's call
MAX_BODY = 64 * 1024  # a schedule's body; it travels in the schedule, in every tick and in the call
NAME = re.compile(rf"^{contract.DNS_LABEL}$")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}$")  # an HTTP header name (RFC 9110 token)


class ScheduleError(ValueError):
    """A schedule that cannot be made, or a change refused; the message says why."""


@dataclass(frozen=True)
class Schedule:
    name: str
    function: str
    cron: str
    time_zone: str = "UTC"
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    callback_url: str = ""
    failure_callback_url: str = ""
    owner: str = FROM_CLI
    since: float = 0.0  # when stored (0: not yet)

    @classmethod
    def from_json(cls, name: str, spec: Mapping[str, Any], owner: str = FROM_FILE) -> Schedule:
        """From queues.yaml's form (the worker's schedules file): camelCase keys, body as text."""
        return cls(
            name=name,
            function=str(spec.get("function", "")),
            cron=str(spec.get("cron", "")),
            time_zone=str(spec.get("timeZone", "UTC")),
            body=str(spec.get("body", "")).encode(),
            headers={str(k): str(v) for k, v in (spec.get("headers") or {}).items()},
            callback_url=str(spec.get("callbackUrl", "")),
            failure_callback_url=str(spec.get("failureCallbackUrl", "")),
            owner=owner,
        )

    def problems(self, egress: Egress | None = None) -> list[tuple[str, str]]:
        """Every reason this schedule cannot run, as (queues.yaml key, message); empty when it can."""
        out: list[tuple[str, str]] = []
        if not NAME.match(self.name) or len(self.name) > contract.MAX_SCHEDULE_NAME:
            most = contract.MAX_SCHEDULE_NAME
            out.append(("name", f"schedule name {self.name!r} must be a DNS-1123 label of at most {most} characters"))
        if not self.function:
            out.append(("function", "function is missing: name the function called at every tick"))
        elif not contract.FUNCTION_NAME.match(self.function):
            out.append(("function", f"function {self.function!r} must be a DNS-1123 name, optionally with .namespace"))
        try:
            cron.zone(self.time_zone)
        except cron.CronError as e:
            out.append(("timeZone", str(e)))
        else:
            try:
                cron.parse(self.cron, self.time_zone)
            except cron.CronError as e:
                out.append(("cron", str(e) if self.cron else "cron is missing: say when, e.g. 0 0 2 * * *"))
        if len(self.body) > MAX_BODY:
            out.append(("body", f"the body is {len(self.body)} bytes; a schedule's body is at most {MAX_BODY}"))
        for k, v in self.headers.items():
            if not _TOKEN.match(k):
                out.append(("headers", f"{k[:40]!r} is not an HTTP header name"))
            elif not contract.forwardable({k: v}):
                hint = ": use callbackUrl / failureCallbackUrl" if "callback" in k.lower() else ""
                out.append(("headers", f"header {k!r} is not passed on to functions{hint}"))
            if any(c in v for c in "\r\n\0"):
                out.append(("headers", f"header {k!r} has a line break in its value"))
        for key, url, header in (
            ("callbackUrl", self.callback_url, "the callback URL"),
            ("failureCallbackUrl", self.failure_callback_url, "the failure callback URL"),
        ):
            if url and (reason := (egress or Egress()).url_problem(url, header)):
                out.append((key, reason))
        return out

    def check(self, egress: Egress | None = None) -> Cron:
        """The parsed expression; ScheduleError naming every problem."""
        if problems := self.problems(egress):
            raise ScheduleError("; ".join(f"{key}: {message}" for key, message in problems))
        return cron.parse(self.cron, self.time_zone)

    def digest(self) -> str:
        """Names the definition (not when it was stored): a replica applying the same one again changes nothing."""
        parts = [self.function, self.cron, self.time_zone, self.callback_url, self.failure_callback_url, self.owner]
        text = json.dumps([*parts, sorted(self.headers.items())]).encode() + b"\0" + self.body
        return hashlib.sha256(text).hexdigest()[:20]

    def message(self, queue: str, since: float) -> tuple[str, dict[str, str]]:
        """The subject and headers of this schedule in `queue`'s schedule stream (the body is `self.body`)."""
        expr = cron.parse(self.cron, self.time_zone)
        digest = self.digest()
        h = {contract.H_FORWARD + k: v for k, v in self.headers.items()}
        if self.callback_url:
            h[contract.H_CALLBACK] = self.callback_url
        if self.failure_callback_url:
            h[contract.H_FAILURE_CALLBACK] = self.failure_callback_url
        h.update(
            {
                H_NAME: self.name,
                H_CRON: self.cron,
                H_ZONE: self.time_zone,
                H_OWNER: self.owner,
                H_SINCE: f"{since:.3f}",
                H_DIGEST: digest,
                contract.H_SCHEDULE: expr.pattern,
                contract.H_SCHEDULE_TARGET: contract.due_subject(queue, self.function),
                # The same definition applied by several replicas at once is stored once.
                contract.H_MSG_ID: f"cron-{queue}-{self.name}-{digest}",
            }
        )
        if self.time_zone != "UTC":
            h[H_ZONE_SERVER] = self.time_zone
        return contract.cron_subject(queue, self.name), h

    @classmethod
    def from_message(cls, queue: str, subject: str, headers: Mapping[str, str], body: bytes) -> Schedule:
        h = dict(headers)
        return cls(
            name=h.get(H_NAME) or contract.schedule_of_cron(queue, subject),
            function=contract.function_of_due(queue, h.get(contract.H_SCHEDULE_TARGET, "")),
            cron=h.get(H_CRON) or h.get(contract.H_SCHEDULE, ""),
            time_zone=h.get(H_ZONE) or h.get(H_ZONE_SERVER) or "UTC",
            body=body,
            headers={k[len(contract.H_FORWARD) :]: v for k, v in h.items() if k.startswith(contract.H_FORWARD)},
            callback_url=h.get(contract.H_CALLBACK, ""),
            failure_callback_url=h.get(contract.H_FAILURE_CALLBACK, ""),
            owner=h.get(H_OWNER, FROM_CLI),
            since=_float(h.get(H_SINCE, "")),
        )


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


def load_file(path: str) -> tuple[int, list[Schedule]]:
    """The schedules file the queue-worker chart mounts (JETQUEUE_SCHEDULES_FILE): queues.yaml's `schedules:` of
    the queue and the Helm release's revision, `{"revision": 7, "schedules": {"<name>": {"function": ...}}}`."""
    with open(path, encoding="utf-8") as f:
        top = json.load(f)
    data = top.get("schedules") if isinstance(top, dict) else None
    revision = top.get("revision", 0) if isinstance(top, dict) else None
    if not isinstance(data, dict) or not isinstance(revision, int):
        raise ScheduleError(f'{path}: expected {{"revision": <number>, "schedules": {{<name>: {{...}}}}}}')
    if bad := [name for name, spec in data.items() if not isinstance(spec, dict | None)]:
        raise ScheduleError(f"{path}: schedule {bad[0]!r} is not an object")
    return revision, [Schedule.from_json(name, spec or {}) for name, spec in sorted(data.items())]


async def stored(js: JetStreamContext, queue: str) -> dict[str, Schedule]:
    """The schedules of `queue`, by name, as stored in its schedule stream (none when the stream is missing)."""
    stream = contract.schedule_stream_name(queue)
    try:
        info = await js.stream_info(stream, subjects_filter=contract.cron_subjects(queue))
    except NotFoundError:
        return {}
    out: dict[str, Schedule] = {}
    for subject in sorted(info.state.subjects or {}):
        try:
            msg = await js.get_last_msg(stream, subject)
        except NotFoundError:  # removed meanwhile
            continue
        s = Schedule.from_message(queue, subject, msg.headers or {}, msg.data or b"")
        out[s.name] = s
    return out


async def put(js: JetStreamContext, queue: str, schedule: Schedule, egress: Egress | None = None) -> Schedule:
    """Store `schedule` (created, or replacing the one of that name); ScheduleError when it cannot run."""
    schedule.check(egress)
    since = time.time()
    subject, headers = schedule.message(queue, since)
    try:
        await js.publish(subject, schedule.body, headers=headers)
    except APIError as e:  # the server's own check of the expression or zone
        raise ScheduleError(f"nats-server refused schedule {schedule.name!r}: {e.description or e!r}") from None
    return Schedule(**{**schedule.__dict__, "since": since})


async def remove(js: JetStreamContext, queue: str, name: str) -> None:
    """End a schedule: no tick after this one. Its record (last run) goes with it."""
    await js.purge_stream(contract.schedule_stream_name(queue), subject=contract.cron_subject(queue, name))
    try:
        kv = await js.key_value(contract.SCHEDULE_BUCKET)
        await kv.purge(contract.cron_key(queue, name))
    except Exception as e:  # no bucket yet, or it is unavailable: a stale record only shows an old last run
        log.debug("schedule record of %s.%s not removed: %r", queue, name, e)


async def _claim(js: JetStreamContext, kv: KeyValue, queue: str, revision: int) -> int | None:
    """Record that workers of release `revision` apply queue's schedules now; None when a newer revision's workers
    did already (a worker of the release before restarting during a rollout must not bring back the old ones).
    Returns the revision it replaced."""
    key = contract.cron_applied_key(queue)
    for _ in range(5):
        found = await keyvalue.latest(js, contract.SCHEDULE_BUCKET, key)
        applied = int(json.loads(found[0]).get("revision", 0)) if found else 0
        if applied > revision:
            return None
        value = json.dumps({"revision": revision, "at": round(time.time(), 3)}).encode()
        try:
            await (kv.create(key, value) if found is None else kv.update(key, value, last=found[1]))
            return applied
        except KeyWrongLastSequenceError:  # another worker claimed meanwhile: read again
            continue
    raise ScheduleError(f"the schedules of queue {queue} kept being claimed by other workers")


async def apply(
    js: JetStreamContext,
    queue: str,
    wanted: list[Schedule],
    egress: Egress | None = None,
    revision: int = 0,
    bucket: KeyValueConfig | None = None,
) -> dict[str, list[str]]:
    """Bring the schedules queues.yaml owns in `queue` to `wanted`: create the missing, replace the changed,
    remove those no longer declared; schedules added by `jetqueue schedule add` are left alone (one of the same
    name is taken over). Idempotent: an unchanged schedule is not stored again, so its ticks run on. With the
    schedules `bucket`, only if no workers of a later Helm `revision` applied theirs already. Returns the names
    created, replaced, removed and refused (a refused one is logged with why; the others still apply)."""
    if bucket is not None and await _claim(js, await provision.ensure_bucket(js, bucket), queue, revision) is None:
        log.warning("schedules of queue %s: a later release's workers applied theirs; left as they are", queue)
        return {"kept": sorted(await stored(js, queue))}
    have = await stored(js, queue)
    done: dict[str, list[str]] = {"created": [], "replaced": [], "removed": [], "refused": []}
    for s in wanted:
        old = have.get(s.name)
        if old is not None and old.owner == s.owner and old.digest() == s.digest():
            continue
        try:
            await put(js, queue, s, egress)
        except ScheduleError as e:
            log.error("schedule %s of queue %s not applied: %s", s.name, queue, e)
            done["refused"].append(s.name)
            continue
        if old is not None and old.owner != FROM_FILE:
            log.warning("schedule %s of queue %s was added by hand; queues.yaml owns it now", s.name, queue)
        done["replaced" if old is not None else "created"].append(s.name)
    names = {s.name for s in wanted}
    for name, old in have.items():
        if old.owner == FROM_FILE and name not in names:
            await remove(js, queue, name)
            done["removed"].append(name)
    return done


async def ensure_stream(js: JetStreamContext, queue: str) -> None:
    """The queue's schedule stream, made like its work stream (replicas, storage) when missing, for the CLI."""
    try:
        await js.stream_info(contract.schedule_stream_name(queue))
        return
    except NotFoundError:
        pass
    try:
        work = await js.stream_info(contract.stream_name(queue))
    except NotFoundError:
        raise ScheduleError(f"queue {queue!r} has no stream {contract.stream_name(queue)}: is it deployed?") from None
    storage = getattr(work.config.storage, "value", work.config.storage) or "file"
    spec = jetstream.schedule_stream(queue, work.config.num_replicas or 1, str(storage))
    await provision.ensure_stream(js, spec)
