"""The policy each function is run with: its upstream timeout and retry policy, from the worker's settings, the
per-function overrides file the generator renders, and (where the provider is OpenFaaS) the function's annotations.

Order: a function named in the overrides file (queues.yaml `functionOverrides`) runs by it alone; otherwise its
OpenFaaS annotations `com.openfaas.retry.attempts`, `.codes`, `.min_wait`, `.max_wait` and its watchdog's
`exec_timeout` replace the queue's values one by one (an invalid one is ignored, and logged once, as OpenFaaS
does); otherwise the queue's settings. Annotations come from `jetqueue.openfaas.FunctionCatalog`, refreshed in the
background: a call never waits for them, and a function not yet read runs by the queue's policy and asks for it.

File shape: ``{"<function>": {"upstreamTimeout": "2m", "retry": {"maxAttempts": 5, "initialWait": "1s",
"maxWait": "1m", "httpCodes": [429, 503], "backoff": "full", "maxRetryAfter": "0s", "openfaasInternal": true},
"maxEventAge": "1h", "dispatchRate": 5}}``; every key optional.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Set
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from jetqueue import openfaas
from jetqueue.durations import parse_duration
from jetqueue.openfaas import Function, FunctionCatalog
from jetqueue.settings import SettingsError, WorkerSettings

log = logging.getLogger("jetqueue.worker")
MAX_ATTEMPTS = 1000  # as queues.yaml's retry.maxAttempts
EXEC_TIMEOUT_GRACE = 1.0  # past the watchdog's exec_timeout, so its own answer arrives before our timeout


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
    openfaas_internal: bool = True  # an error answer with X-OpenFaaS-Internal is retried whatever its status

    def retryable(self, status: int | None, internal: bool = False) -> bool:
        """None means a platform error (connection refused/reset, timeout): always retried. `internal`: the answer
        came from the OpenFaaS gateway itself (X-OpenFaaS-Internal), e.g. its 404 while a function scales up."""
        if status is None or status in self.http_codes:
            return True
        return internal and self.openfaas_internal and status >= 400


@dataclass(frozen=True)
class FunctionPolicy:
    upstream_timeout: float
    retry: RetryPolicy
    dispatch_rate: float = 0.0  # this function's own calls per second across the queue's workers; 0: none


class Policies:
    """The policy of each function: its overrides, or its annotations, over the worker's settings."""

    def __init__(self, default: FunctionPolicy, overrides: dict[str, FunctionPolicy]) -> None:
        self.default = default
        self.overrides = overrides
        self.annotated: dict[str, FunctionPolicy] = {}  # from the functions' annotations (annotations_changed)
        self.catalog: FunctionCatalog | None = None
        self._logged: set[tuple[str, str, str]] = set()

    def __call__(self, function: str) -> FunctionPolicy:
        found = self.overrides.get(function)
        if found is None:
            found = self.annotated.get(function)
        if found is not None:
            return found
        catalog = self.catalog
        if catalog is not None and not catalog.knows(function):
            catalog.want(function)  # its first call: look its annotations up, in the background
        return self.default

    def annotations_changed(self, functions: Mapping[str, Function], changed: Set[str]) -> None:
        """The catalog read new annotations: the policies of the functions that changed, built here (off the calls'
        path; in place, between two calls: nothing awaits in here)."""
        for name in changed:
            self.annotated.pop(name, None)
            function = functions.get(name)
            if function is None:
                continue
            policy, problems = from_annotations(self.default, function)
            for key, value, why in problems:
                if (name, key, value) not in self._logged and len(self._logged) < 10_000:
                    self._logged.add((name, key, value))
                    log.warning("function %s: annotation %s=%r ignored: %s", name, key, value, why)
            if policy is None:
                continue
            if name in self.overrides:
                if (name, "", "") not in self._logged:
                    self._logged.add((name, "", ""))
                    log.info("function %s: its queues.yaml functionOverrides apply, not its annotations", name)
                continue
            self.annotated[name] = policy

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
                openfaas_internal=s.retry_openfaas_internal,
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
        openfaas_internal=bool(r.get("openfaasInternal", d.openfaas_internal)),
    )
    timeout = parse_duration(spec["upstreamTimeout"]) if "upstreamTimeout" in spec else default.upstream_timeout
    rate = float(spec.get("dispatchRate", 0.0))  # the queue's rate (settings.dispatch_rate) applies as well
    return FunctionPolicy(upstream_timeout=timeout, retry=retry, dispatch_rate=rate)


Problem = tuple[str, str, str]  # (annotation or variable, its value, why it is ignored)


def from_annotations(default: FunctionPolicy, function: Function) -> tuple[FunctionPolicy | None, list[Problem]]:
    """A function's policy from its OpenFaaS annotations and exec_timeout over `default`; None when it has none
    that apply. Formats as OpenFaaS documents them: attempts a whole number, codes comma-separated, waits Go
    durations; exec_timeout a Go duration or whole seconds, as the watchdog reads it."""
    a, problems = function.annotations, []
    retry: dict[str, Any] = {}

    def duration(key: str, value: str, name: str) -> None:
        try:
            retry[name] = parse_duration(value)
        except ValueError as e:
            problems.append((key, value, str(e)))

    if (value := a.get(openfaas.RETRY_ATTEMPTS)) is not None:
        if value.strip().isdigit() and 1 <= int(value) <= MAX_ATTEMPTS:
            retry["max_attempts"] = int(value)
        else:
            problems.append((openfaas.RETRY_ATTEMPTS, value, f"a whole number of attempts, 1-{MAX_ATTEMPTS}"))
    if (value := a.get(openfaas.RETRY_CODES)) is not None:
        parts = value.replace(" ", ",").split(",")
        codes = [int(p) for p in parts if p.isdigit()]
        if codes and all(100 <= c <= 599 for c in codes) and len(codes) == len([p for p in parts if p]):
            retry["http_codes"] = frozenset(codes)
        else:
            problems.append((openfaas.RETRY_CODES, value, "HTTP status codes 100-599, comma-separated"))
    if (value := a.get(openfaas.RETRY_MIN_WAIT)) is not None:
        duration(openfaas.RETRY_MIN_WAIT, value, "initial_wait")
    if (value := a.get(openfaas.RETRY_MAX_WAIT)) is not None:
        duration(openfaas.RETRY_MAX_WAIT, value, "max_wait")
    low = retry.get("initial_wait", default.retry.initial_wait)
    if low > retry.get("max_wait", default.retry.max_wait):
        key = openfaas.RETRY_MIN_WAIT if "initial_wait" in retry else openfaas.RETRY_MAX_WAIT
        problems.append((key, a[key], "the minimum wait would exceed the maximum wait"))
        retry.pop("initial_wait" if "initial_wait" in retry else "max_wait")
    timeout = default.upstream_timeout
    if (value := function.env.get(openfaas.EXEC_TIMEOUT)) is not None:
        try:
            seconds = parse_duration(value)
            if seconds > 0:
                timeout = seconds + EXEC_TIMEOUT_GRACE
        except ValueError as e:
            problems.append((openfaas.EXEC_TIMEOUT, value, str(e)))
    if not retry and timeout == default.upstream_timeout:
        return None, problems
    return replace(default, upstream_timeout=timeout, retry=replace(default.retry, **retry)), problems
