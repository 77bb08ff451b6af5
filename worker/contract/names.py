"""Every name jetqueue gives a thing in NATS, formed in one place (the runtime, the generator and the
operator commands all call these; nothing else types a prefix).

Stream ``OF_<queue>`` and durable ``<queue>-workers`` follow OpenFaaS; queue names are DNS-1123
labels, so no queue subject can start with ``_`` and the ``_DLQ``/``_JQ`` subjects never collide.

Partitions (docs/partitions.md): partition 0 of a queue is ``OF_<queue>`` with subjects ``<queue>.<function>``, as
before partitions, so a queue of one partition is unchanged and existing streams are adopted. Partition p >= 1 is
``OF_<queue>_P<p>`` with subjects ``<queue>_P<p>.<function>``: a DNS-1123 label has no ``_``, so these are never
another queue's stream or subjects, and they end in no ``_DLQ``/``_CB``/``_SCHED`` suffix. Dead letters and held
calls stay one stream per queue (cold paths); the call-status records are split by call id into buckets named the
same way (``jetqueue-calls-<queue>``, ``jetqueue-calls-<queue>_P<k>``).

Priorities (contract/priorities.py): a queue with levels takes high and low calls on ``<token>_HI.<function>`` and
``<token>_LO.<function>`` (token: ``<queue>`` or ``<queue>_P<p>``) beside normal ones on ``<token>.<function>``, each
level pulled by a static consumer of its own: ``<queue>-workers`` (normal), ``<queue>-workers-high``, ``-low``.
"""

from __future__ import annotations

import hashlib
import re
import time

from jetqueue.contract.priorities import LEVEL_MARKS, Priority

DEFAULT_QUEUE = "faas-request"
STREAM_PREFIX = "OF_"
DLQ_STREAM_SUFFIX = "_DLQ"
DLQ_SUBJECT_PREFIX = "_DLQ"
CALLBACK_STREAM_SUFFIX = "_CB"
CALLBACK_SUBJECT_PREFIX = "_CB"
SCHEDULE_STREAM_SUFFIX = "_SCHED"
SCHEDULE_SUBJECT_PREFIX = "_SCHED"
CALLBACK_DLQ_FUNCTION = "_callback"  # undeliverable callbacks' dead-letter subject part (no function starts with _)
KV_SUBJECT_PREFIX = "$KV."  # a key-value bucket's keys are subjects `$KV.<bucket>.<key>` of its stream
STATUS_BUCKET_PREFIX = "jetqueue-calls-"  # + partition_token(queue, shard): a queue's own call-status buckets
CANCEL_BUCKET_PREFIX = "jetqueue-cancels-"  # + queue: a queue's own cancel requests
RESULT_BUCKET_PREFIX = "jetqueue-results-"  # + queue: an object store of the queue's large result bodies
IDEMPOTENCY_BUCKET_PREFIX = "jetqueue-idempotency-"  # + queue: Idempotency-Key records (gateway/idempotency.py)
# Before partitions, one bucket of each served every queue: read (never created) while they exist (callstatus.py).
LEGACY_STATUS_BUCKET = "jetqueue-calls"
LEGACY_CANCEL_BUCKET = "jetqueue-cancels"
PAUSE_BUCKET = "jetqueue-pauses"  # pause records, keyed by `pause_key` (jetqueue/pauses.py)
RATE_BUCKET = "jetqueue-rates"  # dispatch-rate state, keyed by `rate_key` (queueworker/ratelimit.py)
KEY_BUCKET = "jetqueue-keys"  # leases and rates of concurrency keys, keyed by `key_limit_key` (queueworker/keylimit.py)
SCHEDULE_BUCKET = "jetqueue-schedules"  # each cron schedule's last tick, keyed by `cron_key` (queueworker/ticks.py)
CRON_CALL_PREFIX = "cron"  # a tick's call id: `cron_call_id`
MAX_SCHEDULE_NAME = 63  # a DNS-1123 label: it names the schedule's subject, record key, metric label and call ids
MAX_QUEUE_NAME = 40  # it names the stream, the consumers and the Helm release
PARTITION_MARK = "_P"  # partition p >= 1 of queue q: `q_P<p>` (stream OF_q_P<p>, subjects q_P<p>.<function>)
MAX_PARTITIONS = 32  # partitions of one queue, at most (queues.yaml `partitions`)
# nats-server refuses consumer names over 255 characters (a file name); longer ones end in a hash instead.
MAX_CONSUMER_NAME = 200


def kv_stream_name(bucket: str) -> str:
    """The stream that holds a key-value bucket (as nats-py and the nats CLI name it)."""
    return f"KV_{bucket}"


def kv_subject(bucket: str, key: str) -> str:
    """The subject a bucket's key is stored under."""
    return f"{KV_SUBJECT_PREFIX}{bucket}.{key}"


def submission_key(call_id: str) -> str:
    """The status bucket's key of a call's submission record (the gateway's `queued` or `scheduled`), beside the
    call's own record under its id (callstatus.py). A call id never starts with `_`, so no call's key is taken."""
    return f"_submitted.{call_id}"


def tag_key(tag: str, call_id: str) -> str:
    """The status bucket's index key of a tagged call (tags.py): `_tag.<tag>.<call id>`; no tag holds a `.`."""
    return f"_tag.{tag}.{call_id}"


def tag_keys(tag: str) -> str:
    """Every index key of one tag, as a key filter."""
    return f"_tag.{tag}.>"


def call_of_tag_key(key: str) -> str:
    """The call id of a `tag_key`."""
    return key.split(".", 2)[2]


DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
QUEUE_NAME = re.compile(rf"^{DNS_LABEL}$")
FUNCTION_NAME = re.compile(rf"^{DNS_LABEL}(\.{DNS_LABEL})?$")
# Call ids are KV keys and header values: keep them to a safe alphabet.
CALL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_=.-]{0,127}$")


def partition_token(queue: str, partition: int = 0) -> str:
    """What partition `partition` of a queue puts first in its stream name and subjects: the queue itself for
    partition 0 (today's layout), `<queue>_P<p>` for the others."""
    return f"{queue}{PARTITION_MARK}{partition}" if partition else queue


def split_token(token: str) -> tuple[str, int] | None:
    """(queue, partition) of a `partition_token`, or None when `token` is none."""
    queue, mark, number = token.rpartition(PARTITION_MARK)
    if not mark:
        return (token, 0) if QUEUE_NAME.match(token) else None
    if not QUEUE_NAME.match(queue) or not number.isdigit() or number != str(int(number)):
        return None
    return (queue, int(number)) if 0 < int(number) < MAX_PARTITIONS else None


def stream_name(queue: str, partition: int = 0) -> str:
    """The work stream of one partition of a queue (partition 0: `OF_<queue>`, as OpenFaaS names it)."""
    return f"{STREAM_PREFIX}{partition_token(queue, partition)}"


def partition_of_stream(stream: str) -> tuple[str, int] | None:
    """(queue, partition) of a work stream, or None for any other stream (dead letters, callbacks, schedules)."""
    return split_token(stream[len(STREAM_PREFIX) :]) if stream.startswith(STREAM_PREFIX) else None


def status_bucket_name(queue: str, shard: int = 0) -> str:
    """One of a queue's call-status buckets: a call's records are in shard `contract.status_shard(call_id, n)`."""
    return STATUS_BUCKET_PREFIX + partition_token(queue, shard)


def cancel_bucket_name(queue: str) -> str:
    return CANCEL_BUCKET_PREFIX + queue


def result_bucket_name(queue: str) -> str:
    """The object store of a queue's result bodies too large for the status record (results.py)."""
    return RESULT_BUCKET_PREFIX + queue


def result_object_name(call_id: str, start_ns: int) -> str:
    """A result body's object: the call's id and start time, so a later call under the same id is apart."""
    return f"{call_id}.{start_ns}"


def idempotency_bucket_name(queue: str) -> str:
    return IDEMPOTENCY_BUCKET_PREFIX + queue


def dlq_stream_name(queue: str) -> str:
    return f"{STREAM_PREFIX}{queue}{DLQ_STREAM_SUFFIX}"


def queue_of_stream(stream: str) -> str | None:
    """The queue a work stream (of any partition) belongs to, or None for any other stream (dead letters
    included)."""
    found = partition_of_stream(stream)
    return found[0] if found else None


def durable_name(queue: str) -> str:
    return f"{queue}-workers"


def function_consumer_name(queue: str, function: str) -> str:
    """Function mode's durable for one function; the KEDA trigger watches the same name. A name too long for
    the server keeps its start and ends in a hash of the function: stable, and unique in practice."""
    name = f"{queue}-fn-{function.replace('.', '_')}"
    if len(name) <= MAX_CONSUMER_NAME:
        return name
    digest = hashlib.sha256(function.encode()).hexdigest()[:16]
    return f"{name[: MAX_CONSUMER_NAME - len(digest) - 1]}-{digest}"


def level_token(queue: str, partition: int = 0, level: Priority = Priority.NORMAL) -> str:
    """What a call's subject starts with: its partition's token, and its level's mark (none for normal)."""
    return partition_token(queue, partition) + LEVEL_MARKS.get(level, "")


def split_level(token: str) -> tuple[str, Priority]:
    """(partition token, level) of a `level_token`."""
    for level, mark in LEVEL_MARKS.items():
        if token.endswith(mark):
            return token[: -len(mark)], level
    return token, Priority.NORMAL


def subject(queue: str, function: str, partition: int = 0, level: Priority = Priority.NORMAL) -> str:
    return f"{level_token(queue, partition, level)}.{function}"


def level_durable_name(queue: str, level: Priority) -> str:
    """Static mode's consumer of one level on a queue with priorities: normal keeps `<queue>-workers`."""
    return durable_name(queue) if level is Priority.NORMAL else f"{durable_name(queue)}-{level.value}"


def shared_consumer_name(queue: str) -> str:
    """Function mode's shared consumer: every function's calls while none needs a consumer of its own
    (queueworker/sharedconsumer.py). No function consumer is named so: theirs start `<queue>-fn-`."""
    return f"{queue}-functions"


def closed_subject(queue: str, partition: int = 0) -> str:
    """The filter of a closed shared consumer: no call is ever published on it (no function name starts with `_`),
    so the consumer delivers nothing new and keeps only the calls it had delivered."""
    return f"{partition_token(queue, partition)}._closed"


def queue_subjects(queue: str, partition: int = 0, level: Priority = Priority.NORMAL) -> str:
    """The subjects of every call of a queue's partition (of one level: normal, unless the queue has priorities)."""
    return f"{level_token(queue, partition, level)}.>"


def function_of_subject(subject: str) -> str:
    """`<queue>.<function>`, `<queue>_P<p>.<function>`, `<queue>_HI.<function>` ... → the function."""
    return subject.partition(".")[2]


def dlq_subject(queue: str, function: str) -> str:
    return f"{DLQ_SUBJECT_PREFIX}.{queue}.{function}"


def dlq_subjects(queue: str) -> str:
    return f"{DLQ_SUBJECT_PREFIX}.{queue}.>"


def callback_stream_name(queue: str) -> str:
    return f"{STREAM_PREFIX}{queue}{CALLBACK_STREAM_SUFFIX}"


def callback_durable_name(queue: str) -> str:
    return f"{queue}-callbacks"


def callback_subject(queue: str) -> str:
    """Where a callback waits to be sent."""
    return f"{CALLBACK_SUBJECT_PREFIX}.{queue}.send"


def callback_schedule_subject(queue: str, key: str) -> str:
    """A callback's next attempt, held by the server until its time (a message schedule)."""
    return f"{CALLBACK_SUBJECT_PREFIX}.{queue}.later.{key}"


def callback_subjects(queue: str) -> str:
    return f"{CALLBACK_SUBJECT_PREFIX}.{queue}.>"


def schedule_stream_name(queue: str) -> str:
    """Calls held for later: scheduled submissions and retries waiting for their time."""
    return f"{STREAM_PREFIX}{queue}{SCHEDULE_STREAM_SUFFIX}"


def schedule_subjects(queue: str) -> str:
    return f"{SCHEDULE_SUBJECT_PREFIX}.{queue}.>"


def schedule_subject(queue: str, function: str, key: str) -> str:
    """One call held until its time (a message schedule); `key` is one token, unique per schedule. Counting
    `schedule_subject(queue, function, "*")` counts one function's held calls."""
    return f"{SCHEDULE_SUBJECT_PREFIX}.{queue}.at.{function}.{key}"


def held_subjects(queue: str) -> str:
    return f"{SCHEDULE_SUBJECT_PREFIX}.{queue}.at.>"


def due_subject(queue: str, function: str) -> str:
    """Where the server puts a held call at its time, for the worker to move into the queue."""
    return f"{SCHEDULE_SUBJECT_PREFIX}.{queue}.due.{function}"


def due_subjects(queue: str) -> str:
    return f"{SCHEDULE_SUBJECT_PREFIX}.{queue}.due.>"


def function_of_due(queue: str, subject: str) -> str:
    prefix = f"{SCHEDULE_SUBJECT_PREFIX}.{queue}.due."
    return subject[len(prefix) :] if subject.startswith(prefix) else ""


def function_of_held(queue: str, subject: str) -> str:
    """The function of a held call's subject (`schedule_subject`), or '' for another subject."""
    prefix = f"{SCHEDULE_SUBJECT_PREFIX}.{queue}.at."
    return subject[len(prefix) :].rpartition(".")[0] if subject.startswith(prefix) else ""


def cron_subject(queue: str, name: str) -> str:
    """A cron schedule (a repeating message schedule): the server fires it onto a due subject at every tick."""
    return f"{SCHEDULE_SUBJECT_PREFIX}.{queue}.cron.{name}"


def cron_subjects(queue: str) -> str:
    return f"{SCHEDULE_SUBJECT_PREFIX}.{queue}.cron.>"


def schedule_of_cron(queue: str, subject: str) -> str:
    """The schedule name of a cron schedule's subject (`cron_subject`; the `Nats-Scheduler` of its ticks), or ''."""
    prefix = f"{SCHEDULE_SUBJECT_PREFIX}.{queue}.cron."
    return subject[len(prefix) :] if subject.startswith(prefix) else ""


def cron_key(queue: str, name: str) -> str:
    """A cron schedule's record in the schedules bucket: its last tick made a call."""
    return f"{queue}.{name}"


def cron_applied_key(queue: str) -> str:
    """The schedules bucket's record of the Helm revision whose workers last applied queue's schedules (a schedule
    name is a DNS-1123 label, so `_applied` is no schedule's key)."""
    return f"{queue}._applied"


def cron_call_id(queue: str, name: str, tick: float) -> str:
    """The call of one tick: the same for every delivery of the tick (at most 5 + 40 + 63 + 16 + 2 = 126
    characters, within CALL_ID), readable: `cron.<queue>.<schedule>.<UTC time, whole seconds>`."""
    when = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(int(tick)))
    return f"{CRON_CALL_PREFIX}.{queue}.{name}.{when}"


def due_durable_name(queue: str) -> str:
    return f"{queue}-due"


def pause_key(queue: str, function: str = "") -> str:
    """The pause record of a whole queue (`<queue>`) or of one of its functions (`<queue>.<function>`)."""
    return f"{queue}.{function}" if function else queue


def rate_key(queue: str, function: str = "") -> str:
    """The dispatch-rate state of a whole queue (`<queue>`) or of one function's own rate (`<queue>.<function>`)."""
    return f"{queue}.{function}" if function else queue


def key_limit_key(kind: str, queue: str, function: str, key: str) -> str:
    """A concurrency key's record: `<kind>.<queue>.<function>.<digest>`, kind `c` (its leases) or `r` (its rate). The
    key is hashed: any visible ASCII is allowed in it, and a key-value key takes fewer characters."""
    return f"{kind}.{queue}.{function}.{hashlib.sha256(key.encode()).hexdigest()[:32]}"


def pause_of_key(key: str) -> tuple[str, str]:
    """(queue, function) of a pause record's key; function '' for the whole queue. A queue name has no dot."""
    queue, _, function = key.partition(".")
    return queue, function
