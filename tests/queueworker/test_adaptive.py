"""adaptive.py: the per-function limit learnt from 429s (pure, no NATS)."""

from __future__ import annotations

from jetqueue.queueworker.adaptive import Adaptive


def test_adaptive_limit_follows_capacity():
    a = Adaptive(cap=50)
    assert a.limit("f") == 2
    for _ in range(20):
        a.record("f", 200, False, 1)
    grown = a.limit("f")
    assert grown > 5
    a.record("f", 429, True, 8)
    assert a.limit("f") <= 7  # below the concurrency that overloaded it
    cut = a.limit("f")
    limits = a.limits["f"]
    limits.last_probe -= 10  # time passes: the next successes probe upward
    for _ in range(40):
        a.record("f", 200, False, cut)
        limits.last_probe -= 10
    assert a.limit("f") > cut
    assert Adaptive(cap=50, enabled=False).limit("f") == 50


def test_a_burst_of_429s_cuts_the_limit_once():
    """Six 429s from calls that all began before the first cut are one overload, not six."""
    a = Adaptive(cap=50)
    for _ in range(14):
        a.record("f", 200, False, 1)
    assert a.limit("f") == 16
    for _ in range(6):
        a.record("f", 429, True, 16, duration=5.0)  # all began 5 s ago, before any cut
    assert a.limit("f") == 11  # 16 × 0.7 once (was ~1 after six cuts)
    a.record("f", 429, True, 11, duration=0.0)  # began after the cut: new evidence
    assert a.limit("f") < 11


def test_one_function_with_a_name_too_long_for_the_server_gets_a_stable_hashed_consumer():
    from jetqueue import contract

    long_fn = "f" * 63 + "." + "n" * 63 + "x" * 100
    name = contract.function_consumer_name("faas-request", long_fn)
    assert len(name) <= contract.MAX_CONSUMER_NAME and name == contract.function_consumer_name("faas-request", long_fn)
    assert name != contract.function_consumer_name("faas-request", long_fn + "y")
    assert contract.function_consumer_name("q", "echo") == "q-fn-echo"
