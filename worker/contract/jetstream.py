"""The JetStream objects of a queue, defined once: the work-queue stream of each partition, the dead-letter
stream, the consumers and the call-status and cancel buckets.

The worker and gateway apply `to_nats()`; the generator renders `to_nack()` for clusters whose streams
are managed by NACK. Both come from the same fields, so they cannot disagree (tests/contract checks
what the server stores against what NACK would apply).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    ReplayPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from jetqueue.contract import names
from jetqueue.contract.priorities import Priority
from jetqueue.durations import format_duration

DUPLICATE_WINDOW = 120.0  # seconds a call id is remembered: a retried submission within it runs once
DLQ_MAX_AGE = 14 * 24 * 3600.0  # dead letters are kept two weeks
QUEUE_FULL = 10077  # JetStream's error code for a publish refused by a full discard-new stream
SERVER_ACK_WAIT = 30.0  # nats-server's default, for a consumer that reports none
CALLBACK_ACK_MARGIN = 30.0  # a callback being sent is acked within its timeout plus this
# A callback redelivered after a crash is handed on under its successor's id, which the server drops if that
# successor was stored: so the callback consumer's ack wait (timeout + margin) must stay inside the window.
CALLBACK_MAX_TIMEOUT = DUPLICATE_WINDOW / 2
CALLBACK_MAX_ACK_PENDING = 100_000
MAX_SCHEDULE_AHEAD = 31 * 86400.0  # the furthest ahead a call may be scheduled (the gateway's maxDelay at most)
CANCEL_KEEP = MAX_SCHEDULE_AHEAD + 86400.0  # cancel requests outlive every schedule
# Stream metadata: the queue's partitions as the gateway or worker that set the stream up last had them. On
# partition 0 only; `jetqueue status` reads it to tell partitions being drained (beyond it) from the others.
PARTITIONS_METADATA = "jetqueue.partitions"
MANAGED_METADATA = (PARTITIONS_METADATA,)  # metadata keys jetqueue sets, and removes when no longer wanted


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    retention: str  # "workqueue": a call is removed once acked or terminated; "limits": kept until max_age
    storage: str = "file"
    replicas: int = 1
    # "new": a full stream refuses the publish (the gateway answers 503 "queue full"); "old" would delete
    # stored calls that already got a 202.
    discard: str = "new"
    duplicate_window: float = DUPLICATE_WINDOW
    max_age: float = 0.0  # 0: no age limit
    max_msgs: int = 0  # 0: no limit (with discard new, a full stream refuses new calls)
    max_bytes: int = 0
    allow_msg_schedules: bool = False  # server 2.12+: messages published for later (retries that hold nothing)
    metadata: tuple[tuple[str, str], ...] = ()  # ours only: the server adds keys of its own (`_nats.*`)

    def to_nats(self) -> StreamConfig:
        return StreamConfig(
            name=self.name,
            subjects=list(self.subjects),
            retention=RetentionPolicy(self.retention),
            storage=StorageType(self.storage),
            discard=DiscardPolicy(self.discard),
            num_replicas=self.replicas,
            duplicate_window=self.duplicate_window,
            max_age=self.max_age or None,
            max_msgs=self.max_msgs or None,
            max_bytes=self.max_bytes or None,
            allow_msg_schedules=self.allow_msg_schedules or None,
            metadata=dict(self.metadata) or None,
        )

    def to_nack(self) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "name": self.name,
            "subjects": list(self.subjects),
            "retention": self.retention,
            "storage": self.storage,  # always explicit: the CRD defaults to memory
            "replicas": self.replicas,
            "discard": self.discard,
            "duplicateWindow": format_duration(self.duplicate_window),
        }
        if self.max_age:
            spec["maxAge"] = format_duration(self.max_age)
        if self.max_msgs:
            spec["maxMsgs"] = self.max_msgs
        if self.max_bytes:
            spec["maxBytes"] = self.max_bytes
        if self.allow_msg_schedules:
            spec["allowMsgSchedules"] = True
        if self.metadata:
            spec["metadata"] = dict(self.metadata)
        return spec


def partition_limit(limit: int, partitions: int) -> int:
    """A queue's maxQueueLength or maxQueueBytes, divided among its partitions (rounded up): the queue as a whole
    holds about what was declared, and a full partition refuses a call (503) as a full queue does. 0: no limit."""
    return -(-limit // max(1, partitions)) if limit else 0


def work_stream(
    queue: str,
    replicas: int = 1,
    storage: str = "file",
    max_length: int = 0,
    max_bytes: int = 0,
    partition: int = 0,
    partitions: int = 1,
    priorities: bool = False,
) -> StreamSpec:
    """The work stream of one partition of a queue of `partitions` (the queue's limits divided among them); with
    `priorities`, it takes every level's subjects (normal first)."""
    levels = (Priority.NORMAL, Priority.HIGH, Priority.LOW) if priorities else (Priority.NORMAL,)
    return StreamSpec(
        name=names.stream_name(queue, partition),
        subjects=tuple(names.queue_subjects(queue, partition, level) for level in levels),
        retention=RetentionPolicy.WORK_QUEUE.value,
        storage=storage,
        replicas=replicas,
        max_msgs=partition_limit(max_length, partitions),
        max_bytes=partition_limit(max_bytes, partitions),
        metadata=((PARTITIONS_METADATA, str(partitions)),) if partition == 0 and partitions > 1 else (),
    )


def dead_letter_stream(queue: str, replicas: int = 1, storage: str = "file") -> StreamSpec:
    return StreamSpec(
        name=names.dlq_stream_name(queue),
        subjects=(names.dlq_subjects(queue),),
        retention=RetentionPolicy.LIMITS.value,
        storage=storage,
        replicas=replicas,
        discard="old",  # dead letters expire after max_age by design
        max_age=DLQ_MAX_AGE,
    )


def callback_stream(queue: str, replicas: int = 1, storage: str = "file") -> StreamSpec:
    """Callbacks waiting to be sent: stored before their call is acked, removed once delivered."""
    return StreamSpec(
        name=names.callback_stream_name(queue),
        subjects=(names.callback_subjects(queue),),
        retention=RetentionPolicy.WORK_QUEUE.value,
        storage=storage,
        replicas=replicas,
        discard="old",  # nats-server refuses message schedules with discard new; no limit is set, so none applies
        allow_msg_schedules=True,
    )


def schedule_stream(queue: str, replicas: int = 1, storage: str = "file") -> StreamSpec:
    """Calls held for later (scheduled submissions, retries waiting for their time) as message schedules. The
    server refuses schedules on a discard-new stream, so they cannot live in the work stream (maxQueueLength);
    no limit is set here, so discard old removes nothing. A call enters the work stream when due."""
    return StreamSpec(
        name=names.schedule_stream_name(queue),
        subjects=(names.schedule_subjects(queue),),
        retention=RetentionPolicy.WORK_QUEUE.value,
        storage=storage,
        replicas=replicas,
        discard="old",
        allow_msg_schedules=True,
    )


@dataclass(frozen=True)
class ConsumerSpec:
    """A durable pull consumer. Always ack explicit and deliver all (a work queue refuses anything else),
    max_deliver -1 (the worker counts attempts itself and dead-letters), replay instant."""

    stream: str
    durable: str
    ack_wait: float
    max_ack_pending: int
    max_waiting: int
    filter_subject: str = ""
    inactive_threshold: float = 0.0  # 0: kept for ever; function mode lets idle ones expire
    # Consumer state in memory (with the stream's replicas): losing it redelivers, never loses (functionmode.py).
    mem_storage: bool = False

    def to_nats(self) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self.durable,
            filter_subject=self.filter_subject or None,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            replay_policy=ReplayPolicy.INSTANT,
            ack_wait=self.ack_wait,
            max_deliver=-1,
            max_ack_pending=self.max_ack_pending,
            max_waiting=self.max_waiting,
            inactive_threshold=self.inactive_threshold or None,
            mem_storage=self.mem_storage or None,
        )

    def to_nack(self) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "streamName": self.stream,
            "durableName": self.durable,
            "deliverPolicy": "all",
            "ackPolicy": "explicit",  # always explicit: the CRD defaults to none
            "ackWait": format_duration(self.ack_wait),  # always explicit: the CRD defaults to 1ns
            "maxDeliver": -1,
            "maxAckPending": self.max_ack_pending,
            "maxWaiting": self.max_waiting,
            "replayPolicy": "instant",
        }
        if self.filter_subject:
            spec["filterSubject"] = self.filter_subject
        if self.inactive_threshold:
            spec["inactiveThreshold"] = format_duration(self.inactive_threshold)
        if self.mem_storage:
            spec["memStorage"] = True
        return spec


def static_consumer(
    queue: str,
    ack_wait: float,
    max_ack_pending: int,
    max_waiting: int,
    partition: int = 0,
    level: Priority | None = None,
) -> ConsumerSpec:
    """Static mode: one consumer takes every function's calls, of the same name on every partition; on a queue with
    priorities (`level` given) one consumer per level, filtered to its subjects."""
    stream = names.stream_name(queue, partition)
    if level is None:
        return ConsumerSpec(stream, names.durable_name(queue), ack_wait, max_ack_pending, max_waiting)
    name, subjects = names.level_durable_name(queue, level), names.queue_subjects(queue, partition, level)
    return ConsumerSpec(stream, name, ack_wait, max_ack_pending, max_waiting, filter_subject=subjects)


def function_consumer(
    queue: str,
    function: str,
    ack_wait: float,
    max_ack_pending: int,
    max_waiting: int,
    inactive_threshold: float,
    partition: int = 0,
) -> ConsumerSpec:
    """Function mode: one consumer per function (and partition holding its calls: the same name on each), removed
    by the server when idle (or by the worker when others wait for one). Its state is in memory: made and removed
    often, and losing it costs a redelivery, not a call."""
    return ConsumerSpec(
        names.stream_name(queue, partition),
        names.function_consumer_name(queue, function),
        ack_wait,
        max_ack_pending,
        max_waiting,
        filter_subject=names.subject(queue, function, partition),
        inactive_threshold=inactive_threshold,
        mem_storage=True,
    )


def shared_function_consumer(
    queue: str, ack_wait: float, max_ack_pending: int, max_waiting: int, closed: bool = False, partition: int = 0
) -> ConsumerSpec:
    """Function mode's shared consumer of one partition: open, every call of it (`<queue>.>`, `<queue>_P<p>.>`);
    closed, none new (its filter matches no call). Kept like the static consumer (file state, no
    inactive_threshold): made rarely, and while it exists its lag is the partition's."""
    return ConsumerSpec(
        names.stream_name(queue, partition),
        names.shared_consumer_name(queue),
        ack_wait,
        max_ack_pending,
        max_waiting,
        filter_subject=(names.closed_subject(queue, partition) if closed else names.queue_subjects(queue, partition)),
    )


def callback_consumer(queue: str, send_timeout: float, max_waiting: int) -> ConsumerSpec:
    """The callback sender's consumer. max_ack_pending is high on purpose: each worker bounds its own sends
    (callback_concurrency), and a callback whose ack was lost must not hold back the others until it expires."""
    return ConsumerSpec(
        names.callback_stream_name(queue),
        names.callback_durable_name(queue),
        ack_wait=send_timeout + CALLBACK_ACK_MARGIN,
        max_ack_pending=CALLBACK_MAX_ACK_PENDING,
        max_waiting=max_waiting,
        filter_subject=names.callback_subject(queue),
    )


def due_consumer(queue: str, max_waiting: int) -> ConsumerSpec:
    """The consumer that moves due calls into the work stream. max_ack_pending is high as for callbacks: a due
    call put back while the work stream is full must not hold back the others."""
    return ConsumerSpec(
        names.schedule_stream_name(queue),
        names.due_durable_name(queue),
        ack_wait=SERVER_ACK_WAIT,
        max_ack_pending=CALLBACK_MAX_ACK_PENDING,
        max_waiting=max_waiting,
        filter_subject=names.due_subjects(queue),
    )


KEY_RECORD_TTL = 3600.0


def _bucket(name: str, description: str, ttl: float | None, replicas: int, storage: str) -> KeyValueConfig:
    """A key-value bucket of jetqueue's: the latest value of each key only."""
    return KeyValueConfig(
        bucket=name, history=1, ttl=ttl, replicas=replicas, storage=StorageType(storage), description=description
    )


def status_bucket(queue: str, ttl: float, replicas: int = 1, storage: str = "file", shard: int = 0) -> KeyValueConfig:
    """One of a queue's call-status buckets (one per partition, a call's by its id: contract.status_shard): two
    keys per call (its record, its submission record: callstatus.py), the latest record of each only, expired
    after `ttl`. A queue's own, so queues never share a leader."""
    name = names.status_bucket_name(queue, shard)
    return _bucket(name, f"jetqueue call status of queue {queue}", ttl, replicas, storage)


def cancel_bucket(queue: str, replicas: int = 1, storage: str = "file") -> KeyValueConfig:
    """A queue's cancel requests, one key per cancelled call id (cancels.py), kept longer than any call can be
    scheduled ahead, so a cancelled scheduled call never runs, whatever the status TTL. Its workers watch it."""
    return _bucket(
        names.cancel_bucket_name(queue), f"jetqueue cancel requests of queue {queue}", CANCEL_KEEP, replicas, storage
    )


def result_bucket(queue: str, ttl: float, replicas: int = 1, storage: str = "file") -> ObjectStoreConfig:
    """A queue's object store of result bodies too large for the status record (results.py), kept as long as the
    status records that point at them (`ttl`)."""
    return ObjectStoreConfig(
        bucket=names.result_bucket_name(queue),
        description=f"jetqueue call results of queue {queue}",
        ttl=ttl,
        replicas=replicas,
        storage=StorageType(storage),
    )


def idempotency_bucket(queue: str, window: float, replicas: int = 1, storage: str = "file") -> KeyValueConfig:
    """A queue's Idempotency-Key records (gateway/idempotency.py), each kept for the queue's idempotency window."""
    name = names.idempotency_bucket_name(queue)
    return _bucket(name, f"jetqueue idempotency keys of queue {queue}", window, replicas, storage)


def pause_bucket(replicas: int = 1, storage: str = "file") -> KeyValueConfig:
    """Pause records, key `<queue>` or `<queue>.<function>`, kept until resumed: no TTL (jetqueue/pauses.py)."""
    return _bucket(names.PAUSE_BUCKET, "jetqueue pauses", None, replicas, storage)


def rate_bucket(replicas: int = 1, storage: str = "file") -> KeyValueConfig:
    """Dispatch-rate state, key `<queue>` or `<queue>.<function>`, value the time its next slot starts
    (queueworker/ratelimit.py). No TTL: a key is a few bytes, and one expired while it points ahead would let a
    burst through."""
    return _bucket(names.RATE_BUCKET, "jetqueue dispatch rates", None, replicas, storage)


def key_bucket(replicas: int = 1, storage: str = "file") -> KeyValueConfig:
    """Concurrency keys' leases and rates (queueworker/keylimit.py). A record is written at least every lease
    renewal while a key is in use; one untouched for `KEY_RECORD_TTL` holds only expired leases and a past rate."""
    return _bucket(names.KEY_BUCKET, "jetqueue concurrency keys", KEY_RECORD_TTL, replicas, storage)


def schedule_bucket(replicas: int = 1, storage: str = "file") -> KeyValueConfig:
    """Each cron schedule's last tick that became a call, key `<queue>.<schedule>` (queueworker/ticks.py): what
    makes a tick delivered twice, or fired twice by the server, one call. No TTL: a record is a few bytes, and one
    expired would let a late duplicate of its tick through."""
    return _bucket(names.SCHEDULE_BUCKET, "jetqueue cron schedules", None, replicas, storage)
