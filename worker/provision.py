"""Streams, consumers and key-value buckets: create what is missing, adopt what exists, refuse what cannot work.

Never deletes or recreates a stream by itself: a stream holds calls that got a 202.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, KeyValueConfig, RetentionPolicy
from nats.js.errors import APIError, BadRequestError, BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from jetqueue.contract import names
from jetqueue.contract.jetstream import MANAGED_METADATA, SERVER_ACK_WAIT, ConsumerSpec, StreamSpec

log = logging.getLogger("jetqueue.provision")


class StreamSetupError(RuntimeError):
    """The existing stream or consumer cannot work as configured; the message says what to change."""


async def ensure_stream(js: JetStreamContext, want: StreamSpec) -> list[str]:
    """A work-queue stream (a queue's, or its callbacks'), created if missing, checked if present, and brought
    to the limits, subjects and features `want` asks for in one in-place update. Returns its subjects: a
    subject it has beyond `want`'s is kept (a queue's priorities turned off: its calls there are still served)."""
    try:
        info = await js.stream_info(want.name)
    except NotFoundError:
        await js.add_stream(want.to_nats())
        log.info("created stream %s (work queue, %s, R%d)", want.name, want.storage, want.replicas)
        return list(want.subjects)
    cfg = info.config
    queue = names.queue_of_stream(want.name)
    redo = f"`jetqueue reset {queue}`" if queue else f"`nats stream rm {want.name}` (jetqueue makes it again)"
    retention = getattr(cfg.retention, "value", cfg.retention)
    if retention != RetentionPolicy.WORK_QUEUE.value:
        raise StreamSetupError(
            f"stream {want.name} has retention {retention!r}; jetqueue needs 'workqueue' (a call must be removed "
            f"once done). Retention cannot be changed in place: drain it, then {redo}."
        )
    subjects = cfg.subjects or []
    if not any(s in (*want.subjects, ">") for s in subjects):
        raise StreamSetupError(
            f"stream {want.name} has subjects {subjects}; it must take '{want.subjects[0]}' so every function's "
            f"calls land there. Add it: nats stream edit {want.name} --subjects '{want.subjects[0]}'"
        )
    limits = {
        name: value
        for name, value in (
            ("max_msgs", cfg.max_msgs),
            ("max_bytes", cfg.max_bytes),
            ("max_age", cfg.max_age),
            ("max_msgs_per_subject", cfg.max_msgs_per_subject),
        )
        if value and value > 0
    }
    discard = getattr(cfg.discard, "value", cfg.discard)
    if limits and discard != "new":
        raise StreamSetupError(
            f"stream {want.name} has limits {limits} with discard {discard!r}: reaching a limit would delete calls "
            f"that were already accepted. Make a full queue refuse new calls instead (the gateway answers 503 "
            f"'queue full'): nats stream edit {want.name} --discard new"
        )
    changes: dict[str, Any] = {}
    wanted = (want.max_msgs or -1, want.max_bytes or -1)  # JetStream writes "no limit" as -1
    if (want.max_msgs or want.max_bytes) and (cfg.max_msgs or -1, cfg.max_bytes or -1) != wanted:
        # The queue's limits follow the settings (queues.yaml maxQueueLength, maxQueueBytes), editable in place.
        # Settings of 0 leave a stream's own limits alone.
        changes.update(max_msgs=wanted[0], max_bytes=wanted[1])
    if ">" not in subjects and (missing := [x for x in want.subjects if x not in subjects]):
        changes["subjects"] = [*subjects, *missing]  # a queue's priorities turned on: their levels' subjects
    if want.allow_msg_schedules and not cfg.allow_msg_schedules:
        changes["allow_msg_schedules"] = True  # later attempts are held by the server as message schedules
    if (metadata := _metadata(cfg.metadata or {}, dict(want.metadata))) is not None:
        changes["metadata"] = metadata
    if changes:
        try:
            await js.update_stream(replace(cfg, **changes))
        except APIError as e:
            raise StreamSetupError(
                f"cannot update stream {want.name} to {changes}: {e.description or e!r} (message schedules need "
                "nats-server 2.12 or later)"
            ) from None
        log.info("updated stream %s: %s", want.name, changes)
    log.info("using existing stream %s", want.name)
    return list(changes.get("subjects", subjects))


def _metadata(have: dict[str, str], ours: dict[str, str]) -> dict[str, str] | None:
    """The stream metadata to set so that jetqueue's keys say what `ours` says (one left from an earlier setting
    removed), the others kept (the server's own `_nats.*` it sets itself); None when nothing differs."""
    stale = {k for k in MANAGED_METADATA if k in have and k not in ours}
    if not stale and all(have.get(k) == v for k, v in ours.items()):
        return None
    return {k: v for k, v in have.items() if not k.startswith("_nats.") and k not in stale} | ours


async def lists_subject(js: JetStreamContext, stream: str, subject: str) -> bool:
    """Does the stream take `subject` (its filter, e.g. `q_HI.>`) by its configuration? A publish that found no
    stream while it does met a passing outage (an election), not a missing subject."""
    subjects = (await js.stream_info(stream)).config.subjects or []
    return subject in subjects or ">" in subjects


async def drop_subjects(js: JetStreamContext, stream: str, subjects: set[str]) -> None:
    """Remove `subjects` from a stream's (function mode: a queue's empty priority levels, so that a publish there
    fails instead of being stored where no consumer takes it)."""
    cfg = (await js.stream_info(stream)).config
    kept = [s for s in cfg.subjects or [] if s not in subjects]
    if kept != list(cfg.subjects or []):
        await js.update_stream(replace(cfg, subjects=kept))
        log.warning("stream %s: removed the subjects %s (no worker of this mode takes them)", stream, sorted(subjects))


async def ensure_dlq_stream(js: JetStreamContext, want: StreamSpec) -> None:
    try:
        await js.stream_info(want.name)
        return
    except NotFoundError:
        pass
    await js.add_stream(want.to_nats())
    log.info("created dead-letter stream %s", want.name)


async def ensure_consumer(js: JetStreamContext, want: ConsumerSpec, pause_until: str | None = None) -> float:
    """A durable pull consumer, created if missing; an existing one is adopted unless it cannot work.

    `pause_until` (RFC 3339): a consumer created now starts paused until then (jetqueue/pauses.py). An existing
    consumer keeps its pause as it is: the server never changes a pause on a config update.

    Returns the consumer's ack wait in seconds (an adopted consumer keeps its own)."""
    name, stream = want.durable, want.stream
    try:
        info = await js.consumer_info(stream, name)
    except NotFoundError:
        try:
            info = await js.add_consumer(stream, want.to_nats(), pause_until=pause_until)
        except BadRequestError as e:
            if e.err_code in (10100, 10099):  # overlapping / non-unique consumers on a work queue
                others = await _consumer_names(js, stream)
                raise StreamSetupError(
                    f"cannot add consumer {name} to {stream}: {e.description}. A work queue gives each call to one "
                    f"consumer, and {stream} has {', '.join(others) or 'others'}. If they are this queue's "
                    "function-mode consumers: static and function mode must not run on the same queue; stop the "
                    "other mode's workers and remove its consumers. If another queue-worker (OpenFaaS's) takes "
                    "this stream's calls: drain it and remove its consumer first, or give the jetqueue queue another "
                    "name (docs/migrating-from-openfaas.md)."
                ) from None
            raise
        log.info("created consumer %s on %s", name, stream)
        return float(info.config.ack_wait or want.ack_wait)
    cfg = info.config
    ack_policy = getattr(cfg.ack_policy, "value", cfg.ack_policy)
    if ack_policy != AckPolicy.EXPLICIT.value:
        raise StreamSetupError(
            f"consumer {name} on {stream} has ack policy {ack_policy!r}; jetqueue needs 'explicit' to ack, "
            f"retry and dead-letter each call. Delete it (nats consumer rm {stream} {name}) and the worker "
            "recreates it."
        )
    if cfg.deliver_subject:
        raise StreamSetupError(
            f"consumer {name} on {stream} is a push consumer; jetqueue pulls. Delete it "
            f"(nats consumer rm {stream} {name}) and the worker recreates it as a pull consumer."
        )
    return await _reconcile(js, want, info.config)


async def _consumer_names(js: JetStreamContext, stream: str) -> list[str]:
    try:
        return sorted(c.name for c in await js.consumers_info(stream) if c.name)
    except Exception:  # only for the message
        return []


def _differs(a: float | int | None, b: float | int | None) -> bool:
    return abs(float(a or 0) - float(b or 0)) > 0.001


async def _reconcile(js: JetStreamContext, want: ConsumerSpec, cfg: ConsumerConfig) -> float:
    """Bring what the worker owns on an existing consumer to its settings, so a restart with more
    max_inflight (or more replicas) is not capped by the first worker's. Returns the ack wait in force."""
    name, stream = want.durable, want.stream
    recreate = f"nats consumer rm {stream} {name}"
    if (cfg.max_waiting or 0) < want.max_waiting:
        # max_waiting cannot change in place; too few waiting pulls starve replicas ("Exceeded MaxWaiting").
        raise StreamSetupError(
            f"consumer {name} on {stream} allows {cfg.max_waiting} waiting pulls, settings need "
            f"{want.max_waiting}; max_waiting cannot change in place. Remove it ({recreate}): the workers "
            "recreate it at once and the stream keeps every call."
        )
    if (cfg.max_waiting or 0) > want.max_waiting:
        log.warning("consumer %s allows %d waiting pulls (settings: %d); kept", name, cfg.max_waiting, want.max_waiting)
    wanted = want.to_nats()
    changes: dict[str, Any] = {
        field: getattr(wanted, field)
        for field in ("max_ack_pending", "ack_wait", "inactive_threshold")
        if _differs(getattr(cfg, field), getattr(wanted, field))
    }
    if want.filter_subject and cfg.filter_subject != want.filter_subject:
        # A queue's priorities turned on: its normal consumer leaves the other levels' subjects to theirs.
        changes["filter_subject"] = want.filter_subject
    if not changes:
        log.info("using existing consumer %s on %s", name, stream)
        return float(cfg.ack_wait or SERVER_ACK_WAIT)
    try:
        info = await js.add_consumer(stream, cfg.evolve(**changes))  # create-or-update on the durable
    except APIError as e:
        raise StreamSetupError(
            f"cannot update consumer {name} on {stream} to {changes}: {e.description or e!r}. "
            f"Remove it ({recreate}): the workers recreate it and the stream keeps every call."
        ) from None
    log.info("updated consumer %s on %s: %s", name, stream, changes)
    return float(info.config.ack_wait or SERVER_ACK_WAIT)


async def ensure_bucket(js: JetStreamContext, config: KeyValueConfig) -> KeyValue:
    """One of jetqueue's key-value buckets (jetstream.py), opened, or created when missing."""
    try:
        return await js.key_value(config.bucket)
    except BucketNotFoundError:
        pass
    try:
        kv = await js.create_key_value(config)
        log.info("created the key-value bucket %s", config.bucket)
        return kv
    except Exception:  # another process created it first
        return await js.key_value(config.bucket)
