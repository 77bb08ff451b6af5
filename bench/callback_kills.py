"""How often a callback is sent twice, or lost, when a worker is killed -9 while it sends callbacks.

    .venv/bin/python bench/callback_kills.py --rounds 30 [--mode up|down] [--load]

Each round: a fresh nats-server, a worker process signing with key id `killed`, CALLS calls with a callback URL,
the worker killed -9 at a random moment while callbacks are on their way, a second worker (key id `second`),
then a wait past the callback consumer's ack wait, so a callback the killed worker held comes back and is
counted too. `up`: the receiver takes each callback and answers 200 after RECEIVER_DELAY; the worker is killed
the moment the receiver takes the k-th (k random), before its answer: the window every HTTP sender has. `down`:
it answers 503 while the first worker lives (its callbacks are handed on as schedules), 200 after (the kill -9
test's scenario), the kill at a random moment among the first attempts and their hand-ons. Each callback is classified:

- once;
- twice, first copy from the killed worker: the window docs/callbacks.md promises (the receiver had it, the
  worker died before it could act on the answer);
- twice, both from the surviving worker, or more than twice: a bug;
- missing: a bug.

One markdown row per round, then the totals.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import connect, enqueue, start_worker, worker_env  # noqa: E402
from tests.servers import FunctionServer, NatsServer, eventually, free_port  # noqa: E402

CALLS = 50
RECEIVER_DELAY = 0.2  # a receiver's answer takes this
CALLBACK_TIMEOUT = 2.0  # the callback consumer's ack wait is this + 30 s: the wait for late copies
LATE_WAIT = CALLBACK_TIMEOUT + 30.0 + 5.0


class Receiver:
    def __init__(self) -> None:
        self.status = 200
        self.got: dict[str, list[str]] = defaultdict(list)  # call id -> signer of each copy, in arrival order
        self.taken = 0
        self.kill_at = 0  # `up`: the taken callback at whose arrival the worker is killed, before it is answered
        self.arrived = asyncio.Event()

    async def receive(self, request: web.Request) -> web.Response:
        await request.read()
        if self.status >= 300:
            await asyncio.sleep(RECEIVER_DELAY)
            return web.Response(status=self.status)
        signature = request.headers.get("X-Jetqueue-Signature", "")
        self.got[request.headers.get("X-Call-Id", "")].append(signature.split(",")[-1].partition("=")[0])
        self.taken += 1  # taken (acted on) before it is answered, as a receiver does
        if self.taken == self.kill_at:
            self.arrived.set()
        await asyncio.sleep(RECEIVER_DELAY)
        return web.Response()


def verdict(copies: list[str]) -> str:
    if not copies:
        return "missing"
    if len(copies) == 1:
        return "once"
    if len(copies) == 2 and copies[0] == "killed" and copies[1] == "second":
        return "twice (window)"
    return "BUG: " + "+".join(copies)


async def one_round(mode: str, base: Path) -> tuple[Counter[str], float]:
    nats = NatsServer(base / "nats").start()
    functions = await FunctionServer().start()
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/cb", receiver.receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}/cb"
    env = worker_env(nats.url, functions.url_template, callback_timeout=f"{CALLBACK_TIMEOUT:.0f}s")
    log = base / "w.log"
    nc = await connect(nats.url)
    second = None
    try:
        receiver.status = 503 if mode == "down" else 200
        first = start_worker({**env, "JETQUEUE_CALLBACK_SIGNING_KEYS": "killed:" + "k" * 16}, log)
        await eventually(lambda: b"worker ready" in log.read_bytes())
        ids = [await enqueue(nc, "echo", callback_url=url) for _ in range(CALLS)]
        if mode == "up":  # killed the moment a callback arrives, so it is taken but its answer never read
            receiver.kill_at = random.randint(1, CALLS // 2)
            await asyncio.wait_for(receiver.arrived.wait(), 60)
        else:
            await eventually(lambda: set(ids) <= set(functions.completed["echo"]), interval=0.01)
            await asyncio.sleep(random.uniform(0, 3))  # among the first attempts and their hand-ons
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        receiver.status = 200
        second = start_worker({**env, "JETQUEUE_CALLBACK_SIGNING_KEYS": "second:" + "s" * 16}, log)
        t0 = time.monotonic()
        with contextlib.suppress(AssertionError):  # counted as missing below
            await eventually(lambda: set(ids) <= set(receiver.got), timeout=120)
        took = time.monotonic() - t0
        await asyncio.sleep(LATE_WAIT)  # a callback the killed worker held comes back after the ack wait
        return Counter(verdict(receiver.got.get(i, [])) for i in ids), took
    finally:
        if second is not None:
            second.send_signal(signal.SIGTERM)
            second.wait(30)
        await nc.close()
        await runner.cleanup()
        await functions.stop()
        nats.stop()


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--mode", choices=("up", "down"), default="up")
    ap.add_argument("--load", action="store_true", help="keep one core busy meanwhile (stress-ng or a busy loop)")
    args = ap.parse_args()
    load = None
    if args.load:
        command = ["stress-ng", "--cpu", "1", "--quiet"] if shutil.which("stress-ng") else None
        load = await asyncio.create_subprocess_exec(*(command or [sys.executable, "-c", "while True: pass"]))
    total: Counter[str] = Counter()
    print("| round | mode | once | twice (window) | missing | bug | all delivered after |")
    print("|---|---|---|---|---|---|---|")
    try:
        for n in range(1, args.rounds + 1):
            with tempfile.TemporaryDirectory(prefix="cbkill-") as tmp:
                counts, took = await one_round(args.mode, Path(tmp))
            total += counts
            bugs = sum(v for k, v in counts.items() if k.startswith("BUG"))
            print(
                f"| {n} | {args.mode} | {counts['once']} | {counts['twice (window)']} | {counts['missing']} | "
                f"{bugs} {[k for k in counts if k.startswith('BUG')] or ''} | {took:.1f} s |",
                flush=True,
            )
    finally:
        if load is not None:
            load.terminate()
            await load.wait()
    print(f"\ntotal: {dict(total)}")
    return 1 if total["missing"] or any(k.startswith("BUG") for k in total) else 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
