"""decision.py: the fate of an attempt, as a pure function (no NATS)."""

from __future__ import annotations

import random

import pytest

from jetqueue.queueworker.decision import (
    Ack,
    Cancelled,
    DeadLetter,
    Retry,
    backoff,
    decide,
    parse_retry_after,
)
from jetqueue.queueworker.invoke import CANCELLED, Outcome
from jetqueue.queueworker.policy import RetryPolicy

POLICY = RetryPolicy(max_attempts=3, initial_wait=1.0, max_wait=8.0, http_codes=frozenset({429, 500, 503}))


@pytest.mark.parametrize(
    ("outcome", "attempt", "expected"),
    [
        (Outcome(status=200), 1, Ack()),
        (Outcome(status=204), 3, Ack()),  # success on the last attempt is a success
        (Outcome(status=404), 1, DeadLetter("rejected")),  # not retried, whatever the attempt
        (Outcome(status=500), 3, DeadLetter("exhausted")),
        (Outcome(status=None, error="timed out"), 3, DeadLetter("exhausted")),  # platform errors are retried
        (Outcome(status=None, error=CANCELLED), 1, Cancelled()),
        (Outcome(status=500), 1, Retry(1.0)),
        (Outcome(status=None, error="ConnectionRefused"), 2, Retry(2.0)),
        # The OpenFaaS gateway's own error (X-OpenFaaS-Internal), e.g. a 404 while the function scales from zero:
        # retried whatever its status, with the same attempts and waits.
        (Outcome(status=404, internal=True), 1, Retry(1.0)),
        (Outcome(status=502, internal=True), 3, DeadLetter("exhausted")),
        (Outcome(status=200, internal=True), 1, Ack()),
    ],
)
def test_decide(outcome, attempt, expected):
    assert decide(outcome, attempt, POLICY) == expected


def test_the_openfaas_internal_mark_can_be_ignored():
    policy = RetryPolicy(max_attempts=3, http_codes=frozenset({503}), openfaas_internal=False)
    assert decide(Outcome(status=404, internal=True), 1, policy) == DeadLetter("rejected")
    assert decide(Outcome(status=503, internal=True), 1, policy) == Retry(policy.initial_wait)


def test_retry_after_on_429_and_503_only_and_never_below_the_minimum():
    assert decide(Outcome(status=429, retry_after="5"), 1, POLICY) == Retry(5.0)
    assert decide(Outcome(status=503, retry_after="0"), 1, POLICY) == Retry(1.0)  # raised to initial_wait
    assert decide(Outcome(status=500, retry_after="5"), 1, POLICY) == Retry(1.0)  # 500's Retry-After is ignored
    assert decide(Outcome(status=429, retry_after="junk"), 2, POLICY) == Retry(2.0)  # junk: the backoff
    assert decide(Outcome(status=429, retry_after="3600"), 1, POLICY) == Retry(8.0)  # capped by max_wait


def test_retry_after_cap_can_be_raised():
    policy = RetryPolicy(max_attempts=3, initial_wait=1.0, max_wait=8.0, max_retry_after=7200.0)
    assert decide(Outcome(status=429, retry_after="3600"), 1, policy) == Retry(3600.0)
    assert decide(Outcome(status=429, retry_after=str(10**30)), 1, policy) == Retry(7200.0)


EXPIRING = RetryPolicy(max_attempts=5, initial_wait=10.0, max_wait=10.0, max_event_age=60.0)


@pytest.mark.parametrize(
    ("outcome", "age", "expected"),
    [
        (Outcome(status=None, error="expired"), 61.0, DeadLetter("expired")),  # too old to invoke
        (Outcome(status=500), 49.0, Retry(10.0)),  # the next attempt starts at 59 s: still in time
        (Outcome(status=500), 50.0, DeadLetter("expired")),  # it would start at 60 s: no retry
        (Outcome(status=200), 600.0, Ack()),  # a success is a success, however late
        (Outcome(status=404), 600.0, DeadLetter("rejected")),  # the function's answer is the reason
    ],
)
def test_max_event_age(outcome, age, expected):
    assert decide(outcome, 1, EXPIRING, age=age) == expected
    no_limit = RetryPolicy(max_attempts=5, initial_wait=10.0, max_wait=10.0)
    assert decide(Outcome(status=500), 1, no_limit, age=10**9) == Retry(10.0)


@pytest.mark.parametrize("mode", ["exponential", "full", "equal"])
def test_every_wait_within_the_documented_bounds(mode):
    policy = RetryPolicy(initial_wait=1.0, max_wait=8.0, backoff=mode)
    rng = random.Random(7)
    for attempt in range(1, 12):
        exponential = min(8.0, 2.0 ** (attempt - 1))
        low = {"exponential": exponential, "full": 1.0, "equal": max(1.0, exponential / 2)}[mode]
        for _ in range(300):
            assert low - 1e-9 <= backoff(policy, attempt, rng=rng) <= exponential + 1e-9


def test_full_jitter_never_below_the_minimum_even_with_a_zero_draw():
    class Zero(random.Random):
        def random(self) -> float:
            return 0.0

    for mode in ("full", "equal"):
        policy = RetryPolicy(initial_wait=3.0, max_wait=120.0, backoff=mode)
        assert all(backoff(policy, attempt, rng=Zero()) >= 3.0 for attempt in range(1, 20))


@pytest.mark.parametrize("attempt", [64, 1_000, 10**6, 10**18])
def test_no_overflow_at_large_attempt_counts(attempt):
    policy = RetryPolicy(max_attempts=10**19, initial_wait=1.0, max_wait=120.0)
    assert backoff(policy, attempt) == 120.0
    assert decide(Outcome(status=500), attempt, policy) == Retry(120.0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0),  # an HTTP-date 10 s after `now`
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # a date in the past: no wait (the minimum applies)
        ("", None),
        (None, None),
        ("soon", None),
        ("-5", None),
        ("1.5", None),  # delta-seconds is a whole number
        ("Wed, 99 Foo 2015 99:99:99 GMT", None),
        ("\x00", None),
    ],
)
def test_parse_retry_after(value, expected):
    assert parse_retry_after(value, now=1445412480.0) == expected
