"""Calls per second into and out of each queue, from the reports the dashboard reads anyway (ops/status.py): the
work streams' stored count (every partition's last sequence) and what they hold now.

In: calls stored into the queue (submitted, moved in when due, or put back by a retry). Out: calls that left it
(done, dead-lettered, or moved to wait for a later retry). Measured over the last `WINDOW` seconds of samples kept
by this process; none until two samples are `MIN_SPAN` apart.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from jetqueue.ops.status import QueueReport

WINDOW = 30.0
MIN_SPAN = 1.0


@dataclass(frozen=True)
class Rate:
    into: float
    out: float


class Rates:
    def __init__(self) -> None:
        self._samples: dict[str, deque[tuple[float, int, int]]] = {}

    def update(self, reports: list[QueueReport], now: float | None = None) -> dict[str, Rate]:
        now = time.monotonic() if now is None else now
        rates: dict[str, Rate] = {}
        for r in reports:
            samples = self._samples.setdefault(r.queue, deque(maxlen=256))  # bounded however many look
            samples.append((now, r.stored, r.pending))
            while len(samples) > 2 and now - samples[1][0] >= WINDOW:
                samples.popleft()
            t0, stored0, pending0 = samples[0]
            span = now - t0
            if span >= MIN_SPAN and r.stored >= stored0:  # a reset stream starts its sequence again: no rate
                into = (r.stored - stored0) / span
                rates[r.queue] = Rate(into, max(0.0, into - (r.pending - pending0) / span))
        for gone in set(self._samples) - {r.queue for r in reports}:
            del self._samples[gone]
        return rates
