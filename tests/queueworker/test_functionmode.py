"""functionmode.py: which consumers serve the queue (the shared one while no function needs its own, one per function
otherwise, and back), fairness, adaptive concurrency end to end, and at scale a bounded pool of function consumers
that functions take in turn (making and removing them: test_functionconsumers.py; the shared consumer:
test_sharedconsumer.py)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web

from jetqueue import contract
from jetqueue.provision import StreamSetupError
from jetqueue.queueworker import functionmode
from jetqueue.queueworker.fetch import Slots
from jetqueue.queueworker.functiondispatch import Lane
from jetqueue.queueworker.functionmode import FunctionMode
from jetqueue.queueworker.process import Worker
from jetqueue.queueworker.sharedconsumer import State
from tests.helpers import connect, enqueue, flood, hold_function_consumers, running_worker, worker_settings
from tests.servers import eventually

STREAM = "OF_faas-request"
SHARED = contract.shared_consumer_name("faas-request")


async def consumer_names(js) -> list[str]:
    return sorted(c.name for c in await js.consumers_info(STREAM))


def sleeper(seconds: float):
    async def handler(request, server):
        await asyncio.sleep(seconds)
        return web.Response(text="ok")

    return handler


async def b_completion_time(nats_server, functions, mode: str, backlog: int, wait: float) -> float | None:
    """Queue `backlog` calls for slow A, then 20 for B; seconds until B's 20 complete (None: not in `wait`)."""
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    functions.completed.clear()
    settings = worker_settings(
        nats_server.url, functions.url_template, mode=mode, max_inflight=10, adaptive_concurrency=False
    )
    async with running_worker(settings):
        await asyncio.sleep(0.2)
        for start in range(0, backlog, 500):
            await asyncio.gather(
                *(
                    js.publish("faas-request.a", b"", headers={"Nats-Msg-Id": f"{mode}-{backlog}-a{i}"})
                    for i in range(start, min(backlog, start + 500))
                )
            )
        t0 = time.monotonic()
        for i in range(20):
            await enqueue(nc, "b", call_id=f"{mode}-{backlog}-b{i}")
        deadline = t0 + wait
        while time.monotonic() < deadline and len(functions.completed["b"]) < 20:  # noqa: ASYNC110 - polling a test server
            await asyncio.sleep(0.02)
        took = time.monotonic() - t0 if len(functions.completed["b"]) == 20 else None
        await js.purge_stream("OF_faas-request")
    await nc.close()
    return took


def capacity_function(state: dict[str, float]):
    """At most 5 concurrent calls per replica, 429 beyond; replicas grow 1 → 10 over the run."""

    async def handler(request, server):
        replicas = min(10, 1 + int((time.monotonic() - state["t0"]) / state["step"]))
        if state["running"] >= 5 * replicas:
            state["rejected"] += 1
            return web.Response(status=429, text="busy")
        state["running"] += 1
        try:
            await asyncio.sleep(0.05)
            return web.Response(text="ok")
        finally:
            state["running"] -= 1

    return handler


async def run_capacity_scenario(nats_server, functions, adaptive: bool, name: str) -> tuple[float, int]:
    state = {"t0": time.monotonic(), "step": 0.3, "running": 0, "rejected": 0}
    functions.handlers[name] = capacity_function(state)
    nc = await connect(nats_server.url)
    settings = worker_settings(
        nats_server.url,
        functions.url_template,
        mode="function",
        max_inflight=50,
        adaptive_concurrency=adaptive,
        initial_retry_wait=0.1,
        max_retry_wait=0.5,
        max_retry_attempts=1000,
    )
    async with running_worker(settings):
        await asyncio.gather(*(enqueue(nc, name, call_id=f"{name}-{i}") for i in range(500)))
        state["t0"] = time.monotonic()
        await eventually(lambda: len(functions.completed[name]) == 500, timeout=120)
        took = time.monotonic() - state["t0"]
    await nc.close()
    return took, int(state["rejected"])


async def test_fairness_a_backlog_does_not_starve_b(nats_server, functions):
    functions.handlers["a"] = sleeper(0.02)
    functions.handlers["b"] = sleeper(0.02)
    idle = await b_completion_time(nats_server, functions, "function", 0, 30)
    fair = await b_completion_time(nats_server, functions, "function", 5000, 30)
    nc = await connect(nats_server.url)
    for c in await nc.jetstream().consumers_info("OF_faas-request"):  # make room for the static consumer
        await nc.jetstream().delete_consumer("OF_faas-request", c.name)
    await nc.close()
    static = await b_completion_time(nats_server, functions, "static", 5000, 5)
    print(
        f"B's 20 calls: idle {idle:.2f}s, behind 5000 A calls: function mode {fair:.2f}s, "
        f"static mode {'not done after 5s' if static is None else f'{static:.2f}s'}"
    )
    assert idle is not None and fair is not None
    assert fair < max(2.0, 10 * idle)  # a small multiple of idle (generous: a shared machine)
    assert static is None or static > 3 * fair


async def test_a_100_000_call_backlog_arriving_while_shared_does_not_starve_another_function(nats_server, functions):
    """The shared consumer serves in stream order: once a's calls outnumber max_inflight, a gets a consumer of its
    own and b's calls, behind 100,000 of a's in the stream, are not held back by them."""
    functions.handlers["a"] = sleeper(0.02)
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    settings = worker_settings(
        nats_server.url, functions.url_template, mode="function", max_inflight=10, adaptive_concurrency=False
    )
    async with running_worker(settings):
        await enqueue(nc, "b", call_id="b-first")
        await eventually(lambda: functions.completed["b"] == ["b-first"])
        assert await consumer_names(js) == [SHARED]
        t0 = time.monotonic()
        await enqueue(nc, "b", call_id="b-idle")
        await eventually(lambda: len(functions.completed["b"]) == 2, interval=0.01)
        idle = time.monotonic() - t0
        await flood(nc, "a", 100_000, "a-")
        t0 = time.monotonic()
        ids = [await enqueue(nc, "b", call_id=f"b-{i}") for i in range(20)]
        await eventually(lambda: set(ids) <= set(functions.completed["b"]), timeout=30, interval=0.01)
        behind = time.monotonic() - t0
        assert contract.function_consumer_name("faas-request", "a") in await consumer_names(js)
        await js.purge_stream(STREAM)
    print(f"b's 20 calls behind 100,000 of a: {behind:.2f}s (one call when idle: {idle:.3f}s)")
    assert behind < max(3.0, 20 * idle)  # bounded: not after a's backlog (generous: a shared machine)
    await nc.close()


async def test_a_function_s_calls_running_on_the_shared_consumer_do_not_run_again_when_it_closes(
    nats_server, functions
):
    """The hand-over: when another function's backlog closes the shared consumer, s's calls it had delivered are
    still running; s's own consumer, which would deliver them again, is made only once they are done."""
    functions.handlers["s"] = sleeper(1.5)
    nc = await connect(nats_server.url)
    settings = worker_settings(
        nats_server.url, functions.url_template, mode="function", max_inflight=10, adaptive_concurrency=False
    )
    async with running_worker(settings) as w:
        s_ids = [await enqueue(nc, "s", call_id=f"s-{i}") for i in range(8)]
        await eventually(lambda: len(functions.calls["s"]) == 8)  # all running, delivered by the shared consumer
        x_ids = await asyncio.gather(*(enqueue(nc, "x", call_id=f"x-{i}") for i in range(30)))
        mode = w.function_mode
        assert mode is not None
        await eventually(lambda: mode.parts[STREAM].shared.state is not State.OPEN, timeout=10)
        await eventually(lambda: set(x_ids) <= set(functions.completed["x"]) and len(functions.completed["s"]) >= 8)
        for i in range(3):
            await enqueue(nc, "s", call_id=f"s-late-{i}")
            s_ids.append(f"s-late-{i}")
        await eventually(lambda: set(s_ids) <= set(functions.completed["s"]), timeout=30)
        await asyncio.sleep(1.0)  # a call delivered twice would be running by now
    assert sorted(functions.calls["s"]) == sorted(s_ids)
    assert sorted(functions.calls["x"]) == sorted(x_ids)
    await nc.close()


async def test_after_a_split_the_function_consumers_go_and_the_shared_consumer_comes_back(nats_server, functions):
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    functions.handlers["hot"] = sleeper(0.05)
    settings = worker_settings(
        nats_server.url, functions.url_template, mode="function", max_inflight=5, inactive_threshold=60.0
    )
    async with running_worker(settings):
        seen: set[str] = set()

        async def watch() -> None:
            while True:
                seen.update(await consumer_names(js))
                await asyncio.sleep(0.05)

        watcher = asyncio.create_task(watch())
        ids = await asyncio.gather(*(enqueue(nc, "hot", call_id=f"hot-{i}") for i in range(30)))
        await eventually(lambda: set(ids) <= set(functions.completed["hot"]), timeout=30)
        watcher.cancel()
        assert contract.function_consumer_name("faas-request", "hot") in seen  # 30 calls, max_inflight 5: its own
        await enqueue(nc, "echo", call_id="after")
        await eventually(lambda: functions.completed["echo"] == ["after"], timeout=10)
        names: list[str] = []
        for _ in range(100):  # long before idle_exit (30 s) would remove hot's consumer
            names = await consumer_names(js)
            if names == [SHARED]:
                break
            await asyncio.sleep(0.1)
        assert names == [SHARED], names
    await nc.close()


async def test_adaptive_versus_greedy(nats_server, functions):
    greedy_time, greedy_429 = await run_capacity_scenario(nats_server, functions, False, "greedy")
    adaptive_time, adaptive_429 = await run_capacity_scenario(nats_server, functions, True, "adaptive")
    print(
        f"500 calls, 5 per replica, replicas 1→10: greedy {greedy_time:.2f}s with {greedy_429} 429s; "
        f"adaptive {adaptive_time:.2f}s with {adaptive_429} 429s"
    )
    assert adaptive_429 < greedy_429 / 2


async def test_idle_function_consumers_vanish_and_come_back(nats_server, functions):
    """While function consumers serve the queue, an idle one is removed by the server (inactive_threshold), and
    made again for the function's next call."""
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    settings = worker_settings(nats_server.url, functions.url_template, mode="function", inactive_threshold=2.0)
    async with running_worker(settings):
        await hold_function_consumers(js)
        await enqueue(nc, "echo")
        await eventually(lambda: len(functions.completed["echo"]) == 1)
        assert await consumer_names(js) == ["faas-request-fn-echo"]
        deadline = time.monotonic() + 30
        while await js.consumers_info(STREAM) and time.monotonic() < deadline:  # noqa: ASYNC110 - polling the server
            await asyncio.sleep(0.25)
        assert await js.consumers_info(STREAM) == []  # removed by the server when idle
        await enqueue(nc, "echo")
        await eventually(lambda: len(functions.completed["echo"]) == 2, timeout=30)
    await nc.close()


@pytest.mark.parametrize("calls", [4, 30])
async def test_restart_reuses_consumers_and_loses_nothing(nats_server, functions, calls):
    """A worker stopped while calls run and wait (4: on the shared consumer; 30 > max_inflight: on the function's
    own) and another started: every call runs once."""
    functions.handlers["slow"] = sleeper(0.2)
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    settings = worker_settings(
        nats_server.url, functions.url_template, mode="function", max_inflight=5, inactive_threshold=60.0
    )
    async with running_worker(settings):
        ids = [await enqueue(nc, "slow") for _ in range(calls)]
        await eventually(lambda: len(functions.calls["slow"]) >= 3)
        before = await consumer_names(js)
    assert before == [SHARED if calls < 5 else contract.function_consumer_name("faas-request", "slow")]
    async with running_worker(
        worker_settings(
            nats_server.url, functions.url_template, mode="function", max_inflight=5, inactive_threshold=60.0
        )
    ):
        await eventually(lambda: set(ids) <= set(functions.completed["slow"]), timeout=60)
        await asyncio.sleep(0.5)
    assert sorted(functions.calls["slow"]) == sorted(ids)
    await nc.close()


async def test_static_and_function_mode_refuse_to_share_a_stream(nats_server, functions):
    async with running_worker(worker_settings(nats_server.url, functions.url_template)):
        w = Worker(worker_settings(nats_server.url, functions.url_template, mode="function"))
        try:
            await w.start()
            raise AssertionError("function mode started next to a static consumer")
        except StreamSetupError as e:
            assert "static" in str(e) and "both" in str(e)
        finally:
            await w.stop()


async def test_one_function_s_failure_stays_with_it(nats_server, functions):
    """A 253-character function name (the gateway accepts it) is too long for a plain consumer name: it gets a
    hashed one, and the functions sorted after it are served as before."""
    long_fn = "a" + "b" * 251 + "c"
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    async with running_worker(worker_settings(nats_server.url, functions.url_template, mode="function")):
        await hold_function_consumers(js)
        await enqueue(nc, long_fn)
        await enqueue(nc, "zzz")
        await eventually(lambda: len(functions.completed["zzz"]) == 1 and len(functions.completed[long_fn]) == 1)
        names = await consumer_names(js)
        assert names[1] == "faas-request-fn-zzz" and len(names[0]) <= 200
    await nc.close()


@pytest.mark.parametrize("own", [False, True], ids=["shared", "own"])
async def test_a_consumer_deleted_underneath_comes_back_with_its_calls(nats_server, functions, own):
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    functions.handlers["slow"] = sleeper(0.5)
    async with running_worker(worker_settings(nats_server.url, functions.url_template, mode="function")):
        if own:
            await hold_function_consumers(js)
        await enqueue(nc, "slow")
        await eventually(lambda: len(functions.completed["slow"]) == 1)
        name = contract.function_consumer_name("faas-request", "slow") if own else SHARED
        await js.delete_consumer(STREAM, name)
        for _ in range(3):
            await enqueue(nc, "slow")
        await eventually(lambda: len(functions.completed["slow"]) == 4, timeout=30)
        assert name in await consumer_names(js)
    await nc.close()


async def test_attempt_counts_survive_idle_periods_of_a_waiting_retry(nats_server, functions):
    """A call waiting longer than inactive_threshold for its retry must keep its attempt count: the consumer
    holding it is not given up while it has calls pending, so three attempts mean three, then a dead letter."""

    async def busy(request, server):
        return web.Response(status=503)

    functions.handlers["busy"] = busy
    nc = await connect(nats_server.url)
    settings = worker_settings(
        nats_server.url,
        functions.url_template,
        mode="function",
        inactive_threshold=1.0,
        max_retry_attempts=3,
        initial_retry_wait=2.5,
        max_retry_wait=2.5,
    )
    async with running_worker(settings) as w:
        await enqueue(nc, "busy")
        await eventually(
            lambda: w.metrics.dead_letters.labels("faas-request", "busy", "exhausted")._value.get() == 1, timeout=30
        )
        await asyncio.sleep(3)
    assert len(functions.calls["busy"]) == 3
    await nc.close()


async def test_a_function_only_waiting_on_retries_gives_its_slots_to_functions_with_work(nats_server, functions):
    async def busy(request, server):
        return web.Response(status=503)

    functions.handlers["busy"] = busy
    functions.handlers["slow"] = sleeper(0.5)
    nc = await connect(nats_server.url)
    settings = worker_settings(
        nats_server.url,
        functions.url_template,
        mode="function",
        max_inflight=10,
        adaptive_concurrency=False,
        initial_retry_wait=30.0,
        max_retry_wait=30.0,
    )
    async with running_worker(settings):
        await enqueue(nc, "busy")
        await eventually(lambda: len(functions.calls["busy"]) == 1)  # now it only waits 30 s for its retry
        await asyncio.sleep(1)
        functions.max_concurrent = 0
        for _ in range(40):
            await enqueue(nc, "slow")
        await eventually(lambda: len(functions.completed["slow"]) == 40, timeout=30)
    assert functions.max_concurrent >= 9, functions.max_concurrent  # not half of max_inflight
    await nc.close()


async def test_max_inflight_holds_across_functions_fetching_at_once(nats_server, functions):
    """Idle loops each waiting on a pull for the whole max_inflight must not together start more than it."""
    for name in ("f1", "f2", "f3"):
        functions.handlers[name] = sleeper(1.0)
    nc = await connect(nats_server.url)
    settings = worker_settings(
        nats_server.url, functions.url_template, mode="function", max_inflight=6, adaptive_concurrency=False
    )
    async with running_worker(settings) as w:
        for name in ("f1", "f2", "f3"):  # each gets a consumer and an idle loop first
            await enqueue(nc, name)
        await eventually(lambda: sum(len(functions.completed[n]) for n in ("f1", "f2", "f3")) == 3, timeout=20)
        peak = 0

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, w.slots.used)
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch())
        functions.max_concurrent = 0
        await asyncio.gather(*(enqueue(nc, n) for n in ("f1", "f2", "f3") for _ in range(10)))
        await eventually(lambda: sum(len(functions.completed[n]) for n in ("f1", "f2", "f3")) == 33, timeout=30)
        watcher.cancel()
    assert peak <= 6 and functions.max_concurrent <= 6, (peak, functions.max_concurrent)
    await nc.close()


def offline_mode(max_inflight: int, stream_info: Any = None, paused: bool = False) -> FunctionMode:
    """A FunctionMode without NATS: what it would send stays in its outbox."""
    url = "http://127.0.0.1:1/{function}"
    s = worker_settings("nats://127.0.0.1:1", url, mode="function", max_inflight=max_inflight)
    nc = SimpleNamespace(new_inbox=lambda: "_INBOX.test")
    js = SimpleNamespace(_nc=nc, _prefix="$JS.API", stream_info=stream_info)
    ctx = SimpleNamespace(observer=None)

    async def provision_streams() -> None:
        return None

    return FunctionMode(s, js, ctx, None, Slots(max_inflight), provision_streams, function_paused=lambda: paused)  # type: ignore[arg-type]


def test_the_fair_share_comes_in_turns_of_two_when_functions_outnumber_slots():
    """With more functions than slots, one call per turn would cost a pull per call: turns are of two calls, so
    the first 2 × max_inflight / 2 functions run while the others wait for their turn in order."""
    dispatch = offline_mode(10).dispatch
    dispatch.active = {"a", "b"}
    assert dispatch.fair() == 5
    dispatch.active = {f"f{i}" for i in range(100)}
    assert dispatch.fair() == 2
    assert offline_mode(1).dispatch.fair() == 1


def test_a_function_gets_a_consumer_of_its_own_past_max_inflight_its_adaptive_limit_or_a_pause():
    mode = offline_mode(10)
    assert not mode.must_split({f"f{i}": 2 for i in range(5000)})  # the long tail: the shared consumer
    assert not mode.must_split({"a": 10, "b": 1})
    assert mode.must_split({"a": 11, "b": 1})  # more than can run at once: the others would wait behind it
    for _ in range(3):
        mode.adaptive.record("a", 200, False, 1)
    assert mode.adaptive.ceiling("a") is None and not mode.must_split({"a": 8})  # slow start is no limit
    mode.adaptive.record("a", 429, False, 4)  # a 429 at 4 in flight: its limit is known now
    assert mode.must_split({"a": 8}) and not mode.must_split({"a": 1})
    assert offline_mode(10, paused=True).must_split({})


async def test_a_known_function_has_calls_to_fetch_only_beyond_those_it_runs():
    mode = offline_mode(10)
    part = mode.parts[STREAM]
    part.shared.state = State.ABSENT
    lane = Lane(STREAM, "faas-request-fn-a", "a", opened=0.0, last_message=0.0, has_work=False)
    mode.functions[(STREAM, "a")] = lane
    lane.running = 2
    part.discovery.counts = {"a": 2, "hot": 11}  # hot: more than max_inflight, so consumers of their own
    mode._decide(part, now=0.0)
    assert not lane.has_work  # the two calls in the stream are the two it runs
    part.discovery.counts = {"a": 3, "hot": 11, "new": 1}
    mode._decide(part, now=0.0)
    assert lane.has_work and lane in mode.dispatch.working
    assert "new" in part.consumers.opening  # a consumer is being made for the function never seen


async def test_going_back_to_the_shared_consumer_new_functions_wait_for_it_a_while():
    mode = offline_mode(10)
    part = mode.parts[STREAM]
    part.shared.state = State.ABSENT
    lanes = {}
    for name in ("a", "b"):
        lane = lanes[name] = Lane(STREAM, f"faas-request-fn-{name}", name, opened=0.0, last_message=0.0, has_work=False)
        lane.running = 1
        mode.functions[(STREAM, name)] = lane
    part.discovery.counts = {"a": 1, "b": 1, "new": 1}  # nobody needs a consumer of their own now
    mode._decide(part, now=0.0)
    assert not part.consumers.opening and not part.shared.asking  # new waits; a's and b's consumers are still there
    lanes["b"].running = 0
    mode.dispatch.settle(lanes["b"])  # drained: given up at once
    assert (STREAM, "b") not in mode.functions and "b" in part.consumers.closing
    mode._decide(part, now=functionmode.CONSOLIDATE_WAIT + 0.1)  # a still runs: function consumers again
    assert "new" in part.consumers.opening and not part.shared.asking


async def test_nothing_is_made_before_the_shared_consumer_s_state_is_known():
    mode = offline_mode(10)
    part = mode.parts[STREAM]
    part.discovery.counts = {"a": 50}
    mode._decide(part, now=0.0)
    assert not part.consumers.opening and not part.shared.asking
    part.shared.state = State.OPEN
    mode._decide(part, now=0.0)
    assert part.shared.asking and not part.consumers.opening  # closing it first: a's consumer would overlap


async def test_functions_take_turns_when_more_have_calls_than_consumers(nats_server, functions, monkeypatch):
    """Five functions with a backlog each and consumers for two: each holds one for ROTATE_AFTER, then gives it
    up after its running call, so every function runs before any has run its whole backlog."""
    monkeypatch.setattr(functionmode, "MIN_CONSUMERS", 2)
    monkeypatch.setattr(functionmode, "ROTATE_AFTER", 0.3)
    names = [f"t{i}" for i in range(5)]
    for name in names:
        functions.handlers[name] = sleeper(0.05)
    nc = await connect(nats_server.url)
    settings = worker_settings(
        nats_server.url, functions.url_template, mode="function", max_inflight=1, adaptive_concurrency=False
    )
    async with running_worker(settings) as w:
        mode = w.function_mode
        assert mode is not None and mode.max_consumers == 2
        await asyncio.gather(*(enqueue(nc, n, call_id=f"{n}-{i}") for i in range(30) for n in names))
        held = 0

        def all_ran() -> bool:
            nonlocal held
            held = max(held, len(mode.functions) + len(mode.parts[STREAM].consumers.opening))
            return all(functions.completed[n] for n in names)

        await eventually(all_ran, timeout=30, interval=0.01)
        done = {n: len(functions.completed[n]) for n in names}
    print(f"calls done when every function had run: {done}")
    assert max(done.values()) < 30 and held <= 2, (done, held)
    await nc.close()
