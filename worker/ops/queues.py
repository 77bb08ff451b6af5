"""Queue operations: status, purge, reset and dead letters, one command each, safe by default."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from jetqueue import contract

Confirm = Callable[[str], bool]


class OpsError(RuntimeError):
    pass


def table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")


async def queue_names(js: JetStreamContext) -> list[str]:
    names = []
    for info in await js.streams_info():
        name = info.config.name or ""
        if name.startswith("OF_") and not name.endswith("_DLQ"):
            names.append(name[3:])
    return sorted(names)


async def status(js: JetStreamContext, queue: str | None, out: TextIO = sys.stdout) -> int:
    queues = [queue] if queue else await queue_names(js)
    if not queues:
        out.write("no queues (no OF_* streams) on this NATS\n")
        return 0
    rows = [
        ["QUEUE", "FUNCTION", "PENDING", "IN FLIGHT", "REDELIVERED", "DEAD LETTERS", "CONSUMERS", "REPLICAS", "LEADER"]
    ]
    for q in queues:
        try:
            info = await js.stream_info(contract.stream_name(q), subjects_filter=f"{q}.>")
        except NotFoundError:
            raise OpsError(f"queue {q!r} has no stream {contract.stream_name(q)}") from None
        consumers = await js.consumers_info(contract.stream_name(q))
        dlq = 0
        try:
            dlq = (await js.stream_info(contract.dlq_stream_name(q))).state.messages
        except NotFoundError:
            pass
        leader = info.cluster.leader if info.cluster and info.cluster.leader else "-"
        inflight = sum(c.num_ack_pending or 0 for c in consumers)
        redelivered = sum(c.num_redelivered or 0 for c in consumers)
        rows.append(
            [
                q,
                "*",
                str(info.state.messages),
                str(inflight),
                str(redelivered),
                str(dlq),
                str(len(consumers)),
                str(info.config.num_replicas),
                leader,
            ]
        )
        for subject, n in sorted((info.state.subjects or {}).items()):
            rows.append(["", subject.partition(".")[2], str(n), "", "", "", "", "", ""])
    table(rows, out)
    return 0


async def _queued(js: JetStreamContext, queue: str) -> tuple[str, int]:
    """The queue's stream and how many calls it holds (what a purge or reset would lose)."""
    stream = contract.stream_name(queue)
    try:
        return stream, (await js.stream_info(stream)).state.messages
    except NotFoundError:
        raise OpsError(f"queue {queue!r} has no stream {stream}") from None


async def purge(js: JetStreamContext, queue: str, confirm: Confirm, out: TextIO = sys.stdout) -> int:
    stream, n = await _queued(js, queue)
    if not confirm(f"Purge {n} queued call(s) from {stream}? They will not run."):
        out.write("nothing done\n")
        return 1
    await js.purge_stream(stream)
    out.write(f"purged {n} call(s) from {stream}; stream and consumers kept\n")
    return 0


async def reset(js: JetStreamContext, queue: str, confirm: Confirm, out: TextIO = sys.stdout) -> int:
    stream, n = await _queued(js, queue)
    if not confirm(
        f"Delete stream {stream} and its consumers, losing {n} queued call(s)? Workers recreate them when they restart."
    ):
        out.write("nothing done\n")
        return 1
    await js.delete_stream(stream)
    out.write(
        f"deleted {stream} ({n} call(s) lost); restart the workers to recreate it. "
        f"Dead letters in {contract.dlq_stream_name(queue)} are kept.\n"
    )
    return 0


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
        headers = {k: v for k, v in d.headers.items() if not k.startswith("Jq-Dlq-")}
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


def ask(yes: bool) -> Confirm:
    def confirm(question: str) -> bool:
        print(question)
        if yes:
            return True
        if not sys.stdin.isatty():
            print("refusing without --yes (standard input is not a terminal)")
            return False
        return input("Type 'yes' to go on: ").strip().lower() == "yes"

    return confirm
