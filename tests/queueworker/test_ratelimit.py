"""ratelimit.py: the dispatch rate, shared by every replica of a queue. The slot arithmetic and the scopes against
an in-memory store, then workers against a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import pytest
from nats.js.errors import BucketNotFoundError, KeyNotFoundError

from jetqueue import contract
from jetqueue.queueworker import ratelimit
from jetqueue.queueworker.metrics import WorkerMetrics
from jetqueue.queueworker.policy import FunctionPolicy, Policies, RetryPolicy
from jetqueue.queueworker.ratelimit import Conflict, DispatchRate, Scope, batch, grant
from tests.helpers import connect, enqueue, running_worker, worker_settings
from tests.servers import eventually

Q = contract.DEFAULT_QUEUE


class MemoryStore:
    """The bucket's compare-and-set, in memory, with a round trip's delay."""

    def __init__(self, rtt: float = 0.002, fail: bool = False) -> None:
        self.rtt = rtt
        self.fail = fail
        self.data: dict[str, tuple[float, int]] = {}
        self.revision = 0
        self.ops = 0

    async def read(self, key: str) -> tuple[float, int]:
        await self._trip()
        return self.data.get(key, (0.0, 0))

    async def write(self, key: str, tat: float, last: int) -> int:
        await self._trip()
        if self.data.get(key, (0.0, 0))[1] != last:
            raise Conflict(key)
        self.revision += 1
        self.data[key] = (tat, self.revision)
        return self.revision

    async def _trip(self) -> None:
        self.ops += 1
        await asyncio.sleep(self.rtt)
        if self.fail:
            raise ConnectionError("bucket unavailable")


def most_within(times: list[float], window: float) -> int:
    """The most of `times` inside any closed interval `window` long."""
    times = sorted(times)
    return max(sum(1 for u in times[i:] if u - t <= window) for i, t in enumerate(times))


def policies(**own_rates: float) -> Policies:
    default = FunctionPolicy(upstream_timeout=60.0, retry=RetryPolicy())
    return Policies(default, {fn: FunctionPolicy(60.0, RetryPolicy(), dispatch_rate=r) for fn, r in own_rates.items()})


# The arithmetic, without NATS


def test_grant_starts_at_the_first_free_slot_and_saves_no_burst():
    assert grant(tat=10.0, now=5.0, interval=0.2, n=3) == pytest.approx([10.0, 10.2, 10.4])  # others hold until 10
    assert grant(tat=3.0, now=5.0, interval=0.2, n=2) == pytest.approx([5.0, 5.2])  # idle since 3: from now, no burst
    assert grant(tat=0.0, now=5.0, interval=1.0, n=0) == []


def test_a_claim_takes_a_lease_of_the_rate_and_one_slot_at_least():
    assert batch(0.01) == 1 and batch(5) == 1  # low rates: every slot is claimed exactly when needed
    assert batch(40) == 10 and batch(1000) == 250  # high rates: about 4 claims a second, whatever the rate


# Scopes against an in-memory store: the slot hand-out, without NATS


async def test_two_replicas_sharing_a_key_keep_the_rate_together():
    store = MemoryStore()
    a, b = Scope(store, "q", 50.0), Scope(store, "q", 50.0)  # two workers of one queue
    times: dict[str, list[float]] = {"a": [], "b": []}

    async def call(name: str, scope: Scope) -> None:
        await scope.take()
        times[name].append(time.time())

    t0 = time.time()
    await asyncio.gather(*(call(name, scope) for name, scope in [("a", a), ("b", b)] * 20))
    every = times["a"] + times["b"]
    assert times["a"] and times["b"]
    assert max(every) - t0 >= (40 - 2) / 50  # 40 calls, 50/s, across both
    assert most_within(every, 0.2) <= 50 * (0.2 + ratelimit.LATE) + 1
    assert store.ops < 40  # claimed in batches: fewer round trips than calls


async def test_a_deadline_no_slot_can_meet_is_answered_at_once():
    scope = Scope(MemoryStore(), "q.f", 1.0)
    assert await scope.take() is not None  # the first slot is now
    t0 = time.monotonic()
    assert await scope.take(before=time.time() + 0.1) is None  # the next one starts in a second
    assert time.monotonic() - t0 < 0.5


async def test_a_function_rate_holds_inside_the_queue_rate():
    rates = DispatchRate(MemoryStore(), Q, 20.0, policies(slow=5.0), WorkerMetrics())
    times: dict[str, list[float]] = {"slow": [], "echo": []}

    async def call(function: str) -> None:
        await rates.admit(function)
        times[function].append(time.time())

    t0 = time.time()
    await asyncio.gather(*(call("slow") for _ in range(6)), *(call("echo") for _ in range(14)))
    assert most_within(times["slow"], 1 / 5) <= 2 and most_within(times["slow"], 1.0) <= 5 + 2
    assert most_within(times["slow"] + times["echo"], 0.5) <= 20 * (0.5 + ratelimit.LATE) + 1
    assert max(times["slow"]) - t0 < 1.6  # about 1 s: its calls go first in the queue's slots, so it gets its rate
    assert rates.whole is not None and rates._own("echo") is None  # echo: only the queue's rate


async def test_no_rate_admits_at_once_without_the_store():
    store = MemoryStore()
    rates = DispatchRate(store, Q, 0.0, policies(slow=5.0), WorkerMetrics())
    await asyncio.wait_for(asyncio.gather(*(rates.admit("echo") for _ in range(100))), 0.5)
    assert store.ops == 0


async def test_an_unavailable_store_holds_calls_then_limits_the_pod_alone(monkeypatch):
    monkeypatch.setattr(ratelimit, "STRICT_FOR", 0.3)
    monkeypatch.setattr(ratelimit, "UNAVAILABLE_WAIT", 0.05)
    scope = Scope(MemoryStore(fail=True), "q", 10.0)
    t0 = time.monotonic()
    times = [await scope.take() for _ in range(5)]
    assert time.monotonic() - t0 >= 0.3 + 4 / 10 - ratelimit.LATE  # nothing for STRICT_FOR, then 10/s here alone
    assert all(t is not None for t in times)


async def test_a_cancelled_wait_ends_the_scope_task():
    scope = Scope(MemoryStore(), "q", 0.5)
    await scope.take()
    waiting = asyncio.create_task(scope.take())  # the next slot is two seconds away
    await asyncio.sleep(0.05)
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    assert scope._task is not None
    await asyncio.wait_for(scope._task, 1.0)


# Workers against a real nats-server


async def test_two_workers_share_the_queue_rate(nats_server, functions, http):
    nc = await connect(nats_server.url)
    settings = [worker_settings(nats_server.url, functions.url_template, dispatch_rate=5, max_inflight=10)]
    settings.append(worker_settings(nats_server.url, functions.url_template, dispatch_rate=5, max_inflight=10))
    async with contextlib.AsyncExitStack() as stack:
        workers = [await stack.enter_async_context(running_worker(s)) for s in settings]
        t0 = time.monotonic()
        for _ in range(30):
            await enqueue(nc, "echo")
        await eventually(lambda: len(functions.completed["echo"]) == 30, timeout=30)
        elapsed = time.monotonic() - t0
        async with http.get(f"http://127.0.0.1:{settings[0].http_port}/metrics") as r:
            metrics = await r.text()
    arrivals = functions.times["echo"]
    span = max(arrivals) - min(arrivals)
    print(f"30 calls at 5/s on two workers: {elapsed:.2f}s, first to last invocation {span:.2f}s")
    labels = {"queue_name": Q, "function_name": "echo", "status": "2xx"}
    done = [w.metrics.registry.get_sample_value("queue_worker_messages_processed_total", labels) for w in workers]
    assert all(done), done  # both workers invoked calls: the rate is the queue's, not each pod's
    assert 29 / 5 - 0.3 <= span and elapsed < 30  # one pod's 5/s each would take about 2.9 s
    assert most_within(arrivals, 1.0) <= 7  # the bound: 5 × 1 + 2
    assert "queue_worker_dispatch_rate_wait_seconds_total" in metrics
    kv = await nc.jetstream().key_value(contract.RATE_BUCKET)
    assert float((await kv.get(contract.rate_key(Q))).value or 0) > 0
    await nc.close()


@pytest.mark.parametrize("mode", ["static", "function"])
async def test_a_function_rate_of_its_own_across_workers(nats_server, functions, tmp_path, mode):
    (tmp_path / "functions.json").write_text(json.dumps({"slow": {"dispatchRate": 4}}))
    nc = await connect(nats_server.url)
    common = {"mode": mode, "functions_file": str(tmp_path / "functions.json")}
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(2):
            s = worker_settings(nats_server.url, functions.url_template, **common)
            await stack.enter_async_context(running_worker(s))
        t0 = time.monotonic()
        for _ in range(12):
            await enqueue(nc, "slow")
            await enqueue(nc, "echo")
        await eventually(lambda: len(functions.completed["echo"]) == 12, timeout=30)
        echo_done = time.monotonic() - t0
        await eventually(lambda: len(functions.completed["slow"]) == 12, timeout=30)
        slow_done = time.monotonic() - t0
    slow = functions.times["slow"]
    span = max(slow) - min(slow)
    print(f"{mode} mode, 12 slow at 4/s and 12 echo unlimited: echo done in {echo_done:.2f}s, slow in {slow_done:.2f}s")
    assert 11 / 4 - 0.3 <= span and slow_done < 30
    assert echo_done < span  # a function's own rate holds back none of the others
    kv = await nc.jetstream().key_value(contract.RATE_BUCKET)
    await kv.get(contract.rate_key(Q, "slow"))
    with pytest.raises(KeyNotFoundError):
        await kv.get(contract.rate_key(Q))  # no queue rate: no queue key
    await nc.close()


async def test_no_rate_no_bucket_traffic(nats_server, functions):
    nc = await connect(nats_server.url)
    async with running_worker(worker_settings(nats_server.url, functions.url_template)) as w:
        assert w.processor is not None and w.processor.ctx.admit is None
        for _ in range(5):
            await enqueue(nc, "echo")
        await eventually(lambda: len(functions.completed["echo"]) == 5)
    with pytest.raises(BucketNotFoundError):
        await nc.jetstream().key_value(contract.RATE_BUCKET)
    await nc.close()


async def test_a_bucket_deleted_underneath_is_created_again(nats_server, functions):
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    async with running_worker(worker_settings(nats_server.url, functions.url_template, dispatch_rate=20)):
        for _ in range(5):
            await enqueue(nc, "echo")
        await eventually(lambda: len(functions.completed["echo"]) == 5)
        await js.delete_key_value(contract.RATE_BUCKET)
        for _ in range(5):
            await enqueue(nc, "echo")
        await eventually(lambda: len(functions.completed["echo"]) == 10, timeout=20)
    kv = await js.key_value(contract.RATE_BUCKET)
    assert (await kv.get(contract.rate_key(Q))).revision  # claims go on in the new bucket
    await nc.close()
