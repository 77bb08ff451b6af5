"""The policy each function is run with: its upstream timeout and retry policy, from the worker's settings
and the per-function overrides file the generator renders.

File shape: ``{"<function>": {"upstreamTimeout": "2m", "retry": {"maxAttempts": 5, "initialWait": "1s",
"maxWait": "1m", "httpCodes": [429, 503], "backoff": "full", "maxRetryAfter": "0s"}, "maxEventAge": "1h",
"dispatchRate": 5}}``; every key optional.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jetqueue.durations import parse_duration
from jetqueue.settings import SettingsError, WorkerSettings


@dataclass(frozen=True)
class RetryPolicy:
    """What is retried and how long to wait: `decision.decide` reads it."""

    max_attempts: int = 10
    initial_wait: float = 10.0  # the first wait, and the minimum of every wait
    max_wait: float = 120.0
    http_codes: frozenset[int] = field(default_factory=lambda: frozenset({408, 429, 500, 502, 503, 504}))
    backoff: str = "exponential"  # exponential | full | equal
    max_retry_after: float = 0.0  # the longest Retry-After honoured; 0: max_wait
    max_event_age: float = 0.0  # no attempt starts later than this after the call's start; 0: no limit

    def retryable(self, status: int | None) -> bool:
        """None means a platform error (connection refused/reset, timeout): always retried."""
        return status is None or status in self.http_codes


@dataclass(frozen=True)
class FunctionPolicy:
    upstream_timeout: float
    retry: RetryPolicy
    dispatch_rate: float = 0.0  # this function's own calls per second across the queue's workers; 0: none


class Policies:
    """The policy of each function: its overrides over the worker's settings."""

    def __init__(self, default: FunctionPolicy, overrides: dict[str, FunctionPolicy]) -> None:
        self.default = default
        self.overrides = overrides

    def __call__(self, function: str) -> FunctionPolicy:
        return self.overrides.get(function, self.default)

    @classmethod
    def from_settings(cls, s: WorkerSettings) -> Policies:
        default = FunctionPolicy(
            upstream_timeout=s.upstream_timeout,
            retry=RetryPolicy(
                max_attempts=s.max_retry_attempts,
                initial_wait=s.initial_retry_wait,
                max_wait=s.max_retry_wait,
                http_codes=frozenset(s.retry_http_codes),
                backoff=s.backoff,
                max_retry_after=s.max_retry_after,
                max_event_age=s.max_event_age,
            ),
        )
        overrides: dict[str, FunctionPolicy] = {}
        if s.functions_file:
            try:
                data = json.loads(Path(s.functions_file).read_text(encoding="utf-8"))
                overrides = {fn: _override(default, spec) for fn, spec in data.items()}
            except (OSError, ValueError, TypeError, AttributeError) as e:
                raise SettingsError(f"JETQUEUE_FUNCTIONS_FILE={s.functions_file}: {e}") from None
        return cls(default, overrides)


def _override(default: FunctionPolicy, spec: dict[str, Any]) -> FunctionPolicy:
    r = spec.get("retry") or {}
    d = default.retry
    retry = RetryPolicy(
        max_attempts=int(r.get("maxAttempts", d.max_attempts)),
        initial_wait=parse_duration(r["initialWait"]) if "initialWait" in r else d.initial_wait,
        max_wait=parse_duration(r["maxWait"]) if "maxWait" in r else d.max_wait,
        http_codes=frozenset(int(c) for c in r["httpCodes"]) if "httpCodes" in r else d.http_codes,
        backoff=str(r.get("backoff", d.backoff)),
        max_retry_after=parse_duration(r["maxRetryAfter"]) if "maxRetryAfter" in r else d.max_retry_after,
        max_event_age=parse_duration(spec["maxEventAge"]) if "maxEventAge" in spec else d.max_event_age,
    )
    timeout = parse_duration(spec["upstreamTimeout"]) if "upstreamTimeout" in spec else default.upstream_timeout
    rate = float(spec.get("dispatchRate", 0.0))  # the queue's rate (settings.dispatch_rate) applies as well
    return FunctionPolicy(upstream_timeout=timeout, retry=retry, dispatch_rate=rate)
