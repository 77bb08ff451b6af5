"""leaders.py: the leaders of a queue's partitions land on different servers (a 3-node cluster on loopback)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jetqueue import contract, leaders
from jetqueue.contract import jetstream
from jetqueue.leaders import Placement
from jetqueue.queueworker import partitions as worker_partitions
from tests.helpers import connect, running_worker, worker_settings
from tests.servers import NatsServer, cluster


def test_moves_spread_leaders_and_leave_a_spread_group_alone():
    peers = ("n1", "n2", "n3")
    piled = [Placement(f"s{i}", "n1", peers) for i in range(3)]
    assert leaders.moves(piled) == [("s0", "n1", "n2"), ("s1", "n1", "n3")]
    spread = [Placement("a", "n1", peers), Placement("b", "n2", peers), Placement("c", "n3", peers)]
    assert leaders.moves(spread) == []
    assert leaders.moves([Placement("a", "n1", ("n1",)), Placement("b", "n1", ("n1",))]) == []  # R1: nowhere to go
    five = [Placement(f"s{i}", "n1", peers) for i in range(5)]  # more streams than servers: 2, 2, 1
    moved = leaders.moves(five)
    assert len(moved) == 3 and sorted(to for _, _, to in moved).count("n1") == 0


@pytest.fixture
def nats3(tmp_path: Path) -> Iterator[list[NatsServer]]:
    servers = cluster(tmp_path / "cluster")
    yield servers
    for s in servers:
        s.stop()


async def placed_apart(js: Any, streams: list[str], within: float = 30.0) -> list[Placement]:
    """The streams' placement once each has a leader of its own (or as it is when `within` has passed)."""
    deadline = time.monotonic() + within
    while True:
        found = await leaders.placement(js, streams)
        apart = len(found) == len(streams) and len({p.leader for p in found}) == len(streams)
        if (apart and all(p.leader for p in found)) or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.2)


@pytest.mark.slow  # a 3-node cluster
async def test_a_worker_spreads_its_partitions_leaders_over_the_servers(nats3, functions, monkeypatch):
    monkeypatch.setattr(worker_partitions, "CHECK_EVERY", 1.0)
    urls = ",".join(s.url for s in nats3)
    nc = await connect(urls)
    js = nc.jetstream()
    streams = [contract.stream_name("lq", p) for p in range(3)]
    for p in range(3):  # made beforehand, every leader then moved to one server (the server's election may do it)
        await js.add_stream(jetstream.work_stream("lq", 3, partition=p, partitions=3).to_nats())
    target = next(p.leader for p in await leaders.placement(js, streams) if p.leader)
    deadline = time.monotonic() + 30
    while {p.leader for p in await leaders.placement(js, streams)} != {target}:
        for placed in await leaders.placement(js, streams):
            if placed.leader and placed.leader != target:
                await leaders.step_down(js, placed.stream, target)
        assert time.monotonic() < deadline, "could not put every leader on one server"
        await asyncio.sleep(0.5)
    settings = worker_settings(urls, functions.url_template, queue="lq", partitions=3, stream_replicas=3)
    async with running_worker(settings):
        found = await placed_apart(js, streams)
        assert len({p.leader for p in found}) == 3, found
        buckets = [contract.kv_stream_name(contract.status_bucket_name("lq", k)) for k in range(3)]
        spread = await placed_apart(js, buckets)  # the queue's status buckets too
        assert len({p.leader for p in spread}) == 3, spread
    await nc.close()
