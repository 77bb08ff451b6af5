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

from jetqueue import contract  # noqa: E402
from jetqueue.provision import QueueStreams, ensure_dlq_stream, ensure_stream  # noqa: E402
from jetqueue.queueworker.metrics import WorkerMetrics  # noqa: E402
from jetqueue.queueworker.process import Worker  # noqa: E402
from jetqueue.settings import WorkerSettings  # noqa: E402
from tests.servers import NatsServer, cluster, free_port  # noqa: E402

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


def bench_settings(url_nats: str, url_fn: str, inflight: int, status: bool) -> WorkerSettings:
    return WorkerSettings(
        nats_url=url_nats,
        function_url=url_fn,
        queue=QUEUE,
        max_inflight=inflight,
        http_host="127.0.0.1",
        http_port=free_port(),
        call_status=status,
        log_level="warning",
    )


@contextlib.asynccontextmanager
async def local_function(
    handler: Callable[[aiohttp.web.Request], Awaitable[aiohttp.web.Response]],
) -> AsyncIterator[str]:
    """An in-process function server on loopback; yields its URL template."""
    from aiohttp import web

    app = web.Application()
    app.router.add_route("*", "/function/{name}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/function/{{function}}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def jetqueue_worker(
    nc: nats.NATS, url_nats: str, url_fn: str, inflight: int, status: bool
) -> AsyncIterator[None]:
    s = bench_settings(url_nats, url_fn, inflight, status)
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
        [sys.executable, "-m", "jetqueue", "gateway"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
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


async def latency(nats_url: str, fn_url: str, samples: int, backlog: int) -> tuple[list[float], list[float]]:
    """Publish → function invoked, seconds: jetqueue worker and the bare loop, with `backlog` calls queued
    ahead of each sample (0 = idle)."""
    from aiohttp import web

    invoked: dict[str, float] = {}

    async def fn(request: web.Request) -> web.Response:
        invoked[request.headers.get("X-Call-Id", "") or (await request.read()).decode()] = time.perf_counter()
        return web.Response(text="ok")

    async with local_function(fn) as timing_url:
        return await _latency(nats_url, timing_url, invoked, samples, backlog)


async def _latency(
    nats_url: str, timing_url: str, invoked: dict[str, float], samples: int, backlog: int
) -> tuple[list[float], list[float]]:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await fill(nc, 0, 1)
    results: list[list[float]] = []
    for contender in ("worker", "bare"):
        lat: list[float] = []
        stop = asyncio.Event()
        if contender == "worker":
            ctx = jetqueue_worker(nc, nats_url, timing_url, 50, False)
            await ctx.__aenter__()
        else:
            task = asyncio.create_task(bare_loop(nc, timing_url, 50, stop))
        await asyncio.sleep(0.5)
        for i in range(samples):
            if backlog:
                await asyncio.gather(*(js.publish(f"{QUEUE}.noop", b"{}") for _ in range(backlog)))
            call_id = f"{contender}-{backlog}-{i}"
            t0 = time.perf_counter()
            await js.publish(f"{QUEUE}.noop", call_id.encode(), headers={"X-Call-Id": call_id})
            for _ in range(2000):
                if call_id in invoked:
                    break
                await asyncio.sleep(0.0005)
            lat.append(invoked.get(call_id, time.perf_counter()) - t0)
        await drained(nc)
        if contender == "worker":
            await ctx.__aexit__(None, None, None)
        else:
            stop.set()
            await task
        results.append(lat)
    await nc.close()
    return results[0], results[1]


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def rss_with_backlog(nats_url: str, fn_url: str, backlogs: list[int]) -> list[tuple[int, float]]:
    """Peak RSS of a worker process that works for 5 s on a queue holding `n` calls."""
    import os

    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    rows = []
    for n in backlogs:
        await fill(nc, 0, 1)
        for start in range(0, n, 5000):
            await asyncio.gather(*(js.publish(f"{QUEUE}.noop", b"{}") for _ in range(min(5000, n - start))))
        env = {
            **os.environ,
            "JETQUEUE_NATS_URL": nats_url,
            "JETQUEUE_FUNCTION_URL": fn_url,
            "JETQUEUE_QUEUE": QUEUE,
            "JETQUEUE_HTTP_HOST": "127.0.0.1",
            "JETQUEUE_HTTP_PORT": str(free_port()),
            "JETQUEUE_LOG_LEVEL": "warning",
            "JETQUEUE_CALL_STATUS": "false",
        }
        proc = subprocess.Popen(  # noqa: ASYNC220 - the process whose memory is measured
            [sys.executable, "-m", "jetqueue", "worker"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        await asyncio.sleep(5)
        rows.append((n, peak_rss_mib(proc.pid)))
        proc.terminate()
        proc.wait()
        await js.delete_consumer(STREAM, f"{QUEUE}-workers")
        progress(f"RSS with {n:,} queued: {rows[-1][1]:.1f} MiB")
    await js.purge_stream(STREAM)
    await nc.close()
    return rows


async def scale_out(nats_url: str, n: int) -> tuple[float, float]:
    """Calls/s draining `n` calls to a 50 ms function with one worker, then two (max_inflight 10 each)."""
    from aiohttp import web

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.05)
        return web.Response(text="ok")

    async with local_function(slow) as url:
        return await _scale_out(nats_url, url, n)


async def _scale_out(nats_url: str, url: str, n: int) -> tuple[float, float]:
    nc = await nats.connect(nats_url)
    rates = []
    for workers in (1, 2):
        await fill(nc, n, 1)
        t0 = time.perf_counter()
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(workers):
                w = Worker(bench_settings(nats_url, url, 10, False), WorkerMetrics())
                await w.start()
                stack.push_async_callback(w.stop)
            await drained(nc)
            rates.append(n / (time.perf_counter() - t0))
        await nc.jetstream().delete_consumer(STREAM, f"{QUEUE}-workers")
    await nc.close()
    return rates[0], rates[1]


async def durability(n: int, concurrency: int) -> tuple[float, float]:
    """Publish-with-PubAck rate on a server with sync_interval: always (strict) and with the default."""
    rates = []
    for strict in (True, False):
        with tempfile.TemporaryDirectory() as tmp:
            server = NatsServer(Path(tmp), jetstream_conf="sync_interval: always" if strict else "")
            server.start()
            try:
                nc = await nats.connect(server.url)
                await fill(nc, 0, 1)
                rate, _ = await bare_publish(nc, n, concurrency)
                rates.append(rate)
                await nc.close()
            finally:
                server.stop()
    return rates[0], rates[1]


def plot(path: Path, rows: list[tuple[str, float, float, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r[0].replace(", max_inflight ", "\ninflight ") for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, len(rows) * 1.2), 4))
    width = 0.27
    ax.bar([i - width for i in x], [r[1] for r in rows], width, label="bare loop")
    ax.bar(list(x), [r[2] for r in rows], width, label="jetqueue")
    ax.bar([i + width for i in x], [r[3] for r in rows], width, label="jetqueue + status")
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_ylabel("calls/s (no-op function)")
    ax.set_title("Worker vs bare fetch + POST + ack loop (same run)", fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


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
    started = time.monotonic()
    sections: list[str] = []
    with tempfile.TemporaryDirectory() as tmp, function_server() as fn_url:
        server = NatsServer(Path(tmp) / "r1").start()
        try:
            progress(f"worker throughput, R1, {args.calls} calls per run")
            rows = await worker_throughput(server.url, fn_url, args.calls, args.inflight, 1, args.rounds)
            progress(f"gateway submissions, {args.calls} per run, {args.clients} concurrent clients")
            gw_rows = await gateway_bench(server.url, args.calls, args.clients, args.rounds)
            progress("latency publish → function invoked, idle and behind a backlog")
            idle_w, idle_b = await latency(server.url, fn_url, 200, 0)
            load_w, load_b = await latency(server.url, fn_url, 20, 500)
            progress("two workers vs one, 50 ms function")
            one, two = await scale_out(server.url, 2000)
            progress(f"worker peak RSS with {', '.join(f'{n:,}' for n in args.backlogs)} calls queued")
            rss = await rss_with_backlog(server.url, fn_url, args.backlogs)
        finally:
            server.stop()
        servers = cluster(Path(tmp) / "r3")
        try:
            progress("worker throughput, R3 (3-node cluster)")
            rows += await worker_throughput(",".join(s.url for s in servers), fn_url, args.calls, [50], 3, args.rounds)
        finally:
            for s3 in servers:
                s3.stop()
    progress("durability: publish rate, strict (sync_interval: always) vs relaxed")
    strict, relaxed = await durability(args.calls, args.clients)

    def ms(values: list[float], p: float) -> str:
        return f"{percentile(values, p) * 1000:.2f} ms"

    sections += [
        "## Worker throughput, no-op function",
        "",
        "Calls/s draining a pre-filled stream. Bare: nats-py fetch + aiohttp POST + ack, nothing else. "
        "jetqueue: the worker with retries, metrics, heartbeats and callbacks armed; `+ status` also "
        "records each call's status in the KV bucket (3 KV operations per call). Best of "
        f"{args.rounds} rounds. Goal: jetqueue ≥ 0.9× bare.",
        "",
        "![throughput](throughput.png)",
        "",
        "| setup | bare loop | jetqueue | ratio | jetqueue + status | ratio |",
        "|---|---|---|---|---|---|",
        *(
            f"| {name} | {bare:,.0f}/s | {ours:,.0f}/s | {ours / bare:.2f}× | {ours_status:,.0f}/s | "
            f"{ours_status / bare:.2f}× |"
            for name, bare, ours, ours_status in rows
        ),
        "",
        "## Gateway: accepted submissions",
        "",
        f"{args.calls} submissions from {args.clients} concurrent HTTP clients (aiohttp, keep-alive) to "
        "`POST /async-function/noop`; each 202 is sent after JetStream's PubAck. Bare: the same number of "
        "concurrent nats-py coroutines publishing with a PubAck each. Latency: request to 202 (to PubAck "
        "for bare). `+ status` also writes the `queued` record to the KV bucket.",
        "",
        *gw_rows,
        "",
        "## Latency: publish → function invoked",
        "",
        "Idle: one call at a time (200 samples). Under load: each sample published behind 500 queued calls "
        "(20 samples). Goal: idle p50 ≤ 2 ms.",
        "",
        "| | jetqueue p50 | jetqueue p99 | bare p50 | bare p99 |",
        "|---|---|---|---|---|",
        f"| idle | {ms(idle_w, 0.5)} | {ms(idle_w, 0.99)} | {ms(idle_b, 0.5)} | {ms(idle_b, 0.99)} |",
        f"| behind 500 queued | {ms(load_w, 0.5)} | {ms(load_w, 0.99)} | {ms(load_b, 0.5)} | {ms(load_b, 0.99)} |",
        "",
        "## Scale-out: two workers vs one",
        "",
        "2,000 calls to a function that takes 50 ms, max_inflight 10 per worker. Goal ≥ 1.8×.",
        "",
        f"| one worker | two workers | ratio |\n|---|---|---|\n| {one:,.0f}/s | {two:,.0f}/s | {two / one:.2f}× |",
        "",
        "## Worker memory with a backlog",
        "",
        "Peak RSS (VmHWM) of a worker process after 5 s of work on a queue holding N calls. Goal: flat, "
        "under 100 MB: the worker holds only what it fetched (at most max_inflight).",
        "",
        "| calls queued | peak RSS |",
        "|---|---|",
        *(f"| {n:,} | {mib:.1f} MiB |" for n, mib in rss),
        "",
        "## Durability cost",
        "",
        f"Publish with PubAck, {args.clients} concurrent publishers, {args.calls} messages. strict = "
        "`sync_interval: always` (fsync before the ack; what `nats.durability: strict` renders), relaxed = "
        "the NATS default (flush every 2 minutes).",
        "",
        f"| strict | relaxed | strict / relaxed |\n|---|---|---|\n| {strict:,.0f}/s | {relaxed:,.0f}/s | "
        f"{strict / relaxed:.2f}× |",
        "",
        f"Total benchmark time: {time.monotonic() - started:.0f} s.",
    ]
    plot(args.out.parent / "throughput.png", rows)
    write_results(args.out, sections)
    progress(f"wrote {args.out} and {args.out.parent / 'throughput.png'}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--calls", type=int, default=5000, help="calls per measured run")
    p.add_argument("--rounds", type=int, default=3, help="rounds per setting (best is kept)")
    p.add_argument("--inflight", type=int, nargs="+", default=[1, 10, 50, 200])
    p.add_argument("--backlogs", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--clients", type=int, default=50, help="concurrent HTTP clients for the gateway")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results.md")
    asyncio.run(main(p.parse_args()))
