"""Changing a queue's partitions with calls in it, both ways, on a real nats-server: nothing is lost. Lowering keeps
the workers draining the partitions beyond the new count (found on the server) while gateways publish only within
it; raising adds streams, which a worker still running with the old count finds and drains too."""

from __future__ import annotations

import asyncio
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from jetqueue import contract
from jetqueue.ops.status import status
from jetqueue.queueworker import partitions as worker_partitions
from tests.helpers import connect, gateway_settings, post, running_gateway, running_worker, worker_settings
from tests.ops.test_status import rows
from tests.servers import eventually

Q = "moving"
FUNCTIONS = [f"fn-{i}" for i in range(9)]


def routes(tmp: Path, partitions: int) -> str:
    path = tmp / f"routes-{partitions}.json"
    path.write_text(json.dumps({"routes": dict.fromkeys(FUNCTIONS, Q), "queues": {Q: {"partitions": partitions}}}))
    return str(path)


@pytest.fixture
def slow(functions: Any) -> Any:
    async def handler(request: web.Request, _: Any) -> web.Response:
        await asyncio.sleep(0.02)
        return web.Response(text="ok")

    for fn in FUNCTIONS:
        functions.handlers[fn] = handler
    return functions


def done(functions: Any) -> Counter[str]:
    return Counter(c for fn in FUNCTIONS for c in functions.completed[fn])


async def submit(http: Any, gw: Any, ids: list[str], tag: str, n: int) -> None:
    for i in range(n):
        call_id = f"{tag}-{i}"
        fn = FUNCTIONS[i % len(FUNCTIONS)]
        r = await post(http, f"http://127.0.0.1:{gw.s.http_port}/async-function/{fn}", b"", **{"X-Call-Id": call_id})
        assert r.status == 202
        ids.append(call_id)


async def test_lowering_partitions_drains_the_ones_beyond(nats_server, slow, tmp_path, http, monkeypatch):
    monkeypatch.setattr(worker_partitions, "CHECK_EVERY", 0.5)
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    ids: list[str] = []
    three = worker_settings(nats_server.url, slow.url_template, queue=Q, partitions=3, max_inflight=2)
    async with running_gateway(gateway_settings(nats_server.url, routes_file=routes(tmp_path, 3))) as gw:
        await submit(http, gw, ids, "three", 90)
        async with running_worker(three):  # some run, the others stay queued on all three partitions
            await eventually(lambda: len(done(slow)) >= 10, timeout=30)
    held = {p: (await js.stream_info(contract.stream_name(Q, p))).state.messages for p in range(3)}
    assert held[1] and held[2], held
    async with running_gateway(gateway_settings(nats_server.url, routes_file=routes(tmp_path, 1))) as gw:
        out = io.StringIO()
        assert await status(js, Q, out) == 0  # the gateway set the queue up with one partition
        assert rows(out.getvalue())[(Q, "*")]["PARTITIONS"] == "1+2 draining"
        assert "beyond its 1 partition(s)" in out.getvalue()
        before = {p: (await js.stream_info(contract.stream_name(Q, p))).state.last_seq for p in (1, 2)}
        one = worker_settings(nats_server.url, slow.url_template, queue=Q, partitions=1, max_inflight=4)
        async with running_worker(one) as w:
            assert w.partitions is not None
            assert set(w.partitions.served) == {0, 1, 2}  # found on the server at start
            await submit(http, gw, ids, "one", 30)  # all into partition 0 now
            await eventually(lambda: set(done(slow)) == set(ids), timeout=60)
        after = {p: (await js.stream_info(contract.stream_name(Q, p))).state.last_seq for p in (1, 2)}
        assert after == before  # nothing new went beyond the partitions in force
    assert max(done(slow).values()) == 1 and len(done(slow)) == len(ids) == 120
    await nc.close()


async def test_raising_partitions_while_the_old_worker_runs(nats_server, slow, tmp_path, http, monkeypatch):
    monkeypatch.setattr(worker_partitions, "CHECK_EVERY", 0.5)
    nc = await connect(nats_server.url)
    ids: list[str] = []
    one = worker_settings(nats_server.url, slow.url_template, queue=Q, partitions=1, max_inflight=2)
    async with running_worker(one) as old:
        async with running_gateway(gateway_settings(nats_server.url, routes_file=routes(tmp_path, 1))) as gw:
            await submit(http, gw, ids, "one", 40)
        async with running_gateway(gateway_settings(nats_server.url, routes_file=routes(tmp_path, 3))) as gw:
            await submit(http, gw, ids, "three", 60)  # the gateway first: new partitions, old worker still at 1
            await eventually(
                lambda: old.partitions is not None and set(old.partitions.served) == {0, 1, 2}, timeout=10
            )  # it found them
            await eventually(lambda: len(done(slow)) >= 60, timeout=60)
            three = worker_settings(nats_server.url, slow.url_template, queue=Q, partitions=3, max_inflight=4)
            async with running_worker(three):  # then the workers, beside the old one
                await submit(http, gw, ids, "more", 30)
                await eventually(lambda: set(done(slow)) == set(ids), timeout=60)
    assert max(done(slow).values()) == 1 and len(ids) == 130
    info = await nc.jetstream().stream_info(contract.stream_name(Q))
    assert (info.config.metadata or {}).get("jetqueue.partitions") == "3"
    await nc.close()
