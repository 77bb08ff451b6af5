"""Queue operations: purge and reset (of every partition's stream), safe by default (they say what they lose); what
every operation shares."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from jetqueue import contract, partitioned

Confirm = Callable[[str], bool]


class OpsError(RuntimeError):
    pass


def table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")


async def _queued(js: JetStreamContext, queue: str) -> tuple[list[str], int]:
    """The queue's work streams (every partition's) and how many calls they hold (what a purge or reset would lose)."""
    streams = list((await partitioned.found(js, queue)).values())
    if not streams:
        raise OpsError(f"queue {queue!r} has no stream {contract.stream_name(queue)}")
    try:
        return streams, sum([(await js.stream_info(s)).state.messages for s in streams])
    except NotFoundError:
        raise OpsError(f"a stream of queue {queue!r} was deleted meanwhile; try again") from None


async def _held(js: JetStreamContext, queue: str) -> tuple[int, int]:
    """Calls held for later in the queue's schedule stream (scheduled calls, waiting retries, due calls), and the
    cron schedules kept there (jetqueue/schedules.py)."""
    try:
        info = await js.stream_info(contract.schedule_stream_name(queue), subjects_filter=contract.cron_subjects(queue))
    except NotFoundError:
        return 0, 0
    crons = len(info.state.subjects or {})
    return info.state.messages - crons, crons


async def purge(js: JetStreamContext, queue: str, confirm: Confirm, out: TextIO = sys.stdout) -> int:
    streams, n = await _queued(js, queue)
    held, crons = await _held(js, queue)
    later, names = contract.schedule_stream_name(queue), ", ".join(streams)
    if not confirm(f"Purge {n} queued call(s) from {names} and {held} held for later in {later}? They will not run."):
        out.write("nothing done\n")
        return 1
    for stream in streams:
        await js.purge_stream(stream)
    if held:  # the calls only: cron schedules are definitions, not calls (`jetqueue schedule rm` ends one)
        for subjects in (contract.held_subjects(queue), contract.due_subjects(queue)):
            await js.purge_stream(later, subject=subjects)
    kept = f"; {crons} cron schedule(s) kept" if crons else ""
    out.write(f"purged {n} call(s) from {names} and {held} from {later}; streams and consumers kept{kept}\n")
    return 0


async def reset(js: JetStreamContext, queue: str, confirm: Confirm, out: TextIO = sys.stdout) -> int:
    streams, n = await _queued(js, queue)
    held, crons = await _held(js, queue)
    later, names = contract.schedule_stream_name(queue), ", ".join(streams)
    schedules = (
        f" and its {crons} cron schedule(s) (queues.yaml's come back when a worker starts; added ones do not)"
        if crons
        else ""
    )
    if not confirm(
        f"Delete streams {names} and {later} and their consumers, losing {n} queued call(s) and {held} held for "
        f"later{schedules}? Running gateways and workers set them up again by themselves."
    ):
        out.write("nothing done\n")
        return 1
    for stream in streams:
        await js.delete_stream(stream)
    if held or crons:
        await js.delete_stream(later)
    out.write(
        f"deleted {names} and {later} ({n + held} call(s) lost); running gateways and workers set them up again "
        f"within seconds (the partitions they are configured with). Dead letters in "
        f"{contract.dlq_stream_name(queue)} are kept.\n"
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
