"""schedules.py: a schedule is stored as a repeating message schedule; queues.yaml's are reconciled like streams
(created, replaced when changed, removed when gone, an unchanged one left running), the CLI's left alone."""

from __future__ import annotations

import asyncio
import json

import pytest

from jetqueue import contract, provision, schedules
from jetqueue.contract import jetstream
from jetqueue.egress import Egress
from jetqueue.schedules import FROM_FILE, Schedule, ScheduleError
from tests.helpers import connect, running_worker, worker_settings
from tests.servers import eventually

Q = contract.DEFAULT_QUEUE


def declared(name: str, cron: str = "@hourly", **kw) -> Schedule:
    return Schedule(name, kw.pop("function", "report"), cron, owner=FROM_FILE, **kw)


async def applied(worker) -> None:
    """The worker applies its schedules beside its start: wait until it did."""
    assert worker._schedules is not None
    await asyncio.wait_for(worker._schedules, 30)


async def seq(js, name: str) -> int:
    return int((await js.get_last_msg(contract.schedule_stream_name(Q), contract.cron_subject(Q, name))).seq or 0)


async def test_apply_reconciles_what_queues_yaml_owns_and_leaves_the_rest(nats_server):
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    await provision.ensure_stream(js, jetstream.schedule_stream(Q))
    await schedules.put(js, Q, Schedule("by-hand", "report", "@daily"))
    await schedules.put(js, Q, Schedule("taken", "report", "@daily"))
    first = await schedules.apply(js, Q, [declared("a"), declared("b", "0 0 * * *"), declared("taken")])
    assert first == {"created": ["a", "b"], "replaced": ["taken"], "removed": [], "refused": []}
    a_seq = await seq(js, "a")
    again = await schedules.apply(js, Q, [declared("a"), declared("b", "0 0 * * *"), declared("taken")])
    assert again == {"created": [], "replaced": [], "removed": [], "refused": []}
    assert await seq(js, "a") == a_seq  # unchanged: not stored again, its ticks run on
    changed = await schedules.apply(js, Q, [declared("a", body=b"new"), declared("c", "0 0 0 31 2 *")])
    assert changed == {"created": [], "replaced": ["a"], "removed": ["b", "taken"], "refused": ["c"]}
    have = await schedules.stored(js, Q)
    assert set(have) == {"a", "by-hand"} and have["a"].body == b"new" and have["by-hand"].owner == "cli"
    assert have["a"].owner == FROM_FILE and have["a"].since > 0
    await nc.close()


async def test_the_worker_applies_its_schedules_file(nats_server, functions, tmp_path):
    path = tmp_path / "schedules.json"
    tick = {"function": "echo", "cron": "* * * * * *", "body": "hi"}
    path.write_text(json.dumps({"revision": 2, "schedules": {"tick": tick}}))
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    async with running_worker(worker_settings(nats_server.url, functions.url_template, schedules_file=str(path))):
        await eventually(lambda: len(functions.completed["echo"]) >= 2, timeout=30)
        assert (await schedules.stored(js, Q))["tick"].owner == FROM_FILE
    path.write_text(json.dumps({"revision": 1, "schedules": {}}))  # a worker of the release before: leaves them
    async with running_worker(worker_settings(nats_server.url, functions.url_template, schedules_file=str(path))) as w:
        await applied(w)
        assert set(await schedules.stored(js, Q)) == {"tick"}
    path.write_text(json.dumps({"revision": 3, "schedules": {}}))  # removed from queues.yaml: removed at start
    async with running_worker(worker_settings(nats_server.url, functions.url_template, schedules_file=str(path))) as w:
        await applied(w)
        assert await schedules.stored(js, Q) == {}
    await nc.close()
    assert functions.requests[0]["body"] == b"hi"


def test_problems_name_the_key():
    s = Schedule(
        "ok",
        "fn",
        "0 0 25 * * *",
        headers={"X-Call-Id": "x", "Bad Name": "v", "X-Callback-Url": "u", "X-Fine": "a\nb"},
        callback_url="http://169.254.169.254/",
        failure_callback_url="https://other.example/",
        body=b"x" * (schedules.MAX_BODY + 1),
    )
    problems = dict.fromkeys(k for k, _ in s.problems(Egress.parse("hooks.example", "169.254.0.0/16")))
    assert list(problems) == ["cron", "body", "headers", "callbackUrl", "failureCallbackUrl"]
    text = "; ".join(m for _, m in s.problems())
    assert "hour '25'" in text and "use callbackUrl / failureCallbackUrl" in text and "line break" in text
    with pytest.raises(ScheduleError, match="cron: hour '25'"):
        s.check()
    assert Schedule("x", "fn", "@every 1m", time_zone="Europe/Berlin").problems() == [
        ("cron", "@every counts from when the schedule was stored: it takes no time zone (leave it UTC)")
    ]
