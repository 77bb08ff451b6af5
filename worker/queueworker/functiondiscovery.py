"""Function mode's discovery: which functions of a stream hold calls, and how many.

The stream's state (one small answer) is asked every DISCOVER_EVERY seconds; its subject map (one entry per
function holding calls, whatever the backlog) only when its last sequence moved, or every RECHECK_EVERY seconds for
calls that became deliverable again without a publish (redeliveries). functionmode.py decides from the counts which
consumers serve the stream (sharedconsumer.py) and which function has calls to fetch.
"""

from __future__ import annotations

import math

from nats.js import JetStreamContext

from jetqueue import contract

DISCOVER_EVERY = 0.25  # the stream's state: one small request
RECHECK_EVERY = 2.0  # the subject map even when nothing was published: redeliveries need no publish


class Discovery:
    def __init__(self, js: JetStreamContext, queue: str, stream: str, partition: int = 0) -> None:
        self.js = js
        self.queue = queue
        self.stream = stream
        self.partition = partition  # of the queue, whose calls the stream holds
        self.seen_seq: int | None = None
        self.mapped_at = -math.inf
        self.counts: dict[str, int] = {}  # calls in the stream per function, as last read

    async def look(self, now: float) -> bool:
        """Read the counts again if the stream changed (or to recheck); True when they were read."""
        state = (await self.js.stream_info(self.stream)).state
        if state.last_seq == self.seen_seq and now - self.mapped_at < RECHECK_EVERY:
            return False
        self.seen_seq, self.mapped_at = state.last_seq, now  # a publish from here on moves it again
        if not state.messages:
            self.counts = {}
            return True
        info = await self.js.stream_info(
            self.stream, subjects_filter=contract.queue_subjects(self.queue, self.partition)
        )
        self.counts = {contract.function_of_subject(subject): n for subject, n in (info.state.subjects or {}).items()}
        return True
