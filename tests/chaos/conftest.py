"""The multi-host chaos fixtures: the network namespaces (one lab per module) and a fresh 3-node cluster on it for
every scenario (multihost.py is the harness)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.chaos.multihost import HEALTHY_TIMEOUT
from tests.chaos.netns import NetError, NetLab, unavailable, wait_all_healthy
from tests.servers import NatsServer


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
