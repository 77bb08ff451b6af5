"""client.py and `jetqueue submit`: through the gateway and straight to NATS."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from tests.helpers import gateway_settings, running_gateway, running_worker, worker_settings
from tests.servers import eventually


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
            [sys.executable, "-m", "jetqueue", "submit", "echo", "--data", "nats"],
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


async def test_submit_http_retries_under_one_id_so_a_lost_answer_never_runs_twice(nats_server, functions):
    """Every attempt against a gateway that never sees its PubAck in time stores (or finds stored) the same
    call: three tries, one run."""
    from jetqueue.client import SubmitError, submit_http

    async with (
        running_gateway(gateway_settings(nats_server.url, publish_timeout=1e-6)) as gw,
        running_worker(worker_settings(nats_server.url, functions.url_template)),
    ):
        with pytest.raises(SubmitError, match="may or may not be stored"):
            await submit_http(f"http://127.0.0.1:{gw.s.http_port}", "echo", b"once", attempts=3)
        await eventually(lambda: len(functions.completed["echo"]) == 1)
        await asyncio.sleep(1)
    assert len(functions.calls["echo"]) == 1


async def test_submit_with_delay_through_the_gateway_and_straight_to_nats(nats_server, functions):
    import time

    from jetqueue.client import submit_http, submit_nats
    from tests.helpers import connect

    async with (
        running_gateway(gateway_settings(nats_server.url)) as gw,
        running_worker(worker_settings(nats_server.url, functions.url_template)),
    ):
        t0 = time.monotonic()
        by_http = await submit_http(f"http://127.0.0.1:{gw.s.http_port}", "echo", b"a", delay=2)
        nc = await connect(nats_server.url)
        by_nats = await submit_nats(nc, "echo", b"b", delay=2)
        await nc.close()
        res = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "worker", "submit", "echo", "--delay", "2s", "--nats-url", nats_server.url],
            capture_output=True,
            text=True,
        )
        assert res.returncode == 0, res.stderr
        by_cli = res.stdout.strip()
        await eventually(lambda: sorted(functions.completed["echo"]) == sorted([by_http, by_nats, by_cli]))
        first = min(functions.times["echo"])
        assert first - t0 >= 1.9  # none ran before its time


async def test_a_concurrency_key_straight_to_nats_and_through_the_gateway(nats_server):
    from jetqueue import contract
    from jetqueue.client import SubmitError, submit_nats
    from tests.helpers import connect

    nc = await connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(name=contract.stream_name(contract.DEFAULT_QUEUE), subjects=[f"{contract.DEFAULT_QUEUE}.>"])
    await submit_nats(nc, "echo", b"", concurrency_key="customer-9")
    msg = await js.get_msg(contract.stream_name(contract.DEFAULT_QUEUE), 1)
    assert (msg.headers or {})[contract.H_CONCURRENCY_KEY] == "customer-9"
    with pytest.raises(SubmitError, match="X-Concurrency-Key"):
        await submit_nats(nc, "echo", b"", concurrency_key="has space")
    await nc.close()
    env = {"JETQUEUE_NATS_URL": nats_server.url, "PATH": ""}
    bad = [sys.executable, "-m", "jetqueue", "submit", "echo", "--concurrency-key", "a b"]
    res = await asyncio.to_thread(subprocess.run, bad, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "X-Concurrency-Key" in res.stderr
