"""`jetqueue status`: per queue and per function, what is waiting, held for later, running, failed and expired,
and whether it is paused; per queue, its partitions and their leaders. `collect` gathers it (the dashboard shows the
same reports: jetqueue/dashboard/), `status` prints it.

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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TextIO

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from jetqueue import backlog, contract, partitioned, pauses
from jetqueue.ops.deadletters import count_reason, function_of
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


@dataclass
class FunctionReport:
    name: str
    pending: int
    scheduled: int
    dead_letters: int
    expired: int
    running: int | None  # delivered and not yet settled, on the function's own consumers; None in static mode
    # or while function mode's shared consumer holds calls (the server does not count them per function)
    paused: str  # "" when not paused, else until when (pauses.describe)


@dataclass
class QueueReport:
    """One queue as `jetqueue status` shows it."""

    queue: str
    pending: int
    scheduled: int
    scheduled_complete: bool  # False: `scheduled` counts the first backlog.SUBJECTS_PAGE held calls only
    in_flight: int
    redelivered: int
    dead_letters: int
    expired: int
    consumers: int
    partitions: int  # in force
    draining: int  # partitions beyond the count in force, drained by the workers
    replicas: int
    leader: str
    paused: str  # as FunctionReport.paused
    stored: int  # messages ever stored in the work streams (every partition's last sequence, summed): rates
    static: bool  # one consumer serves every function: only the whole queue can be paused
    functions: list[FunctionReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


async def queue_names(js: JetStreamContext) -> list[str]:
    """Every queue with a work stream (of any partition) on the server."""
    return sorted({q for name in await partitioned.stream_names(js) if (q := contract.queue_of_stream(name))})


def _paused(records: list[Pause], queue: str, function: str | None, now: datetime) -> str:
    until = pauses.pause_until(records, queue, function, now)
    return "" if until is None else pauses.describe(until)


async def collect(js: JetStreamContext, queue: str | None, now: datetime | None = None) -> list[QueueReport]:
    """The report of `queue`, or of every queue (OpsError when `queue` has no stream)."""
    now = now or datetime.now(UTC)
    names = await partitioned.stream_names(js)
    queues = [queue] if queue else sorted({q for n in names if (q := contract.queue_of_stream(n))})
    records = await pauses.records(js) if queues else []
    return [await _report(js, q, names, records, now) for q in queues]


async def _report(js: JetStreamContext, q: str, names: list[str], records: list[Pause], now: datetime) -> QueueReport:
    streams = await partitioned.found(js, q, names)
    if 0 not in streams:
        raise OpsError(f"queue {q!r} has no stream {contract.stream_name(q)}")
    try:
        infos = {p: await js.stream_info(s, subjects_filter=">") for p, s in streams.items()}  # every level's calls
    except NotFoundError:
        raise OpsError(f"a stream of queue {q!r} was deleted meanwhile; try again") from None
    consumers = [c for s in streams.values() for c in await pauses.all_consumers(js, s)]
    declared = await partitioned.declared(js, q)
    draining = {p: i.state.messages for p, i in infos.items() if p >= declared}
    dlq: Counter[str] = Counter()  # per function (a callback's: contract.CALLBACK_DLQ_FUNCTION)
    try:
        dlq_info = await js.stream_info(contract.dlq_stream_name(q), subjects_filter=contract.dlq_subject(q, ">"))
        dlq.update({function_of(subj): n for subj, n in (dlq_info.state.subjects or {}).items()})
        dlq_total = dlq_info.state.messages
    except NotFoundError:
        dlq_total = 0
    held = await backlog.held(js, q)
    expired = await count_reason(js, q, EXPIRED)
    pending: Counter[str] = Counter()
    for i in infos.values():
        pending.update(contract.calls_per_function(q, i.state.subjects or {}))
    # A static consumer serves every function: only the whole queue's pause holds them back.
    static = any(c.name == contract.durable_name(q) for c in consumers)
    paused_functions = {p.function for p in records if p.queue == q and p.function and p.active(now)}
    running: Counter[str] = Counter()  # function mode: each function's consumers, on every partition
    # The shared consumer's calls are not told apart by function at the server: then only the queue's row counts.
    shared = any(c.name == contract.shared_consumer_name(q) and c.num_ack_pending for c in consumers)
    for c in consumers:
        if fn := pauses.consumer_function(q, c, contract.durable_name(q)):
            running[fn] += c.num_ack_pending or 0
    report = QueueReport(
        queue=q,
        pending=sum(i.state.messages for i in infos.values()),
        scheduled=held.total,
        scheduled_complete=held.complete,
        in_flight=sum(c.num_ack_pending or 0 for c in consumers),
        redelivered=sum(c.num_redelivered or 0 for c in consumers),
        dead_letters=dlq_total,
        expired=sum(expired.per_function.values()),
        consumers=len(consumers),
        partitions=len(streams) - len(draining),
        draining=len(draining),
        replicas=infos[0].config.num_replicas or 1,
        leader=",".join(i.cluster.leader if i.cluster and i.cluster.leader else "-" for i in infos.values()),
        paused=_paused(records, q, None, now),
        stored=sum(i.state.last_seq for i in infos.values()),
        static=static,
    )
    functions = set(pending) | set(held.per_function) | set(dlq) | set(expired.per_function) | paused_functions
    functions |= {fn for fn, n in running.items() if n}
    for fn in sorted(functions):
        report.functions.append(
            FunctionReport(
                fn,
                pending.get(fn, 0),
                held.per_function.get(fn, 0),
                dlq.get(fn, 0),
                expired.per_function.get(fn, 0),
                None if static or shared else running.get(fn, 0),
                _paused(records, q, None if static else fn, now),
            )
        )
    if not expired.complete:
        report.notes.append(f"EXPIRED counts the latest {expired.scanned} of {expired.total} dead letters")
    if draining:
        left = sum(draining.values())
        report.notes.append(
            f"partition(s) {', '.join(map(str, draining))} are beyond its {declared} partition(s): its "
            f"workers drain them ({left} call(s) left) and nothing new goes there; remove each once empty "
            f"(nats stream rm {streams[min(draining)]})"
        )
    if not held.complete:
        report.notes.append(f"SCHEDULED counts the first {backlog.SUBJECTS_PAGE} held calls (+: there are more)")
    return report


def rows(reports: list[QueueReport]) -> list[list[str]]:
    """The table `jetqueue status` prints."""
    out = [HEADER]
    for r in reports:
        more = "" if r.scheduled_complete else "+"
        out.append(
            [
                r.queue,
                "*",
                str(r.pending),
                f"{r.scheduled}{more}",
                str(r.in_flight),
                str(r.redelivered),
                str(r.dead_letters),
                str(r.expired),
                str(r.consumers),
                f"{r.partitions}" + (f"+{r.draining} draining" if r.draining else ""),
                str(r.replicas),
                r.leader,
                r.paused or "-",
            ]
        )
        for f in r.functions:
            running = "" if f.running is None else str(f.running)  # static mode: the queue's row says
            out.append(["", f.name, str(f.pending), f"{f.scheduled}{more}", running, "", str(f.dead_letters)])
            out[-1] += [str(f.expired), "", "", "", "", f.paused or "-"]
    return out


async def status(js: JetStreamContext, queue: str | None, out: TextIO = sys.stdout, now: datetime | None = None) -> int:
    reports = await collect(js, queue, now)
    if not reports:
        out.write("no queues (no OF_* streams) on this NATS\n")
        return 0
    table(rows(reports), out)
    for r in reports:
        for note in r.notes:
            out.write(f"note: {r.queue}: {note}\n")
    return 0
