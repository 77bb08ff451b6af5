"""`jetqueue status`: per queue and per function, what is waiting, held for later, running, failed and expired,
and whether it is paused.

Counts come from stream info (pending: the work stream; scheduled: the schedule stream, see jetqueue/backlog.py),
consumer info and the pause records, except EXPIRED: dead letters with reason `expired`, read from the headers of
the latest `deadletters.REASON_SCAN` dead letters (a note says so when the stream holds more).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import TextIO

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from jetqueue import backlog, contract, pauses
from jetqueue.ops.deadletters import count_reason
from jetqueue.ops.queues import OpsError, table
from jetqueue.pauses import Pause

HEADER = [
    "QUEUE",
    "FUNCTION",
    "PENDING",
    "SCHEDULED",
    "IN FLIGHT",
    "REDELIVERED",
    "DEAD LETTERS",
    "EXPIRED",
    "CONSUMERS",
    "REPLICAS",
    "LEADER",
    "PAUSED",
]
EXPIRED = "expired"  # the dead-letter reason (decision.py) of a call older than maxEventAge


async def queue_names(js: JetStreamContext) -> list[str]:
    names = []
    for info in await js.streams_info():
        queue = contract.queue_of_stream(info.config.name or "")
        if queue is not None:
            names.append(queue)
    return sorted(names)


def _paused(records: list[Pause], queue: str, function: str | None, now: datetime) -> str:
    return pauses.describe(pauses.pause_until(records, queue, function, now))


async def status(js: JetStreamContext, queue: str | None, out: TextIO = sys.stdout, now: datetime | None = None) -> int:
    now = now or datetime.now(UTC)
    queues = [queue] if queue else await queue_names(js)
    if not queues:
        out.write("no queues (no OF_* streams) on this NATS\n")
        return 0
    records = await pauses.records(js)
    rows = [HEADER]
    notes: list[str] = []
    for q in queues:
        try:
            info = await js.stream_info(contract.stream_name(q), subjects_filter=contract.queue_subjects(q))
        except NotFoundError:
            raise OpsError(f"queue {q!r} has no stream {contract.stream_name(q)}") from None
        consumers = await pauses.all_consumers(js, contract.stream_name(q))
        dlq = 0
        try:
            dlq = (await js.stream_info(contract.dlq_stream_name(q))).state.messages
        except NotFoundError:
            pass
        held = await backlog.held(js, q)
        expired = await count_reason(js, q, EXPIRED)
        pending = {subject.partition(".")[2]: n for subject, n in (info.state.subjects or {}).items()}
        # A static consumer serves every function: only the whole queue's pause holds them back.
        static = any(c.name == contract.durable_name(q) for c in consumers)
        paused_functions = {p.function for p in records if p.queue == q and p.function and p.active(now)}
        leader = info.cluster.leader if info.cluster and info.cluster.leader else "-"
        more = "" if held.complete else "+"
        rows.append(
            [
                q,
                "*",
                str(info.state.messages),
                f"{held.total}{more}",
                str(sum(c.num_ack_pending or 0 for c in consumers)),
                str(sum(c.num_redelivered or 0 for c in consumers)),
                str(dlq),
                str(sum(expired.per_function.values())),
                str(len(consumers)),
                str(info.config.num_replicas),
                leader,
                _paused(records, q, None, now),
            ]
        )
        functions = set(pending) | set(held.per_function) | set(expired.per_function) | paused_functions
        for fn in sorted(functions):
            rows.append(
                [
                    "",
                    fn,
                    str(pending.get(fn, 0)),
                    f"{held.per_function.get(fn, 0)}{more}",
                    "",
                    "",
                    "",
                    str(expired.per_function.get(fn, 0)),
                    "",
                    "",
                    "",
                    _paused(records, q, None if static else fn, now),
                ]
            )
        if not expired.complete:
            notes.append(f"{q}: EXPIRED counts the latest {expired.scanned} of {expired.total} dead letters")
        if not held.complete:
            notes.append(f"{q}: SCHEDULED counts the first {backlog.SUBJECTS_PAGE} held calls (+: there are more)")
    table(rows, out)
    for note in notes:
        out.write(f"note: {note}\n")
    return 0
