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
