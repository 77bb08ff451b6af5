"""The worker as a real process: signals, exit codes, and a 3-node cluster losing its stream leader."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from aiohttp import web

from jetqueue.queueworker.metrics import WorkerMetrics
from jetqueue.queueworker.process import Worker
from tests.helpers import connect, enqueue, start_worker, worker_env, worker_settings
from tests.servers import cluster, eventually


async def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110 - a process, not an event
        await asyncio.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
        raise AssertionError("worker did not exit in time")
    return proc.returncode


def sleeper(seconds: float):
    async def handler(request, server):
        await asyncio.sleep(seconds)
        return web.Response(text="slept")

    return handler


async def test_sigterm_mid_flight_loses_nothing_and_duplicates_nothing(nats_server, functions, tmp_path):
    functions.handlers["sleep"] = sleeper(1.0)
    env = worker_env(nats_server.url, functions.url_template, max_inflight="5", shutdown_timeout="10s")
    proc = start_worker(env, tmp_path / "w1.log")
    nc = await connect(nats_server.url)
    await eventually(lambda: b"worker ready" in (tmp_path / "w1.log").read_bytes(), timeout=30)
    ids = [await enqueue(nc, "sleep") for _ in range(20)]
    await eventually(lambda: functions.concurrent == 5)
    proc.send_signal(signal.SIGTERM)
    assert await wait_exit(proc, 30) == 0
    first = len(functions.completed["sleep"])
    assert first >= 5  # the in-flight calls were allowed to finish
    proc2 = start_worker(env, tmp_path / "w2.log")
    await eventually(lambda: len(functions.completed["sleep"]) >= 20, timeout=60)
    proc2.send_signal(signal.SIGTERM)
    assert await wait_exit(proc2, 30) == 0
    assert sorted(functions.completed["sleep"]) == sorted(ids)  # each exactly once
    await nc.close()


async def test_sigterm_hands_unfinished_calls_back_at_once(nats_server, functions, tmp_path):
    functions.handlers["sleep"] = sleeper(3.0)
    env = worker_env(
        nats_server.url, functions.url_template, max_inflight="3", shutdown_timeout="300ms", ack_wait="60s"
    )
    proc = start_worker(env, tmp_path / "w1.log")
    nc = await connect(nats_server.url)
    await eventually(lambda: b"worker ready" in (tmp_path / "w1.log").read_bytes(), timeout=30)
    ids = [await enqueue(nc, "sleep") for _ in range(3)]
    await eventually(lambda: functions.concurrent == 3)
    proc.send_signal(signal.SIGTERM)
    assert await wait_exit(proc, 20) == 0
    assert b"handing 3 unfinished call(s) back" in (tmp_path / "w1.log").read_bytes()
    t0 = time.monotonic()
    proc2 = start_worker(env, tmp_path / "w2.log")
    await eventually(lambda: set(ids) <= set(functions.calls["sleep"][3:]), timeout=30)
    assert time.monotonic() - t0 < 30  # NAKed: not waiting out the 60 s ack wait
    proc2.send_signal(signal.SIGTERM)
    assert await wait_exit(proc2, 30) == 0
    await nc.close()


def test_bad_setting_exits_2_naming_the_variable(tmp_path):
    env = worker_env("nats://127.0.0.1:1", "http://x/{function}", max_inflight="many")
    res = subprocess.run(
        [sys.executable, "-m", "jetqueue", "worker"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert res.returncode == 2
    assert "JETQUEUE_MAX_INFLIGHT" in res.stderr and "Traceback" not in res.stderr


def test_worker_help():
    res = subprocess.run(
        [sys.executable, "-m", "jetqueue", "worker", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert res.returncode == 0 and "JETQUEUE_" in res.stdout


@pytest.mark.slow
async def test_cluster_stream_leader_killed_under_load(tmp_path, functions):
    servers = cluster(tmp_path / "cluster")
    urls = ",".join(s.url for s in servers)
    proc = start_worker(
        worker_env(urls, functions.url_template, stream_replicas="3", max_inflight="50"), tmp_path / "w.log"
    )
    nc = await connect(urls)
    try:
        await eventually(lambda: b"worker ready" in (tmp_path / "w.log").read_bytes(), timeout=60)
        js = nc.jetstream()
        acked: list[str] = []

        async def publish(i: int) -> None:
            call_id = f"c{i}"
            for _ in range(200):  # a client retries with the same id until stored (dedup makes it safe)
                try:
                    await js.publish(
                        "faas-request.echo", b"x", headers={"Nats-Msg-Id": call_id, "X-Call-Id": call_id}, timeout=2
                    )
                    acked.append(call_id)
                    return
                except Exception:
                    await asyncio.sleep(0.1)

        async def producer() -> None:
            for start in range(0, 2000, 50):
                await asyncio.gather(*(publish(i) for i in range(start, start + 50)))

        flow = asyncio.create_task(producer())
        await eventually(lambda: len(acked) >= 500, timeout=60)
        info = await js.stream_info("OF_faas-request")
        assert info.cluster is not None
        leader = info.cluster.leader
        victim = next(s for s in servers if s.name == leader)
        victim.kill()
        await asyncio.sleep(2)
        victim.start()
        await flow
        await eventually(lambda: set(acked) <= set(functions.completed["echo"]), timeout=180)
        counts = Counter(functions.completed["echo"])
        duplicates = sum(n - 1 for n in counts.values())
        print(
            f"cluster: {len(acked)} calls stored, leader {leader} killed; all reached the function; "
            f"{duplicates} duplicate invocation(s)"
        )
        assert len(acked) == 2000
        assert duplicates <= 200  # bounded: at most the in-flight window around the failover
    finally:
        proc.send_signal(signal.SIGTERM)
        await wait_exit(proc, 60)
        await nc.close()
        for s in servers:
            s.stop()


async def test_a_subscription_nobody_reads_does_not_hold_the_stop(nats_server, functions):
    """The connection's drain waits until every subscription is read empty; one nobody reads (the callback
    sender's old pull subscription was one, test_callbacks.py) held the stop for nats-py's 30 s drain timeout,
    past Kubernetes' grace (shutdownTimeout + 15 s), so the SIGKILL took what was still unsent."""
    w = Worker(worker_settings(nats_server.url, functions.url_template, shutdown_timeout=1.0), WorkerMetrics())
    await w.start()
    assert w.nc is not None
    inbox = w.nc.new_inbox()
    await w.nc.subscribe(inbox)  # no callback, never read
    await w.nc.publish(inbox, b"a late answer")
    await w.nc.flush()
    t0 = time.monotonic()
    await w.stop()
    assert time.monotonic() - t0 < 1.0 + 15.0
