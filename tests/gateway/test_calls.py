"""calls.py: status through a call's life, and cancel while queued and while running."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from jetqueue import callstatus
from jetqueue.callstatus import StatusStore
from jetqueue.contract import Call, CallState
from tests.helpers import connect, gateway_settings, post, running_gateway, running_worker, worker_settings
from tests.servers import cluster, eventually


async def test_cancel_while_queued_and_while_running(nats_server, functions, callbacks, http):
    started = asyncio.Event()

    async def slow(request, server):
        started.set()
        await asyncio.sleep(30)
        return web.Response(text="should not finish")

    functions.handlers["slow"] = slow
    async with running_gateway(gateway_settings(nats_server.url)) as gw:
        base = f"http://127.0.0.1:{gw.s.http_port}"
        cb = {"X-Callback-Url": callbacks.url}
        assert (await post(http, f"{base}/async-function/slow", b"", **{"X-Call-Id": "queued-1", **cb})).status == 202
        async with http.delete(f"{base}/async-function/queued-1") as r:
            assert r.status == 202 and (await r.json())["state"] == "cancelled"
        async with http.delete(f"{base}/async-calls/queued-1") as r:
            assert r.status == 409  # already cancelled
        async with http.delete(f"{base}/async-calls/nope") as r:
            assert r.status == 404
        async with running_worker(worker_settings(nats_server.url, functions.url_template)):
            await eventually(lambda: "queued-1" in callbacks.by_call())
            assert functions.calls["slow"] == []  # skipped, never invoked
            assert (await post(http, f"{base}/async-function/slow", b"", **{"X-Call-Id": "run-1", **cb})).status == 202
            await asyncio.wait_for(started.wait(), 30)
            for _ in range(100):
                async with http.get(f"{base}/async-calls/run-1") as s:
                    if (await s.json()).get("state") == "running":
                        break
                await asyncio.sleep(0.05)
            async with http.delete(f"{base}/async-calls/run-1") as r:
                assert r.status == 202
            await eventually(lambda: "run-1" in callbacks.by_call(), timeout=30)
        for call_id in ("queued-1", "run-1"):
            async with http.get(f"{base}/async-calls/{call_id}") as s:
                assert (await s.json())["state"] == "cancelled"
            assert callbacks.by_call()[call_id][0]["X-Call-Status"] == "cancelled"
    assert functions.completed["slow"] == []


async def test_status_walks_through_retries(nats_server, functions, http):
    state = {"n": 0}
    seen: list[tuple[str, int]] = []

    async def twice_then_ok(request, server):
        state["n"] += 1
        return web.Response(status=503 if state["n"] <= 2 else 200, text="x")

    functions.handlers["flaky"] = twice_then_ok
    async with (
        running_gateway(gateway_settings(nats_server.url)) as gw,
        running_worker(worker_settings(nats_server.url, functions.url_template, initial_retry_wait=0.6)),
    ):
        base = f"http://127.0.0.1:{gw.s.http_port}"
        assert (await post(http, f"{base}/async-function/flaky", b"", **{"X-Call-Id": "walk"})).status == 202
        records = []
        for _ in range(400):
            async with http.get(f"{base}/async-calls/walk") as s:
                rec = await s.json()
            if not seen or seen[-1] != (rec["state"], rec["attempt"]):
                seen.append((rec["state"], rec["attempt"]))
                records.append(rec)
            if rec["state"] == "succeeded":
                break
            await asyncio.sleep(0.02)
    assert seen[-1] == ("succeeded", 3) and ("retrying", 1) in seen and ("retrying", 2) in seen, seen
    assert seen.index(("retrying", 1)) < seen.index(("retrying", 2)), seen
    retrying = next(r for r in records if r["state"] == "retrying")
    assert retrying["attempt"] >= 1 and retrying["next_try"] > retrying["updated_at"] and retrying["status_code"] == 503
    assert records[-1]["attempt"] == 3 and records[-1]["status_code"] == 200


async def test_a_cancel_applies_to_the_stored_call_it_named_not_to_a_later_one_with_its_id(nats_server, functions):
    """A call cancelled while queued, then sent again under the same id (after the duplicate window, or straight
    to NATS with another message id): the cancelled one is skipped, the new one runs."""
    async with aiohttp.ClientSession() as http, running_gateway(gateway_settings(nats_server.url)) as gw:
        base = f"http://127.0.0.1:{gw.s.http_port}"
        async with http.post(f"{base}/async-function/echo", data=b"old", headers={"X-Call-Id": "again"}) as r:
            assert r.status == 202
        for _ in range(300):  # the queued record is written in the background: cancelled once it is there
            async with http.delete(f"{base}/async-calls/again") as r:
                answer = (r.status, (await r.json(content_type=None)).get("state"))
            if answer == (202, "cancelled"):
                break
            await asyncio.sleep(0.1)
        assert answer == (202, "cancelled"), answer
        nc = await connect(nats_server.url)
        await nc.jetstream().publish(
            "faas-request.echo", b"new", headers={"X-Call-Id": "again", "Nats-Msg-Id": "again-2"}
        )
        async with running_worker(worker_settings(nats_server.url, functions.url_template)):
            await eventually(lambda: functions.completed["echo"] == ["again"])
            await asyncio.sleep(0.5)
        assert [r["body"] for r in functions.requests] == [b"new"]
        async with http.get(f"{base}/async-calls/again") as r:
            assert (await r.json())["state"] == "succeeded"
        await nc.close()


@pytest.mark.slow
async def test_cancel_reaches_a_worker_that_was_reconnecting(tmp_path, functions, callbacks, http):
    """The worker's only server is down when the cancel is sent (through another server): the cancel is stored,
    and the worker learns of it when it is back. As a plain publish it was lost, and the call ran to its end."""
    started = asyncio.Event()

    async def slow(request, server):
        started.set()
        await asyncio.sleep(60)
        return web.Response(text="should not finish")

    functions.handlers["slow"] = slow
    servers = cluster(tmp_path / "cluster")
    n1, n2 = servers[0], servers[1]
    try:
        gw_settings = gateway_settings(n2.url, stream_replicas=3)
        w_settings = worker_settings(n1.url, functions.url_template, stream_replicas=3)
        async with running_gateway(gw_settings) as gw, running_worker(w_settings):
            base = f"http://127.0.0.1:{gw.s.http_port}"
            h = {"X-Call-Id": "far-1", "X-Callback-Url": callbacks.url}
            assert (await post(http, f"{base}/async-function/slow", b"", **h)).status == 202
            await asyncio.wait_for(started.wait(), 60)
            await eventually(lambda: functions.calls["slow"] == ["far-1"])
            for _ in range(100):  # the running record is written a moment after the call starts
                async with http.get(f"{base}/async-calls/far-1") as s:
                    if (await s.json()).get("state") == "running":
                        break
                await asyncio.sleep(0.05)
            n1.kill()  # the worker is cut off
            for _ in range(100):
                async with http.delete(f"{base}/async-calls/far-1") as r:
                    if r.status == 202:
                        break
                await asyncio.sleep(0.2)
            assert r.status == 202
            n1.start()
            await eventually(lambda: "far-1" in callbacks.by_call(), timeout=60)
            assert callbacks.by_call()["far-1"][0]["X-Call-Status"] == "cancelled"
        assert functions.completed["slow"] == []
    finally:
        for s in servers:
            s.stop()


async def test_a_call_sent_again_under_its_id_shows_as_queued_before_its_record_lands(nats_server, http, monkeypatch):
    """Sent again under its id once the duplicate window is over, and its submission record not stored yet (here:
    never): the gateway's own copy of it shows, not the earlier call's record, and a cancel is of this call."""

    async def not_landed(self: StatusStore, nc: object, record: object) -> None:
        return None

    monkeypatch.setattr(StatusStore, "submitted", not_landed)
    async with running_gateway(gateway_settings(nats_server.url)) as gw:
        base = f"http://127.0.0.1:{gw.s.http_port}"
        earlier = Call(call_id="again", queue="faas-request", function="echo", start_time_ns=1)
        await (
            gw.backend.queue_status("faas-request")
            .store("again")
            .update("again", callstatus.base_record(earlier, CallState.SUCCEEDED), None)
        )
        r = await post(http, f"{base}/async-function/echo", b"", **{"X-Call-Id": "again"})
        assert r.status == 202
        async with http.get(f"{base}/async-calls/again") as s:
            record = await s.json()
        assert record["state"] == "queued" and record["start"] == int(r.headers["X-Start-Time"])
        async with http.delete(f"{base}/async-calls/again") as d:
            assert d.status == 202 and (await d.json())["state"] == "cancelled"
        entry = await gw.backend.queue_status("faas-request").store("again").get("again")
        assert entry is not None and entry.record["state"] == "cancelled" and entry.record["start"] > 1
