"""scheduling.py: X-Delay and X-Not-Before, parsed; and a scheduled call's life through gateway and worker."""

from __future__ import annotations

import asyncio
import time

import pytest

from jetqueue import contract
from jetqueue.gateway.scheduling import BadSchedule, not_before
from tests.helpers import connect, gateway_settings, post, running_gateway, running_worker, worker_settings
from tests.servers import eventually

NOW = 1_800_000_000.0
MONTH = 30 * 86400.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, 0.0),
        ({"X-Delay": "90s"}, NOW + 90),
        ({"X-Delay": "1h30m"}, NOW + 5400),
        ({"X-Delay": "90"}, NOW + 90),
        ({"X-Delay": "0"}, NOW),  # at once, through the schedule stream
        ({"X-Not-Before": "2027-01-15T08:01:00Z"}, NOW + 60),  # NOW is 2027-01-15T08:00:00Z
        ({"X-Not-Before": "2027-01-15T09:01:00+01:00"}, NOW + 60),
        ({"X-Not-Before": str(NOW + 60)}, NOW + 60),
        ({"X-Not-Before": "1000"}, 1000.0),  # in the past: at once, through the schedule stream
    ],
)
def test_when(headers, expected):
    assert not_before(headers, NOW, MONTH) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ({"X-Delay": "-5s"}, "not a delay"),
        ({"X-Delay": "soon"}, "not a delay"),
        ({"X-Delay": "31d"}, "not a delay"),  # Go durations have no days
        ({"X-Delay": "721h"}, "more than 720h"),
        ({"X-Not-Before": "2027-01-15T08:00:00"}, "with a zone"),
        ({"X-Not-Before": "-3"}, "not a time"),
        ({"X-Not-Before": "1e400"}, "not a time"),
        ({"X-Not-Before": str(NOW + 31 * 86400)}, "more than 720h"),
        ({"X-Delay": "5s", "X-Not-Before": str(NOW)}, "not both"),
    ],
)
def test_refused(headers, says):
    with pytest.raises(BadSchedule, match=says):
        not_before(headers, NOW, MONTH)


async def test_scheduled_call_runs_not_before_its_time(nats_server, functions, http):
    async with running_gateway(gateway_settings(nats_server.url)) as gw:
        base = f"http://127.0.0.1:{gw.s.http_port}"
        async with running_worker(worker_settings(nats_server.url, functions.url_template)):
            sent = time.time()
            r = await post(http, f"{base}/async-function/later", b"hi", **{"X-Delay": "2s", "X-Call-Id": "later-1"})
            assert r.status == 202 and r.headers["X-Not-Before"].endswith("+00:00")
            async with http.get(f"{base}/async-calls/later-1") as s:
                rec = await s.json()
            assert rec["state"] == "scheduled" and rec["not_before"] == pytest.approx(sent + 2, abs=0.5)
            await eventually(lambda: functions.completed["later"] == ["later-1"])
            invoked = time.time()
            assert invoked >= rec["not_before"]  # never early (second precision, rounded up)
            req = functions.requests[0]
            assert req["body"] == b"hi" and "X-Delay" not in req["headers"]  # ours, not the function's
            for _ in range(100):
                async with http.get(f"{base}/async-calls/later-1") as s:
                    if (await s.json())["state"] == "succeeded":
                        break
                await asyncio.sleep(0.05)
            assert (await s.json())["attempt"] == 1


async def test_scheduled_call_can_be_cancelled_before_its_time(nats_server, functions, callbacks, http):
    async with running_gateway(gateway_settings(nats_server.url)) as gw:
        base = f"http://127.0.0.1:{gw.s.http_port}"
        async with running_worker(worker_settings(nats_server.url, functions.url_template)):
            h = {"X-Delay": "1s", "X-Call-Id": "later-2", "X-Callback-Url": callbacks.url}
            assert (await post(http, f"{base}/async-function/later", b"", **h)).status == 202
            async with http.delete(f"{base}/async-calls/later-2") as r:
                assert r.status == 202 and (await r.json())["state"] == "cancelled"
            await eventually(lambda: "later-2" in callbacks.by_call())
            assert callbacks.by_call()["later-2"][0]["X-Call-Status"] == "cancelled"
    assert functions.calls["later"] == []


async def test_bad_schedule_is_400_and_nothing_is_stored(nats_server, http):
    async with running_gateway(gateway_settings(nats_server.url, max_delay=60.0)) as gw:
        base = f"http://127.0.0.1:{gw.s.http_port}"
        for h, says in (
            ({"X-Delay": "-1s"}, "not a delay"),
            ({"X-Delay": "2m"}, "1m"),
            ({"X-Not-Before": "x"}, "time"),
        ):
            async with http.post(f"{base}/async-function/later", data=b"", headers=h) as r:
                assert r.status == 400 and says in (await r.json())["error"]
        nc = await connect(nats_server.url)
        js = nc.jetstream()
        q = contract.DEFAULT_QUEUE
        for stream in (contract.stream_name(q), contract.schedule_stream_name(q)):
            assert (await js.stream_info(stream)).state.messages == 0
        await nc.close()


async def test_a_retried_scheduled_submission_runs_once_even_after_its_time(nats_server, functions, http):
    """A client retrying under the same id once the time has passed: both copies go through the schedule
    stream, where the second is a duplicate (it used to go straight to the queue and run twice)."""
    async with running_gateway(gateway_settings(nats_server.url)) as gw:
        url = f"http://127.0.0.1:{gw.s.http_port}/async-function/once"
        at = f"{time.time() + 1:.3f}"
        h = {"X-Call-Id": "order-42", "X-Not-Before": at}
        assert (await post(http, url, b"", **h)).status == 202
        await asyncio.sleep(2.5)
        again = await post(http, url, b"", **h)
        assert again.status == 202 and again.headers.get("X-Duplicate") == "true"
        async with running_worker(worker_settings(nats_server.url, functions.url_template)):
            await eventually(lambda: functions.completed["once"] == ["order-42"])
            await asyncio.sleep(1)
    assert functions.calls["once"] == ["order-42"]
