"""Helpers: run a worker or gateway in the test's loop or as a process, enqueue calls by the message contract."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import nats
from nats.aio.client import Client

from jetqueue import contract
from jetqueue.contract import Call
from jetqueue.queueworker.metrics import WorkerMetrics
from jetqueue.queueworker.process import Worker
from jetqueue.settings import WorkerSettings
from tests.servers import free_port


def worker_settings(nats_url: str, function_url: str, **kw: Any) -> WorkerSettings:
    base: dict[str, Any] = {
        "nats_url": nats_url,
        "function_url": function_url,
        "http_host": "127.0.0.1",
        "http_port": free_port(),
        "initial_retry_wait": 0.2,
        "max_retry_wait": 2.0,
        "shutdown_timeout": 5.0,
    }
    base.update(kw)
    s = WorkerSettings(**base)
    s.check()
    return s


@contextlib.asynccontextmanager
async def running_worker(settings: WorkerSettings) -> AsyncIterator[Worker]:
    w = Worker(settings, WorkerMetrics())
    try:
        await w.start()
        yield w
    finally:
        await w.stop()


async def enqueue(
    nc: Client, function: str, body: bytes = b"", queue: str = contract.DEFAULT_QUEUE, **call_fields: Any
) -> str:
    call = Call(
        call_id=call_fields.pop("call_id", contract.new_call_id()),
        queue=queue,
        function=function,
        body=body,
        **call_fields,
    )
    js = nc.jetstream()
    ack = await js.publish(contract.subject(queue, function, 0, call.priority), body, headers=call.to_headers())
    assert ack.seq > 0
    return call.call_id


async def hold_function_consumers(js: Any, queue: str = contract.DEFAULT_QUEUE) -> None:
    """Function mode as while any function is paused: no shared consumer, a consumer per function with calls
    (pauses `held`, a function no test calls). The queue's stream must exist (a worker started)."""
    import io

    from jetqueue.ops import pauses

    assert await pauses.pause(js, queue, "held", None, io.StringIO()) == 0


async def flood(nc: Client, function: str, n: int, prefix: str, queue: str = contract.DEFAULT_QUEUE) -> None:
    """Store n calls of `function` fast (publishes without waiting for each PubAck; ids `<prefix><i>`), and wait
    until the stream holds them."""
    import asyncio

    js = nc.jetstream()
    stream = contract.stream_name(queue)
    before = (await js.stream_info(stream)).state.last_seq
    subject = contract.subject(queue, function)
    for i in range(n):
        call = Call(call_id=f"{prefix}{i}", queue=queue, function=function, body=b"")
        await nc.publish(subject, b"", headers=call.to_headers())
        if i % 2000 == 1999:
            await nc.flush()
    await nc.flush()
    for _ in range(600):
        if (await js.stream_info(stream)).state.last_seq >= before + n:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{n} calls of {function} not stored in 30s")


async def dead_letters(nc: Client, queue: str = contract.DEFAULT_QUEUE) -> list[Any]:
    js = nc.jetstream()
    stream = contract.dlq_stream_name(queue)
    info = await js.stream_info(stream)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1) if info.state.messages else []:
        out.append(await js.get_msg(stream, seq))
    return out


async def status_record(nc: Client, call_id: str, *queues: str, partitions: int = 1) -> dict[str, Any] | None:
    """A call's status record as the gateway finds it from its id (statuslookup.py), among `queues`."""
    from jetqueue.callstatus import QueueStatus
    from jetqueue.statuslookup import StatusLookup

    js = nc.jetstream()
    status = {q: QueueStatus.of(js, q, partitions, 3600.0) for q in queues or (contract.DEFAULT_QUEUE,)}
    entry = await StatusLookup(js, status).get(call_id)
    return entry.record if entry else None


async def connect(url: str) -> Client:
    return await nats.connect(url.split(","), max_reconnect_attempts=-1, reconnect_time_wait=0.2)


def gateway_settings(nats_url: str, **kw: Any) -> Any:
    from jetqueue.settings import GatewaySettings

    base: dict[str, Any] = {"nats_url": nats_url, "http_host": "127.0.0.1", "http_port": free_port()}
    base.update(kw)
    s = GatewaySettings(**base)
    s.check()
    return s


@contextlib.asynccontextmanager
async def running_gateway(settings: Any) -> AsyncIterator[Any]:
    import asyncio

    from jetqueue.gateway.server import Gateway

    gw = Gateway(settings)
    await gw.start()
    try:
        # Connected, and the streams of every queue it routes to set up (not just the first one's: a test may use
        # a queue's stream before it submits, e.g. pause it); generous, as the machine may be loaded.
        for _ in range(2400):
            b = gw.backend
            if b.connected and b.ready_streams and set(b.routing.queues) <= b.ready_streams:
                break
            await asyncio.sleep(0.025)
        else:
            raise AssertionError(f"gateway not ready after 60 s: streams of {sorted(gw.backend.ready_streams)} ready")
        yield gw
    finally:
        await gw.stop()


def worker_env(nats_url: str, function_url: str, **kw: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETQUEUE_")}
    env.update(
        {
            "JETQUEUE_NATS_URL": nats_url,
            "JETQUEUE_FUNCTION_URL": function_url,
            "JETQUEUE_HTTP_HOST": "127.0.0.1",
            "JETQUEUE_HTTP_PORT": str(free_port()),
            "JETQUEUE_INITIAL_RETRY_WAIT": "200ms",
            "JETQUEUE_MAX_RETRY_WAIT": "2s",
            "JETQUEUE_LOG_FORMAT": "json",
        }
    )
    env.update({f"JETQUEUE_{k.upper()}": v for k, v in kw.items()})
    return env


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "ab")
    return subprocess.Popen([sys.executable, "-m", "jetqueue", "worker"], env=env, stdout=out, stderr=out)


async def post(http: aiohttp.ClientSession, url: str, body: bytes = b"", **headers: str) -> aiohttp.ClientResponse:
    async with http.post(url, data=body, headers=headers) as r:
        await r.read()
        return r


async def consumer_back(js: Any, stream: str, name: str, timeout: float = 15.0) -> Any:
    """The info of a consumer once it exists (again), e.g. after a worker set it up anew."""
    import asyncio

    from nats.js.errors import NotFoundError

    for _ in range(int(timeout / 0.1)):
        try:
            return await js.consumer_info(stream, name)
        except NotFoundError:
            await asyncio.sleep(0.1)
    raise AssertionError(f"consumer {name} not back after {timeout}s")
