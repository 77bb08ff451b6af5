"""Priorities (contract/priorities.py, queueworker/priorities.py): X-Priority high, normal, low on a queue with
`priorities: true`, against a real nats-server: a backed-up queue starts its high calls first and its low calls
never starve, a level survives a held retry, the gateway refuses what no stream takes, and switching priorities
off or to function mode loses no call."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from nats.js.errors import NoStreamResponseError

from jetqueue import contract, pauses, provision
from jetqueue.client import submit_nats
from jetqueue.contract import Priority, jetstream
from jetqueue.pauses import FOREVER, Pause
from jetqueue.queueworker.metrics import WorkerMetrics
from jetqueue.queueworker.priorities import Turns
from jetqueue.queueworker.process import Worker
from tests.helpers import connect, enqueue, gateway_settings, running_gateway, running_worker, worker_settings
from tests.servers import FunctionServer, eventually

Q = contract.DEFAULT_QUEUE


def test_while_every_level_waits_calls_start_4_2_1():
    turns = Turns()
    loops = {level: turns.turn(level) for level in contract.LEVELS}
    for turn in loops.values():  # every level waits for a slot
        assert not turn.may(free=False)
    for i in range(700):  # then a slot frees, and the levels ask in any order: one is granted, and starts a call
        asking = list(loops.items())
        asking = asking[i % 3 :] + asking[: i % 3]
        granted = next(level for level, turn in asking if turn.may())  # it takes the slot: none is left
        loops[granted].took(1)
        for _, turn in asking:  # every level has more calls: each waits for the next slot
            assert not turn.may(free=False)
    started = turns.started
    assert started[Priority.HIGH] == pytest.approx(400, abs=8)
    assert started[Priority.NORMAL] == pytest.approx(200, abs=8)
    assert started[Priority.LOW] == pytest.approx(100, abs=8)


def test_a_level_back_after_a_quiet_time_takes_no_more_than_its_share():
    turns = Turns()
    high, low = turns.turn(Priority.HIGH), turns.turn(Priority.LOW)
    for _ in range(1000):  # low alone for a long time: its pass runs far ahead
        assert low.may()
        low.took(1)
    order = []
    assert not low.may(free=False)
    for _ in range(50):  # then high has calls too: both wait, and each free slot goes by the turns
        level, turn = next((level, turn) for level, turn in ((Priority.HIGH, high), (Priority.LOW, low)) if turn.may())
        turn.took(1)
        order.append(level)
        for other in (high, low):
            assert not other.may(free=False)
    # High came back: it gets 4 of every 5 calls from the start, low is not held back for its 1,000 calls.
    assert Counter(order[:25])[Priority.LOW] >= 3
    assert Counter(order)[Priority.HIGH] == pytest.approx(4 * Counter(order)[Priority.LOW], abs=4)


class Slow:
    """A function that records the order its calls start in, by the body (the level name)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.order: list[str] = []

    async def __call__(self, request: web.Request, _: FunctionServer) -> web.Response:
        self.order.append((await request.read()).decode())
        await asyncio.sleep(self.seconds)
        return web.Response(text="ok")


async def test_a_backed_up_queue_runs_high_first_and_low_is_never_starved(nats_server, functions):
    fn = functions.handlers["pf"] = Slow(0.01)
    s = worker_settings(nats_server.url, functions.url_template, priorities=True, max_inflight=2)
    nc = await connect(nats_server.url)
    async with running_worker(s):
        pass  # the streams and the levels' consumers exist: the backlog is queued before a worker runs
    for level in (Priority.LOW, Priority.NORMAL, Priority.HIGH):  # queued last, the high calls
        for _ in range(70):
            await enqueue(nc, "pf", level.value.encode(), priority=level)
    async with running_worker(s) as w:
        await eventually(lambda: len(functions.completed["pf"]) == 210, timeout=120)
        started = dict(w.turns.started)
    first = Counter(fn.order[:70])
    print(f"first 70 calls started: {dict(first)}; started by level: {started}")
    assert first["high"] > first["normal"] > first["low"] > 0  # high first; low not starved meanwhile
    assert first["high"] >= 30
    assert fn.order.index("low") < fn.order.index("high") + 70  # low started while high calls still waited
    assert started == {Priority.HIGH: 70, Priority.NORMAL: 70, Priority.LOW: 70}
    await nc.close()


async def test_a_held_retry_keeps_its_level(nats_server, functions):
    attempts: list[str] = []

    async def flaky(request: web.Request, _: FunctionServer) -> web.Response:
        attempts.append(request.headers.get("X-Call-Id", ""))
        return web.Response(status=500 if len(attempts) == 1 else 200)

    functions.handlers["rf"] = flaky
    s = worker_settings(nats_server.url, functions.url_template, priorities=True, initial_retry_wait=1.0)
    nc = await connect(nats_server.url)
    async with running_worker(s) as w:
        call_id = await enqueue(nc, "rf", b"", priority=Priority.HIGH)
        await eventually(lambda: functions.completed["rf"] == [call_id], timeout=60)
        assert w.turns.started[Priority.HIGH] == 2  # both attempts from the high level's consumer
        assert w.turns.started[Priority.NORMAL] == 0
    await nc.close()


def routes(tmp_path: Path, priorities: bool) -> str:
    path = tmp_path / f"routes-{priorities}.json"
    path.write_text(json.dumps({"routes": {}, "queues": {Q: {"priorities": priorities}}}))
    return str(path)


async def test_the_gateway_takes_a_level_only_where_a_stream_does(nats_server, functions, tmp_path):
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    async with running_gateway(gateway_settings(nats_server.url, routes_file=routes(tmp_path, False))) as gw:
        url = f"http://127.0.0.1:{gw.s.http_port}/async-function/gf"
        async with aiohttp.ClientSession() as http:
            async with http.post(url, headers={"X-Priority": "high"}) as r:
                assert r.status == 400 and "priorities" in (await r.json())["error"]
            async with http.post(url, headers={"X-Priority": "urgent"}) as r:
                assert r.status == 400 and "high, normal, low" in (await r.json())["error"]
            async with http.post(url, headers={"X-Priority": "Normal"}) as r:
                assert r.status == 202
    async with running_gateway(gateway_settings(nats_server.url, routes_file=routes(tmp_path, True))) as gw:
        url = f"http://127.0.0.1:{gw.s.http_port}/async-function/gf"
        async with aiohttp.ClientSession() as http:
            async with http.post(url, headers={"X-Priority": "high"}) as r:  # the workers add the levels, not it
                assert r.status == 503 and "nothing was stored" in (await r.json())["error"]
            async with running_worker(worker_settings(nats_server.url, functions.url_template, priorities=True)):
                pass
            for level in ("high", "LOW"):
                async with http.post(url, headers={"X-Priority": level}) as r:
                    assert r.status == 202, await r.text()
    info = await js.stream_info(contract.stream_name(Q), subjects_filter=">")
    assert info.state.subjects == {f"{Q}_HI.gf": 1, f"{Q}_LO.gf": 1}  # the normal one ran meanwhile
    await nc.close()


async def test_priorities_turned_on_then_off_lose_no_call(nats_server, functions):
    nc = await connect(nats_server.url)
    plain = worker_settings(nats_server.url, functions.url_template)
    async with running_worker(plain):
        pass  # the unfiltered consumer of a queue without priorities
    leveled = worker_settings(nats_server.url, functions.url_template, priorities=True)
    async with running_worker(leveled):  # narrows it to normal calls and adds the levels' consumers
        pass
    ids = [await enqueue(nc, "of", level.value.encode(), priority=level) for level in contract.LEVELS]
    async with running_worker(plain) as w:  # off again: the stream keeps the levels, and they are served
        await eventually(lambda: sorted(functions.completed["of"]) == sorted(ids), timeout=60)
        assert set(w.turns.started) == set(contract.LEVELS)
    info = await nc.jetstream().stream_info(contract.stream_name(Q))
    assert set(info.config.subjects or []) == set(jetstream.work_stream(Q, priorities=True).subjects)
    await nc.close()


async def test_function_mode_refuses_a_stream_with_calls_of_a_level_and_drops_empty_levels(nats_server, functions):
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    async with running_worker(worker_settings(nats_server.url, functions.url_template, priorities=True)):
        pass
    call_id = await enqueue(nc, "ff", b"", priority=Priority.LOW)
    s = worker_settings(nats_server.url, functions.url_template, mode="function")

    async def refused(reason: str) -> None:
        w = Worker(s, WorkerMetrics())
        with pytest.raises(provision.StreamSetupError, match=reason):
            await w.start()
        await w.stop()

    async def remove_consumers() -> None:  # the static workers stopped: their consumers removed
        for consumer in await js.consumers_info(contract.stream_name(Q)):
            await js.delete_consumer(contract.stream_name(Q), consumer.name)

    await refused(f"static-mode consumers {Q}-workers, {Q}-workers-high, {Q}-workers-low")  # nothing changed
    assert set((await js.stream_info(contract.stream_name(Q))).config.subjects or []) == {
        f"{Q}.>",
        f"{Q}_HI.>",
        f"{Q}_LO.>",
    }
    await remove_consumers()
    await refused(r"1 call.*priority")
    assert (await js.stream_info(contract.stream_name(Q))).state.messages == 1  # still there
    async with running_worker(worker_settings(nats_server.url, functions.url_template)):  # priorities off: found
        await eventually(lambda: functions.completed["ff"] == [call_id], timeout=30)  # static drains it
    await remove_consumers()
    async with running_worker(s):  # then function mode: the empty levels' subjects are gone
        assert (await js.stream_info(contract.stream_name(Q))).config.subjects == [f"{Q}.>"]
        with pytest.raises(NoStreamResponseError):  # a high call now fails loudly instead of waiting for ever
            await submit_nats(nc, "ff", b"", priority="high")
        held = await submit_nats(nc, "ff", b"", delay=1.0, headers={"X": "y"})
        await eventually(lambda: held in functions.completed["ff"], timeout=30)
    await nc.close()


async def test_a_call_held_with_a_level_is_moved_as_normal_where_no_level_is_served(nats_server, functions):
    nc = await connect(nats_server.url)
    async with running_worker(worker_settings(nats_server.url, functions.url_template, mode="function")) as w:
        call = contract.Call(call_id=contract.new_call_id(Q), queue=Q, function="hf", priority=Priority.HIGH)
        subject, headers = contract.held_message(call, call.to_headers(), time.time() + 1, call.call_id)
        await nc.jetstream().publish(subject, b"", headers=headers)  # held before the switch to function mode
        await eventually(lambda: functions.completed["hf"] == [call.call_id], timeout=30)
        assert not w.turns.started
    await nc.close()


async def test_a_high_call_behind_a_low_backlog_waits_for_a_few_of_them_not_all(nats_server, functions):
    fn = functions.handlers["bf"] = Slow(0.005)
    s = worker_settings(nats_server.url, functions.url_template, priorities=True, max_inflight=10)
    nc = await connect(nats_server.url)
    async with running_worker(s):
        pass  # the streams and the levels' consumers: the backlog is queued before a worker runs
    for _ in range(2000):
        await enqueue(nc, "bf", b"low", priority=Priority.LOW)
    async with running_worker(s):
        await eventually(lambda: len(fn.order) >= 50, timeout=60)  # the worker is busy with the low backlog
        before = len(fn.order)
        await enqueue(nc, "bf", b"high", priority=Priority.HIGH)
        await eventually(lambda: "high" in fn.order, timeout=60)
        behind = fn.order.index("high") - before
        left = 2000 - fn.order.index("high")  # low calls not started yet when it started
    print(f"the high call started after {behind} more low calls; {left} low calls still queued")
    assert left > 500 and behind < 100  # it did not wait for the backlog
    await nc.close()


async def test_a_queue_pause_holds_every_level(nats_server, functions):
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    async with running_worker(worker_settings(nats_server.url, functions.url_template, priorities=True)):
        pass
    stream, now = contract.stream_name(Q), datetime.now(UTC)
    changed = await pauses.bring_consumers(js, Q, stream, contract.durable_name(Q), [Pause(Q, "", FOREVER, now)], now)
    assert sorted(name for name, _ in changed) == [f"{Q}-workers", f"{Q}-workers-high", f"{Q}-workers-low"]
    await nc.close()


def test_a_level_back_after_an_idle_time_starts_at_the_last_turn_given():
    turns = Turns()
    high, low = turns.turn(Priority.HIGH), turns.turn(Priority.LOW)
    for _ in range(4000):  # high alone, then the queue empties
        assert high.may()
        high.took(1)
    high.idle()
    assert low.may()  # a low batch comes first, alone
    low.took(1)
    assert not low.may(free=False)
    order = []
    for _ in range(50):  # then high calls too
        level, turn = next((lv, t) for lv, t in ((Priority.HIGH, high), (Priority.LOW, low)) if t.may())
        turn.took(1)
        order.append(level)
        for other in (high, low):
            assert not other.may(free=False)
    assert order.index(Priority.HIGH) <= 1  # not behind the low level's 1,000 calls of credit
    assert Counter(order)[Priority.HIGH] == pytest.approx(40, abs=3)


class Long:
    """A function whose `long` body takes `seconds`, every other one 10 ms."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.short = 0  # short calls done
        self.short_before_long = -1  # short calls done when the long one ended (-1: it has not)

    async def __call__(self, request: web.Request, _: FunctionServer) -> web.Response:
        long = await request.read() == b"long"
        await asyncio.sleep(self.seconds if long else 0.01)
        self.short += not long
        if long:
            self.short_before_long = self.short
        return web.Response(text="ok")


async def test_a_level_with_a_call_running_and_none_queued_holds_no_slot(nats_server, functions):
    fn = functions.handlers["lf"] = Long(4.0)
    s = worker_settings(nats_server.url, functions.url_template, priorities=True, max_inflight=2)
    nc = await connect(nats_server.url)
    async with running_worker(s):
        await enqueue(nc, "lf", b"long", priority=Priority.HIGH)
        await eventually(lambda: functions.concurrent == 1, timeout=30)
        for _ in range(100):
            await enqueue(nc, "lf", b"short")
        await eventually(lambda: fn.short == 100 and fn.short_before_long >= 0, timeout=60)
    print(f"100 normal calls of 10 ms beside one high call of 4 s on 2 slots: {fn.short_before_long} done before it")
    assert fn.short_before_long == 100  # on the one free slot while the high call ran, not after it
    await nc.close()


async def test_jetqueue_submit_takes_a_level(nats_server, functions):
    async with running_worker(worker_settings(nats_server.url, functions.url_template, priorities=True)):
        pass
    env = {**os.environ, "JETQUEUE_NATS_URL": nats_server.url}
    argv = [sys.executable, "-m", "jetqueue", "submit", "cf", "--priority", "low"]
    res = await asyncio.to_thread(subprocess.run, argv, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    nc = await connect(nats_server.url)
    info = await nc.jetstream().stream_info(contract.stream_name(Q), subjects_filter=">")
    assert info.state.subjects == {f"{Q}_LO.cf": 1}
    await nc.close()


async def test_a_full_worker_leaves_a_new_high_call_to_an_idle_replica(nats_server, functions):
    fn = functions.handlers["wf"] = Long(6.0)
    s = functools.partial(worker_settings, nats_server.url, functions.url_template, priorities=True, max_inflight=1)
    nc = await connect(nats_server.url)
    async with running_worker(s()):
        await enqueue(nc, "wf", b"long")
        await eventually(lambda: functions.concurrent == 1, timeout=30)  # its one slot is taken for 6 s
        async with running_worker(s()):
            await asyncio.sleep(1.5)  # both look for calls
            high = await enqueue(nc, "wf", b"short", priority=Priority.HIGH)
            await eventually(lambda: high in functions.completed["wf"], timeout=30)
            assert fn.short_before_long == -1  # the idle replica ran it: the full one did not hold it for 6 s
    await nc.close()
