"""Streams and consumers: create what is missing, adopt what exists, refuse what cannot work.

Never deletes or recreates a stream by itself: a stream holds calls that got a 202.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError

from jetqueue import contract

log = logging.getLogger("jetqueue.streams")
DUPLICATE_WINDOW = 120.0
DLQ_MAX_AGE = 14 * 24 * 3600.0


class StreamSetupError(RuntimeError):
    """The existing stream or consumer cannot work as configured; the message says what to change."""


@dataclass(frozen=True)
class QueueStreams:
    queue: str
    stream: str
    dlq_stream: str
    replicas: int = 1
    storage: str = "file"


async def ensure_stream(js: JetStreamContext, q: QueueStreams) -> None:
    """The queue's work-queue stream, created if missing, checked if present."""
    want = StreamConfig(
        name=q.stream,
        subjects=[f"{q.queue}.>"],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType(q.storage),
        discard=DiscardPolicy.OLD,
        num_replicas=q.replicas,
        duplicate_window=DUPLICATE_WINDOW,
    )
    try:
        info = await js.stream_info(q.stream)
    except NotFoundError:
        await js.add_stream(want)
        log.info("created stream %s (work queue, %s, R%d)", q.stream, q.storage, q.replicas)
        return
    cfg = info.config
    retention = getattr(cfg.retention, "value", cfg.retention)
    if retention != RetentionPolicy.WORK_QUEUE.value:
        raise StreamSetupError(
            f"stream {q.stream} has retention {retention!r}; jetqueue needs 'workqueue' (a call must be removed "
            f"once done). Retention cannot be changed in place: drain it, then `jetqueue reset {q.queue}`."
        )
    subjects = cfg.subjects or []
    if not any(s in (f"{q.queue}.>", ">") for s in subjects):
        raise StreamSetupError(
            f"stream {q.stream} has subjects {subjects}; it must take '{q.queue}.>' so every function's calls land "
            f"there. Add it: nats stream edit {q.stream} --subjects '{q.queue}.>'"
        )
    log.info("using existing stream %s", q.stream)


async def ensure_dlq_stream(js: JetStreamContext, q: QueueStreams) -> None:
    try:
        await js.stream_info(q.dlq_stream)
        return
    except NotFoundError:
        pass
    await js.add_stream(
        StreamConfig(
            name=q.dlq_stream,
            subjects=[f"{contract.DLQ_PREFIX}.{q.queue}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType(q.storage),
            discard=DiscardPolicy.OLD,
            num_replicas=q.replicas,
            duplicate_window=DUPLICATE_WINDOW,
            max_age=DLQ_MAX_AGE,
        )
    )
    log.info("created dead-letter stream %s", q.dlq_stream)


async def ensure_consumer(js: JetStreamContext, stream: str, want: ConsumerConfig) -> float:
    """A durable pull consumer, created if missing; an existing one is adopted unless it cannot work.

    Returns the consumer's ack wait in seconds (an adopted consumer keeps its own)."""
    name = want.durable_name or ""
    try:
        info = await js.consumer_info(stream, name)
    except NotFoundError:
        try:
            info = await js.add_consumer(stream, want)
        except BadRequestError as e:
            if e.err_code in (10100, 10099):  # overlapping / non-unique consumers on a work queue
                raise StreamSetupError(
                    f"cannot add consumer {name} to {stream}: {e.description}. A work queue takes either one "
                    "static consumer or per-function consumers, never both: static and function mode must not "
                    f"run on the same queue. See `nats consumer ls {stream}`; stop the other mode's workers and "
                    "remove its consumers."
                ) from None
            raise
        log.info("created consumer %s on %s", name, stream)
        return float(info.config.ack_wait or want.ack_wait or 30.0)
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
    if cfg.ack_wait and want.ack_wait and abs(cfg.ack_wait - want.ack_wait) > 0.001:
        log.warning(
            "consumer %s has ack_wait %.0fs, settings say %.0fs; using the consumer's (in-progress every %.0fs)",
            name,
            cfg.ack_wait,
            want.ack_wait,
            cfg.ack_wait / 2,
        )
    log.info("using existing consumer %s on %s", name, stream)
    return float(cfg.ack_wait or 30.0)


def static_consumer(durable: str, ack_wait: float, max_ack_pending: int, max_waiting: int) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=durable,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_deliver=-1,
        max_ack_pending=max_ack_pending,
        max_waiting=max_waiting,
    )
