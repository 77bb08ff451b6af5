"""`jetqueue status`: per queue and per function, what is waiting, held for later, running, failed and expired,
and whether it is paused; per queue, its partitions and their leaders.

Counts come from stream info (pending: the work streams of every partition, summed; scheduled: the schedule
stream, see jetqueue/backlog.py),
consumer info and the pause records, except EXPIRED: dead letters with reason `expired`, read from the headers of
the latest `deadletters.REASON_SCAN` dead letters (a note says so when the stream holds more). PARTITIONS counts the
queue's partition streams; those beyond the count it was set up with are being drained by its workers (a note
says how many calls they still hold).
"""

from __future__ import annotations

import sys
from collections import Counter
from datetime import UTC, datetime
from typing import TextIO

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from jetqueue import backlog, contract, partitioned, pauses
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
    "PARTITIONS",
    "REPLICAS",
    "LEADER",
    "PAUSED",
]
EXPIRED = "expired"  # the dead-letter reason (decision.py) of a call older than maxEventAge


async def queue_names(js: JetStreamContext) -> list[str]:
    """Every queue with a work stream (of any partition) on the server."""
    return sorted({q for name in await partitioned.stream_names(js) if (q := contract.queue_of_stream(name))})


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
    names = await partitioned.stream_names(js)
    for q in queues:
        streams = await partitioned.found(js, q, names)
        if 0 not in streams:
            raise OpsError(f"queue {q!r} has no stream {contract.stream_name(q)}")
        infos = {p: await js.stream_info(s, subjects_filter=contract.queue_subjects(q, p)) for p, s in streams.items()}
        info = infos[0]
        consumers = [c for s in streams.values() for c in await pauses.all_consumers(js, s)]
        declared = await partitioned.declared(js, q)
        draining = {p: i.state.messages for p, i in infos.items() if p >= declared}
        dlq = 0
        try:
            dlq = (await js.stream_info(contract.dlq_stream_name(q))).state.messages
        except NotFoundError:
            pass
        held = await backlog.held(js, q)
        expired = await count_reason(js, q, EXPIRED)
        pending: Counter[str] = Counter()
        for i in infos.values():
            pending.update({contract.function_of_subject(subj): n for subj, n in (i.state.subjects or {}).items()})
        # A static consumer serves every function: only the whole queue's pause holds them back.
        static = any(c.name == contract.durable_name(q) for c in consumers)
        paused_functions = {p.function for p in records if p.queue == q and p.function and p.active(now)}
        leader = ",".join(i.cluster.leader if i.cluster and i.cluster.leader else "-" for i in infos.values())
        more = "" if held.complete else "+"
        rows.append(
            [
                q,
                "*",
                str(sum(i.state.messages for i in infos.values())),
                f"{held.total}{more}",
                str(sum(c.num_ack_pending or 0 for c in consumers)),
                str(sum(c.num_redelivered or 0 for c in consumers)),
                str(dlq),
                str(sum(expired.per_function.values())),
                str(len(consumers)),
                f"{len(streams) - len(draining)}" + (f"+{len(draining)} draining" if draining else ""),
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
                    "",
                    _paused(records, q, None if static else fn, now),
                ]
            )
        if not expired.complete:
            notes.append(f"{q}: EXPIRED counts the latest {expired.scanned} of {expired.total} dead letters")
        if draining:
            left = sum(draining.values())
            notes.append(
                f"{q}: partition(s) {', '.join(map(str, draining))} are beyond its {declared} partition(s): its "
                f"workers drain them ({left} call(s) left) and nothing new goes there; remove each once empty "
                f"(nats stream rm {streams[min(draining)]})"
            )
        if not held.complete:
            notes.append(f"{q}: SCHEDULED counts the first {backlog.SUBJECTS_PAGE} held calls (+: there are more)")
    table(rows, out)
    for note in notes:
        out.write(f"note: {note}\n")
    return 0
