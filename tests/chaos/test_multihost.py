"""Multi-host chaos: a 3-node NATS cluster, one node per network namespace on a private 10.x.y.0/24 (netns.py),
the gateway and the worker in the root namespace, steady submissions through the gateway while a node is cut
off, killed, restarted in turn or on a lossy, slow link. Each scenario ends with the ledger.

Needs root and iproute2 (skipped otherwise, with the reason). The leader cut-off runs in `make test`; the others
are slower and run when CHAOS_FULL=1, which `make chaos` sets."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from nats.aio.client import Client

from jetqueue import contract
from tests.chaos.ledger import Ledger
from tests.chaos.netns import NetError, NetLab, unavailable, wait_all_healthy
from tests.helpers import connect, gateway_settings, running_gateway, start_worker, worker_env
from tests.servers import FunctionServer, NatsServer, eventually

pytestmark = pytest.mark.slow

FULL = os.environ.get("CHAOS_FULL") == "1"
full_only = pytest.mark.skipif(not FULL, reason="slow multi-host scenario: runs under `make chaos` (CHAOS_FULL=1)")

FUNCTION = "echo"
STREAM = contract.stream_name(contract.DEFAULT_QUEUE)
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


def duplicate_bound(disruptions: int) -> int:
    """Duplicates allowed for a scenario that takes nodes away `disruptions` times.

    An accepted call runs twice only when its ack never reached the consumer's leader (the ack went to a node
    that was cut off or died, or the leader moved before applying it) and the call was delivered again after
    the ack wait. At any moment at most max_ack_pending calls are delivered and not yet acked, so one node
    leaving can re-deliver at most that window, and its return (leadership moving back) at most once more:
    2 × max_ack_pending per disruption. More than that means acks are being lost in steady state, a bug."""
    return 2 * MAX_ACK_PENDING * disruptions


@pytest.fixture(scope="module")
def lab() -> Iterator[NetLab]:
    reason = unavailable()
    if reason:
        pytest.skip(f"multi-host chaos: {reason}")
    try:
        net = NetLab().create()
    except NetError as e:
        pytest.skip(f"multi-host chaos: cannot build the namespaces here: {e}")
    try:
        yield net
    finally:
        problems = net.destroy()
        assert not problems, problems
        assert not net.leftovers(), net.leftovers()


@pytest.fixture
async def nats3(lab: NetLab, tmp_path: Path) -> AsyncIterator[list[NatsServer]]:
    """A fresh 3-node cluster on the lab (new stores for every scenario), stopped by pid and healed after."""
    servers: list[NatsServer] = []
    try:
        servers = lab.nats_cluster(tmp_path / "cluster")
        await wait_all_healthy(servers, HEALTHY_TIMEOUT)
        yield servers
    finally:
        lab.heal()
        await asyncio.gather(*(asyncio.to_thread(s.stop) for s in servers))


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
    url: str
    ledger: Ledger
    gateway_nc: Client | None = None
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    slowest: dict[int, float] = field(default_factory=dict)  # HTTP status: the longest answer seen
    refusals: Counter[str] = field(default_factory=Counter)  # the 503s' reasons (their start)

    async def post(self, call_id: str) -> None:
        """One submission: 202 is accepted, 503 refused (fine); anything else is an error."""
        t0 = time.monotonic()
        try:
            async with self.http.post(self.url, data=b"x", headers={"X-Call-Id": call_id}) as r:
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

    async def stream_leader(self) -> int:
        info = await self.nc.jetstream().stream_info(STREAM)
        assert info.cluster is not None and info.cluster.leader, info
        return next(i for i, s in enumerate(self.servers) if s.name == info.cluster.leader)

    async def healthy_again(self) -> None:
        """Every node's /healthz is 200, and the queue's stream and the call-status bucket's each have a leader
        with both followers current (status records written meanwhile land only once the bucket's has one)."""
        t0 = time.monotonic()
        await wait_all_healthy(self.servers, HEALTHY_TIMEOUT)
        deadline = t0 + HEALTHY_TIMEOUT
        for stream in (STREAM, contract.kv_stream_name(contract.status_bucket_name(contract.DEFAULT_QUEUE))):
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
        await run.post(f"{tag}{n}-{i}")
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
) -> dict[str, int]:
    """The gateway (in this process) and a worker process on the cluster (R3 streams), steady submissions
    before, during and after `fault`, then the worker drains the queue and the ledger is checked."""
    urls = ",".join(s.url for s in servers)  # JETQUEUE_NATS_URL: all three nodes
    gw_settings = gateway_settings(urls, stream_replicas=3, publish_timeout=PUBLISH_TIMEOUT)
    env = worker_env(
        urls,
        functions.url_template,
        stream_replicas="3",
        max_inflight=str(MAX_INFLIGHT),
        ack_wait=f"{ACK_WAIT:.0f}s",
        shutdown_timeout="5s",
    )
    ledger = Ledger(name)
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
                url = f"http://127.0.0.1:{gw.s.http_port}/async-function/{FUNCTION}"
                timeout = aiohttp.ClientTimeout(total=PUBLISH_TIMEOUT + 10)
                async with aiohttp.ClientSession(timeout=timeout) as http:
                    run = Run(lab, servers, nc, http, url, ledger, gw.backend.nc, notes)
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
                done = functions.completed[FUNCTION]
                await eventually(lambda: set(ledger.accepted) <= set(done), timeout=DRAIN_TIMEOUT, interval=0.25)
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
            return await ledger.check(nc, functions.calls[FUNCTION], max_duplicates=max_duplicates)
        except AssertionError:  # the worker's own account, for whoever reads the failure
            print("worker log, last lines:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-80:]))
            raise
    finally:
        await nc.close()


async def test_stream_leader_cut_off_for_10s(
    lab: NetLab, nats3: list[NatsServer], functions: FunctionServer, tmp_path: Path
) -> None:
    async def cut_leader(run: Run) -> None:
        leader = await run.stream_leader()
        run.notes.append(f"stream leader {run.servers[leader].name} cut off (gateway on {run.gateway_node()})")
        lab.link_down(leader)
        try:
            await asyncio.sleep(10)
        finally:
            lab.link_up(leader)
        await run.healthy_again()

    await scenario(
        "multi-host: stream leader cut off 10 s", "cut", lab, nats3, functions, tmp_path, cut_leader, duplicate_bound(1)
    )


@full_only
async def test_node_killed_and_restarted(
    lab: NetLab, nats3: list[NatsServer], functions: FunctionServer, tmp_path: Path
) -> None:
    async def kill_leader(run: Run) -> None:
        victim = run.servers[await run.stream_leader()]
        run.notes.append(f"stream leader {victim.name} killed (SIGKILL) (gateway on {run.gateway_node()})")
        victim.kill()
        await asyncio.sleep(3)
        victim.start(wait=False)
        await run.healthy_again()

    await scenario(
        "multi-host: stream leader SIGKILLed, restarted",
        "kill",
        lab,
        nats3,
        functions,
        tmp_path,
        kill_leader,
        duplicate_bound(1),
    )


@full_only
async def test_rolling_restart(lab: NetLab, nats3: list[NatsServer], functions: FunctionServer, tmp_path: Path) -> None:
    async def rolling(run: Run) -> None:
        for s in run.servers:
            await asyncio.to_thread(s.stop)  # SIGTERM, then wait for it to exit
            s.start(wait=False)
            await run.healthy_again()
            run.notes[-1] = f"{s.name} restarted, {run.notes[-1]}"

    await scenario(
        "multi-host: rolling restart (SIGTERM) of all 3 nodes",
        "roll",
        lab,
        nats3,
        functions,
        tmp_path,
        rolling,
        duplicate_bound(3),
    )


BURST = 300
BURST_CONCURRENCY = 20
NETEM = "netem loss 5% delay 50ms"
# Stand-in where the kernel has no netem (CONFIG_NET_SCH_NETEM unset, as on some VM kernels): a token bucket
# far below the burst's needs, with at most 50 ms of queue. It delays packets up to 50 ms and drops what
# overflows: congestion loss, not netem's random loss.
CONGESTED = "tbf rate 1mbit burst 16kb latency 50ms"


async def impaired_burst(run: Run, qdisc: str) -> None:
    """Impair every node's link with `qdisc`, submit a burst of BURST calls (BURST_CONCURRENCY at a time) on
    top of the steady flow, then heal and wait until the cluster is healthy again."""
    for i in range(run.lab.nodes):
        run.lab.impair(i, qdisc)
    run.notes.append(f"{qdisc!r} on every node's link")
    try:
        gate = asyncio.Semaphore(BURST_CONCURRENCY)

        async def one(k: int) -> None:
            async with gate:
                await run.post(f"burst-{k}")

        t0 = time.monotonic()
        accepted = len(run.ledger.accepted)
        await asyncio.gather(*(one(k) for k in range(BURST)))
        took = time.monotonic() - t0
        sent, dropped = run.lab.qdisc_stats()
        run.notes.append(
            f"burst of {BURST} in {took:.1f}s ({len(run.ledger.accepted) - accepted} accepted meanwhile, "
            f"steady flow included); the links sent {sent} packets, dropped {dropped}"
        )
    finally:
        run.lab.heal()
    await run.healthy_again()


# Loss and delay take no node away, but may move stream or consumer leaders (missed heartbeats): allow one
# disruption per impaired link.
IMPAIRED_DUPLICATES = 3


@full_only
async def test_lossy_slow_links_during_a_burst(
    lab: NetLab, nats3: list[NatsServer], functions: FunctionServer, tmp_path: Path
) -> None:
    reason = lab.qdisc_unavailable(NETEM)
    if reason:
        pytest.skip(f"{reason}; test_congested_links_during_a_burst stands in")
    await scenario(
        "multi-host: 5% loss + 50 ms delay on every link during a burst",
        "lossy",
        lab,
        nats3,
        functions,
        tmp_path,
        lambda run: impaired_burst(run, NETEM),
        duplicate_bound(IMPAIRED_DUPLICATES),
    )


@full_only
async def test_congested_links_during_a_burst(
    lab: NetLab, nats3: list[NatsServer], functions: FunctionServer, tmp_path: Path
) -> None:
    if lab.qdisc_unavailable(NETEM) is None:
        pytest.skip("netem is available: test_lossy_slow_links_during_a_burst runs instead")
    reason = lab.qdisc_unavailable(CONGESTED)
    if reason:
        pytest.skip(reason)
    await scenario(
        "multi-host: congested links (tbf 1mbit, 50 ms queue; no netem here) during a burst",
        "congested",
        lab,
        nats3,
        functions,
        tmp_path,
        lambda run: impaired_burst(run, CONGESTED),
        duplicate_bound(IMPAIRED_DUPLICATES),
    )
