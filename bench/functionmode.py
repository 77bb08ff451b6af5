"""Function mode at scale: F functions × C calls drained in static mode and in function mode, same calls, same run.

    .venv/bin/python bench/functionmode.py --functions 100 1000 5000 --rounds 2

One nats-server (R1, file store) and the no-op function (bench/noop_function.py) as processes of their own;
the worker runs in this process. Each run fills the stream with the same calls (call i of every function,
then call i + 1, ...), starts a worker and times it from start until the stream is empty; the worker is
then stopped and every consumer removed, so the next contender starts from the same state. Call status is off
unless --status (the worker's default is on). Each line also says the CPU the worker (this process) and
nats-server spent on the run. The machine is shared and noisy: compare the ratio of one round, and repeat.

bench/bench.py imports `QUEUE`, `WorkerSettings`, `fill`, `drain_time` and `clear_consumers` from here: keep them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nats
from nats.js.errors import NotFoundError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jetqueue import contract, provision  # noqa: E402
from jetqueue.contract import jetstream  # noqa: E402
from jetqueue.queueworker.metrics import WorkerMetrics  # noqa: E402
from jetqueue.queueworker.process import Worker  # noqa: E402
from jetqueue.settings import WorkerSettings  # noqa: E402
from tests.servers import NatsServer, free_port  # noqa: E402

QUEUE = "fmbench"
STREAM = contract.stream_name(QUEUE)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


@contextlib.contextmanager
def function_server() -> Iterator[str]:
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


async def fill(nc: nats.NATS, functions: int, calls: int) -> int:
    js = nc.jetstream()
    await provision.ensure_stream(js, jetstream.work_stream(QUEUE))
    await js.purge_stream(STREAM)
    subjects = [f"{QUEUE}.f{i}" for i in range(functions)] * calls
    stamp = time.time_ns()
    for start in range(0, len(subjects), 500):
        await asyncio.gather(
            *(
                js.publish(subject, b"{}", headers={"Nats-Msg-Id": f"b{stamp}-{start + i}"})
                for i, subject in enumerate(subjects[start : start + 500])
            )
        )
    return len(subjects)


async def clear_consumers(nc: nats.NATS) -> None:
    """Remove every consumer of the stream (a page of at most 256 at a time)."""
    js = nc.jetstream()
    while True:
        try:
            names = [c.name for c in await js.consumers_info(STREAM)]
        except NotFoundError:
            return
        if not names:
            return
        await asyncio.gather(*(js.delete_consumer(STREAM, n) for n in names), return_exceptions=True)


async def count_consumers(nc: nats.NATS) -> int:
    resp = await nc.request(f"$JS.API.STREAM.INFO.{STREAM}", b"", timeout=5)
    import json

    return int(json.loads(resp.data)["state"]["consumer_count"])


async def drain_time(nc: nats.NATS, s: WorkerSettings, n: int, timeout: float) -> tuple[float, float, int]:
    """Seconds from worker start until the stream is empty, the worker's CPU seconds, consumers at the end."""
    js = nc.jetstream()
    w = Worker(s, WorkerMetrics())
    cpu0, t0 = time.process_time(), time.perf_counter()
    await w.start()
    try:
        while (await js.stream_info(STREAM)).state.messages:
            if time.perf_counter() - t0 > timeout:
                left = (await js.stream_info(STREAM)).state.messages
                raise TimeoutError(f"{s.mode}: {left} of {n} calls left after {timeout:.0f}s")
            await asyncio.sleep(0.02)
        took, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        consumers = await count_consumers(nc)
    finally:
        await w.stop()
    return took, cpu, consumers


async def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING)
    from jetqueue.queueworker import functionmode

    for assignment in args.set:
        name, _, value = assignment.partition("=")
        setattr(functionmode, name, type(getattr(functionmode, name))(value))
    rows: list[str] = []
    with tempfile.TemporaryDirectory() as tmp, function_server() as fn_url:
        server = NatsServer(Path(tmp) / "nats").start()
        nc = await nats.connect(server.url)
        try:
            for functions in args.functions:
                for r in range(args.rounds):
                    rates: dict[str, float] = {}
                    for mode in args.modes:
                        await clear_consumers(nc)
                        n = await fill(nc, functions, args.calls)
                        s = WorkerSettings(
                            nats_url=server.url,
                            function_url=fn_url,
                            queue=QUEUE,
                            mode=mode,
                            max_inflight=args.inflight,
                            http_host="127.0.0.1",
                            http_port=free_port(),
                            call_status=args.status,
                            log_level="warning",
                        )
                        nats0 = cpu_seconds(server.proc.pid) if server.proc else 0.0
                        took, cpu, consumers = await drain_time(nc, s, n, args.timeout)
                        nats_cpu = (cpu_seconds(server.proc.pid) if server.proc else 0.0) - nats0
                        rates[mode] = n / took
                        progress(
                            f"{functions:>5} × {args.calls}, round {r + 1}: {mode:<8} {n / took:7,.0f} calls/s "
                            f"({took:6.2f}s; CPU: worker {cpu:5.2f}s, nats-server {nats_cpu:5.2f}s; "
                            f"{consumers} consumers left)"
                        )
                    if "static" in rates and "function" in rates:
                        ratio = rates["function"] / rates["static"]
                        progress(f"{functions:>5} functions, round {r + 1}: function / static = {ratio:.2f}×")
                        rows.append(
                            f"| {functions:,} × {args.calls} | {r + 1} | {rates['static']:,.0f}/s | "
                            f"{rates['function']:,.0f}/s | {ratio:.2f}× |"
                        )
        finally:
            with contextlib.suppress(Exception):
                await clear_consumers(nc)
                await nc.close()
            server.stop()
    if rows:
        print("\n| calls | round | static | function | function / static |\n|---|---|---|---|---|")
        print("\n".join(rows))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--functions", type=int, nargs="+", default=[100, 1000, 5000])
    p.add_argument("--calls", type=int, default=2, help="calls per function")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--inflight", type=int, default=50, help="max_inflight")
    p.add_argument("--modes", nargs="+", default=["static", "function"], choices=["static", "function"])
    p.add_argument("--status", action="store_true", help="record call status (3 KV operations per call)")
    p.add_argument("--timeout", type=float, default=600.0, help="give up on a run after this many seconds")
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="NAME=VALUE",
        help="tuning: override a constant of jetqueue.queueworker.functionmode, e.g. MAX_CONSUMERS=64",
    )
    asyncio.run(main(p.parse_args()))
