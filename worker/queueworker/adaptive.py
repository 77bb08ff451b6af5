"""Adaptive concurrency per function: learn how many calls a function takes at once from its 429s.

AIMD with memory: the limit starts low and grows by one per window of successes (doubling until the
first overload); a 429 (or a 503 with Retry-After) remembers the concurrency that overloaded the
function and cuts the limit to a safety margin below it, once per burst: the 429s of calls that began
before that cut are the same overload, not new evidence. Periodically the ceiling is probed upward
(by 10 %, at least one), so the limit follows the function's replicas as they scale up, and back down on new 429s.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

START = 2
BACKOFF = 0.7  # multiplicative decrease on overload
MARGIN = 0.9  # stay this fraction of the discovered maximum
PROBE_EVERY = 0.5  # seconds between upward probes of the ceiling
PROBE_STEP = 0.1  # each probe lifts the ceiling by this fraction (at least one call)


@dataclass
class Limit:
    ceiling_cap: int
    limit: float = START
    ceiling: float = math.inf  # a safety margin below the highest concurrency known to overload
    slow_start: bool = True
    last_probe: float = field(default_factory=time.monotonic)
    last_cut: float = -math.inf
    successes: int = 0

    @property
    def value(self) -> int:
        return max(1, min(self.ceiling_cap, int(self.limit)))

    def success(self, now: float) -> None:
        if self.slow_start:
            self.limit = min(self.limit + 1, self.ceiling)  # one more per success: doubles per window
        else:
            self.successes += 1
            if self.successes >= self.value:
                self.successes = 0
                self.limit = min(self.limit + 1, self.ceiling)
        if now - self.last_probe >= PROBE_EVERY and self.ceiling != math.inf:
            self.last_probe = now
            self.ceiling += max(1.0, self.ceiling * PROBE_STEP)  # probe: maybe it has more replicas now
            self.limit = max(self.limit, min(self.limit + 1, self.ceiling))
        self.limit = min(self.limit, self.ceiling_cap)

    def overload(self, inflight: int, now: float, started: float) -> None:
        if started < self.last_cut:
            return  # began before the last cut: part of the burst that caused it
        self.last_cut = now
        self.slow_start = False
        self.ceiling = max(1.0, min(self.ceiling, math.floor(max(inflight, 1) * MARGIN)))
        self.limit = max(1.0, min(self.limit * BACKOFF, self.ceiling))
        self.last_probe = now
        self.successes = 0


class Adaptive:
    """Limits for every function of a worker."""

    def __init__(self, cap: int, enabled: bool = True) -> None:
        self.cap = cap
        self.enabled = enabled
        self.limits: dict[str, Limit] = {}

    def limit(self, function: str) -> int:
        if not self.enabled:
            return self.cap
        return self._get(function).value

    def ceiling(self, function: str) -> int | None:
        """The function's limit once a 429 (or a 503 with Retry-After) has shown how much it takes; None before."""
        lim = self.limits.get(function) if self.enabled else None
        return lim.value if lim is not None and lim.ceiling != math.inf else None

    def _get(self, function: str) -> Limit:
        if function not in self.limits:
            self.limits[function] = Limit(ceiling_cap=self.cap)
        return self.limits[function]

    def record(
        self, function: str, status: int | None, retry_after: bool, inflight: int, duration: float = 0.0
    ) -> None:
        """One finished call: its status, whether it said Retry-After, the calls in flight, how long it ran."""
        if not self.enabled:
            return
        now = time.monotonic()
        lim = self._get(function)
        if status == 429 or (status == 503 and retry_after):
            lim.overload(inflight, now, started=now - duration)
        elif status is not None and 200 <= status < 300:
            lim.success(now)
