"""Queue operations: status, purge and reset, one command each, safe by default (they say what they lose)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

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
        queue = contract.queue_of_stream(info.config.name or "")
        if queue is not None:
            names.append(queue)
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
            info = await js.stream_info(contract.stream_name(q), subjects_filter=contract.queue_subjects(q))
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
        f"Delete stream {stream} and its consumers, losing {n} queued call(s)? Running gateways and workers set "
        "them up again by themselves."
    ):
        out.write("nothing done\n")
        return 1
    await js.delete_stream(stream)
    out.write(
        f"deleted {stream} ({n} call(s) lost); running gateways and workers set it up again within seconds. "
        f"Dead letters in {contract.dlq_stream_name(queue)} are kept.\n"
    )
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
