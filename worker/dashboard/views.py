"""What the dashboard's pages show, read from NATS with the operations' own code (ops/status.py,
ops/deadletters.py) and the gateway's call lookup (statuslookup.py): nothing here decides anything."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig

from jetqueue import contract, partitioned
from jetqueue.callstatus import QueueStatus, Record, StatusStore
from jetqueue.ops import deadletters
from jetqueue.ops.queues import OpsError
from jetqueue.ops.status import queue_names
from jetqueue.queueworker.deadletter import REDACTED, credential
from jetqueue.statuslookup import StatusLookup

LATEST = 500  # a dead-letter page shows those among the latest this many the queue's dead-letter stream stored
ERROR_EXCERPT = 300


def when(seconds: float | None) -> str:
    """A time as the pages show it: UTC, to the millisecond (a call's steps are often within one second)."""
    if not seconds:
        return ""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def shown_headers(headers: dict[str, str]) -> list[tuple[str, str]]:
    """A dead letter's headers as the dashboard shows them: credentials redacted as dead letters redact them
    (queueworker/deadletter.py), even where the worker was told to keep them for replays."""
    return sorted((k, REDACTED if credential(k) else v) for k, v in headers.items())


@dataclass
class DeadLetterView:
    seq: int
    call_id: str
    function: str
    reason: str
    status: str
    attempts: str
    error: str
    failed_at: str
    size: int
    headers: list[tuple[str, str]]


def dead_letter_view(d: deadletters.DeadLetter) -> DeadLetterView:
    h = d.headers
    at = h.get(contract.H_DLQ_TIME, "")
    return DeadLetterView(
        seq=d.seq,
        call_id=d.call_id,
        function=d.function,
        reason=h.get(contract.H_DLQ_REASON, ""),
        status=h.get(contract.H_DLQ_STATUS, ""),
        attempts=h.get(contract.H_DLQ_ATTEMPTS, ""),
        error=h.get(contract.H_DLQ_ERROR, "")[:ERROR_EXCERPT],
        failed_at=when(int(at) / 1e9) if at.isdigit() else "",
        size=len(d.data),
        headers=shown_headers(h),
    )


async def dead_letter_page(
    js: JetStreamContext, queue: str, function: str | None, call_id: str | None
) -> list[DeadLetterView]:
    """The latest dead letters of the queue, newest first."""
    found = await deadletters.dead_letters(js, queue, function, call_id, latest=LATEST)
    return [dead_letter_view(d) for d in reversed(found)]


@dataclass
class Step:
    at: float
    what: str


@dataclass
class CallView:
    record: Record
    steps: list[Step]
    dead_letters: list[DeadLetterView] = field(default_factory=list)


def steps(record: Record) -> list[Step]:
    """The call's history as its status record tells it: the bucket keeps a call's latest record (and the
    gateway's submission record), each stamped with when it was submitted, started, updated and finished."""
    out = [Step(record.get("submitted_at", 0), "submitted")]
    if record.get("not_before"):
        out.append(Step(record["not_before"], "due (scheduled)"))
    if record.get("started_at"):
        attempts = f" of {record['max_attempts']}" if record.get("max_attempts") else ""
        out.append(Step(record["started_at"], f"attempt {record.get('attempt', 1)}{attempts} started"))
    state = str(record.get("state", ""))
    detail = f" (HTTP {record['status_code']})" if record.get("status_code") else ""
    out.append(Step(record.get("finished_at") or record.get("updated_at", 0), state + detail))
    if record.get("next_try") and state == contract.CallState.RETRYING:
        out.append(Step(record["next_try"], "next try"))
    return sorted(out, key=lambda s: s.at)


async def find_call(js: JetStreamContext, call_id: str) -> CallView | None:
    """A call by its id, across every queue's status buckets, as `GET /async-calls/{id}` finds it; with its
    dead letters, if it has any among its queue's latest."""
    names = await queue_names(js)
    status = {
        q: QueueStatus(
            [
                StatusStore(js, KeyValueConfig(bucket=contract.status_bucket_name(q, k)), create=False)
                for k in range(await partitioned.declared(js, q))
            ]
        )
        for q in names
    }
    entry = await StatusLookup(js, status).get(call_id)
    if entry is None:
        return None
    view = CallView(entry.record, steps(entry.record))
    queue = str(entry.record.get("queue", ""))
    if queue in names:
        try:
            found = await deadletters.dead_letters(js, queue, call_id=call_id, latest=LATEST)
        except OpsError:  # no dead-letter stream
            found = []
        view.dead_letters = [dead_letter_view(d) for d in reversed(found)]
    return view
