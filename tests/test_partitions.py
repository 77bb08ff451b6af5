"""A partitioned queue end to end on a real nats-server: the gateway and `submit_nats` choose the same partition,
one function's calls keep their order, and status, cancel, pause, dead letters, scheduled calls, held retries and
`jetqueue status|purge|reset|dlq` work across every partition."""

from __future__ import annotations

import asyncio
import io
import json
from functools import partial
from pathlib import Path
from typing import Any

from aiohttp import web

from jetqueue import contract
from jetqueue.client import submit_nats
from jetqueue.ops import deadletters, queues
from jetqueue.ops import pauses as ops_pauses
from jetqueue.ops.status import status
from tests.helpers import connect, gateway_settings, post, running_gateway, running_worker, worker_settings
from tests.ops.test_status import rows
from tests.servers import eventually

Q, N = "pq", 3
FUNCTIONS = [f"fn-{i}" for i in range(9)]


def routes(tmp: Path, partitions: int = N, queue: str = Q, functions: list[str] = FUNCTIONS) -> str:
    path = tmp / f"routes-{queue}-{partitions}.json"
    table = {"routes": dict.fromkeys(functions, queue), "queues": {queue: {"partitions": partitions}}}
    path.write_text(json.dumps(table))
    return str(path)


async def stored(js: Any, queue: str = Q, partitions: int = N) -> dict[int, int]:
    """Calls each partition's stream holds now."""
    return {p: (await js.stream_info(contract.stream_name(queue, p))).state.messages for p in range(partitions)}


def yes(question: str) -> bool:
    return True


async def test_gateway_and_submit_nats_choose_the_same_partition_and_keep_order(nats_server, functions, tmp_path, http):
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    table = routes(tmp_path, functions=[*FUNCTIONS, "ordered"])
    async with running_gateway(gateway_settings(nats_server.url, routes_file=table)) as gw:
        url = f"http://127.0.0.1:{gw.s.http_port}/async-function"
        for fn in FUNCTIONS:  # no worker yet: each call stays where it was stored
            before = await stored(js)
            assert (await post(http, f"{url}/{fn}", b"gw")).status == 202
            await submit_nats(nc, fn, b"nats", queue=Q, partitions=N)
            gained = {p: n - before[p] for p, n in (await stored(js)).items()}
            assert gained == {p: 2 if p == contract.choose_partition(fn, N) else 0 for p in range(N)}, fn
        assert set(contract.choose_partition(fn, N) for fn in FUNCTIONS) == set(range(N))  # every partition used
        keyed = contract.choose_partition("", N, "tenant-7")
        before = await stored(js)
        for fn in FUNCTIONS[:3]:  # a key puts calls of different functions together
            assert (await post(http, f"{url}/{fn}", b"k", **{contract.PARTITION_KEY: "tenant-7"})).status == 202
        assert (await stored(js))[keyed] - before[keyed] == 3
        bad = await post(http, f"{url}/{FUNCTIONS[0]}", b"", **{contract.PARTITION_KEY: "has space"})
        assert bad.status == 400
        for i in range(20):  # one function's calls: one partition, in order
            assert (await post(http, f"{url}/ordered", b"", **{"X-Call-Id": f"pq-ord-{i:02d}"})).status == 202
    settings = worker_settings(nats_server.url, functions.url_template, queue=Q, partitions=N, max_inflight=1)
    async with running_worker(settings):
        await eventually(lambda: len(functions.calls["ordered"]) == 20, timeout=30)
        await eventually(lambda: sum(len(functions.calls[f]) for f in FUNCTIONS) == 2 * len(FUNCTIONS) + 3)
    assert functions.calls["ordered"] == [f"pq-ord-{i:02d}" for i in range(20)]
    await nc.close()


async def test_a_partitioned_queue_end_to_end(nats_server, functions, tmp_path, http):
    """Status, pause, cancel, dead letters and their replay, scheduled calls, held retries, status/purge/reset."""
    tries: dict[str, int] = {}

    async def rejected(request: web.Request, _: Any) -> web.Response:
        return web.Response(status=400, text="no")

    async def flaky(request: web.Request, _: Any) -> web.Response:  # 503 once: a retry held for its time
        call_id = request.headers["X-Call-Id"]
        tries[call_id] = tries.get(call_id, 0) + 1
        return web.Response(status=503 if tries[call_id] == 1 else 200)

    functions.handlers["fn-bad"] = rejected
    functions.handlers["fn-flaky"] = flaky
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    table = routes(tmp_path, functions=[*FUNCTIONS, "fn-bad", "fn-flaky"])
    settings = worker_settings(
        nats_server.url, functions.url_template, queue=Q, partitions=N, initial_retry_wait=2.0, max_retry_wait=2.0
    )
    async with running_gateway(gateway_settings(nats_server.url, routes_file=table)) as gw:
        base = f"http://127.0.0.1:{gw.s.http_port}"

        async def state(call_id: str) -> str:
            async with http.get(f"{base}/async-calls/{call_id}") as r:
                return str((await r.json()).get("state")) if r.status == 200 else str(r.status)

        async def submit(fn: str, call_id: str, **headers: str) -> None:
            r = await post(http, f"{base}/async-function/{fn}", b"x", **{"X-Call-Id": call_id, **headers})
            assert r.status == 202, call_id

        assert await ops_pauses.pause(js, Q, "", None, io.StringIO()) == 0  # before any worker: every partition
        async with running_worker(settings):
            for fn in FUNCTIONS:
                await submit(fn, f"paused-{fn}")
            await asyncio.sleep(1.5)
            assert not any(functions.calls[fn] for fn in FUNCTIONS)  # paused on every partition
            assert set(await stored(js)) == set(range(N)) and all((await stored(js)).values())
            out = io.StringIO()
            assert await status(js, Q, out) == 0
            row = rows(out.getvalue())[(Q, "*")]
            assert row["PARTITIONS"] == "3" and row["PENDING"] == str(len(FUNCTIONS)) and row["LEADER"] == "n1,n1,n1"
            cancelled = f"paused-{FUNCTIONS[4]}"
            async with http.delete(f"{base}/async-calls/{cancelled}") as r:
                assert r.status == 202
            assert await ops_pauses.resume(js, Q, "", io.StringIO()) == 0

            def finished(c: str) -> bool:
                return any(c in functions.completed[fn] for fn in FUNCTIONS)

            others = [f"paused-{fn}" for fn in FUNCTIONS if f"paused-{fn}" != cancelled]

            for call_id in others:
                await eventually(partial(finished, call_id), timeout=20)
            assert cancelled not in [c for fn in FUNCTIONS for c in functions.calls[fn]]
            assert await state(cancelled) == "cancelled" and {await state(c) for c in others} == {"succeeded"}

            await submit("fn-bad", "bad-1")
            await submit(FUNCTIONS[1], "later-1", **{"X-Delay": "1s"})  # the Mover puts it into its partition
            await submit("fn-flaky", "flaky-1")  # its retry is held for 2 s in OF_pq_SCHED, then moved back
            await eventually(lambda: "later-1" in functions.completed[FUNCTIONS[1]], timeout=20)
            await eventually(lambda: "flaky-1" in functions.completed["fn-flaky"], timeout=20)
            assert tries["flaky-1"] == 2 and await state("flaky-1") == "succeeded"
            await eventually(lambda: "bad-1" in functions.calls["fn-bad"], timeout=20)
            for _ in range(100):
                if await state("bad-1") == "failed":
                    break
                await asyncio.sleep(0.1)
            assert await state("bad-1") == "failed"
            functions.handlers.pop("fn-bad")  # replayed, it succeeds: back on its partition
            assert await deadletters.dlq_replay(nc, Q, "fn-bad", None, yes, io.StringIO()) == 0
            await eventually(lambda: "bad-1" in functions.completed["fn-bad"], timeout=20)
        for call_id in ("a", "b", "c"):  # no worker: they wait, on their partitions
            await submit(FUNCTIONS[ord(call_id) - ord("a")], f"left-{call_id}")
    out = io.StringIO()
    assert await queues.purge(js, Q, yes, out) == 0 and "purged 3 call(s)" in out.getvalue()
    assert sum((await stored(js)).values()) == 0
    out = io.StringIO()
    assert await queues.reset(js, Q, yes, out) == 0
    assert all(contract.stream_name(Q, p) in out.getvalue() for p in range(N))
    assert not [s.config.name for s in await js.streams_info() if contract.queue_of_stream(s.config.name or "") == Q]
    await nc.close()


async def test_function_mode_takes_calls_from_every_partition(nats_server, functions, tmp_path, http):
    """One function mode serves every partition: a part each, with its shared consumer on its own subjects."""
    nc = await connect(nats_server.url)
    settings = worker_settings(nats_server.url, functions.url_template, queue=Q, partitions=N, mode="function")
    async with running_worker(settings) as w:
        assert w.function_mode is not None and len(w.function_mode.parts) == N
        ids = [await submit_nats(nc, fn, b"", queue=Q, partitions=N) for fn in FUNCTIONS for _ in range(3)]
        await eventually(lambda: sorted(c for fn in FUNCTIONS for c in functions.completed[fn]) == sorted(ids))
        js = nc.jetstream()
        for p in {contract.choose_partition(fn, N) for fn in FUNCTIONS}:  # each partition's shared consumer, on its own
            info = await js.consumer_info(contract.stream_name(Q, p), contract.shared_consumer_name(Q))  # subjects
            assert info.config.filter_subject in (contract.queue_subjects(Q, p), contract.closed_subject(Q, p))
    await nc.close()


async def test_a_crowded_function_gets_its_consumer_on_its_partition(nats_server, functions):
    """More calls of one function than max_inflight: the partition's shared consumer closes and the function's own
    consumer, on its partition's stream, filters its partition's subject."""
    fn = FUNCTIONS[1]
    p = contract.choose_partition(fn, N)
    assert p != 0  # a partition of its own naming: <queue>_P<p>
    hold = asyncio.Event()

    async def slow(request: web.Request, server: Any) -> web.Response:
        await hold.wait()
        return web.Response(text="ok")

    functions.handlers[fn] = slow
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    settings = worker_settings(
        nats_server.url, functions.url_template, queue=Q, partitions=N, mode="function", max_inflight=2
    )
    async with running_worker(settings):
        ids = [await submit_nats(nc, fn, b"", queue=Q, partitions=N) for _ in range(8)]

        async def own_consumer() -> bool:
            try:
                info = await js.consumer_info(contract.stream_name(Q, p), contract.function_consumer_name(Q, fn))
            except Exception:
                return False
            return bool(info.config.filter_subject == contract.subject(Q, fn, p))

        for _ in range(300):
            if await own_consumer():
                break
            await asyncio.sleep(0.1)
        assert await own_consumer()
        hold.set()
        await eventually(lambda: sorted(functions.completed[fn]) == sorted(ids), timeout=30)
    await nc.close()


async def test_the_shared_consumer_hand_over_on_a_partition_runs_no_call_twice(nats_server, functions):
    """The function-mode hand-over on partition >= 1: a function's own consumer is made only once its calls running
    on the closed shared consumer are done (its first call is looked up on the partition's subject)."""
    on_p1 = [fn for fn in (f"h-{i}" for i in range(200)) if contract.choose_partition(fn, N) == 1][:2]
    slow_fn, busy_fn = on_p1

    async def slow(request: web.Request, server: Any) -> web.Response:
        await asyncio.sleep(1.5)
        return web.Response(text="ok")

    functions.handlers[slow_fn] = slow
    nc = await connect(nats_server.url)
    settings = worker_settings(
        nats_server.url,
        functions.url_template,
        queue=Q,
        partitions=N,
        mode="function",
        max_inflight=10,
        adaptive_concurrency=False,
    )
    async with running_worker(settings):
        slow_ids = [await submit_nats(nc, slow_fn, b"", queue=Q, partitions=N) for _ in range(8)]
        await eventually(lambda: len(functions.calls[slow_fn]) == 8)  # running, from the shared consumer
        busy_ids = [await submit_nats(nc, busy_fn, b"", queue=Q, partitions=N) for _ in range(30)]  # closes it
        await eventually(lambda: set(busy_ids) <= set(functions.completed[busy_fn]), timeout=30)
        await eventually(lambda: set(slow_ids) <= set(functions.completed[slow_fn]), timeout=30)
        await asyncio.sleep(2.0)  # a call delivered twice would have run by now
    assert sorted(functions.calls[slow_fn]) == sorted(slow_ids)
    assert sorted(functions.calls[busy_fn]) == sorted(busy_ids)
    await nc.close()
