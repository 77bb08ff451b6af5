"""The multi-host chaos harness: a 3-node NATS cluster, one node per network namespace on a private 10.x.y.0/24
(netns.py; the fixtures are in conftest.py), the gateway and the worker in the root namespace, steady submissions
through the gateway before, during and after a fault (`scenario`), then the ledger. A scenario runs on a queue of
one partition (the layout before partitions) or of several, its calls spread over every partition."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from nats.aio.client import Client

from jetqueue import contract, leaders
from jetqueue.contract.partitions import choose_partition
from tests.chaos.ledger import Ledger
from tests.chaos.netns import NetLab, wait_all_healthy
from tests.helpers import connect, gateway_settings, running_gateway, start_worker, worker_env
from tests.servers import FunctionServer, NatsServer, eventually

FULL = os.environ.get("CHAOS_FULL") == "1"
full_only = pytest.mark.skipif(not FULL, reason="slow multi-host scenario: runs under `make chaos` (CHAOS_FULL=1)")

FUNCTION = "echo"
QUEUE = contract.DEFAULT_QUEUE
STREAM = contract.stream_name(QUEUE)
MAX_INFLIGHT = 20
MAX_ACK_PENDING = 2 * MAX_INFLIGHT  # the worker's default: 2 × max_inflight
ACK_WAIT = 5.0
PUBLISH_TIMEOUT = 2.0
CLIENTS = 3  # steady submitters, each one call at a time with a pause: at most about 50 calls/s in all
PAUSE = 0.05
MAX_CALLS_PER_CLIENT = 2000  # bounds on every submission loop: in count ...
MAX_SUBMIT_SECONDS = 120.0  # ... and in time
HEALTHY_TIMEOUT = 60.0
RESUMED, RESUME_TIMEOUT = 30, 30.0  # after the fault, submissions flow again: this many accepted within this
DRAIN_TIMEOUT = 120.0
WORKER_EXIT_TIMEOUT = 10.0  # a worker with nothing in flight exits in about a second


def one_function_per_partition(partitions: int, prefix: str = "fn-") -> tuple[str, ...]:
    """Function names whose calls land in partitions 0 .. partitions-1 in turn (the gateway's own rule), so a
    scenario's steady submissions reach every partition."""
    names: dict[int, str] = {}
    for i in range(1000):
        names.setdefault(choose_partition(f"{prefix}{i}", partitions), f"{prefix}{i}")
        if len(names) == partitions:
            return tuple(names[p] for p in range(partitions))
    raise AssertionError(f"no names for {partitions} partitions")


def duplicate_bound(disruptions: int) -> int:
    """Duplicates allowed for a scenario that takes nodes away `disruptions` times.

    An accepted call runs twice only when its ack never reached the consumer's leader (the ack went to a node
    that was cut off or died, or the leader moved before applying it) and the call was delivered again after
    the ack wait. At any moment at most max_ack_pending calls are delivered and not yet acked, so one node
    leaving can re-deliver at most that window, and its return (leadership moving back) at most once more:
    2 × max_ack_pending per disruption. More than that means acks are being lost in steady state, a bug."""
    return 2 * MAX_ACK_PENDING * disruptions


def refusal_reason(body: str) -> str:
    """The gist of a 503's JSON body ({"error": "..."}): its first clause."""
    try:
        reason = str(json.loads(body).get("error", body))
    except (ValueError, AttributeError):
        reason = body
    return reason.split(";")[0][:60]


@dataclass
class Run:
    """What a fault sees: the cluster, a client connection for stream info, the gateway URL and the ledger."""

    lab: NetLab
    servers: list[NatsServer]
    nc: Client
    http: aiohttp.ClientSession
    urls: list[str]  # one per function submitted to, in turn: with partitions, every partition gets calls
    ledger: Ledger
    gateway_nc: Client | None = None
    partitions: int = 1
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    slowest: dict[int, float] = field(default_factory=dict)  # HTTP status: the longest answer seen
    refusals: Counter[str] = field(default_factory=Counter)  # the 503s' reasons (their start)

    async def post(self, call_id: str, i: int = 0) -> None:
        """One submission (of the i-th function in turn): 202 is accepted, 503 refused (fine); anything else is
        an error."""
        t0 = time.monotonic()
        try:
            async with self.http.post(self.urls[i % len(self.urls)], data=b"x", headers={"X-Call-Id": call_id}) as r:
                self.slowest[r.status] = max(self.slowest.get(r.status, 0.0), time.monotonic() - t0)
                if r.status == 202:
                    self.ledger.accepted.append(call_id)
                elif r.status == 503:
                    self.ledger.refused += 1
                    self.refusals[refusal_reason(await r.text())] += 1
                else:
                    self.errors.append(f"{call_id}: HTTP {r.status} {await r.text()}")
        except (aiohttp.ClientError, TimeoutError) as e:
            self.errors.append(f"{call_id}: {e!r}")

    def gateway_node(self) -> str:
        """The node the gateway is connected to (nats-py picks one of the URLs at random)."""
        url = self.gateway_nc.connected_url if self.gateway_nc else None
        return next((s.name for s in self.servers if url and url.hostname == s.host), "?")

    @property
    def streams(self) -> list[str]:
        """The queue's work streams, one per partition."""
        return [contract.stream_name(QUEUE, p) for p in range(self.partitions)]

    async def stream_leader(self, partition: int = 0) -> int:
        info = await self.nc.jetstream().stream_info(contract.stream_name(QUEUE, partition))
        assert info.cluster is not None and info.cluster.leader, info
        return next(i for i, s in enumerate(self.servers) if s.name == info.cluster.leader)

    async def placement(self) -> list[str]:
        """The server leading each partition's stream, in partition order ('' while one has none or cannot be
        asked)."""
        found = {p.stream: p.leader for p in await leaders.placement(self.nc.jetstream(timeout=2), self.streams)}
        return [found.get(stream, "") for stream in self.streams]

    async def leaders_spread(self, within: float = 20.0) -> None:
        """Wait (at most `within`) for the partitions' leaders to be on different servers, as the worker spreads
        them (leaders.py); note where they are either way."""
        deadline = time.monotonic() + within
        while True:
            found = await self.placement()
            if len(set(found) - {""}) == min(len(found), len(self.servers)) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        self.notes.append("leaders " + ", ".join(f"P{k} {name or 'none'}" for k, name in enumerate(found)))

    async def healthy_again(self) -> None:
        """Every node's /healthz is 200, and the queue's streams and its call-status buckets' each have a leader
        with both followers current (status records written meanwhile land only once the bucket's has one)."""
        t0 = time.monotonic()
        await wait_all_healthy(self.servers, HEALTHY_TIMEOUT)
        deadline = t0 + HEALTHY_TIMEOUT
        buckets = [contract.kv_stream_name(contract.status_bucket_name(QUEUE, k)) for k in range(self.partitions)]
        for stream in (*self.streams, *buckets):
            last = ""
            while True:
                try:
                    info = await self.nc.jetstream(timeout=2).stream_info(stream)
                    last = repr(info.cluster)
                    replicas = (info.cluster.replicas or []) if info.cluster else []
                    if info.cluster and info.cluster.leader and len(replicas) == 2:
                        if all(r.current and not r.offline for r in replicas):
                            break
                except Exception as e:  # a timeout while the connection fails over: ask again
                    last = repr(e)
                assert time.monotonic() < deadline, f"{stream} not fully replicated again in time: {last}"
                await asyncio.sleep(0.2)
        self.notes.append(f"healthy again after {time.monotonic() - t0:.1f}s")


async def steady(run: Run, stop: asyncio.Event, n: int, tag: str) -> None:
    deadline = time.monotonic() + MAX_SUBMIT_SECONDS
    for i in range(MAX_CALLS_PER_CLIENT):
        if stop.is_set() or time.monotonic() > deadline:
            return
        await run.post(f"{tag}{n}-{i}", n + i)
        await asyncio.sleep(PAUSE)


async def stop_worker(proc: subprocess.Popen[bytes], notes: list[str]) -> None:
    """SIGTERM the worker by its pid; SIGKILL it if it has not exited within WORKER_EXIT_TIMEOUT."""
    t0 = time.monotonic()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    while proc.poll() is None and time.monotonic() - t0 < WORKER_EXIT_TIMEOUT:  # noqa: ASYNC110 - a process
        await asyncio.sleep(0.1)
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
        notes.append(f"worker still running {WORKER_EXIT_TIMEOUT:.0f}s after SIGTERM: SIGKILLed")
    else:
        notes.append(f"worker exited {proc.returncode} {time.monotonic() - t0:.1f}s after SIGTERM")


async def scenario(
    name: str,
    tag: str,
    lab: NetLab,
    servers: list[NatsServer],
    functions: FunctionServer,
    log_dir: Path,
    fault: Callable[[Run], Awaitable[None]],
    max_duplicates: int,
    partitions: int = 1,
    submitted: tuple[str, ...] = (FUNCTION,),
) -> dict[str, int]:
    """The gateway (in this process) and a worker process on the cluster (R3 streams, `partitions` of them),
    steady submissions of the `submitted` functions in turn before, during and after `fault`, then the worker
    drains the queue and the ledger is checked."""
    urls = ",".join(s.url for s in servers)  # JETQUEUE_NATS_URL: all three nodes
    gw_settings = gateway_settings(urls, stream_replicas=3, publish_timeout=PUBLISH_TIMEOUT, partitions=partitions)
    env = worker_env(
        urls,
        functions.url_template,
        stream_replicas="3",
        partitions=str(partitions),
        max_inflight=str(MAX_INFLIGHT),
        ack_wait=f"{ACK_WAIT:.0f}s",
        shutdown_timeout="5s",
    )
    ledger = Ledger(name, queue=QUEUE, partitions=partitions)
    notes: list[str] = []
    log = log_dir / "worker.log"
    nc = await connect(urls)
    t0 = time.monotonic()
    try:
        async with running_gateway(gw_settings) as gw:
            assert gw.backend.connected and gw.backend.ready_streams, "gateway not ready"
            worker = start_worker(env, log)
            try:
                await eventually(lambda: b"worker ready" in log.read_bytes(), timeout=60)
                base = f"http://127.0.0.1:{gw.s.http_port}/async-function"
                timeout = aiohttp.ClientTimeout(total=PUBLISH_TIMEOUT + 10)
                async with aiohttp.ClientSession(timeout=timeout) as http:
                    posts = [f"{base}/{fn}" for fn in submitted]
                    run = Run(lab, servers, nc, http, posts, ledger, gw.backend.nc, partitions=partitions, notes=notes)
                    stop = asyncio.Event()
                    clients = [asyncio.create_task(steady(run, stop, n, tag)) for n in range(CLIENTS)]
                    try:
                        await eventually(lambda: len(ledger.accepted) >= 30, timeout=30)  # flowing before
                        await fault(run)
                        before = len(ledger.accepted)
                        t_fault = time.monotonic()
                        await eventually(lambda: len(ledger.accepted) >= before + RESUMED, timeout=RESUME_TIMEOUT)
                        notes.append(f"{RESUMED} more accepted {time.monotonic() - t_fault:.1f}s after the fault")
                    finally:
                        stop.set()
                        await asyncio.gather(*clients)
                t1 = time.monotonic()

                def drained() -> bool:
                    return set(ledger.accepted) <= {c for fn in submitted for c in functions.completed[fn]}

                await eventually(drained, timeout=DRAIN_TIMEOUT, interval=0.25)
                notes.append(f"submissions {t1 - t0:.0f}s, all accepted calls done {time.monotonic() - t1:.0f}s later")
                await asyncio.sleep(1)  # late redeliveries would show up as duplicates
            finally:
                await stop_worker(worker, notes)
        slowest = ", ".join(f"{code} {t:.1f}s" for code, t in sorted(run.slowest.items()))
        refusals = ", ".join(f"{n} × {reason!r}" for reason, n in run.refusals.most_common())
        print(
            f"\n[{name}] {'; '.join(notes)}; slowest answers: {slowest}; 503s: {refusals or 'none'}; "
            f"{time.monotonic() - t0:.0f}s"
        )
        assert not run.errors, run.errors[:5]
        assert ledger.accepted, "nothing was accepted"
        try:
            invoked = [c for fn in submitted for c in functions.calls[fn]]
            return await ledger.check(nc, invoked, max_duplicates=max_duplicates)
        except AssertionError:  # the worker's own account, for whoever reads the failure
            print("worker log, last lines:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-80:]))
            raise
    finally:
        await nc.close()
