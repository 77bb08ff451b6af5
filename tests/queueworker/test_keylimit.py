"""keylimit.py: keyConcurrency and keyRate by X-Concurrency-Key, against a real nats-server: one key's backlog does
not hold back another key, a limit holds across workers, a killed lease holder frees its slot after the ttl."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import os
import signal
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
from aiohttp import web

from jetqueue import contract
from jetqueue.contract import jetstream
from jetqueue.queueworker.keylimit import KeyLimits, Lease
from jetqueue.queueworker.policy import FunctionPolicy, RetryPolicy
from tests.helpers import connect, enqueue, running_worker, status_record, worker_settings
from tests.servers import FunctionServer, eventually

Q = contract.DEFAULT_QUEUE


class PerKey:
    """A function that records, per key (the call's body), how many of its calls run at once and when each ended."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.running: dict[str, int] = defaultdict(int)
        self.most: dict[str, int] = defaultdict(int)
        self.ended: dict[str, list[float]] = defaultdict(list)
        self.started: dict[str, list[float]] = defaultdict(list)

    async def __call__(self, request: web.Request, _: FunctionServer) -> web.Response:
        key = (await request.read()).decode()
        self.started[key].append(time.monotonic())
        self.running[key] += 1
        self.most[key] = max(self.most[key], self.running[key])
        try:
            await asyncio.sleep(self.seconds)
        finally:
            self.running[key] -= 1
        self.ended[key].append(time.monotonic())
        return web.Response(text="ok")


def functions_file(tmp_path: Path, **spec: object) -> str:
    path = tmp_path / "functions.json"
    path.write_text(json.dumps({"kf": spec}))
    return str(path)


async def test_a_key_backlog_holds_back_no_other_key_and_spends_no_attempt(nats_server, functions, tmp_path):
    fn = functions.handlers["kf"] = PerKey(0.02)
    s = worker_settings(
        nats_server.url, functions.url_template, functions_file=functions_file(tmp_path, keyConcurrency=2)
    )
    nc = await connect(nats_server.url)
    async with running_worker(s) as w:
        t0 = time.monotonic()
        big = [await enqueue(nc, "kf", b"big", concurrency_key="big") for _ in range(200)]
        small = [await enqueue(nc, "kf", b"small", concurrency_key="small") for _ in range(5)]
        await eventually(lambda: len(functions.completed["kf"]) == 205, timeout=120)
        elapsed = time.monotonic() - t0
        held = w.metrics.registry.get_sample_value(
            "queue_worker_key_limit_waits_total", {"queue_name": Q, "function_name": "kf"}
        )
    print(
        f"200 calls of one key at keyConcurrency 2 and 5 of another: all done in {elapsed:.2f}s, the 5 after "
        f"{max(fn.ended['small']) - t0:.2f}s, {held} put back in the queue"
    )
    assert max(fn.ended["small"]) < max(fn.ended["big"])  # the 5 finish first, though queued behind the 200
    assert fn.most["big"] <= 2 and fn.most["small"] <= 2
    assert sorted(functions.completed["kf"]) == sorted(big + small)  # each once: none lost, none doubled
    assert held and held > 0  # the limit did put calls back (else the test shows nothing)
    records = [await status_record(nc, call_id) for call_id in big]
    assert {r["attempt"] for r in records if r is not None} == {1}  # those put back ran at their first attempt
    await nc.close()


@pytest.mark.parametrize("mode", ["static", "function"])
async def test_a_key_limit_holds_across_two_workers(nats_server, functions, tmp_path, mode):
    fn = functions.handlers["kf"] = PerKey(0.05)
    path = functions_file(tmp_path, keyConcurrency=1)
    nc = await connect(nats_server.url)
    # Two slots each: one worker cannot fetch all 24 calls at once and wait out the key with them held.
    s = functools.partial(worker_settings, nats_server.url, functions.url_template, functions_file=path, mode=mode)
    async with contextlib.AsyncExitStack() as stack:
        workers = [await stack.enter_async_context(running_worker(s(max_inflight=2))) for _ in range(2)]
        for i in range(20):
            await enqueue(nc, "kf", b"one", concurrency_key="one")
            if i < 4:
                await enqueue(nc, "kf", b"other", concurrency_key="other")
        await eventually(lambda: len(functions.completed["kf"]) == 24, timeout=120)
    labels = {"queue_name": Q, "function_name": "kf", "status": "2xx"}
    done = [w.metrics.registry.get_sample_value("queue_worker_messages_processed_total", labels) for w in workers]
    assert all(done), done  # both workers ran calls of the key
    assert fn.most["one"] == 1 and fn.most["other"] == 1
    await nc.close()


async def test_a_key_rate_spaces_one_key_and_not_another(nats_server, functions, tmp_path):
    fn = functions.handlers["kf"] = PerKey(0.0)
    s = worker_settings(nats_server.url, functions.url_template, functions_file=functions_file(tmp_path, keyRate=5))
    nc = await connect(nats_server.url)
    async with running_worker(s):
        for _ in range(10):
            await enqueue(nc, "kf", b"slow", concurrency_key="slow")
        for i in range(10):
            await enqueue(nc, "kf", f"k{i}".encode(), concurrency_key=f"k{i}")
        await eventually(lambda: len(functions.completed["kf"]) == 20, timeout=120)
    starts = sorted(fn.started["slow"])
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.2 - 0.06, gaps  # 5/s: one start each 0.2 s (a slot is given up to 50 ms early)
    assert max(max(fn.started[f"k{i}"]) for i in range(10)) < starts[-1]  # other keys did not wait for it
    await nc.close()


HOLDER = """
import asyncio, sys
from jetqueue.contract import jetstream
from jetqueue.queueworker.keylimit import KeyLimits
from jetqueue.queueworker.policy import FunctionPolicy, RetryPolicy
import nats

async def main():
    nc = await nats.connect(sys.argv[1])
    limits = KeyLimits(nc.jetstream(), sys.argv[2], jetstream.key_bucket(), ttl=2.0, wait=0.0)
    got = await limits.enter("kf", "k", FunctionPolicy(1.0, RetryPolicy(), key_concurrency=1))
    print("held" if got.__class__.__name__ == "Lease" else "refused", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_killed_lease_holder_frees_its_slot_after_the_ttl(nats_server, tmp_path):
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), nats_server.url, Q, stdout=asyncio.subprocess.PIPE, env=env
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.strip() == b"held"
        nc = await connect(nats_server.url)
        limits = KeyLimits(nc.jetstream(), Q, jetstream.key_bucket(), ttl=2.0, wait=0.0)
        policy = FunctionPolicy(1.0, RetryPolicy(), key_concurrency=1)
        assert not isinstance(await limits.enter("kf", "k", policy), Lease)  # the other process holds the slot
        assert isinstance(await limits.enter("kf", "another", policy), Lease)  # per key
        proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), 10)
        t0 = time.monotonic()
        got: list[object] = []

        async def take() -> None:
            got.append(await limits.enter("kf", "k", policy))

        while not any(isinstance(g, Lease) for g in got):
            assert time.monotonic() - t0 < 20, "the dead holder's lease never expired"
            await take()
            await asyncio.sleep(0.2)
        print(f"the killed holder's slot was free {time.monotonic() - t0:.2f}s after the kill (ttl 2s)")
        lease = next(g for g in got if isinstance(g, Lease))
        assert not isinstance(await limits.enter("kf", "k", policy), Lease)  # now this one holds it
        await limits.leave(lease)
        assert isinstance(await limits.enter("kf", "k", policy), Lease)  # and gave it back
        await limits.stop()
        await nc.close()
    finally:
        if proc.returncode is None:
            proc.kill()
            await asyncio.wait_for(proc.wait(), 10)


async def test_a_wait_cancelled_holding_a_lease_stops_renewing_it(nats_server):
    nc = await connect(nats_server.url)
    limits = KeyLimits(nc.jetstream(), Q, jetstream.key_bucket(), ttl=2.0, wait=1.0)
    policy = FunctionPolicy(1.0, RetryPolicy(), key_concurrency=1, key_rate=2.0)
    first = await limits.enter("kf", "k", policy)
    assert isinstance(first, Lease)
    await limits.leave(first)
    second = asyncio.create_task(limits.enter("kf", "k", policy))  # takes the lease, then waits 0.5 s for the rate
    await eventually(lambda: bool(limits.held), timeout=10)
    second.cancel()  # a shutdown
    with contextlib.suppress(asyncio.CancelledError):
        await second
    assert not limits.held  # not renewed: it expires after the ttl instead of holding the key's slot for ever
    t0 = time.monotonic()
    while not isinstance(got := await limits.enter("kf", "k", policy), Lease):
        assert time.monotonic() - t0 < 20, got
        await asyncio.sleep(0.2)
    await limits.leave(got)
    await limits.stop()
    await nc.close()
