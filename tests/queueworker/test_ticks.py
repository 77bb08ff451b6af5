"""Cron ticks become calls exactly once: across redeliveries, a server firing a tick again, worker restarts
(clean and kill -9) and two workers at once. Real nats-server, real function server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections import Counter
from collections.abc import Callable
from typing import Any

from nats.js.api import DiscardPolicy, RetentionPolicy, StreamConfig

from jetqueue import contract, cron, keyvalue, provision, schedules
from jetqueue.contract import jetstream
from jetqueue.queueworker.metrics import WorkerMetrics
from jetqueue.queueworker.schedule import Mover
from jetqueue.queueworker.ticks import MAX_CATCH_UP, Tick, Ticks
from tests.helpers import connect, running_worker, start_worker, status_record, worker_env, worker_settings
from tests.servers import eventually

Q = contract.DEFAULT_QUEUE


async def record(js, name: str, queue: str = Q) -> dict[str, Any]:
    found = await keyvalue.latest(js, contract.SCHEDULE_BUCKET, contract.cron_key(queue, name))
    return json.loads(found[0]) if found else {}


async def stop_ticks(js, name: str, queue: str = Q) -> None:
    """End a schedule but keep its record, then let the tick in flight reach the queue and the queue drain."""
    await js.purge_stream(contract.schedule_stream_name(queue), subject=contract.cron_subject(queue, name))
    await asyncio.sleep(1.5)
    for _ in range(300):
        info = await js.stream_info(contract.stream_name(queue))
        due = await js.consumer_info(contract.schedule_stream_name(queue), contract.due_durable_name(queue))
        if not info.state.messages and not due.num_pending and not due.num_ack_pending:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the queue did not drain")


async def expected_ids(js, s: schedules.Schedule, queue: str = Q) -> list[str]:
    """Every tick of `s` from when it was stored to the last one recorded: the calls that must exist, once each."""
    last = (await record(js, s.name, queue))["last"]
    c = cron.parse(s.cron, s.time_zone)
    ticks = c.between(s.since, last + 1, most=10**6)
    return [contract.cron_call_id(queue, s.name, t) for t in ticks]


async def test_each_tick_is_one_call_with_its_own_id_status_and_count(nats_server, functions):
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    s = worker_settings(nats_server.url, functions.url_template)
    async with running_worker(s) as w:
        sch = await schedules.put(
            js, Q, schedules.Schedule("every-second", "echo", "* * * * * *", body=b"tick", headers={"X-Team": "a"})
        )
        await eventually(lambda: len(functions.completed["echo"]) >= 3, timeout=30)
        await schedules.remove(js, Q, "every-second")
        await asyncio.sleep(1.5)  # a tick already fired is still moved; none after
        ids = await expected_ids(js, sch) if await record(js, "every-second") else None
        ran = list(functions.calls["echo"])
        first = await status_record(nc, ran[0], Q) or {}
        ticks = w.metrics.registry.get_sample_value(
            "queue_worker_schedule_ticks_total", {"queue_name": Q, "schedule_name": "every-second", "outcome": "called"}
        )
    await nc.close()
    assert ids is None  # the record went with the schedule
    assert len(ran) == len(set(ran)) == ticks
    assert all(i.startswith(f"cron.{Q}.every-second.") for i in ran)
    assert sorted(ran) == ran
    assert first["state"] == "succeeded" and first["start"] % 10**9 == 0
    req = functions.requests[0]
    assert req["body"] == b"tick" and req["headers"]["X-Team"] == "a"
    assert not any(k.startswith("Jq-") for k in req["headers"])


async def _due_messages(js, queue: str, name: str, n: int):
    """Let a schedule fire `n` ticks with no worker, and take its due messages (unacked)."""
    await provision.ensure_stream(js, jetstream.schedule_stream(queue))
    await provision.ensure_consumer(js, jetstream.due_consumer(queue, 16))
    sch = await schedules.put(js, queue, schedules.Schedule(name, "echo", "* * * * * *"))
    stream = contract.schedule_stream_name(queue)
    psub = await js.pull_subscribe_bind(durable=contract.due_durable_name(queue), stream=stream)
    got: list[Any] = []
    while len(got) < n:
        try:
            got += await psub.fetch(n - len(got), timeout=3)
        except TimeoutError:
            pass
    await schedules.remove(js, queue, name)
    return sch, got


async def test_a_tick_delivered_again_after_the_duplicate_window_makes_no_second_call(nats_server):
    """The work stream forgets a message id after its duplicate window (1 s here); the tick's record does not."""
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(
            name=contract.stream_name(Q),
            subjects=[contract.queue_subjects(Q)],
            retention=RetentionPolicy.WORK_QUEUE,
            discard=DiscardPolicy.NEW,
            duplicate_window=1.0,
        )
    )
    _, due = await _due_messages(js, Q, "again", 2)
    mover = Mover(js, Q, ticks=Ticks(js, Q, jetstream.schedule_bucket(), WorkerMetrics()))
    for m in due:
        await mover.handle(m)
    await asyncio.sleep(1.5)
    for m in due:  # as if redelivered to another replica, or fired again by the server, after the window
        m._ackd = False
        await mover.handle(m)
    info = await js.stream_info(contract.stream_name(Q))
    await nc.close()
    assert info.state.messages == 2


async def test_ticks_the_server_missed_are_made_up_once(nats_server):
    """A gap between the last recorded tick and the one fired (the server was down, or had no leader across
    ticks: it fires once for them) gives each missed tick its call; a later redelivery of any adds none."""
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    sch, due = await _due_messages(js, Q, "gap", 1)
    tick = Tick("gap", 10_000.0, cron.parse("*/10 * * * * *"), since=0.0)
    kv = await provision.ensure_bucket(js, jetstream.schedule_bucket())
    await kv.put(contract.cron_key(Q, "gap"), json.dumps({"last": 9_950.0}).encode())
    published: list[str] = []

    async def publish(h):
        published.append(h[contract.H_CALL_ID])
        return True

    ticks = Ticks(js, Q, jetstream.schedule_bucket(), WorkerMetrics())
    await ticks.move(due[0], tick, "echo", {}, publish)
    due[0]._ackd = False
    await ticks.move(due[0], tick, "echo", {}, publish)  # delivered again: nothing more
    await nc.close()
    assert published == [contract.cron_call_id(Q, "gap", t) for t in (9_960, 9_970, 9_980, 9_990, 10_000)]
    # Not before the schedule was stored; the latest MAX_CATCH_UP at most.
    assert Tick("g", 10_000.0, cron.parse("*/10 * * * * *"), since=9_975.0).missed(9_950.0) == ([9_980.0, 9_990.0], 0)
    recent, skipped = Tick("g", 10_000.0, cron.parse("* * * * * *"), since=0.0).missed(1_000.0)
    assert len(recent) == MAX_CATCH_UP and recent[-1] == 9_999.0 and skipped == 9_000 - 1 - MAX_CATCH_UP
    assert sch.name == "gap"


async def test_a_catch_up_the_full_queue_interrupts_goes_on_where_it_stopped(nats_server):
    """The queue refuses the third made-up call: the two stored are recorded one by one, so the due message offered
    again stores the rest only, however long after (no duplicate window needed)."""
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    _, due = await _due_messages(js, Q, "full", 1)
    tick = Tick("full", 10_000.0, cron.parse("*/10 * * * * *"), since=0.0)
    kv = await provision.ensure_bucket(js, jetstream.schedule_bucket())
    await kv.put(contract.cron_key(Q, "full"), json.dumps({"last": 9_950.0}).encode())
    stored: list[str] = []
    room = [2]

    async def publish(h):
        if not room[0]:
            return False  # as the Mover does: the due message was put back
        room[0] -= 1
        stored.append(h[contract.H_CALL_ID])
        return True

    ticks = Ticks(js, Q, jetstream.schedule_bucket(), WorkerMetrics())
    await ticks.move(due[0], tick, "echo", {}, publish)
    assert (await record(js, "full"))["last"] == 9_970.0
    room[0] = 10
    await ticks.move(due[0], tick, "echo", {}, publish)
    await nc.close()
    assert stored == [contract.cron_call_id(Q, "full", t) for t in (9_960, 9_970, 9_980, 9_990, 10_000)]


async def test_two_workers_make_each_tick_once(nats_server, functions):
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    s1 = worker_settings(nats_server.url, functions.url_template)
    s2 = worker_settings(nats_server.url, functions.url_template)
    async with running_worker(s1), running_worker(s2):
        sch = await schedules.put(js, Q, schedules.Schedule("both", "echo", "* * * * * *"))
        await eventually(lambda: len(functions.completed["echo"]) >= 8, timeout=60)
        await stop_ticks(js, "both")
        want = await expected_ids(js, sch)
    await nc.close()
    ran = functions.calls["echo"]
    assert sorted(ran) == want  # each tick invoked once, by one of the two


def _worker(nats_url: str, functions, log):
    return start_worker(worker_env(nats_url, functions.url_template), log)


async def _stopped(proc) -> int:
    """SIGTERM, then wait without blocking the loop (the function server runs in it)."""
    proc.send_signal(signal.SIGTERM)
    for _ in range(600):
        if proc.poll() is not None:
            return int(proc.returncode)
        await asyncio.sleep(0.05)
    raise AssertionError("the worker did not stop")


async def test_a_worker_restarted_across_ticks_loses_and_doubles_none(nats_server, functions, tmp_path):
    """Clean restarts (SIGTERM) with ticks fired while no worker runs, then kill -9 at any moment: every tick
    from the schedule's start to the last recorded one has its call, once; only a call in flight when its worker
    was killed may be invoked again (under the same id: at-least-once invocation, as for every call)."""
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    log = tmp_path / "w.log"
    started = 0

    async def start():
        nonlocal started
        started += 1
        p = _worker(nats_server.url, functions, log)
        await eventually(lambda: log.read_bytes().count(b"worker ready") >= started, timeout=30)
        return p

    def done() -> int:
        return len(functions.completed["echo"])

    def at_least(n: int) -> Callable[[], bool]:
        return lambda: done() >= n

    proc = await start()
    sch = await schedules.put(js, Q, schedules.Schedule("restart", "echo", "* * * * * *"))
    try:
        for _ in range(2):  # clean: ticks fire meanwhile and wait in the schedule stream
            await eventually(at_least(done() + 2), timeout=30)
            assert await _stopped(proc) == 0
            await asyncio.sleep(2.5)
            proc = await start()
        clean = len(functions.calls["echo"])
        for delay in (0.3, 0.9, 1.4):  # kill -9, mid-move or mid-call
            await asyncio.sleep(delay)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            await asyncio.sleep(1.2)
            proc = await start()
        await eventually(lambda: done() >= clean + 3, timeout=60)
        await stop_ticks(js, "restart")
        await eventually(lambda: not functions.concurrent, timeout=30)
        want = await expected_ids(js, sch)
        assert await _stopped(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        await nc.close()
    ran = functions.calls["echo"]
    assert sorted(set(ran)) == want  # no tick lost, none made twice
    doubled = [i for i, n in Counter(ran).items() if n > 1]
    assert not [i for i in doubled if ran.index(i) < clean]  # the clean restarts invoked each once
    assert len(doubled) <= 3  # at most the call in flight at each kill
