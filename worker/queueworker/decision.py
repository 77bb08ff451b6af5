"""Retry policy: which outcomes are retried and how long to wait before the next attempt."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

RETRY_AFTER_CEILING = 3600.0  # a Retry-After is honoured up to an hour, never more


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 10
    initial_wait: float = 10.0
    max_wait: float = 120.0
    http_codes: frozenset[int] = field(default_factory=lambda: frozenset({408, 429, 500, 502, 503, 504}))
    backoff: str = "exponential"  # exponential | full | equal

    def retryable(self, status: int | None) -> bool:
        """None means a platform error (connection refused/reset, timeout): always retried."""
        return status is None or status in self.http_codes

    def delay(self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        if retry_after is not None:
            return float(max(self.initial_wait, min(retry_after, RETRY_AFTER_CEILING)))
        base = float(min(self.max_wait, self.initial_wait * 2 ** max(0, attempt - 1)))
        r: float = (rng or random).random()
        if self.backoff == "full":
            return base * r
        if self.backoff == "equal":
            return base / 2 + base / 2 * r
        return base


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP-date. None when absent or invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
