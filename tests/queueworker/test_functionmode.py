"""functionmode.py: a consumer per function, fairness, adaptive concurrency end to end; at scale: discovery only
when the stream changed, a bounded pool of consumers that functions take in turn (making and removing them:
test_functionconsumers.py)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from aiohttp import web

from jetqueue.provision import StreamSetupError
from jetqueue.queueworker import functionmode
from jetqueue.queueworker.fetch import Slots
from jetqueue.queueworker.functionmode import Function, FunctionMode
from jetqueue.queueworker.process import Worker
from tests.helpers import connect, enqueue, running_worker, worker_settings
from tests.servers import eventually


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


async def test_adaptive_versus_greedy(nats_server, functions):
    greedy_time, greedy_429 = await run_capacity_scenario(nats_server, functions, False, "greedy")
    adaptive_time, adaptive_429 = await run_capacity_scenario(nats_server, functions, True, "adaptive")
    print(
        f"500 calls, 5 per replica, replicas 1→10: greedy {greedy_time:.2f}s with {greedy_429} 429s; "
        f"adaptive {adaptive_time:.2f}s with {adaptive_429} 429s"
    )
    assert adaptive_429 < greedy_429 / 2


async def test_idle_consumers_vanish_and_come_back(nats_server, functions):
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    settings = worker_settings(nats_server.url, functions.url_template, mode="function", inactive_threshold=2.0)
    async with running_worker(settings):
        await enqueue(nc, "echo")
        await eventually(lambda: len(functions.completed["echo"]) == 1)
        names = [c.name for c in await js.consumers_info("OF_faas-request")]
        assert names == ["faas-request-fn-echo"]
        deadline = time.monotonic() + 30
        while await js.consumers_info("OF_faas-request") and time.monotonic() < deadline:  # noqa: ASYNC110 - polling the server
            await asyncio.sleep(0.25)
        assert await js.consumers_info("OF_faas-request") == []  # removed by the server when idle
        await enqueue(nc, "echo")
        await eventually(lambda: len(functions.completed["echo"]) == 2, timeout=30)
    await nc.close()


async def test_restart_reuses_consumers_and_loses_nothing(nats_server, functions):
    functions.handlers["slow"] = sleeper(0.2)
    nc = await connect(nats_server.url)
    settings = worker_settings(
        nats_server.url, functions.url_template, mode="function", max_inflight=5, inactive_threshold=60.0
    )
    async with running_worker(settings):
        ids = [await enqueue(nc, "slow") for _ in range(30)]
        await eventually(lambda: len(functions.completed["slow"]) >= 5)
    before = [c.name for c in await nc.jetstream().consumers_info("OF_faas-request")]
    async with running_worker(
        worker_settings(
            nats_server.url, functions.url_template, mode="function", max_inflight=5, inactive_threshold=60.0
        )
    ):
        await eventually(lambda: set(ids) <= set(functions.completed["slow"]), timeout=60)
    after = [c.name for c in await nc.jetstream().consumers_info("OF_faas-request")]
    assert before == after == ["faas-request-fn-slow"]
    assert sorted(functions.completed["slow"]) == sorted(ids)
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
        await enqueue(nc, long_fn)
        await enqueue(nc, "zzz")
        await eventually(lambda: len(functions.completed["zzz"]) == 1 and len(functions.completed[long_fn]) == 1)
        names = sorted(c.name for c in await js.consumers_info("OF_faas-request"))
        assert names[1] == "faas-request-fn-zzz" and len(names[0]) <= 200
    await nc.close()


async def test_a_consumer_deleted_underneath_comes_back_with_its_calls(nats_server, functions):
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    functions.handlers["slow"] = sleeper(0.5)
    async with running_worker(worker_settings(nats_server.url, functions.url_template, mode="function")):
        await enqueue(nc, "slow")
        await eventually(lambda: len(functions.completed["slow"]) == 1)
        await js.delete_consumer("OF_faas-request", "faas-request-fn-slow")
        for _ in range(3):
            await enqueue(nc, "slow")
        await eventually(lambda: len(functions.completed["slow"]) == 4, timeout=30)
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


def offline_mode(max_inflight: int, stream_info: Any = None) -> FunctionMode:
    """A FunctionMode without NATS: what it would send stays in its outbox."""
    url = "http://127.0.0.1:1/{function}"
    s = worker_settings("nats://127.0.0.1:1", url, mode="function", max_inflight=max_inflight)
    nc = SimpleNamespace(new_inbox=lambda: "_INBOX.test")
    js = SimpleNamespace(_nc=nc, _prefix="$JS.API", stream_info=stream_info)
    ctx = SimpleNamespace(observer=None)

    async def provision_streams() -> None:
        return None

    return FunctionMode(s, js, ctx, None, Slots(max_inflight), provision_streams)  # type: ignore[arg-type]


def test_the_fair_share_comes_in_turns_of_two_when_functions_outnumber_slots():
    """With more functions than slots, one call per turn would cost a pull per call: turns are of two calls, so
    the first 2 × max_inflight / 2 functions run while the others wait for their turn in order."""
    mode = offline_mode(10)
    mode.active = {"a", "b"}
    assert mode.fair() == 5
    mode.active = {f"f{i}" for i in range(100)}
    assert mode.fair() == 2
    assert offline_mode(1).fair() == 1


async def test_discovery_reads_the_subject_map_only_when_the_stream_changed(monkeypatch):
    """The stream's state is asked every DISCOVER_EVERY; its subject map (one entry per function with calls) only
    when its last sequence moved, or every RECHECK_EVERY for redeliveries."""
    monkeypatch.setattr(functionmode, "RECHECK_EVERY", 3600.0)
    asked: list[str | None] = []
    state = SimpleNamespace(last_seq=10, messages=3, subjects=None)

    async def stream_info(name: str, subjects_filter: str | None = None) -> Any:
        asked.append(subjects_filter)
        subjects = {"faas-request.a": 2, "faas-request.b": 1} if subjects_filter else None
        return SimpleNamespace(state=SimpleNamespace(**{**vars(state), "subjects": subjects}))

    mode = offline_mode(10, stream_info)
    for _ in range(3):
        await mode._discover()
    assert asked == [None, "faas-request.>", None, None]  # nothing published since: the map is not read again
    assert sorted(mode.consumers.opening) == ["a", "b"]  # one create request each, sent at once
    state.last_seq = 11
    await mode._discover()
    assert asked[-1] == "faas-request.>"


async def test_a_known_function_has_calls_to_fetch_only_beyond_those_it_runs():
    mode = offline_mode(10)
    fn = mode.functions["a"] = Function("a", "faas-request-fn-a", opened=0.0, last_message=0.0, has_work=False)
    fn.running = 2
    mode._found([("faas-request.a", 2)], now=0.0)
    assert not fn.has_work  # the two calls in the stream are the two it runs
    mode._found([("faas-request.a", 3), ("faas-request.new", 1)], now=0.0)
    assert fn.has_work and "a" in mode.working
    assert "new" in mode.consumers.opening  # a consumer is being made for the function never seen


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
        mode = w.function_modes[0]
        assert mode is not None and mode.max_consumers == 2
        await asyncio.gather(*(enqueue(nc, n, call_id=f"{n}-{i}") for i in range(30) for n in names))
        held = 0

        def all_ran() -> bool:
            nonlocal held
            held = max(held, len(mode.functions) + len(mode.consumers.opening))
            return all(functions.completed[n] for n in names)

        await eventually(all_ran, timeout=30, interval=0.01)
        done = {n: len(functions.completed[n]) for n in names}
    print(f"calls done when every function had run: {done}")
    assert max(done.values()) < 30 and held <= 2, (done, held)
    await nc.close()
