"""Dead-letter operations: list, show, replay and purge what `OF_<queue>_DLQ` holds, with why each failed."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TextIO

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from jetqueue import contract
from jetqueue.ops.queues import Confirm, OpsError, table


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
        return self.subject.split(".", 2)[2] if self.subject.count(".") >= 2 else ""


async def dead_letters(
    js: JetStreamContext, queue: str, function: str | None = None, call_id: str | None = None
) -> list[DeadLetter]:
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
    seq = info.state.first_seq
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
    """Put dead letters back on the queue as new messages (a fresh attempt count), then remove them."""
    js = nc.jetstream()
    found = await dead_letters(js, queue, function, call_id)
    if not found:
        out.write("no matching dead letter\n")
        return 0
    if not confirm(f"Replay {len(found)} dead letter(s) onto queue {queue}?"):
        out.write("nothing done\n")
        return 1
    for d in found:
        # A replayed callback starts its attempts afresh, like a replayed call.
        headers = {k: v for k, v in d.headers.items() if not k.startswith(contract.H_DLQ)}
        headers.pop(contract.H_CALLBACK_ATTEMPT, None)
        # A new Nats-Msg-Id: the original is still inside the dedup window if it failed fast.
        headers[contract.H_MSG_ID] = f"{d.call_id or 'call'}-replay-{d.seq}"
        subject = d.headers.get(contract.H_DLQ_SUBJECT) or contract.subject(queue, d.function)
        await js.publish(subject, d.data, headers=headers)
        await js.delete_msg(contract.dlq_stream_name(queue), d.seq)
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
