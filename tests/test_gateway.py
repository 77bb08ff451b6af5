"""The gateway and the call lifecycle, end to end: real NATS, gateway, worker, function, callback."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys

import aiohttp
import pytest
from aiohttp import web

from tests.helpers import connect, gateway_settings, running_gateway, running_worker, worker_settings
from tests.servers import eventually


async def post(http: aiohttp.ClientSession, url: str, body: bytes = b"", **headers: str) -> aiohttp.ClientResponse:
    async with http.post(url, data=body, headers=headers) as r:
        await r.read()
        return r


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as s:
        yield s


async def test_submit_to_callback_end_to_end(nats_server, functions, callbacks, http):
    async with (
        running_gateway(gateway_settings(nats_server.url)) as gw,
        running_worker(worker_settings(nats_server.url, functions.url_template)),
    ):
        base = f"http://127.0.0.1:{gw.s.http_port}"
        r = await post(
            http,
            f"{base}/async-function/echo/deep/path?x=1",
            b"hello",
            **{"X-Callback-Url": callbacks.url, "X-Call-Id": "my-call-1", "Content-Type": "text/plain"},
        )
        assert r.status == 202 and r.headers["X-Call-Id"] == "my-call-1" and int(r.headers["X-Start-Time"]) > 0
        await eventually(lambda: len(callbacks.received) == 1)
        headers, body = callbacks.received[0]
        assert headers["X-Call-Id"] == "my-call-1" and body == b"hello"
        req = functions.requests[0]
        assert req["path"] == "/deep/path" and req["query"] == "x=1"
        assert req["headers"]["Content-Type"] == "text/plain"
        async with http.get(f"{base}/async-calls/my-call-1") as s:
            record = await s.json()
        assert record["call_id"] == "my-call-1" and record["function"] == "echo" and record["queue"] == "faas-request"
        assert record["state"] == "succeeded" and record["status_code"] == 200 and record["attempt"] == 1


async def test_duplicate_call_id_runs_once(nats_server, functions, http):
    async with (
        running_gateway(gateway_settings(nats_server.url)) as gw,
        running_worker(worker_settings(nats_server.url, functions.url_template)),
    ):
        url = f"http://127.0.0.1:{gw.s.http_port}/async-function/echo"
        first = await post(http, url, b"a", **{"X-Call-Id": "same"})
        second = await post(http, url, b"a", **{"X-Call-Id": "same"})
        assert first.status == second.status == 202 and second.headers.get("X-Duplicate") == "true"
        await eventually(lambda: len(functions.completed["echo"]) == 1)
        await asyncio.sleep(0.5)
    assert functions.calls["echo"] == ["same"]


@pytest.mark.parametrize(
    ("path", "headers", "status", "reason"),
    [
        ("/async-function/Bad_Name", {}, 400, "function name"),
        ("/async-function/echo", {"X-Callback-Url": "not a url"}, 400, "X-Callback-Url"),
        ("/async-function/echo", {"X-Callback-Url": "ftp://x/y"}, 400, "X-Callback-Url"),
        ("/async-function/echo", {"X-Call-Id": "bad id!"}, 400, "X-Call-Id"),
    ],
)
async def test_bad_requests_get_4xx_with_a_reason(nats_server, http, path, headers, status, reason):
    async with running_gateway(gateway_settings(nats_server.url)) as gw:
        async with http.post(f"http://127.0.0.1:{gw.s.http_port}{path}", headers=headers) as r:
            assert r.status == status
            assert reason in (await r.json())["error"]


async def test_body_limit_and_strict_routing_and_callback_allow_list(nats_server, http, tmp_path):
    routes = tmp_path / "routes.json"
    routes.write_text(json.dumps({"routes": {"train": "ml"}, "queues": {"ml": {"streamReplicas": 1}}}))
    s = gateway_settings(
        nats_server.url,
        max_body_size=1000,
        strict_routing=True,
        routes_file=str(routes),
        callback_hosts="hooks.example",
    )
    async with running_gateway(s) as gw:
        base = f"http://127.0.0.1:{gw.s.http_port}/async-function"
        assert (await post(http, f"{base}/train", b"x" * 1001)).status == 413
        assert (await post(http, f"{base}/unknown", b"x")).status == 404
        assert (await post(http, f"{base}/train", b"x", **{"X-Callback-Url": "http://evil.internal/"})).status == 400
        ok = await post(http, f"{base}/train", b"x", **{"X-Callback-Url": "https://hooks.example/done"})
        assert ok.status == 202 and ok.headers["X-Queue"] == "ml"
    nc = await connect(nats_server.url)
    assert (await nc.jetstream().stream_info("OF_ml")).state.messages == 1
    await nc.close()


async def test_auth_bearer_and_basic(nats_server, http):
    s = gateway_settings(nats_server.url, auth_token="s3cret", auth_user="ops", auth_password="pw")
    async with running_gateway(s) as gw:
        url = f"http://127.0.0.1:{gw.s.http_port}/async-function/echo"
        r = await post(http, url)
        assert r.status == 401 and "Bearer" in r.headers["WWW-Authenticate"]
        assert (await post(http, url, Authorization="Bearer wrong")).status == 401
        assert (await post(http, url, Authorization="Bearer s3cret")).status == 202
        basic = base64.b64encode(b"ops:pw").decode()
        assert (await post(http, url, Authorization=f"Basic {basic}")).status == 202
        async with http.get(f"http://127.0.0.1:{gw.s.http_port}/healthz") as h:
            assert h.status == 200  # probes stay open
        assert "s3cret" not in repr(gw.s) and "pw'" not in repr(gw.s)


async def test_nats_down_gives_503_and_recovers_without_restart(nats_server, functions, http):
    async with running_gateway(gateway_settings(nats_server.url, publish_timeout=1.0)) as gw:
        url = f"http://127.0.0.1:{gw.s.http_port}/async-function/echo"
        accepted = []
        r = await post(http, url, b"before", **{"X-Call-Id": "before"})
        assert r.status == 202
        accepted.append("before")
        nats_server.stop()
        for i in range(5):
            r = await post(http, url, b"down", **{"X-Call-Id": f"down-{i}"})
            assert r.status == 503 and r.headers["Retry-After"]
        async with http.get(f"http://127.0.0.1:{gw.s.http_port}/readyz") as ready:
            assert ready.status == 503
        nats_server.start()

        async def submit_after() -> bool:
            resp = await post(http, url, b"after", **{"X-Call-Id": "after"})
            return resp.status == 202

        for _ in range(100):
            if await submit_after():
                break
            await asyncio.sleep(0.2)
        accepted.append("after")
        # Nothing that got a 202 was lost across the restart (file storage).
        async with running_worker(worker_settings(nats_server.url, functions.url_template)):
            await eventually(lambda: sorted(functions.completed["echo"]) == sorted(accepted), timeout=60)


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
            await eventually(lambda: "run-1" in callbacks.by_call(), timeout=10)
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
                [sys.executable, "-m", "worker", *a], env=env, capture_output=True, text=True, timeout=60, check=False
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
        after = await asyncio.to_thread(run, "dlq", "list", "faas-request")
        assert "2 dead letter(s)" in after.stdout and "job-1" not in after.stdout


async def test_purge_and_reset_say_what_they_lose(nats_server):
    async with running_gateway(gateway_settings(nats_server.url)) as gw:
        async with aiohttp.ClientSession() as http:
            for _ in range(4):
                await post(http, f"http://127.0.0.1:{gw.s.http_port}/async-function/echo", b"x")
    env = {"JETQUEUE_NATS_URL": nats_server.url, "PATH": ""}

    def run(*a: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "worker", *a], env=env, capture_output=True, text=True, timeout=60, check=False
        )

    no = await asyncio.to_thread(run, "purge", "faas-request")
    assert no.returncode == 1 and "4 queued call(s)" in no.stdout
    yes = await asyncio.to_thread(run, "purge", "faas-request", "--yes")
    assert yes.returncode == 0 and "purged 4" in yes.stdout
    gone = await asyncio.to_thread(run, "reset", "faas-request", "--yes")
    assert gone.returncode == 0 and "deleted OF_faas-request" in gone.stdout
    missing = await asyncio.to_thread(run, "purge", "faas-request", "--yes")
    assert missing.returncode == 1 and "no stream" in missing.stderr


async def test_submit_command_and_library(nats_server, functions, callbacks):
    from jetqueue.client import submit_http

    async with (
        running_gateway(gateway_settings(nats_server.url)) as gw,
        running_worker(worker_settings(nats_server.url, functions.url_template)),
    ):
        gateway = f"http://127.0.0.1:{gw.s.http_port}"
        call_id = await submit_http(gateway, "echo", b"lib", callback_url=callbacks.url)
        env = {"JETQUEUE_NATS_URL": nats_server.url, "PATH": ""}
        res = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "worker",
                "submit",
                "echo",
                "--data",
                "cli",
                "--gateway",
                gateway,
                "--header",
                "X-A=b",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert res.returncode == 0, res.stderr
        direct = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "worker", "submit", "echo", "--data", "nats"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert direct.returncode == 0, direct.stderr
        ids = {call_id, res.stdout.strip(), direct.stdout.strip()}
        await eventually(lambda: set(functions.completed["echo"]) == ids)
    bodies = sorted(r["body"] for r in functions.requests)
    assert bodies == [b"cli", b"lib", b"nats"]
