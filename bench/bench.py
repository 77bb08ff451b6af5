"""`make bench`: jetqueue against bare baselines measured in the same run, as ratios.

Writes bench/results.md. These machines are shared and noisy: compare the ratio columns, not the
absolute rates, and rerun before drawing conclusions from a small difference.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import nats
from nats.js.api import AckPolicy, ConsumerConfig

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import NatsServer, free_port  # noqa: E402
from worker import contract  # noqa: E402
from worker.metrics import WorkerMetrics  # noqa: E402
from worker.settings import WorkerSettings  # noqa: E402
from worker.streams import QueueStreams, ensure_dlq_stream, ensure_stream  # noqa: E402
from worker.worker import Worker  # noqa: E402

QUEUE = "bench"
STREAM = contract.stream_name(QUEUE)


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


@contextlib.contextmanager
def function_server() -> object:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "noop_function.py"), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/function/x", data=b"", timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/function/{{function}}"
    finally:
        proc.terminate()
        proc.wait()


async def fill(nc: nats.NATS, n: int, replicas: int) -> None:
    js = nc.jetstream()
    qs = QueueStreams(QUEUE, STREAM, contract.dlq_stream_name(QUEUE), replicas)
    await ensure_stream(js, qs)
    await ensure_dlq_stream(js, qs)
    await js.purge_stream(STREAM)
    for start in range(0, n, 500):
        await asyncio.gather(
            *(
                js.publish(f"{QUEUE}.noop", b"{}", headers={"Nats-Msg-Id": f"b{time.time_ns()}-{i}"})
                for i in range(start, min(n, start + 500))
            )
        )


async def drained(nc: nats.NATS) -> None:
    js = nc.jetstream()
    while (await js.stream_info(STREAM)).state.messages:  # noqa: ASYNC110 - polling the server is the point
        await asyncio.sleep(0.02)


async def bare_loop(nc: nats.NATS, url: str, inflight: int, stop: asyncio.Event) -> None:
    """The baseline: fetch + aiohttp POST + ack, bounded by a semaphore, nothing else."""
    js = nc.jetstream()
    with contextlib.suppress(Exception):
        await js.delete_consumer(STREAM, "bare")
    await js.add_consumer(
        STREAM, ConsumerConfig(durable_name="bare", ack_policy=AckPolicy.EXPLICIT, max_ack_pending=inflight * 2)
    )
    psub = await js.pull_subscribe_bind(durable="bare", stream=STREAM)
    sem = asyncio.Semaphore(inflight)
    target = url.replace("{function}", "noop")
    tasks: set[asyncio.Task[None]] = set()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=inflight)) as http:

        async def one(m: object) -> None:
            try:
                async with http.post(target, data=m.data) as r:  # type: ignore[attr-defined]
                    await r.read()
                await m.ack()  # type: ignore[attr-defined]
            finally:
                sem.release()

        while not stop.is_set():
            free = sem._value
            if not free:
                await asyncio.sleep(0.001)
                continue
            try:
                msgs = await psub.fetch(min(free, 256), timeout=0.5)
            except TimeoutError:
                continue
            for m in msgs:
                await sem.acquire()
                t = asyncio.create_task(one(m))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
    await psub.unsubscribe()
    await js.delete_consumer(STREAM, "bare")


@contextlib.asynccontextmanager
async def jetqueue_worker(
    nc: nats.NATS, url_nats: str, url_fn: str, inflight: int, status: bool
) -> AsyncIterator[None]:
    s = WorkerSettings(
        nats_url=url_nats,
        function_url=url_fn,
        queue=QUEUE,
        max_inflight=inflight,
        http_host="127.0.0.1",
        http_port=free_port(),
        call_status=status,
        log_level="warning",
    )
    w = Worker(s, WorkerMetrics())
    await w.start()
    try:
        yield
    finally:
        await w.stop()
        # A work queue takes one unfiltered consumer at a time: make room for the next contender.
        await nc.jetstream().delete_consumer(STREAM, s.durable)


async def timed(nc: nats.NATS, n: int, replicas: int, run: Callable[[], Awaitable[float]]) -> float:
    """Rate from start until the stream is drained; shutting the contender down is not counted."""
    await fill(nc, n, replicas)
    t0 = time.perf_counter()
    t_end = await run()
    return n / (t_end - t0)


async def worker_throughput(
    nats_url: str, fn_url: str, n: int, inflights: list[int], replicas: int, rounds: int
) -> list[tuple[str, float, float, float]]:
    nc = await nats.connect(nats_url.split(","))
    rows = []
    for inflight in inflights:
        best = {"bare": 0.0, "worker": 0.0, "worker+status": 0.0}
        for r in range(rounds):

            async def bare(inflight: int = inflight) -> float:
                stop = asyncio.Event()
                task = asyncio.create_task(bare_loop(nc, fn_url, inflight, stop))
                await drained(nc)
                t_end = time.perf_counter()
                stop.set()
                await task
                return t_end

            async def ours(status: bool, inflight: int = inflight) -> float:
                async with jetqueue_worker(nc, nats_url, fn_url, inflight, status):
                    await drained(nc)
                    return time.perf_counter()

            best["bare"] = max(best["bare"], await timed(nc, n, replicas, bare))
            best["worker"] = max(best["worker"], await timed(nc, n, replicas, lambda: ours(False)))
            best["worker+status"] = max(best["worker+status"], await timed(nc, n, replicas, lambda: ours(True)))
            progress(
                f"R{replicas} max_inflight={inflight} round {r + 1}/{rounds}: "
                + ", ".join(f"{k} {v:,.0f}/s" for k, v in best.items())
            )
        rows.append((f"R{replicas}, max_inflight {inflight}", best["bare"], best["worker"], best["worker+status"]))
    await nc.close()
    return rows


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


async def bare_publish(nc: nats.NATS, n: int, concurrency: int) -> tuple[float, list[float]]:
    """The baseline: `concurrency` coroutines each publishing with a PubAck, one at a time."""
    js = nc.jetstream()
    lat: list[float] = []
    counter = iter(range(n))

    async def client() -> None:
        for i in counter:
            t = time.perf_counter()
            await js.publish(f"{QUEUE}.noop", b"{}", headers={"Nats-Msg-Id": f"p{time.time_ns()}-{i}"})
            lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return n / (time.perf_counter() - t0), lat


@contextlib.contextmanager
def gateway_process(nats_url: str, status: bool) -> object:
    import os

    port = free_port()
    env = {
        **os.environ,
        "JETQUEUE_NATS_URL": nats_url,
        "JETQUEUE_HTTP_HOST": "127.0.0.1",
        "JETQUEUE_HTTP_PORT": str(port),
        "JETQUEUE_DEFAULT_QUEUE": QUEUE,
        "JETQUEUE_LOG_LEVEL": "warning",
        "JETQUEUE_CALL_STATUS": "true" if status else "false",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "gateway"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(400):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1):
                    break
            except OSError:
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait()


async def gateway_load(url: str, n: int, concurrency: int) -> tuple[float, list[float]]:
    lat: list[float] = []
    counter = iter(range(n))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:

        async def client() -> None:
            for _ in counter:
                t = time.perf_counter()
                async with http.post(f"{url}/async-function/noop", data=b"{}") as r:
                    await r.read()
                    assert r.status == 202, r.status
                lat.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return n / (time.perf_counter() - t0), lat


async def gateway_bench(nats_url: str, n: int, concurrency: int, rounds: int) -> list[str]:
    nc = await nats.connect(nats_url)
    await fill(nc, 0, 1)
    results: dict[str, tuple[float, list[float]]] = {}
    for r in range(rounds):
        rate, lat = await bare_publish(nc, n, concurrency)
        if rate > results.get("bare", (0.0, []))[0]:
            results["bare"] = (rate, lat)
        await nc.jetstream().purge_stream(STREAM)
        for status in (False, True):
            key = "gateway + status" if status else "gateway"
            with gateway_process(nats_url, status) as url:
                rate, lat = await gateway_load(url, n, concurrency)
            if rate > results.get(key, (0.0, []))[0]:
                results[key] = (rate, lat)
            await nc.jetstream().purge_stream(STREAM)
        progress(f"gateway round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[0]:,.0f}/s" for k, v in results.items()))
    await nc.close()
    bare = results["bare"][0]
    rows = ["| contender | accepted/s | ratio | p50 | p99 |", "|---|---|---|---|---|"]
    for key, (rate, lat) in results.items():
        rows.append(
            f"| {key} | {rate:,.0f} | {rate / bare:.2f}× | {percentile(lat, 0.5) * 1000:.2f} ms | "
            f"{percentile(lat, 0.99) * 1000:.2f} ms |"
        )
    return rows


def write_results(path: Path, sections: list[str]) -> None:
    head = [
        "# jetqueue benchmark results",
        "",
        f"Generated by `make bench` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        "on a shared 2-core machine: NATS, the function server and the worker share the cores. "
        "Compare ratios (measured in the same run), not absolute rates.",
        "",
    ]
    path.write_text("\n".join(head + sections) + "\n")


async def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING)
    sections: list[str] = []
    with tempfile.TemporaryDirectory() as tmp, function_server() as fn_url:
        server = NatsServer(Path(tmp) / "r1").start()
        try:
            progress(f"worker throughput, R1, {args.calls} calls per run")
            rows = await worker_throughput(server.url, fn_url, args.calls, args.inflight, 1, args.rounds)
            progress(f"gateway submissions, {args.calls} per run, {args.clients} concurrent clients")
            gw_rows = await gateway_bench(server.url, args.calls, args.clients, args.rounds)
        finally:
            server.stop()
        sections += [
            "## Worker throughput, no-op function",
            "",
            "Calls/s draining a pre-filled stream. Bare: nats-py fetch + aiohttp POST + ack, nothing else. "
            "jetqueue: the worker with retries, metrics, heartbeats and callbacks armed; `+status` also "
            "records each call's status in the KV bucket (3 KV operations per call). Best of "
            f"{args.rounds} rounds.",
            "",
            "| setup | bare loop | jetqueue | ratio | jetqueue + status | ratio |",
            "|---|---|---|---|---|---|",
        ]
        for name, bare, ours, ours_status in rows:
            sections.append(
                f"| {name} | {bare:,.0f}/s | {ours:,.0f}/s | {ours / bare:.2f}× | "
                f"{ours_status:,.0f}/s | {ours_status / bare:.2f}× |"
            )
        sections.append("")
        sections += [
            "## Gateway: accepted submissions",
            "",
            f"{args.calls} submissions from {args.clients} concurrent HTTP clients (aiohttp, keep-alive) to "
            "`POST /async-function/noop`; each 202 is sent after JetStream's PubAck. Bare: the same number of "
            "concurrent nats-py coroutines publishing with a PubAck each. Latency: request to 202 (to PubAck "
            "for bare). `+ status` also writes the `queued` record to the KV bucket.",
            "",
            *gw_rows,
            "",
        ]
    write_results(args.out, sections)
    progress(f"wrote {args.out}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--calls", type=int, default=5000, help="calls per measured run")
    p.add_argument("--rounds", type=int, default=3, help="rounds per setting (best is kept)")
    p.add_argument("--inflight", type=int, nargs="+", default=[10, 50, 200])
    p.add_argument("--clients", type=int, default=50, help="concurrent HTTP clients for the gateway")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results.md")
    asyncio.run(main(p.parse_args()))
