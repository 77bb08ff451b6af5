"""ops/deadletters.py: list, show, replay and purge dead letters."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys

import aiohttp
from aiohttp import web

from jetqueue import contract, provision
from jetqueue.contract import jetstream
from jetqueue.ops import deadletters
from tests.helpers import connect, enqueue, gateway_settings, post, running_gateway, running_worker, worker_settings
from tests.servers import eventually


async def test_dlq_list_and_replay(nats_server, functions, tmp_path):
    broken = {"on": True}

    async def maybe(request, server):
        return web.Response(status=500 if broken["on"] else 200, text="fixed" if not broken["on"] else "broken")

    functions.handlers["batch"] = maybe
    async with (
        running_gateway(gateway_settings(nats_server.url)) as gw,
        running_worker(
            worker_settings(nats_server.url, functions.url_template, max_retry_attempts=2, initial_retry_wait=0.1)
        ),
    ):
        async with aiohttp.ClientSession() as http:
            for i in range(3):
                url = f"http://127.0.0.1:{gw.s.http_port}/async-function/batch"
                assert (await post(http, url, b"job", **{"X-Call-Id": f"job-{i}"})).status == 202
        await eventually(lambda: len(functions.calls["batch"]) == 6)
        await asyncio.sleep(0.3)
        env = {"JETQUEUE_NATS_URL": nats_server.url, "PATH": ""}

        def run(*a: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "jetqueue", *a], env=env, capture_output=True, text=True, timeout=60, check=False
            )

        listed = await asyncio.to_thread(run, "dlq", "list", "faas-request")
        assert listed.returncode == 0, listed.stderr
        assert "3 dead letter(s)" in listed.stdout and "job-1" in listed.stdout and "exhausted" in listed.stdout
        status = await asyncio.to_thread(run, "status")
        assert "faas-request" in status.stdout and "DEAD LETTERS" in status.stdout
        refused = await asyncio.to_thread(run, "dlq", "replay", "faas-request")
        assert refused.returncode == 1 and "without --yes" in refused.stdout
        broken["on"] = False
        replayed = await asyncio.to_thread(run, "dlq", "replay", "faas-request", "--call-id", "job-1", "--yes")
        assert replayed.returncode == 0 and "replayed 1" in replayed.stdout
        await eventually(lambda: functions.completed["batch"] == ["job-1"])
        state: dict[str, object] = {}
        async with aiohttp.ClientSession() as http:
            for _ in range(100):  # a replay starts afresh: its attempts, and its status record
                async with http.get(f"http://127.0.0.1:{gw.s.http_port}/async-calls/job-1") as r:
                    state = await r.json()
                if state.get("state") == "succeeded":
                    break
                await asyncio.sleep(0.05)
        assert state["state"] == "succeeded" and state["attempt"] == 1, state
        after = await asyncio.to_thread(run, "dlq", "list", "faas-request")
        assert "2 dead letter(s)" in after.stdout and "job-1" not in after.stdout


async def test_reasons_are_counted_among_the_latest_dead_letters(nats_server):
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    assert await deadletters.count_reason(js, "q", "expired") == deadletters.Tally()  # no dead-letter stream
    await provision.ensure_dlq_stream(js, jetstream.dead_letter_stream("q"))
    for function, reason in (("a", "expired"), ("a", "exhausted"), ("b", "expired"), ("a", "expired")):
        await js.publish(contract.dlq_subject("q", function), b"x" * 1000, headers={contract.H_DLQ_REASON: reason})
    tally = await deadletters.count_reason(js, "q", "expired")
    assert (tally.per_function, tally.scanned, tally.total, tally.complete) == ({"a": 2, "b": 1}, 4, 4, True)
    latest = await deadletters.count_reason(js, "q", "expired", limit=2)
    assert (latest.per_function, latest.complete) == ({"a": 1, "b": 1}, False)
    assert [c.name for c in await js.consumers_info("OF_q_DLQ")] == []  # the reading consumer is removed
    await nc.close()


async def test_a_replayed_callback_that_fails_again_is_a_dead_letter_again(nats_server, functions, callbacks):
    """A replayed callback gets its own dead letter id: with the first one's, the server would drop its dead
    letter as a duplicate and the callback would be gone."""
    callbacks.status = 400
    nc = await connect(nats_server.url)
    queue = contract.DEFAULT_QUEUE

    async def callback_dead_letters() -> list[deadletters.DeadLetter]:
        return await deadletters.dead_letters(nc.jetstream(), queue, contract.CALLBACK_DLQ_FUNCTION)

    async with running_worker(worker_settings(nats_server.url, functions.url_template)):
        await enqueue(nc, "echo", call_id="rejected", callback_url=callbacks.url)
        for _ in range(100):
            if await callback_dead_letters():
                break
            await asyncio.sleep(0.1)
        assert (
            await deadletters.dlq_replay(nc, queue, contract.CALLBACK_DLQ_FUNCTION, None, lambda _: True, io.StringIO())
            == 0
        )
        for _ in range(100):
            if await callback_dead_letters():
                break
            await asyncio.sleep(0.1)
    (again,) = await callback_dead_letters()
    assert again.headers[contract.H_DLQ_REASON] == "rejected"
    await nc.close()


async def test_two_replays_of_one_dead_letter_at_once_run_it_once_and_neither_fails(nats_server):
    """Two operators (or a double click on the dashboard's Replay) replay the same dead letter at once: both read it
    before either removes it. The second publish is the first's duplicate (same Nats-Msg-Id), and its delete finds
    the dead letter gone: that is done, not an error."""
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    await provision.ensure_stream(js, jetstream.work_stream("q"))
    await provision.ensure_dlq_stream(js, jetstream.dead_letter_stream("q"))
    headers = {contract.H_CALL_ID: "c-1", contract.H_DLQ_REASON: "exhausted", contract.H_DLQ_SUBJECT: "q.fn"}
    await js.publish(contract.dlq_subject("q", "fn"), b"job", headers=headers)
    yes = lambda _: True  # noqa: E731
    codes = await asyncio.gather(*(deadletters.dlq_replay(nc, "q", None, "c-1", yes, io.StringIO()) for _ in range(2)))
    assert codes == [0, 0]
    assert (await js.stream_info("OF_q")).state.messages == 1
    assert (await js.stream_info("OF_q_DLQ")).state.messages == 0
    await nc.close()
