"""Dead-letter operations: list, show, replay and purge what `OF_<queue>_DLQ` holds, with why each failed; count
them by reason for `jetqueue status`."""

from __future__ import annotations

import contextlib
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TextIO

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError

from jetqueue import contract, partitioned, provision
from jetqueue.ops.queues import Confirm, OpsError, table

REASON_SCAN = 10_000  # `jetqueue status` reads the reasons of at most this many dead letters: the latest ones
REASON_BATCH = 1_000
MESSAGE_GONE = 10057  # JetStream's error code for deleting a message that is not there (any more)


def function_of(subject: str) -> str:
    """The function of a dead letter's subject, `_DLQ.<queue>.<function>`."""
    return subject.split(".", 2)[2] if subject.count(".") >= 2 else ""


@dataclass
class DeadLetter:
    seq: int
    subject: str
    data: bytes
    headers: dict[str, str]

    @property
    def call_id(self) -> str:
        return self.headers.get(contract.H_CALL_ID, "")

    @property
    def function(self) -> str:
        return function_of(self.subject)


async def dead_letters(
    js: JetStreamContext, queue: str, function: str | None = None, call_id: str | None = None, latest: int = 0
) -> list[DeadLetter]:
    """The queue's dead letters (of `function`, of `call_id`), oldest first; `latest`: only among the last `latest`
    messages the stream stored (the dashboard's pages, bounded however many the stream holds)."""
    stream = contract.dlq_stream_name(queue)
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        raise OpsError(f"queue {queue!r} has no dead-letter stream {stream}") from None
    out: list[DeadLetter] = []
    if not info.state.messages:
        return out
    # next_by_subj needs a subject; the wildcard walks every function's dead letters.
    subject = contract.dlq_subject(queue, function) if function else contract.dlq_subject(queue, ">")
    seq = max(info.state.first_seq, info.state.last_seq - latest + 1) if latest else info.state.first_seq
    while seq <= info.state.last_seq:
        try:
            m = await js.get_msg(stream, seq=seq, next=True, subject=subject)
        except NotFoundError:
            break
        d = DeadLetter(m.seq or seq, m.subject or "", m.data or b"", dict(m.headers or {}))
        if call_id is None or d.call_id == call_id:
            out.append(d)
        seq = d.seq + 1
    return out


@dataclass
class Tally:
    """Dead letters of one reason per function, among the `scanned` latest of the `total` the stream holds."""

    per_function: dict[str, int] = field(default_factory=dict)
    scanned: int = 0
    total: int = 0

    @property
    def complete(self) -> bool:
        return self.scanned >= self.total


async def count_reason(js: JetStreamContext, queue: str, reason: str, limit: int = REASON_SCAN) -> Tally:
    """How many of the queue's latest `limit` dead letters have `reason`, per function: one pass over their headers
    (an ephemeral headers-only consumer, a batch of REASON_BATCH per request), removed afterwards."""
    stream = contract.dlq_stream_name(queue)
    try:
        state = (await js.stream_info(stream)).state
    except NotFoundError:
        return Tally()
    tally = Tally(total=state.messages)
    if not state.messages:
        return tally
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=max(state.first_seq, state.last_seq - limit + 1),
        ack_policy=AckPolicy.NONE,
        headers_only=True,
        mem_storage=True,
        inactive_threshold=30.0,  # removed by the server even if this command dies
    )
    name = (await js.add_consumer(stream, config)).name
    counts = Counter[str]()
    try:
        psub = await js.pull_subscribe_bind(consumer=name, stream=stream)
        while tally.scanned < limit:
            try:
                msgs = await psub.fetch(min(REASON_BATCH, limit - tally.scanned), timeout=2.0)
            except TimeoutError:
                break
            for m in msgs:
                tally.scanned += 1
                if (m.headers or {}).get(contract.H_DLQ_REASON) == reason:
                    counts[function_of(m.subject)] += 1
            if not msgs or msgs[-1].metadata.num_pending == 0:
                break
        await psub.unsubscribe()
    finally:
        with contextlib.suppress(Exception):
            await js.delete_consumer(stream, name)
    tally.per_function = dict(counts)
    tally.total = max(tally.total, tally.scanned)
    return tally


async def dlq_list(
    js: JetStreamContext, queue: str, function: str | None, call_id: str | None, out: TextIO = sys.stdout
) -> int:
    rows = [["SEQ", "CALL ID", "FUNCTION", "REASON", "STATUS", "ATTEMPTS", "ERROR"]]
    for d in await dead_letters(js, queue, function, call_id):
        h = d.headers
        rows.append(
            [
                str(d.seq),
                d.call_id or "-",
                d.function,
                h.get(contract.H_DLQ_REASON, ""),
                h.get(contract.H_DLQ_STATUS, "") or "-",
                h.get(contract.H_DLQ_ATTEMPTS, ""),
                h.get(contract.H_DLQ_ERROR, "")[:60],
            ]
        )
    table(rows, out)
    out.write(f"{len(rows) - 1} dead letter(s)\n")
    return 0


async def dlq_show(
    js: JetStreamContext, queue: str, function: str | None, call_id: str | None, out: TextIO = sys.stdout
) -> int:
    found = await dead_letters(js, queue, function, call_id)
    if not found:
        raise OpsError("no matching dead letter")
    for d in found:
        out.write(f"seq {d.seq}  subject {d.subject}\n")
        for k, v in sorted(d.headers.items()):
            out.write(f"  {k}: {v}\n")
        out.write(f"  body ({len(d.data)} bytes): {d.data[:500]!r}\n")
    return 0


async def dlq_replay(
    nc: Client, queue: str, function: str | None, call_id: str | None, confirm: Confirm, out: TextIO = sys.stdout
) -> int:
    """Put dead letters back on the queue as new messages (a fresh attempt count), then remove them. A call goes to
    its partition as the queue has them now (by its partition key, or its function), a callback where it was."""
    js = nc.jetstream()
    found = await dead_letters(js, queue, function, call_id)
    partitions = await partitioned.declared(js, queue)
    if not found:
        out.write("no matching dead letter\n")
        return 0
    if not confirm(f"Replay {len(found)} dead letter(s) onto queue {queue}?"):
        out.write("nothing done\n")
        return 1
    for d in found:
        # A replayed callback starts its attempts afresh, like a replayed call.
        headers = {k: v for k, v in d.headers.items() if not k.startswith(contract.H_DLQ)}
        for stale in (contract.H_CALLBACK_ATTEMPT, contract.H_CALLBACK_BUSY):
            headers.pop(stale, None)
        if contract.H_CALLBACK_KEY in headers:  # its own dead letter id: the first one's would drop it as a duplicate
            headers[contract.H_CALLBACK_KEY] = f"replay-{d.seq}-{time.time_ns()}"
        # A replay is a new start: its attempts, its age (maxEventAge) and its status record begin again.
        for stale in (contract.H_ATTEMPTS, contract.H_NOT_BEFORE):
            headers.pop(stale, None)
        headers[contract.H_START] = str(time.time_ns())
        # A new Nats-Msg-Id: the original is still inside the dedup window if it failed fast.
        headers[contract.H_MSG_ID] = f"{d.call_id or 'call'}-replay-{d.seq}"
        subject = d.headers.get(contract.H_DLQ_SUBJECT) or contract.subject(queue, d.function)
        level = contract.Priority.NORMAL
        try:
            _, fn, level = contract.parse_call_subject(subject)
        except contract.BadMessage:  # a callback's (or no call's): back where it was
            pass
        else:
            key = headers.get(contract.H_PARTITION_KEY, "")
            subject = contract.subject(queue, fn, contract.choose_partition(fn, partitions, key), level)
        try:
            await js.publish(subject, d.data, headers=headers)
        except NoStreamResponseError:
            partition = contract.choose_partition(fn, partitions, key)
            stream, taken = contract.stream_name(queue, partition), contract.queue_subjects(queue, partition, level)
            if level is contract.Priority.NORMAL or await provision.lists_subject(js, stream, taken):
                raise
            # A level its stream does not take (function mode dropped it): as a normal call.
            await js.publish(
                contract.subject(queue, fn, contract.choose_partition(fn, partitions, key)), d.data, headers=headers
            )
        try:
            await js.delete_msg(contract.dlq_stream_name(queue), d.seq)
        except APIError as e:
            # Replayed at the same moment by someone else (a double click): their publish was this one's duplicate
            # (the same Nats-Msg-Id), and they removed it first.
            if e.err_code != MESSAGE_GONE:
                raise
    out.write(f"replayed {len(found)} call(s) onto {queue}\n")
    return 0


async def dlq_purge(
    js: JetStreamContext, queue: str, function: str | None, confirm: Confirm, out: TextIO = sys.stdout
) -> int:
    stream = contract.dlq_stream_name(queue)
    found = await dead_letters(js, queue, function)
    if not confirm(f"Delete {len(found)} dead letter(s) from {stream}?"):
        out.write("nothing done\n")
        return 1
    if function:
        await js.purge_stream(stream, subject=contract.dlq_subject(queue, function))
    else:
        await js.purge_stream(stream)
    out.write(f"deleted {len(found)} dead letter(s)\n")
    return 0
