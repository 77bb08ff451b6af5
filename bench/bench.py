"""`make bench`: every jetqueue figure next to its baseline, measured in one run; writes bench/results.md.

Every contender is a real process started the way production starts it, on one real nats-server:

1. worker drain: N no-op calls drained by `jetqueue worker` with its defaults (call status on), with
   `JETQUEUE_CALL_STATUS=false`, and by bench/bare_loop.py (fetch + POST + ack; the baseline);
2. gateway: wrk (bench/wrk_post.lua, 50 connections) against `jetqueue gateway` with its defaults, then against
   bench/floor_gateway.py (aiohttp + nats-py publish with PubAck + 202; the floor), same NATS, same duration;
3. function mode: F functions × 2 calls through `JETQUEUE_MODE=function` vs static mode on the same calls;
4. latency: publish → invoked at a steady rate, the worker with call status on vs the bare loop, read by
   bench/noop_function.py as arrival − X-Start-Time;

5. partitions: one queue with 1 vs 3 partitions on a 3-node cluster of network namespaces (R3, strict
   durability): intake through the gateway under wrk, drain by the workers, the leaders' placement
   (bench/partitions.py; needs root and iproute2, skipped otherwise with the reason);

and, unless `--skip other`: scale-out (two workers vs one), the cost of priorities, worker memory with a backlog,
durability cost.

These machines are shared (2 cores): compare ratios measured in the same run, not absolute rates. The results
record how busy the machine was during each section (its CPU use beyond our own processes).

    make bench                                   # the full run (about 10 minutes)
    make bench BENCH_ARGS="--quick"              # a smoke run with small sizes (about 2 minutes)
    .venv/bin/python bench/bench.py --only worker --calls 5000 --rounds 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import itertools
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import nats
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StreamConfig

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from jetqueue import callstatus, contract  # noqa: E402
from jetqueue.settings import WorkerSettings  # noqa: E402

STATUS_TTL = float(WorkerSettings.__dataclass_fields__["status_ttl"].default)  # the bucket as the worker makes it
from tests.servers import NatsServer, free_port  # noqa: E402

JETQUEUE = str(Path(sys.executable).parent / "jetqueue")
SECTIONS = ("worker", "gateway", "functionmode", "latency", "partitions", "other")
TICK = os.sysconf("SC_CLK_TCK")
RUN = uuid.uuid4().hex[:6]  # makes call ids and queue names unique to this run
PUBLISHES = itertools.count()

# Goals, as ratios to the baseline measured in the same run: the worker's from issue #15, scale-out's from the
# earlier bench. None: no number has been set.
GOALS: dict[str, tuple[str, float] | None] = {
    "worker_default": (">=", 0.9),
    "worker_status_off": (">=", 1.0),
    "gateway": (">=", 0.9),  # issue #15: with defaults, at least 0.9× the minimal aiohttp + PubAck handler
    "functionmode": (">=", 0.8),  # issue #15: 5,000 functions × 2 calls at least 0.8× static mode
    "latency": None,
    "scale_out": (">=", 1.8),
    "partitions": None,  # issue #21 asks for the figure, sets no ratio
    "priorities": None,  # issue #23 asks for the cost, sets no ratio
}


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------------------------
# Processes: everything the benchmark starts is registered here and stopped by its own pid.


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_busy() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, wall time) from /proc/stat."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = parts[3] + parts[4]
    return (sum(parts[:8]) - idle) / TICK, time.monotonic()


class Processes:
    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.live: dict[int, tuple[str, subprocess.Popen[bytes]]] = {}
        self.count = 0

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        self.count += 1
        log = open(self.logdir / f"{self.count:03d}-{name}.log", "wb")
        proc = subprocess.Popen(argv, env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.live[proc.pid] = (name, proc)
        return proc

    def log_of(self, proc: subprocess.Popen[bytes]) -> Path:
        name = self.live.get(proc.pid, ("?", proc))[0]
        found = sorted(self.logdir.glob(f"*-{name}.log"))
        return found[-1] if found else self.logdir

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        self.live.pop(proc.pid, None)

    def stop_all(self) -> None:
        for _, proc in list(self.live.values()):
            self.stop(proc, 10.0)

    def our_cpu(self) -> float:
        """CPU of this process, of every child already reaped, and of every live child."""
        me = resource.getrusage(resource.RUSAGE_SELF)
        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (
            me.ru_utime + me.ru_stime + reaped.ru_utime + reaped.ru_stime
            + sum(cpu_seconds(pid) for pid in self.live)
        )  # fmt: skip


@dataclass
class Load:
    """How busy the machine was during a section, and how much of that was someone else."""

    seconds: float = 0.0
    busy: float = 0.0  # cores
    ours: float = 0.0  # cores

    def text(self) -> str:
        return (
            f"machine {self.busy:.2f} of {os.cpu_count()} cores busy, ours {self.ours:.2f}, "
            f"other processes {max(0.0, self.busy - self.ours):.2f}"
        )


@dataclass
class Bench:
    args: argparse.Namespace
    procs: Processes
    nats_url: str
    nc: nats.NATS
    js: JetStreamContext
    http: aiohttp.ClientSession
    fn_base: str  # http://127.0.0.1:port of bench/noop_function.py
    fn_pid: int
    nats_pid: int
    loads: dict[str, Load] = field(default_factory=dict)

    @property
    def fn_url(self) -> str:
        return f"{self.fn_base}/function/{{function}}"

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        busy0, t0 = machine_busy()
        ours0 = self.procs.our_cpu()
        try:
            yield
        finally:
            busy1, t1 = machine_busy()
            wall = t1 - t0
            load = Load(wall, (busy1 - busy0) / wall, (self.procs.our_cpu() - ours0) / wall)
            self.loads[name] = load
            progress(f"{name} took {wall:.0f} s; {load.text()}")

    async def fn_reset(self) -> None:
        async with self.http.post(f"{self.fn_base}/_bench/reset") as r:
            r.raise_for_status()

    async def fn_stats(self, latencies: bool = False) -> dict[str, Any]:
        async with self.http.get(f"{self.fn_base}/_bench/stats", params={"latencies": "1"} if latencies else {}) as r:
            r.raise_for_status()
            data: dict[str, Any] = await r.json()
            return data


async def wait_http(url: str, proc: subprocess.Popen[bytes], procs: Processes, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited ({proc.returncode}); see {procs.log_of(proc)}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=1) as r:  # noqa: ASYNC210 - one short local probe
                if r.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout:.0f} s; see {procs.log_of(proc)}")


# ---------------------------------------------------------------------------------------------------------------
# Contenders


def worker_env(b: Bench, queue: str, port: int, **settings: object) -> dict[str, str]:
    """The worker's defaults, plus where things are, plus `settings` (JETQUEUE_<NAME>)."""
    env = {
        "JETQUEUE_NATS_URL": b.nats_url,
        "JETQUEUE_QUEUE": queue,
        "JETQUEUE_FUNCTION_URL": b.fn_url,
        "JETQUEUE_HTTP_HOST": "127.0.0.1",
        "JETQUEUE_HTTP_PORT": str(port),
    }
    for k, v in settings.items():
        env[f"JETQUEUE_{k.upper()}"] = str(v).lower() if isinstance(v, bool) else str(v)
    return env


async def start_worker(b: Bench, queue: str, ready: bool = True, **settings: object) -> subprocess.Popen[bytes]:
    port = free_port()
    proc = b.procs.start(f"worker-{queue}", [JETQUEUE, "worker"], worker_env(b, queue, port, **settings))
    if ready:
        await wait_http(f"http://127.0.0.1:{port}/readyz", proc, b.procs)
    return proc


async def start_bare_loop(b: Bench, queue: str, inflight: int = 50, ready: bool = True) -> subprocess.Popen[bytes]:
    stream = contract.stream_name(queue)
    argv = [sys.executable, str(BENCH / "bare_loop.py"), b.nats_url, stream, b.fn_url, str(inflight)]
    proc = b.procs.start(f"bare-loop-{queue}", argv)
    if ready:
        deadline = time.monotonic() + 30
        while True:
            try:
                await b.js.consumer_info(stream, "bare")
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"bare loop did not start; see {b.procs.log_of(proc)}") from None
                await asyncio.sleep(0.05)
    return proc


async def clear_consumers(b: Bench, queue: str) -> None:
    """A work queue takes one unfiltered consumer at a time: make room for the next contender."""
    stream = contract.stream_name(queue)
    for info in await b.js.consumers_info(stream):
        await b.js.delete_consumer(stream, info.name)


async def delete_queue(b: Bench, queue: str) -> None:
    """Every stream of `queue` (work, dead letters, callbacks, schedules) and so their consumers."""
    name = contract.stream_name(queue)
    for info in await b.js.streams_info():
        if info.config.name == name or (info.config.name or "").startswith(name + "_"):
            await b.js.delete_stream(info.config.name)


async def provision(b: Bench, queue: str) -> None:
    """Let the real worker create the queue's streams (as production does), then leave them without consumers."""
    proc = await start_worker(b, queue)
    b.procs.stop(proc)
    await clear_consumers(b, queue)


def call_headers(call_id: str) -> dict[str, str]:
    """What the gateway (and `jetqueue.client.submit_nats`) put on a call."""
    call_id = re.sub(r"[^A-Za-z0-9_=.-]", "_", call_id)  # the contract's call id alphabet
    return {"Nats-Msg-Id": call_id, "X-Call-Id": call_id, "X-Start-Time": str(time.time_ns())}


async def publish(b: Bench, subjects: list[str], prefix: str, batch: int = 1000, recorded: bool = False) -> None:
    """Publish one no-op call per subject, each with a PubAck, `batch` at a time. `recorded`: as the gateway
    does with call status on, each with its `queued` submission record in the status bucket."""
    prefix = f"{prefix}-{next(PUBLISHES)}"  # call ids unique within the run (the stream deduplicates them)
    stores: dict[str, callstatus.QueueStatus] = {}
    for start in range(0, len(subjects), batch):
        headers = [call_headers(f"{prefix}-{RUN}-{start + i}") for i in range(len(subjects[start:][:batch]))]
        acks = await asyncio.gather(
            *(b.js.publish(s, b"{}", headers=h) for s, h in zip(subjects[start : start + batch], headers, strict=True))
        )
        if any(a.duplicate for a in acks):
            raise RuntimeError("a benchmark call was deduplicated: call ids are not unique")
        if recorded:
            calls = [
                contract.decode(s, b"{}", h, "") for s, h in zip(subjects[start : start + batch], headers, strict=True)
            ]
            for c in calls:
                stores.setdefault(c.queue, callstatus.QueueStatus.of(b.js, c.queue, 1, STATUS_TTL))
            await asyncio.gather(
                *(stores[c.queue].store(c.call_id).submitted_confirmed(callstatus.base_record(c)) for c in calls)
            )


async def messages(b: Bench, queue: str) -> int:
    return int((await b.js.stream_info(contract.stream_name(queue))).state.messages)


async def until_drained(
    b: Bench, queue: str, procs: list[subprocess.Popen[bytes]], timeout: float, calls: int = 0
) -> bool:
    """Poll until the queue's stream is empty (every call acked) and the function saw `calls` calls."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"a contender exited ({p.returncode}); see {b.procs.log_of(p)}")
        if not await messages(b, queue) and (not calls or (await b.fn_stats())["count"] >= calls):
            return True
        await asyncio.sleep(0.02)
    return False


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round((len(ordered) - 1) * p))] if ordered else float("nan")


# ---------------------------------------------------------------------------------------------------------------
# 1. Worker drain


@dataclass
class Drain:
    rate: float  # calls/s, first invocation → stream empty
    cpu_us: dict[str, float]  # CPU µs per call: the contender, nats-server, the function


async def drain_once(b: Bench, queue: str, contender: str, n: int) -> Drain:
    await publish(b, [f"{queue}.noop"] * n, f"w-{contender}", recorded=True)  # as the gateway stores them
    await b.fn_reset()
    if contender == "bare loop":
        proc = await start_bare_loop(b, queue, ready=False)
    else:
        proc = await start_worker(b, queue, ready=False, **({"call_status": False} if "off" in contender else {}))
    # CPU is counted from the moment the contender starts taking calls (its own start-up is not a call's cost).
    while (left := await messages(b, queue)) >= n:
        if proc.poll() is not None:
            raise RuntimeError(f"{contender} exited; see {b.procs.log_of(proc)}")
        await asyncio.sleep(0.01)
    pids = {"contender": proc.pid, "nats-server": b.nats_pid, "function": b.fn_pid}
    cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
    if not await until_drained(b, queue, [proc], timeout=max(120.0, n / 100)):
        raise RuntimeError(f"{contender} did not drain {n} calls; see {b.procs.log_of(proc)}")
    t_end = time.time_ns()
    cpu1 = {k: cpu_seconds(p) for k, p in pids.items()}
    stats = await b.fn_stats()
    b.procs.stop(proc)
    await clear_consumers(b, queue)
    if stats["count"] < n:
        raise RuntimeError(f"{contender}: the function saw {stats['count']} of {n} calls")
    return Drain(n / ((t_end - stats["first"]) / 1e9), {k: (cpu1[k] - cpu0[k]) * 1e6 / left for k in pids})


WORKER_CONTENDERS = ("bare loop", "worker, status off", "worker, defaults")


async def worker_drain(b: Bench) -> dict[str, list[Drain]]:
    queue = "drain"
    await provision(b, queue)
    runs: dict[str, list[Drain]] = {c: [] for c in WORKER_CONTENDERS}
    for r in range(b.args.rounds):
        order = WORKER_CONTENDERS[r % 3 :] + WORKER_CONTENDERS[: r % 3]  # no contender always goes first
        for contender in order:
            d = await drain_once(b, queue, contender, b.args.calls)
            runs[contender].append(d)
            progress(f"  round {r + 1}/{b.args.rounds} {contender}: {d.rate:,.0f} calls/s")
    await delete_queue(b, queue)
    return runs


# ---------------------------------------------------------------------------------------------------------------
# 2. Gateway under wrk


@dataclass
class WrkRun:
    rate: float
    p50_ms: float
    p99_ms: float
    errors: int
    stored: int  # messages the stream gained
    requests: int
    cpu: dict[str, float]  # cores: the contender, nats-server, wrk


def find_wrk() -> tuple[str | None, str]:
    found = shutil.which("wrk")
    if found:
        return found, ""
    if os.geteuid() == 0 and shutil.which("apt-get"):
        progress("wrk is missing: apt-get install -y wrk")
        subprocess.run(["apt-get", "install", "-y", "wrk"], check=False, stdout=subprocess.DEVNULL)
        found = shutil.which("wrk")
        if found:
            return found, ""
        return None, "wrk is missing and `apt-get install -y wrk` did not install it"
    return None, "wrk is missing (Debian package `wrk`; install it as root: apt-get install -y wrk)"


async def run_wrk(b: Bench, wrk: str, url: str, seconds: int, contender_pid: int, queue: str) -> WrkRun:
    stored0 = await messages(b, queue)
    pids = {"contender": contender_pid, "nats-server": b.nats_pid}
    cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
    argv = [wrk, "-t1", f"-c{b.args.connections}", f"-d{seconds}s", "--latency", "-s", str(BENCH / "wrk_post.lua"), url]
    # Popen + os.wait4 (in a thread): wait4 gives wrk's own CPU use.
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # noqa: ASYNC220
    b.procs.live[proc.pid] = ("wrk", proc)

    def reap() -> tuple[int, resource.struct_rusage]:
        _, status, usage = os.wait4(proc.pid, 0)
        return status, usage

    status, usage = await asyncio.to_thread(reap)
    proc.returncode = os.waitstatus_to_exitcode(status)
    b.procs.live.pop(proc.pid, None)
    cpu1 = {k: cpu_seconds(p) for k, p in pids.items()}
    out = proc.stdout.read().decode() if proc.stdout else ""
    if proc.stdout:
        proc.stdout.close()
    m = re.search(r"WRK_JSON (\{.*\})", out)
    if proc.returncode or not m:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{out}")
    s = json.loads(m.group(1))
    wall = s["duration_us"] / 1e6
    cpu = {k: (cpu1[k] - cpu0[k]) / wall for k in pids}
    cpu["wrk"] = (usage.ru_utime + usage.ru_stime) / wall
    errors = s["connect"] + s["read"] + s["write"] + s["status"] + s["timeout"]
    stored = await messages(b, queue) - stored0
    return WrkRun(s["requests"] / wall, s["p50_us"] / 1e3, s["p99_us"] / 1e3, errors, stored, s["requests"], cpu)


async def gateway_bench(b: Bench, wrk: str) -> dict[str, list[WrkRun]]:
    queue = "gw"
    procs = b.procs
    port = free_port()
    gw_env = {
        "JETQUEUE_NATS_URL": b.nats_url,
        "JETQUEUE_HTTP_HOST": "127.0.0.1",
        "JETQUEUE_HTTP_PORT": str(port),
        "JETQUEUE_DEFAULT_QUEUE": queue,
    }
    gateway = procs.start("gateway", [JETQUEUE, "gateway"], gw_env)
    await wait_http(f"http://127.0.0.1:{port}/readyz", gateway, procs)
    floor_port = free_port()
    floor = procs.start(
        "floor-gateway", [sys.executable, str(BENCH / "floor_gateway.py"), b.nats_url, queue, str(floor_port)]
    )
    await wait_http(f"http://127.0.0.1:{floor_port}/healthz", floor, procs)
    targets = {
        "gateway": (f"http://127.0.0.1:{port}/async-function/noop", gateway),
        "floor": (f"http://127.0.0.1:{floor_port}/async-function/noop", floor),
    }
    runs: dict[str, list[WrkRun]] = {"gateway": [], "floor": []}
    stream = contract.stream_name(queue)
    try:
        for r in range(b.args.rounds):
            order = ["gateway", "floor"] if r % 2 == 0 else ["floor", "gateway"]
            for name in order:
                url, proc = targets[name]
                await b.js.purge_stream(stream)
                await run_wrk(b, wrk, url, 2, proc.pid, queue)  # warm-up: connections, caches; not counted
                await b.js.purge_stream(stream)
                w = await run_wrk(b, wrk, url, b.args.wrk_seconds, proc.pid, queue)
                runs[name].append(w)
                progress(
                    f"  round {r + 1}/{b.args.rounds} {name}: {w.rate:,.0f} req/s, p50 {w.p50_ms:.1f} ms, "
                    f"p99 {w.p99_ms:.1f} ms, errors {w.errors}, wrk CPU {w.cpu['wrk']:.2f} cores"
                )
                if w.errors or w.stored < w.requests:
                    progress(f"  WARNING: {name}: {w.errors} errors; {w.stored} stored for {w.requests} answers")
    finally:
        procs.stop(gateway)
        procs.stop(floor)
    await delete_queue(b, queue)
    return runs


# ---------------------------------------------------------------------------------------------------------------
# 3. Function mode vs static mode


@dataclass
class ModeRun:
    rate: float  # calls/s: first publish → every call done
    seconds: float
    done: int
    calls: int
    complete: bool
    functions_served: int  # functions that received every one of their calls
    skipped: str = ""  # why it was not run


async def measure_mode(b: Bench, functions: int, per_function: int, mode: str, timeout: float) -> ModeRun:
    """One run: a fresh queue, the worker (defaults, `mode`) started and ready, then `functions` × `per_function`
    calls published (call i of every function before call i + 1 of any) and timed until all are done."""
    queue = f"fm-{mode}-{functions}-{RUN}"
    proc = await start_worker(b, queue, mode=mode)
    subjects = [f"{queue}.f{i}" for _ in range(per_function) for i in range(functions)]
    await b.fn_reset()
    t0 = time.monotonic()
    await publish(b, subjects, queue)
    complete = await until_drained(b, queue, [proc], timeout, calls=len(subjects))
    seconds = time.monotonic() - t0
    stats = await b.fn_stats()
    b.procs.stop(proc)
    await delete_queue(b, queue)
    served = sum(1 for c in stats["functions"].values() if c >= per_function)
    done = min(stats["count"], len(subjects))
    return ModeRun(done / seconds, seconds, done, len(subjects), complete, served)


def load_functionmode() -> tuple[Any, str]:
    """bench/functionmode.py (another script, for function-mode scaling alone), imported; or why it cannot be."""
    path = BENCH / "functionmode.py"
    if not path.exists():
        return None, "bench/functionmode.py does not exist"
    import importlib.util

    try:
        spec = importlib.util.spec_from_file_location("bench_functionmode", path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception as e:
        return None, f"bench/functionmode.py cannot be imported: {e!r}"
    missing = [
        n for n in ("QUEUE", "WorkerSettings", "fill", "drain_time", "clear_consumers") if not hasattr(module, n)
    ]
    if missing:
        return None, f"bench/functionmode.py has no {', '.join(missing)}"
    return module, ""


def load_partitions() -> Any:
    """bench/partitions.py (the partitions section), imported."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_partitions", BENCH / "partitions.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mode_measurer(which: str) -> tuple[Callable[..., Awaitable[ModeRun]], str]:
    """The measurement of bench/functionmode.py when it is there (its fill and drain_time, on this run's NATS and
    function), else ours (measure_mode); `which` forces one. Either way: same signature, same ModeRun."""
    fm, why = load_functionmode() if which != "bench" else (None, "--mode-measure bench")
    if fm is None and which == "functionmode":
        raise RuntimeError(f"--mode-measure functionmode: {why}")
    if fm is None:
        return measure_mode, (
            "bench/bench.py `measure_mode` (a fresh queue per run; a worker process with its defaults, call status "
            "on, is started and ready first, then the calls are published and timed from the first publish until "
            f"every call is done; {why})"
        )

    async def measure(b: Bench, functions: int, per_function: int, mode: str, timeout: float) -> ModeRun:
        await fm.clear_consumers(b.nc)
        n = await fm.fill(b.nc, functions, per_function)
        await b.fn_reset()
        s = fm.WorkerSettings(
            nats_url=b.nats_url,
            function_url=b.fn_url,
            queue=fm.QUEUE,
            mode=mode,
            http_host="127.0.0.1",
            http_port=free_port(),
            log_level="warning",  # in this process: its log is the benchmark's output
        )
        t0 = time.monotonic()
        try:
            seconds, _, _ = await fm.drain_time(b.nc, s, n, timeout)
            complete = True
        except TimeoutError:
            seconds, complete = time.monotonic() - t0, False
        stats = await b.fn_stats()
        await fm.clear_consumers(b.nc)
        served = sum(1 for c in stats["functions"].values() if c >= per_function)
        done = n - await messages(b, fm.QUEUE)
        return ModeRun(done / seconds, seconds, done, n, complete, served)

    measure.queue = fm.QUEUE  # type: ignore[attr-defined]
    return measure, (
        "bench/functionmode.py (`fill` + `drain_time`: the stream is filled first, then a worker with its defaults "
        "(call status on) runs in the benchmark's process and is timed from its start until the stream is empty)"
    )


async def function_mode(b: Bench) -> tuple[dict[int, dict[str, ModeRun]], str]:
    measure, source = mode_measurer(b.args.mode_measure)
    progress(f"  measured by {source.split(' (')[0]}")
    rows: dict[int, dict[str, ModeRun]] = {}
    stuck = ""
    for functions in b.args.functions:
        rows[functions] = {}
        for mode in ("static", "function"):
            if mode == "function" and stuck:
                # A smaller size did not finish in time: this one would not either; the time goes elsewhere.
                calls = functions * b.args.calls_per_function
                rows[functions][mode] = ModeRun(0.0, 0.0, 0, calls, False, 0, skipped=stuck)
                progress(f"  {functions:,} functions, function mode: not run ({stuck})")
                continue
            # Small sizes drain in a fraction of a second: the median of the rounds, not one noisy run.
            runs = []
            for _ in range(b.args.rounds if functions * b.args.calls_per_function <= 20_000 else 1):
                runs.append(await measure(b, functions, b.args.calls_per_function, mode, b.args.mode_timeout))
                if not runs[-1].complete:
                    break
            run = sorted(runs, key=lambda r: r.rate)[len(runs) // 2] if all(r.complete for r in runs) else runs[-1]
            if mode == "function" and not run.complete:
                stuck = f"{functions:,} functions did not finish in {b.args.mode_timeout:.0f} s"
            rows[functions][mode] = run
            progress(
                f"  {functions:,} functions × {b.args.calls_per_function}, {mode}: {run.rate:,.0f} calls/s "
                f"({run.done:,}/{run.calls:,} in {run.seconds:.1f} s)"
            )
    if getattr(measure, "queue", None):
        await delete_queue(b, measure.queue)  # type: ignore[attr-defined]
    return rows, source


# ---------------------------------------------------------------------------------------------------------------
# 4. Latency publish → invoked at a steady rate


async def paced(b: Bench, queue: str, rate: float, seconds: float, prefix: str) -> tuple[int, float]:
    """Publish `rate` calls/s for `seconds`, each stamped X-Start-Time just before it is sent."""
    loop = asyncio.get_running_loop()
    prefix = f"{prefix}-{next(PUBLISHES)}"
    n = int(rate * seconds)
    pending: list[asyncio.Task[Any]] = []
    t0 = loop.time()
    for i in range(n):
        delay = t0 + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        pending.append(
            asyncio.create_task(b.js.publish(f"{queue}.noop", b"{}", headers=call_headers(f"{prefix}-{RUN}-{i}")))
        )
    sent = loop.time() - t0
    await asyncio.gather(*pending)
    return n, n / sent if sent else 0.0


async def latency(b: Bench) -> dict[str, tuple[list[float], float]]:
    """Latencies in ms per contender, and the rate achieved."""
    queue = "lat"
    await provision(b, queue)
    out: dict[str, tuple[list[float], float]] = {}
    for contender in ("bare loop", "worker, defaults"):
        if contender == "bare loop":
            proc = await start_bare_loop(b, queue)
        else:
            proc = await start_worker(b, queue)
        await paced(b, queue, b.args.latency_rate, 1.0, f"warm-{contender[0]}")  # connections, caches: not counted
        await until_drained(b, queue, [proc], 60)
        await b.fn_reset()
        n, achieved = await paced(b, queue, b.args.latency_rate, b.args.latency_seconds, f"lat-{contender[0]}")
        if not await until_drained(b, queue, [proc], 120, calls=n):
            raise RuntimeError(f"{contender}: calls left over after the latency run")
        stats = await b.fn_stats(latencies=True)
        b.procs.stop(proc)
        await clear_consumers(b, queue)
        lat = [ns / 1e6 for ns in stats["latencies"]]
        out[contender] = (lat, achieved)
        progress(
            f"  {contender}: p50 {percentile(lat, 0.5):.2f} ms, p95 {percentile(lat, 0.95):.2f} ms, "
            f"p99 {percentile(lat, 0.99):.2f} ms ({len(lat)} calls at {achieved:.0f}/s)"
        )
    await delete_queue(b, queue)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Other figures: scale-out, memory with a backlog, durability


async def scale_out(b: Bench, n: int) -> tuple[float, float]:
    """Calls/s draining `n` calls to a function that takes 50 ms: one worker, then two (max_inflight 10 each)."""
    queue = "scale"
    await provision(b, queue)
    rates = []
    for workers in (1, 2):
        await publish(b, [f"{queue}.sleep-50"] * n, f"s{workers}")
        await b.fn_reset()
        procs = [await start_worker(b, queue, ready=False, max_inflight=10) for _ in range(workers)]
        if not await until_drained(b, queue, procs, max(120.0, n / 20)):
            raise RuntimeError("scale-out: not drained")
        t_end = time.time_ns()
        stats = await b.fn_stats()
        for p in procs:
            b.procs.stop(p)
        await clear_consumers(b, queue)
        rates.append(n / ((t_end - stats["first"]) / 1e9))
        progress(f"  {workers} worker(s): {rates[-1]:,.0f} calls/s")
    await delete_queue(b, queue)
    return rates[0], rates[1]


async def priorities_cost(b: Bench, n: int) -> tuple[float, float]:
    """Calls/s draining `n` no-op calls with a worker (defaults): on a queue without priorities, all normal; then
    on one with `priorities: true`, a third of them at each level (three consumers, slots taken in turns)."""
    rates = []
    for queue, on in (("prio-off", False), ("prio-on", True)):
        b.procs.stop(await start_worker(b, queue, priorities=on))  # its streams and consumers
        levels = itertools.cycle(contract.LEVELS if on else (contract.Priority.NORMAL,))
        await publish(b, [contract.subject(queue, "noop", 0, next(levels)) for _ in range(n)], f"p-{queue}")
        await b.fn_reset()
        proc = await start_worker(b, queue, ready=False, priorities=on)
        if not await until_drained(b, queue, [proc], max(120.0, n / 100), calls=n):
            raise RuntimeError(f"priorities: {queue} not drained; see {b.procs.log_of(proc)}")
        t_end = time.time_ns()
        stats = await b.fn_stats()
        b.procs.stop(proc)
        await delete_queue(b, queue)
        rates.append(n / ((t_end - stats["first"]) / 1e9))
        progress(f"  {queue}: {rates[-1]:,.0f} calls/s")
    return rates[0], rates[1]


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def memory(b: Bench, backlogs: list[int]) -> list[tuple[int, float]]:
    """Peak RSS of a worker process (defaults) after 5 s of work on a queue holding N calls."""
    queue = "mem"
    await provision(b, queue)
    rows = []
    for n in backlogs:
        await b.js.purge_stream(contract.stream_name(queue))
        await publish(b, [f"{queue}.noop"] * n, f"m{n}", batch=2000)
        proc = await start_worker(b, queue, ready=False)
        await asyncio.sleep(5)
        rows.append((n, peak_rss_mib(proc.pid)))
        b.procs.stop(proc)
        await clear_consumers(b, queue)
        progress(f"  {n:,} queued: peak RSS {rows[-1][1]:.1f} MiB")
    await delete_queue(b, queue)
    return rows


async def durability(b: Bench, tmp: Path, n: int, concurrency: int) -> tuple[float, float]:
    """Publish-with-PubAck rate on a server with `sync_interval: always` (strict) and with the default."""
    rates = []
    for strict in (True, False):
        server = NatsServer(tmp / f"dur-{strict}", jetstream_conf="sync_interval: always" if strict else "")
        server.start()
        try:
            nc = await nats.connect(server.url)
            js = nc.jetstream()
            await js.add_stream(StreamConfig(name="DUR", subjects=["dur.>"], retention=RetentionPolicy.WORK_QUEUE))
            counter = iter(range(n))

            async def client(js: JetStreamContext = js, it: Iterator[int] = counter) -> None:
                for i in it:
                    await js.publish("dur.x", b"{}", headers={"Nats-Msg-Id": f"d-{i}"})

            t0 = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(concurrency)))
            rates.append(n / (time.perf_counter() - t0))
            await nc.close()
        finally:
            server.stop()
        progress(f"  {'strict' if strict else 'relaxed'}: {rates[-1]:,.0f} publishes/s")
    return rates[0], rates[1]


# ---------------------------------------------------------------------------------------------------------------
# Results


@dataclass
class Row:
    figure: str
    value: float
    baseline: float
    unit: str
    baseline_name: str
    goal: tuple[str, float] | None
    lower_is_better: bool = False
    missing: str = ""  # why there is no value

    def cells(self) -> list[str]:
        ratio = self.value / self.baseline if self.baseline else float("nan")
        if self.missing:
            goal = "not set" if self.goal is None else f"{'≥' if self.goal[0] == '>=' else '≤'} {self.goal[1]:g}×"
            base = f"{fmt(self.baseline)} {self.unit} ({self.baseline_name})"
            return [self.figure, self.missing, base, "—", goal, "**no**" if self.goal else "—"]
        if self.goal is None:
            goal, met = "not set", "—"
        else:
            op, x = self.goal
            goal = f"{'≥' if op == '>=' else '≤'} {x:g}×"
            met = "yes" if (ratio >= x if op == ">=" else ratio <= x) else "**no**"
        return [
            self.figure,
            f"{fmt(self.value)} {self.unit}",
            f"{fmt(self.baseline)} {self.unit} ({self.baseline_name})",
            f"{ratio:.2f}×",
            goal,
            met,
        ]


def fmt(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.2f}" if x < 10 else f"{x:.1f}"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def run_cmd(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10, cwd=ROOT).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info(wrk: str | None) -> list[str]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")), "?")
    mem = next(ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal"))

    def version(pkg: str) -> str:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return "?"

    nats_server = run_cmd([str(Path(sys.executable).parent / "nats-server"), "--version"]).removeprefix("nats-server: ")
    wrk_version = (run_cmd([wrk, "-v"]).splitlines() or ["?"])[0].split(" [")[0] if wrk else "not installed"
    commit = run_cmd(["git", "--no-optional-locks", "rev-parse", "--short", "HEAD"]) or "?"
    dirty = run_cmd(["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"])
    return [
        f"- CPU: {os.cpu_count()} × {model} (affinity {len(os.sched_getaffinity(0))}); "
        f"memory {int(mem) / 1024**2:.1f} GiB; {platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}, jetqueue {version('jetqueue')} (commit {commit}"
        f"{', with uncommitted changes' if dirty else ''}), nats-py {version('nats-py')}, "
        f"aiohttp {version('aiohttp')}, nats-server {nats_server}, {wrk_version}",
        f"- load average at start {'/'.join(f'{x:.2f}' for x in START_LOAD)}, "
        f"at end {'/'.join(f'{x:.2f}' for x in os.getloadavg())}",
    ]


START_LOAD = os.getloadavg()


def plot(path: Path, res: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in ("worker", "gateway", "functionmode", "latency") if k in res]
    if not panels:
        return
    cols = 2 if len(panels) > 1 else 1
    rows = (len(panels) + 1) // 2
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.8 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, key in zip(axes.flat, panels, strict=False):
        if key == "worker":
            runs = res["worker"]
            names = list(runs)
            meds = [median([d.rate for d in runs[n]]) for n in names]
            ax.bar(names, meds, color=["#999999", "#4c72b0", "#55a868"])
            for i, n in enumerate(names):
                ax.scatter([i] * len(runs[n]), [d.rate for d in runs[n]], color="black", s=10, zorder=3)
                ax.annotate(f"{meds[i] / meds[0]:.2f}×", (i, meds[i]), ha="center", va="bottom", fontsize=8,
                            xytext=(0, 6), textcoords="offset points")  # fmt: skip
            ax.set_ylim(top=max(meds + [d.rate for ds in runs.values() for d in ds]) * 1.15)
            ax.axhline(meds[0] * 0.9, color="#55a868", linestyle="--", linewidth=1, label="goal, defaults: 0.9× bare")
            ax.legend(fontsize=7, loc="lower left")
            ax.set_ylabel("calls/s")
            ax.set_title(f"Worker: draining {res['calls']:,} no-op calls (median, dots: rounds)", fontsize=9)
        elif key == "gateway":
            runs = res["gateway"]
            names = ["floor", "gateway"]
            meds = [median([w.rate for w in runs[n]]) for n in names]
            ax.bar(names, meds, color=["#999999", "#4c72b0"])
            for i, n in enumerate(names):
                ax.scatter([i] * len(runs[n]), [w.rate for w in runs[n]], color="black", s=10, zorder=3)
                ax.annotate(f"{meds[i] / meds[0]:.2f}×", (i, meds[i]), ha="center", va="bottom", fontsize=8,
                            xytext=(0, 6), textcoords="offset points")  # fmt: skip
            ax.set_ylim(top=max(meds + [w.rate for ws in runs.values() for w in ws]) * 1.15)
            ax.set_ylabel("202s/s")
            ax.set_title("Gateway under wrk, 50 connections", fontsize=9)
        elif key == "functionmode":
            rows_ = res["functionmode"]
            sizes = list(rows_)
            x = range(len(sizes))
            ax.bar([i - 0.2 for i in x], [rows_[s]["static"].rate for s in sizes], 0.4, label="static", color="#999999")
            fn_rates = [rows_[s]["function"].rate or float("nan") for s in sizes]  # nothing done: no bar
            ax.bar([i + 0.2 for i in x], fn_rates, 0.4, label="function")
            drawn = [r for s in sizes for r in (rows_[s]["static"].rate, rows_[s]["function"].rate) if r > 0]
            log = bool(drawn) and (len(drawn) < 2 * len(sizes) or max(drawn) / min(drawn) > 20)
            if log:  # a mode that does next to nothing would be invisible on a linear scale
                ax.set_yscale("log")
            bottom = ax.get_ylim()[0]
            for i, size in enumerate(sizes):
                run = rows_[size]["function"]
                label = (
                    "not run" if run.skipped
                    else f"{run.rate / rows_[size]['static'].rate:.2f}×" + ("" if run.complete else " (cut)")
                )  # fmt: skip
                ax.annotate(label, (i + 0.2, run.rate or bottom), ha="center", va="bottom", fontsize=8)
            ax.set_xticks(list(x), [f"{s:,} fns" for s in sizes])
            ax.set_ylabel("calls/s (log)" if log else "calls/s")
            ax.legend(fontsize=8)
            ax.set_title("Function mode vs static, 2 calls per function", fontsize=9)
        elif key == "latency":
            lat = res["latency"]
            ps = [0.5, 0.95, 0.99]
            x = range(len(ps))
            for off, name, color in ((-0.2, "bare loop", "#999999"), (0.2, "worker, defaults", "#55a868")):
                ax.bar([i + off for i in x], [percentile(lat[name][0], p) for p in ps], 0.4, label=name, color=color)
            ax.set_xticks(list(x), ["p50", "p95", "p99"])
            ax.set_ylabel("ms")
            ax.legend(fontsize=8)
            ax.set_title(f"Publish → invoked at {res['latency_rate']:g} calls/s", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def report(b: Bench, res: dict[str, Any], command: str, total: float, wrk: str | None) -> str:
    a = b.args
    summary: list[Row] = []
    details: list[str] = []
    if "worker" in res:
        runs = res["worker"]
        bare = median([d.rate for d in runs["bare loop"]])
        summary += [
            Row(
                f"Worker drain, defaults (call status on), {a.calls:,} calls",
                median([d.rate for d in runs["worker, defaults"]]),
                bare,
                "calls/s",
                "bare loop",
                GOALS["worker_default"],
            ),
            Row(
                "Worker drain, `JETQUEUE_CALL_STATUS=false`",
                median([d.rate for d in runs["worker, status off"]]),
                bare,
                "calls/s",
                "bare loop",
                GOALS["worker_status_off"],
            ),
        ]
        details += [
            "## 1. Worker: draining a backlog of no-op calls",
            "",
            f"{a.calls:,} calls (body `{{}}`, the gateway's headers, each with its `queued` submission record in the "
            "status bucket, as the gateway with call status on stores them) are published to a queue with no "
            "consumer, then the contender process is started; the rate counts from the first call the function "
            "receives to the moment the stream is empty (every call acked). Contenders: `jetqueue worker` with its "
            "defaults (call status on, max_inflight 50), the same with `JETQUEUE_CALL_STATUS=false`, and "
            "bench/bare_loop.py (fetch + aiohttp POST + ack, 50 in flight, max_ack_pending 100 like the worker). Each"
            f" its own process; {a.rounds} round(s), the order rotated each round; the median is compared. CPU per "
            "call is each process's user + system time over the drain, divided by the calls drained.",
            "",
            *table(
                ["contender", "median", "rounds", "ratio to bare", "CPU µs/call: contender", "nats-server", "function"],
                [
                    [
                        name,
                        f"{median([d.rate for d in ds]):,.0f} calls/s",
                        ", ".join(f"{d.rate:,.0f}" for d in ds),
                        f"{median([d.rate for d in ds]) / bare:.2f}×",
                        *(f"{median([d.cpu_us[k] for d in ds]):.0f}" for k in ("contender", "nats-server", "function")),
                    ]
                    for name, ds in runs.items()
                ],
            ),
            "",
            f"Machine during this section: {b.loads['worker'].text()}.",
            "",
        ]
    if "gateway" in res:
        runs = res["gateway"]
        floor = median([w.rate for w in runs["floor"]])
        summary.append(
            Row(
                f"Gateway under wrk, {a.connections} connections, defaults",
                median([w.rate for w in runs["gateway"]]),
                floor,
                "202/s",
                "aiohttp + PubAck floor",
                GOALS["gateway"],
            )
        )
        details += [
            "## 2. Gateway: submissions under wrk",
            "",
            f"wrk (one thread, {a.connections} connections, {a.wrk_seconds} s after a 2 s warm-up, "
            "bench/wrk_post.lua: `POST /async-function/noop` with body `{}`) against `jetqueue gateway` with its "
            "defaults (call status on: it also writes the `queued` record) and against bench/floor_gateway.py (aiohttp "
            "handler: nats-py publish, wait for the PubAck, answer 202; nothing else). Both are separate processes "
            f"on the same nats-server, measured in alternating order, {a.rounds} round(s); the median is compared. "
            "`stored` is what the stream gained (it must be at least the answers wrk counted). CPU in cores "
            "(wall-clock share) of each process during the measured run; wrk runs on the same 2 cores, so its own "
            "CPU is taken from what the server side could use.",
            "",
            *table(
                [
                    "contender",
                    "req/s (rounds)",
                    "p50",
                    "p99",
                    "errors",
                    "answers / stored",
                    "CPU: server",
                    "nats-server",
                    "wrk",
                ],
                [
                    [
                        name,
                        f"{median([w.rate for w in ws]):,.0f} ({', '.join(f'{w.rate:,.0f}' for w in ws)})",
                        f"{median([w.p50_ms for w in ws]):.1f} ms",
                        f"{median([w.p99_ms for w in ws]):.1f} ms",
                        str(sum(w.errors for w in ws)),
                        " ; ".join(f"{w.requests:,} / {w.stored:,}" for w in ws),
                        f"{median([w.cpu['contender'] for w in ws]):.2f}",
                        f"{median([w.cpu['nats-server'] for w in ws]):.2f}",
                        f"{median([w.cpu['wrk'] for w in ws]):.2f}",
                    ]
                    for name, ws in (("gateway", runs["gateway"]), ("floor", runs["floor"]))
                ],
            ),
            "",
            f"Machine during this section: {b.loads['gateway'].text()}.",
            "",
        ]
    elif "gateway_skipped" in res:
        details += ["## 2. Gateway: submissions under wrk", "", f"**Skipped**: {res['gateway_skipped']}.", ""]
    if "functionmode" in res:
        rows = res["functionmode"]
        for functions, modes in rows.items():
            summary.append(
                Row(
                    f"Function mode, {functions:,} functions × {a.calls_per_function} calls"
                    + ("" if modes["function"].complete or modes["function"].skipped else " (**incomplete**)"),
                    modes["function"].rate,
                    modes["static"].rate,
                    "calls/s",
                    "static mode",
                    GOALS["functionmode"],
                    missing=f"not run: {modes['function'].skipped}" if modes["function"].skipped else "",
                )
            )
        details += [
            "## 3. Function mode vs static mode",
            "",
            f"F functions × {a.calls_per_function} calls (call 1 of every function, then call 2), drained by the "
            "worker in static mode and in function mode (`JETQUEUE_MODE=function`: one consumer per function); a "
            f"run is cut at {a.mode_timeout:.0f} s (incomplete); the median of {a.rounds} round(s) per mode and size "
            "(up to 20,000 calls). "
            f"Measured by {res['functionmode_source']}.",
            "",
            *table(
                ["functions", "calls", "static", "function", "ratio", "function mode: done / functions served"],
                [
                    [
                        f"{functions:,}",
                        f"{modes['static'].calls:,}",
                        f"{modes['static'].rate:,.0f} calls/s ({modes['static'].seconds:.1f} s)",
                        f"not run: {modes['function'].skipped}"
                        if modes["function"].skipped
                        else f"{modes['function'].rate:,.0f} calls/s ({modes['function'].seconds:.1f} s)"
                        + ("" if modes["function"].complete else " **incomplete**"),
                        f"{modes['function'].rate / modes['static'].rate:.2f}×",
                        f"{modes['function'].done:,}/{modes['function'].calls:,} calls, "
                        f"{modes['function'].functions_served:,}/{functions:,} functions",
                    ]
                    for functions, modes in rows.items()
                ],
            ),
            "",
            f"Machine during this section: {b.loads['functionmode'].text()}.",
            "",
        ]
    if "latency" in res:
        lat = res["latency"]
        for p in (0.5, 0.95, 0.99):
            summary.append(
                Row(
                    f"Latency publish → invoked, p{round(p * 100)}, {a.latency_rate:g} calls/s, status on",
                    percentile(lat["worker, defaults"][0], p),
                    percentile(lat["bare loop"][0], p),
                    "ms",
                    "bare loop",
                    GOALS["latency"],
                    lower_is_better=True,
                )
            )
        details += [
            "## 4. Latency: publish → function invoked",
            "",
            f"{a.latency_rate:g} calls/s for {a.latency_seconds:g} s (after a 1 s warm-up), each published with "
            "`X-Start-Time` set just before it is sent; the function records its arrival minus that time (same "
            "clock, same machine). The worker runs with its defaults (call status on); the bare loop forwards "
            "`X-Start-Time` too. Lower is better: a ratio above 1 is what the worker adds.",
            "",
            *table(
                ["contender", "calls", "rate achieved", "p50", "p95", "p99", "max"],
                [
                    [
                        name,
                        f"{len(v):,}",
                        f"{achieved:.0f}/s",
                        *(f"{percentile(v, p):.2f} ms" for p in (0.5, 0.95, 0.99, 1.0)),
                    ]
                    for name, (v, achieved) in lat.items()
                ],
            ),
            "",
            f"Machine during this section: {b.loads['latency'].text()}.",
            "",
        ]
    if "partitions" in res:
        pr = res["partitions"]
        if "skipped" not in pr:
            for what, unit in (("intake", "req/s"), ("drain", "calls/s")):
                three, one = pr[3][what]["rate"], pr[1][what]["rate"]
                summary.append(
                    Row(f"Partitions: {what}, 3 vs 1 (netns R3, strict)", three, one, unit, "1", GOALS["partitions"])
                )
        details += [*load_partitions().report(pr, a.connections, a.wrk_seconds)]
        if "partitions" in b.loads:
            details += [f"Machine during this section: {b.loads['partitions'].text()}.", ""]
    if "other" in res:
        o = res["other"]
        one, two = o["scale_out"]
        summary.append(
            Row("Scale-out: two workers vs one (50 ms function)", two, one, "calls/s", "one worker", GOALS["scale_out"])
        )
        plain, leveled = o["priorities"]
        summary.append(
            Row("Priorities: three levels vs none (drain)", leveled, plain, "calls/s", "none", GOALS["priorities"])
        )
        strict, relaxed = o["durability"]
        details += [
            "## Other figures",
            "",
            f"Scale-out: {o['scale_calls']:,} calls to a function that takes 50 ms, max_inflight 10 per worker "
            "process (defaults otherwise): one worker, then two.",
            "",
            *table(["one worker", "two workers", "ratio"], [[f"{one:,.0f}/s", f"{two:,.0f}/s", f"{two / one:.2f}×"]]),
            "",
            f"Priorities' cost: {o['dur_calls']:,} no-op calls drained by one worker (defaults): on a queue without "
            "priorities, all normal; on one with `priorities: true`, a third at each level (three consumers, the "
            "slots taken in turns, docs/priorities.md).",
            "",
            *table(
                ["no priorities", "three levels", "ratio"],
                [[f"{plain:,.0f}/s", f"{leveled:,.0f}/s", f"{leveled / plain:.2f}×"]],
            ),
            "",
            "Worker memory: peak RSS (VmHWM) of a worker process (defaults) after 5 s of work on a queue holding N "
            "calls: it holds only what it fetched (at most max_inflight), so it should stay flat.",
            "",
            *table(["calls queued", "peak RSS"], [[f"{n:,}", f"{mib:.1f} MiB"] for n, mib in o["memory"]]),
            "",
            f"Durability cost: publish with PubAck, {a.connections} concurrent publishers, {o['dur_calls']:,} "
            "messages, on a server with `sync_interval: always` (strict: fsync before the ack, what "
            "`nats.durability: strict` renders) and on one with the NATS default (relaxed: flush every 2 minutes).",
            "",
            *table(
                ["strict", "relaxed", "strict / relaxed"],
                [[f"{strict:,.0f}/s", f"{relaxed:,.0f}/s", f"{strict / relaxed:.2f}×"]],
            ),
            "",
            f"Machine during this section: {b.loads['other'].text()}.",
            "",
        ]
    busy = [ld for ld in b.loads.values()]
    others = max((ld.busy - ld.ours for ld in busy), default=0.0)
    head = [
        "# jetqueue benchmark results",
        "",
        f"Generated by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} in {total:.0f} s.",
        "",
        *machine_info(wrk),
        "",
        "Every contender is its own process (nats-server, the no-op function, the worker or the gateway, the "
        "baselines, wrk) sharing the same cores: compare the ratios, measured in the same run, not the absolute "
        "rates. "
        + (
            f"**Other processes used up to {others:.2f} cores during a section of this run**: its figures are "
            "noisy; rerun on an idle machine before drawing conclusions."
            if others >= 0.2
            else "The machine was otherwise idle during this run."
        ),
        "",
        "## Summary",
        "",
        *table(["figure", "value", "baseline", "ratio", "goal", "met?"], [r.cells() for r in summary]),
        "",
        "Ratio = value / baseline. Throughput: higher is better. Latency: lower is better (the ratio is what "
        "the worker adds). A goal is a ratio to the baseline; `not set` where the issue gives none.",
        "",
        "![benchmarks](throughput.png)",
        "",
    ]
    return "\n".join(head + details) + "\n"


# ---------------------------------------------------------------------------------------------------------------


async def main(args: argparse.Namespace, command: str) -> int:
    started = time.monotonic()
    sections = [s for s in SECTIONS if s in (args.only or SECTIONS) and s not in (args.skip or ())]
    keep = args.keep_logs
    logdir = Path(tempfile.mkdtemp(prefix="jetqueue-bench-"))
    procs = Processes(logdir)
    server = NatsServer(logdir / "nats")
    res: dict[str, Any] = {"calls": args.calls, "latency_rate": args.latency_rate}
    wrk: str | None = None
    ok = False
    progress(f"jetqueue bench: {', '.join(sections)}; logs in {logdir}")
    try:
        server.start()
        assert server.proc is not None
        fn_port = free_port()
        fn = procs.start("function", [sys.executable, str(BENCH / "noop_function.py"), str(fn_port)])
        await wait_http(f"http://127.0.0.1:{fn_port}/_bench/stats", fn, procs)
        nc = await nats.connect(server.url)
        async with aiohttp.ClientSession() as http:
            b = Bench(args, procs, server.url, nc, nc.jetstream(), http, f"http://127.0.0.1:{fn_port}", fn.pid,
                      server.proc.pid)  # fmt: skip
            if "worker" in sections:
                progress(f"1. worker: draining {args.calls:,} no-op calls, {args.rounds} round(s) of 3 contenders")
                with b.section("worker"):
                    res["worker"] = await worker_drain(b)
            if "gateway" in sections:
                wrk, why = find_wrk()
                if wrk is None:
                    progress(f"2. gateway: SKIPPED: {why}")
                    res["gateway_skipped"] = why
                else:
                    progress(f"2. gateway: wrk, {args.connections} connections, {args.wrk_seconds} s per run")
                    with b.section("gateway"):
                        res["gateway"] = await gateway_bench(b, wrk)
            if "functionmode" in sections:
                progress(f"3. function mode vs static: {', '.join(f'{f:,}' for f in args.functions)} functions")
                with b.section("functionmode"):
                    res["functionmode"], res["functionmode_source"] = await function_mode(b)
            if "latency" in sections:
                progress(f"4. latency publish → invoked, {args.latency_rate:g} calls/s for {args.latency_seconds:g} s")
                with b.section("latency"):
                    res["latency"] = await latency(b)
            if "partitions" in sections:
                wrk = wrk or find_wrk()[0]
                if wrk is None:
                    res["partitions"] = {"skipped": find_wrk()[1]}
                else:
                    progress("5. partitions: one queue, 1 vs 3 partitions, 3-node netns cluster, R3, strict")
                    with b.section("partitions"):
                        res["partitions"] = await load_partitions().measure(b, wrk, progress)
                    if "skipped" in res["partitions"]:
                        progress(f"  SKIPPED: {res['partitions']['skipped']}")
            if "other" in sections:
                progress("other figures: scale-out, priorities, memory with a backlog, durability")
                with b.section("other"):
                    o: dict[str, Any] = {"scale_calls": args.scale_calls, "dur_calls": args.calls}
                    o["scale_out"] = await scale_out(b, args.scale_calls)
                    o["priorities"] = await priorities_cost(b, args.calls)
                    o["memory"] = await memory(b, args.backlogs)
                    o["durability"] = await durability(b, logdir, args.calls, args.connections)
                    res["other"] = o
            await nc.close()
            if wrk is None and shutil.which("wrk"):
                wrk = shutil.which("wrk")
            text = report(b, res, command, time.monotonic() - started, wrk)
        args.out.write_text(text)
        plot(args.out.parent / "throughput.png", res)
        progress(f"wrote {args.out} and {args.out.parent / 'throughput.png'} in {time.monotonic() - started:.0f} s")
        ok = True
    finally:
        procs.stop_all()
        server.stop()
        if ok and not keep:
            shutil.rmtree(logdir, ignore_errors=True)
        else:
            progress(f"logs kept in {logdir}")
    return 0


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes for a smoke run (each can still be set)")
    p.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    p.add_argument("--skip", nargs="+", choices=SECTIONS, help="skip these sections")
    p.add_argument("--calls", type=int, help="worker drain: calls per run (20,000; quick 2,000)")
    p.add_argument("--rounds", type=int, help="rounds of the worker and gateway figures (3; quick 1)")
    p.add_argument("--connections", type=int, default=50, help="wrk connections (and durability publishers)")
    p.add_argument("--wrk-seconds", type=int, help="wrk duration per measured run (10; quick 3)")
    p.add_argument("--functions", type=int, nargs="+", help="function mode sizes (100 1000 5000; quick 20 200)")
    p.add_argument("--calls-per-function", type=int, default=2)
    p.add_argument(
        "--mode-measure",
        choices=("auto", "functionmode", "bench"),
        default="auto",
        help="function mode: bench/functionmode.py's measurement (auto: when it exists) or bench.py's own",
    )
    p.add_argument("--mode-timeout", type=float, help="longest function-mode run, seconds (120; quick 60)")
    p.add_argument("--latency-rate", type=float, default=200.0, help="calls/s of the latency figure")
    p.add_argument("--latency-seconds", type=float, help="duration of the latency figure (10; quick 3)")
    p.add_argument("--scale-calls", type=int, help="scale-out calls (2,000; quick 300)")
    p.add_argument(
        "--backlogs", type=int, nargs="+", help="memory: queued calls (10,000 100,000 1,000,000; quick 10,000)"
    )
    p.add_argument("--partition-workers", type=int, default=2, help="partitions: worker processes draining")
    p.add_argument("--keep-logs", action="store_true", help="keep every process's log (always kept on failure)")
    p.add_argument("--out", type=Path, default=BENCH / "results.md")
    args = p.parse_args(argv)
    full = {
        "calls": 20_000,
        "rounds": 3,
        "wrk_seconds": 10,
        "functions": [100, 1000, 5000],
        "mode_timeout": 120.0,
        "latency_seconds": 10.0,
        "scale_calls": 2000,
        "backlogs": [10_000, 100_000, 1_000_000],
    }
    quick = {
        "calls": 2000,
        "rounds": 1,
        "wrk_seconds": 3,
        "functions": [20, 200],
        "mode_timeout": 60.0,
        "latency_seconds": 3.0,
        "scale_calls": 300,
        "backlogs": [10_000],
    }
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


if __name__ == "__main__":
    argv = sys.argv[1:]
    command = "make bench" + (f' BENCH_ARGS="{" ".join(argv)}"' if argv else "")

    def terminate(signum: int, _: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    try:
        sys.exit(asyncio.run(main(parse(argv), command)))
    except KeyboardInterrupt:
        sys.exit(130)
