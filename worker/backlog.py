"""Calls a queue holds for later, per function, counted from stream info (the worker's gauge and `jetqueue status`).

Each held call (a scheduled submission, or a retry waiting for its time) is one message on a subject of its own
in the schedule stream, so one stream-info request with a subject filter counts them all, up to the server's
page: nats-server lists at most `SUBJECTS_PAGE` subjects in one answer. Beyond that, the counts are those of the
first page and `Held.complete` is False.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from jetqueue import contract

SUBJECTS_PAGE = 100_000


@dataclass
class Held:
    per_function: dict[str, int] = field(default_factory=dict)
    complete: bool = True

    @property
    def total(self) -> int:
        return sum(self.per_function.values())


async def held(js: JetStreamContext, queue: str) -> Held:
    """The queue's held calls per function; none when it has no schedule stream (yet)."""
    try:
        info = await js.stream_info(contract.schedule_stream_name(queue), subjects_filter=contract.held_subjects(queue))
    except NotFoundError:
        return Held()
    subjects = info.state.subjects or {}
    counts = Counter[str]()
    for subject, n in subjects.items():
        counts[contract.function_of_held(queue, subject)] += n
    return Held(dict(counts), complete=len(subjects) < SUBJECTS_PAGE)
