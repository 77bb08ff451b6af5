"""Where a finished attempt's fate is decided: ack it, retry it after a wait, or dead-letter it.

`decide(outcome, attempt, policy, age)` is pure (no NATS, no clock but the Retry-After date): the handler
carries out what it returns. Waits: exponential from `initial_wait` to `max_wait`; `full` jitter draws
between `initial_wait` and the exponential wait, `equal` between half of it and all of it; no wait is
ever below `initial_wait` (the documented minimum), a Retry-After on 429/503 included, and a Retry-After
is honoured up to `max_retry_after` (default: `max_wait`). With `max_event_age`, a call that old is
dead-lettered as `expired`, and so is a failed one whose next attempt would start past that age.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from jetqueue.queueworker.invoke import Outcome
from jetqueue.queueworker.policy import RetryPolicy

_MAX_DOUBLINGS = 64  # past this, 2**n overflows a float long before it matters: the wait is max_wait


@dataclass(frozen=True)
class Ack:
    """The call succeeded: remove it from the queue."""


@dataclass(frozen=True)
class Retry:
    """Run it again after `delay` seconds."""

    delay: float


@dataclass(frozen=True)
class DeadLetter:
    """Stop trying: `exhausted` (retryable, attempts used up), `rejected` (a status that is not retried) or
    `expired` (older than max_event_age, or would be by the next attempt)."""

    reason: str


@dataclass(frozen=True)
class Cancelled:
    """Cancelled by its caller: stop without a dead letter."""


Decision = Ack | Retry | DeadLetter | Cancelled


def decide(
    outcome: Outcome, attempt: int, policy: RetryPolicy, age: float = 0.0, rng: random.Random | None = None
) -> Decision:
    """The fate of attempt number `attempt` (1-based) that ended with `outcome`, `age` seconds after the call
    could first run (`Call.age`). A call not invoked because it is too old comes here as a failed outcome."""
    if outcome.cancelled:
        return Cancelled()
    if outcome.ok:
        return Ack()
    if not policy.retryable(outcome.status, outcome.internal):
        return DeadLetter("rejected")
    too_old = policy.max_event_age
    if too_old and age >= too_old:
        return DeadLetter("expired")
    if attempt >= policy.max_attempts:
        return DeadLetter("exhausted")
    retry_after = parse_retry_after(outcome.retry_after) if outcome.status in (429, 503) else None
    delay = backoff(policy, attempt, retry_after, rng)
    if too_old and age + delay >= too_old:
        return DeadLetter("expired")
    return Retry(delay)


def backoff(
    policy: RetryPolicy, attempt: int, retry_after: float | None = None, rng: random.Random | None = None
) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based)."""
    floor = policy.initial_wait
    if retry_after is not None:
        return max(floor, min(retry_after, policy.max_retry_after or policy.max_wait))
    doublings = max(0, attempt - 1)
    base = policy.max_wait if doublings > _MAX_DOUBLINGS else min(policy.max_wait, floor * 2.0**doublings)
    r = (rng or random).random()
    if policy.backoff == "full":
        return floor + (base - floor) * r
    if policy.backoff == "equal":
        return max(floor, base / 2 + base / 2 * r)
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
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
