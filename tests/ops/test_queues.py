"""ops/queues.py: status, purge and reset say what they lose."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import aiohttp

from tests.helpers import gateway_settings, post, running_gateway


async def test_purge_and_reset_say_what_they_lose(nats_server):
    async with running_gateway(gateway_settings(nats_server.url)) as gw:
        async with aiohttp.ClientSession() as http:
            for _ in range(4):
                await post(http, f"http://127.0.0.1:{gw.s.http_port}/async-function/echo", b"x")
    env = {"JETQUEUE_NATS_URL": nats_server.url, "PATH": ""}

    def run(*a: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "jetqueue", *a], env=env, capture_output=True, text=True, timeout=60, check=False
        )

    no = await asyncio.to_thread(run, "purge", "faas-request")
    assert no.returncode == 1 and "4 queued call(s)" in no.stdout
    yes = await asyncio.to_thread(run, "purge", "faas-request", "--yes")
    assert yes.returncode == 0 and "purged 4" in yes.stdout
    gone = await asyncio.to_thread(run, "reset", "faas-request", "--yes")
    assert gone.returncode == 0 and "deleted OF_faas-request" in gone.stdout
    missing = await asyncio.to_thread(run, "purge", "faas-request", "--yes")
    assert missing.returncode == 1 and "no stream" in missing.stderr
