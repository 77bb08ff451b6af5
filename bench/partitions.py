"""`make bench`'s partitions section: one queue with 1 partition, then 3, on a 3-node NATS cluster with one node
per network namespace (tests/chaos/netns.py; needs root and iproute2), R3 streams and strict durability
(`sync_interval: always`: fsync before every PubAck, what `nats.durability: strict` renders).

For each partition count, on a fresh queue of the same cluster:

1. a worker (defaults: call status on) sets the queue up and spreads its leaders (jetqueue/leaders.py), then
   stops; the leaders' placement is recorded;
2. intake: wrk (bench/wrk_spread.lua, `connections` connections) POSTs through `jetqueue gateway` (defaults,
   call status on) for `seconds`, the function names taken in turn, chosen so that with 3 partitions each
   partition gets the same share (with 1, all go to the one); a 2 s warm-up is not counted;
3. drain: `workers` worker processes (defaults) take every stored call to bench/noop_function.py, timed from the
   first invocation until every partition's stream is empty; the placement is recorded again.

bench/bench.py runs `measure` and puts `report`'s lines into bench/results.md (each ratio from this one run).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import nats
from nats.js import JetStreamContext

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jetqueue import contract, leaders  # noqa: E402
from jetqueue.contract.partitions import choose_partition  # noqa: E402
from tests.chaos.netns import NetError, NetLab, unavailable, wait_all_healthy  # noqa: E402
from tests.servers import free_port  # noqa: E402

JETQUEUE = str(Path(sys.executable).parent / "jetqueue")
WRK_SCRIPT = str(Path(__file__).resolve().parent / "wrk_spread.lua")
COUNTS = (1, 3)
SKEWED = "3, one function"  # every call in one partition of 3: what a hot partition gets from the workers
FUNCTIONS_PER_PARTITION = 2
STRICT = "sync_interval: always"
WARM_UP = 2
SPREAD_WAIT = 20.0  # seconds to wait for the worker to spread the leaders


def spread_functions(partitions: int = max(COUNTS)) -> list[str]:
    """Function names, FUNCTIONS_PER_PARTITION for each of `partitions` partitions (the gateway's own rule)."""
    chosen: dict[int, list[str]] = {p: [] for p in range(partitions)}
    for i in range(10_000):
        name = f"noop-{i}"
        share = chosen[choose_partition(name, partitions)]
        if len(share) < FUNCTIONS_PER_PARTITION:
            share.append(name)
        if all(len(v) == FUNCTIONS_PER_PARTITION for v in chosen.values()):
            break
    return [name for k in range(FUNCTIONS_PER_PARTITION) for name in (chosen[p][k] for p in range(partitions))]


async def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited ({proc.returncode})")

        def probe() -> bool:
            with urllib.request.urlopen(url, timeout=1) as r:
                return bool(r.status == 200)

        with contextlib.suppress(OSError):
            if await asyncio.to_thread(probe):
                return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout:.0f} s")


def streams(queue: str, n: int) -> list[str]:
    return [contract.stream_name(queue, p) for p in range(n)]


def buckets(queue: str, n: int) -> list[str]:
    return [contract.kv_stream_name(contract.status_bucket_name(queue, k)) for k in range(n)]


async def placement(js: JetStreamContext, queue: str, n: int, wait: float = 0.0) -> dict[str, str]:
    """stream -> leading server, for the partitions' streams and status buckets; with `wait`, until the
    streams' leaders are on n different servers (the worker's spreading done) or `wait` seconds passed."""
    deadline = time.monotonic() + wait
    while True:
        found = await leaders.placement(js, streams(queue, n) + buckets(queue, n))
        lead = {p.stream: p.leader for p in found}
        work = [lead.get(s, "") for s in streams(queue, n)]
        if len(set(work) - {""}) == n or time.monotonic() >= deadline:
            return lead
        await asyncio.sleep(0.5)


async def stored(js: JetStreamContext, queue: str, n: int) -> int:
    infos = await asyncio.gather(*(js.stream_info(s) for s in streams(queue, n)))
    return sum(int(i.state.messages) for i in infos)


async def run_wrk(wrk: str, url: str, seconds: int, connections: int, names: list[str]) -> dict[str, Any]:
    argv = [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", WRK_SCRIPT, url, "--", *names]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=subprocess.STDOUT)
    out = (await proc.communicate())[0].decode()
    m = re.search(r"WRK_JSON (\{.*\})", out)
    if proc.returncode or not m:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{out}")
    s: dict[str, Any] = json.loads(m.group(1))
    s["errors"] = s["connect"] + s["read"] + s["write"] + s["status"] + s["timeout"]
    s["rate"] = s["requests"] / (s["duration_us"] / 1e6)
    return s


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def one_count(
    b: Any, wrk: str, js: JetStreamContext, urls: str, n: int, log: Any, nats_pids: list[int], skewed: bool = False
) -> dict[str, Any]:
    """Intake and drain of one fresh queue of `n` partitions (see the module's docstring); `skewed`: every call
    to one function, so to one partition."""
    queue = f"parts{n}{'one' if skewed else ''}"
    names = spread_functions()[:1] if skewed else spread_functions()
    base = {"JETQUEUE_NATS_URL": urls, "JETQUEUE_STREAM_REPLICAS": "3", "JETQUEUE_PARTITIONS": str(n)}

    def worker_env() -> dict[str, str]:
        return {
            **base,
            "JETQUEUE_QUEUE": queue,
            "JETQUEUE_FUNCTION_URL": b.fn_url,
            "JETQUEUE_HTTP_HOST": "127.0.0.1",
            "JETQUEUE_HTTP_PORT": str(free_port()),
        }

    env = worker_env()
    setup = b.procs.start(f"worker-{queue}", [JETQUEUE, "worker"], env)
    await wait_ready(f"http://127.0.0.1:{env['JETQUEUE_HTTP_PORT']}/readyz", setup)
    before = await placement(js, queue, n, wait=SPREAD_WAIT)
    b.procs.stop(setup)

    port = free_port()
    gw_env = {**base, "JETQUEUE_DEFAULT_QUEUE": queue, "JETQUEUE_HTTP_HOST": "127.0.0.1"}
    gw_env["JETQUEUE_HTTP_PORT"] = str(port)
    gateway = b.procs.start(f"gateway-{queue}", [JETQUEUE, "gateway"], gw_env)
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(f"{url}/readyz", gateway)
        await run_wrk(wrk, url, WARM_UP, b.args.connections, names)  # connections, caches: not counted
        warm = await stored(js, queue, n)
        cpu0 = (cpu_seconds(gateway.pid), sum(cpu_seconds(p) for p in nats_pids))
        intake = await run_wrk(wrk, url, b.args.wrk_seconds, b.args.connections, names)
        wall = intake["duration_us"] / 1e6
        intake["gateway_cores"] = (cpu_seconds(gateway.pid) - cpu0[0]) / wall
        intake["nats_cores"] = (sum(cpu_seconds(p) for p in nats_pids) - cpu0[1]) / wall
    finally:
        b.procs.stop(gateway)
    total = await stored(js, queue, n)
    intake["stored"] = total - warm
    log(
        f"  {queue} ({n} partition(s)): intake {intake['rate']:,.0f} req/s through the gateway, p50 "
        f"{intake['p50_us'] / 1e3:.1f} ms, p99 {intake['p99_us'] / 1e3:.1f} ms, errors {intake['errors']}, "
        f"{intake['stored']:,} stored for {intake['requests']:,} answers; CPU: gateway {intake['gateway_cores']:.2f} "
        f"cores, the 3 nats-servers {intake['nats_cores']:.2f}"
    )
    if intake["errors"] or intake["stored"] < intake["requests"]:
        log(f"  WARNING: {queue}: {intake['errors']} errors; fewer stored than answered")

    await b.fn_reset()
    count = b.args.partition_workers
    workers = [b.procs.start(f"worker-{queue}", [JETQUEUE, "worker"], worker_env()) for _ in range(count)]
    try:
        deadline = time.monotonic() + max(120.0, total / 200)
        while (left := await stored(js, queue, n)) and time.monotonic() < deadline:
            for w in workers:
                if w.poll() is not None:
                    raise RuntimeError(f"a worker exited ({w.returncode}); see {b.procs.log_of(w)}")
            await asyncio.sleep(0.05)
        t_end = time.time_ns()
        stats = await b.fn_stats()
        after = await placement(js, queue, n)
    finally:
        for w in workers:
            b.procs.stop(w)
    drain = {
        "calls": total,
        "left": left,
        "invoked": stats["count"],
        "rate": (total - left) / max(1e-9, (t_end - stats["first"]) / 1e9) if stats["count"] else 0.0,
        "per_function": stats["functions"],
    }
    log(f"  {queue}: drain {drain['rate']:,.0f} calls/s by {count} worker(s), {left} left")
    return {"queue": queue, "n": n, "intake": intake, "drain": drain, "before": before, "after": after}


async def measure(b: Any, wrk: str, log: Any) -> dict[str, Any]:
    """Both partition counts on one 3-node netns cluster; {"skipped": why} where the namespaces cannot be made."""
    why = unavailable()
    if why:
        return {"skipped": why}
    try:
        lab = NetLab().create()
    except NetError as e:
        return {"skipped": f"cannot build the network namespaces: {e}"}
    servers = []
    out: dict[str, Any] = {"workers": b.args.partition_workers, "functions": spread_functions()}
    try:
        servers = lab.nats_cluster(b.procs.logdir / "netns-cluster", jetstream_conf=STRICT)
        await wait_all_healthy(servers, 60.0)
        urls = ",".join(s.url for s in servers)
        nc = await nats.connect([s.url for s in servers])
        try:
            pids = [s.proc.pid for s in servers if s.proc is not None]
            for n in COUNTS:
                out[n] = await one_count(b, wrk, nc.jetstream(timeout=5), urls, n, log, pids)
            three = max(COUNTS)
            out[SKEWED] = await one_count(b, wrk, nc.jetstream(timeout=5), urls, three, log, pids, skewed=True)
        finally:
            await nc.close()
    finally:
        for s in servers:
            with contextlib.suppress(Exception):
                s.stop()
        lab.destroy()
    return out


def _where(lead: dict[str, str], names: list[str]) -> str:
    return ", ".join(f"{name} {lead.get(name) or 'none'}" for name in names)


def report(res: dict[str, Any], connections: int, seconds: int) -> list[str]:
    """The markdown of the section (`res` from `measure`)."""
    head = ["## 5. Partitions: one queue with 1 vs 3 partitions (3-node cluster, R3, strict durability)", ""]
    if "skipped" in res:
        return [*head, f"Not run: {res['skipped']}.", ""]
    one, three = res[1], res[3]
    rows = []
    for n in (*COUNTS, SKEWED):
        r = res[n]
        i, d = r["intake"], r["drain"]
        rows.append(
            f"| {n} | {i['rate']:,.0f}/s | {i['p50_us'] / 1e3:.1f} ms | {i['p99_us'] / 1e3:.1f} ms | {i['errors']} "
            f"| {i['gateway_cores']:.2f} | {i['nats_cores']:.2f} | {d['calls']:,} | {d['rate']:,.0f}/s | {d['left']} |"
        )
    lines = [
        *head,
        "Three nats-servers, one per network namespace (tests/chaos/netns.py), `sync_interval: always` (fsync "
        "before each PubAck), every stream R3. Per partition count, a fresh queue: a worker sets it up and spreads "
        f"the leaders, then wrk ({connections} connections, {seconds} s after a {WARM_UP} s warm-up, "
        f"bench/wrk_spread.lua) POSTs through `jetqueue gateway` (defaults, call status on) to "
        f"{len(res['functions'])} functions in turn ({', '.join(res['functions'])}: {FUNCTIONS_PER_PARTITION} per "
        f"partition of 3); then {res['workers']} worker processes (defaults) drain what was stored, timed from the "
        "first invocation until every partition's stream is empty. Same cluster, same run. Row `3, one function`: "
        f"every call to {res['functions'][0]}, so all in one partition of 3 (a hot partition): every worker serves "
        "every partition, so it gets every worker.",
        "",
        "| partitions | intake (gateway, 202s/s) | p50 | p99 | errors | gateway CPU (cores) | 3 nats-servers CPU "
        "(cores) | drained (warm-up included) | drain | left |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Ratios, 3 partitions / 1: intake **{three['intake']['rate'] / one['intake']['rate']:.2f}×**, drain "
        f"**{three['drain']['rate'] / max(1e-9, one['drain']['rate']):.2f}×**; one hot partition of 3 / spread over 3: "
        f"drain **{res[SKEWED]['drain']['rate'] / max(1e-9, three['drain']['rate']):.2f}×**.",
        "",
        "Leaders (jetqueue/leaders.py; `before`: after the setting-up worker's spreading, `after`: once drained):",
        "",
    ]
    for n in (*COUNTS, SKEWED):
        r = res[n]
        work, status = streams(r["queue"], r["n"]), buckets(r["queue"], r["n"])
        label = n if isinstance(n, str) else f"{n} partition(s)"
        for when in ("before", "after"):
            lines.append(
                f"- {label}, {when}: work streams {_where(r[when], work)}; status buckets {_where(r[when], status)}"
            )
    return [*lines, ""]
