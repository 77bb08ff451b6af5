"""How precise are scheduled calls, under load and across a stream leader change?

`python bench/schedules.py [--calls N]`: measured against real nats-servers, a real worker and the no-op
function; prints the lateness (invoked minus the time asked for) as percentiles.

1. Under load: N calls scheduled for the same second while N other calls are being drained.
2. Leader change: a 3-node cluster, R3 streams; N calls scheduled 6 s ahead, the schedule stream's leader
   killed 2 s before they are due and restarted 3 s later. Every call must still run, exactly once here.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import nats
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jetqueue import contract  # noqa: E402
from jetqueue.contract import Call  # noqa: E402
from tests.helpers import running_worker, worker_settings  # noqa: E402
from tests.servers import NatsServer, cluster, free_port  # noqa: E402

Q = contract.DEFAULT_QUEUE


class Recorder:
    def __init__(self) -> None:
        self.seen: dict[str, float] = {}
        self.count: Counter[str] = Counter()

    async def handle(self, request: web.Request) -> web.Response:
        call_id = request.headers.get("X-Call-Id", "")
        self.count[call_id] += 1
        self.seen.setdefault(call_id, time.time())
        await request.read()
        return web.Response(text="ok")

    async def start(self) -> tuple[web.AppRunner, str]:
        app = web.Application()
        app.router.add_route("*", "/function/{name}", self.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner, f"http://127.0.0.1:{port}/function/{{function}}"


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p))]


def lateness(rec: Recorder, due: dict[str, float]) -> str:
    late = [rec.seen[c] - due[c] for c in due if c in rec.seen]
    early = sum(1 for v in late if v < 0)
    return (
        f"{len(late)}/{len(due)} ran, {early} early; lateness p50 {pct(late, 0.5) * 1000:.0f} ms, "
        f"p95 {pct(late, 0.95) * 1000:.0f} ms, p99 {pct(late, 0.99) * 1000:.0f} ms, max {max(late) * 1000:.0f} ms"
    )


async def ran(rec: Recorder, due: dict[str, float], timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while len([c for c in due if c in rec.seen]) < len(due) and time.time() < deadline:  # noqa: ASYNC110 - polling
        await asyncio.sleep(0.1)


async def schedule(js: nats.js.JetStreamContext, n: int, at: float, prefix: str) -> dict[str, float]:
    due: dict[str, float] = {}

    async def one(i: int) -> None:
        call = Call(call_id=f"{prefix}-{i}", queue=Q, function="noop", not_before=at)
        subject, headers = contract.held_message(call, call.to_headers(), at, call.call_id)
        for _ in range(100):
            try:
                await js.publish(subject, b"{}", headers=headers, timeout=2)
                due[call.call_id] = float(int(at) + (at > int(at)))  # whole seconds, rounded up
                return
            except Exception:
                await asyncio.sleep(0.2)

    for start in range(0, n, 200):
        await asyncio.gather(*(one(i) for i in range(start, min(n, start + 200))))
    return due


async def under_load(n: int) -> None:
    base = Path(tempfile.mkdtemp())
    server = NatsServer(base).start()
    rec = Recorder()
    runner, template = await rec.start()
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    try:
        async with running_worker(worker_settings(server.url, template, http_port=free_port())):
            for i in range(n):  # the load: a backlog drained while the schedules come due
                await js.publish(contract.subject(Q, "noop"), b"{}", headers={"X-Call-Id": f"load-{i}"})
            due = await schedule(js, n, time.time() + 3, "sched")
            await ran(rec, due)
            print(f"under load ({n} backlog calls draining): {lateness(rec, due)}")
    finally:
        await nc.close()
        await runner.cleanup()
        server.stop()


async def leader_change(n: int) -> None:
    base = Path(tempfile.mkdtemp())
    servers = cluster(base)
    urls = ",".join(s.url for s in servers)
    rec = Recorder()
    runner, template = await rec.start()
    nc = await nats.connect(urls.split(","), max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    js = nc.jetstream()
    try:
        s = worker_settings(urls, template, stream_replicas=3, http_port=free_port())
        async with running_worker(s):
            due = await schedule(js, n, time.time() + 6, "ha")
            info = await js.stream_info(contract.schedule_stream_name(Q))
            leader = info.cluster.leader if info.cluster else None
            victim = next(x for x in servers if x.name == leader)
            await asyncio.sleep(max(0.0, min(due.values()) - 2 - time.time()))
            victim.kill()
            await asyncio.sleep(3)
            victim.start()
            await ran(rec, due)
            twice = sum(1 for c in due if rec.count[c] > 1)
            print(f"leader {leader} of {contract.schedule_stream_name(Q)} killed 2 s before due: {lateness(rec, due)}")
            print(f"  ran more than once: {twice}; never ran: {len([c for c in due if c not in rec.seen])}")
    finally:
        await nc.close()
        await runner.cleanup()
        for x in servers:
            x.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=1000)
    a = p.parse_args()
    asyncio.run(under_load(a.calls))
    asyncio.run(leader_change(min(a.calls, 500)))


if __name__ == "__main__":
    main()
