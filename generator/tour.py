"""The demo's tour of time, after the burst: a scheduled call, a call's result (sent twice under one idempotency
key), a cron schedule's ticks, and a queue paused and resumed, each shown as it happens (`jetqueue dev` /
`make demo`)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import Any

import aiohttp

DELAY = 3  # seconds the scheduled call waits
PAUSED_CALLS = 3
PAUSED_FOR = 2.0  # seconds the tour shows the paused queue holding its calls
WAIT = 60.0
CRON = "*/2 * * * * *"  # every 2 seconds
CRON_TICKS = 2


class TourError(RuntimeError):
    pass


async def tour(gateway: str, callback: str, nats_url: str, callbacks: dict[str, Any], queues: dict[str, Any]) -> None:
    """`callbacks`: call id -> what the sample receiver got (filled as callbacks arrive)."""
    async with aiohttp.ClientSession() as http:
        await _scheduled(http, gateway, callback, callbacks)
        await _result(http, gateway, callback, callbacks, nats_url)
        await _cron(callback, callbacks, nats_url, _default_queue(queues))
        queue, function = _slow_queue(queues)
        await _paused(http, gateway, callback, callbacks, nats_url, queue, function)


def _say(text: str) -> None:
    print(text, flush=True)


async def _submit(http: aiohttp.ClientSession, gateway: str, function: str, body: bytes, **headers: str) -> str:
    async with http.post(f"{gateway}/async-function/{function}", data=body, headers=headers) as r:
        if r.status != 202:
            raise TourError(f"gateway answered {r.status}: {await r.text()}")
        return r.headers["X-Call-Id"]


async def _state(http: aiohttp.ClientSession, gateway: str, call_id: str) -> dict[str, Any]:
    async with http.get(f"{gateway}/async-calls/{call_id}") as r:
        return dict(await r.json())


async def _called_back(callbacks: dict[str, Any], call_ids: list[str]) -> None:
    deadline = time.monotonic() + WAIT
    while not all(c in callbacks for c in call_ids):
        if time.monotonic() > deadline:
            raise TourError(f"no callback after {WAIT:.0f}s for {[c for c in call_ids if c not in callbacks]}")
        await asyncio.sleep(0.05)


async def _scheduled(http: aiohttp.ClientSession, gateway: str, callback: str, callbacks: dict[str, Any]) -> None:
    t0 = time.monotonic()
    call_id = await _submit(http, gateway, "echo", b"later", **{"X-Delay": f"{DELAY}s", "X-Callback-Url": callback})
    state = await _state(http, gateway, call_id)
    when = time.strftime("%H:%M:%S", time.localtime(state.get("not_before", 0)))
    _say(f"\nscheduled call: X-Delay: {DELAY}s → 202 at once, status {state['state']!r}, runs not before {when}")
    await _called_back(callbacks, [call_id])
    _say(f"  it ran and called back {time.monotonic() - t0:.1f}s after it was sent (never before its time)")


async def _result(
    http: aiohttp.ClientSession, gateway: str, callback: str, callbacks: dict[str, Any], nats_url: str
) -> None:
    body, key = b'{"order": 42}', f"demo-order-{time.time_ns()}"  # a key of its own each run: a new call
    headers = {"Idempotency-Key": key, "X-Callback-Url": callback, "Content-Type": "application/json"}
    call_id = await _submit(http, gateway, "echo", body, **headers)
    again = await _submit(http, gateway, "echo", body, **headers)
    _say(f"\nresult: the same call sent twice with Idempotency-Key: {key} → one call, {call_id}")
    if again != call_id:
        raise TourError(f"the repeat under Idempotency-Key {key} answered another call: {again}")
    await _called_back(callbacks, [call_id])
    async with http.get(f"{gateway}/async-calls/{call_id}/result") as r:
        got, status = await r.read(), r.headers.get("X-Function-Status")
    if got != body:
        raise TourError(f"GET /async-calls/{call_id}/result answered {got[:80]!r}, not the function's answer")
    _say(f"  GET /async-calls/{call_id}/result → function status {status}, body {got.decode()}")
    _say(f"  jetqueue result {call_id}:")
    await asyncio.to_thread(_jetqueue, nats_url, "result", call_id)


def _default_queue(queues: dict[str, Any]) -> str:
    """A queue whose worker calls `echo` (a cron tick runs on the queue its schedule is in)."""
    return next((n for n, q in sorted(queues.items()) if "echo" in q.get("functions", [])), "") or next(
        n for n, q in sorted(queues.items()) if not q.get("functions")
    )


async def _cron(callback: str, callbacks: dict[str, Any], nats_url: str, queue: str) -> None:
    prefix = f"cron.{queue}.demo-tick."
    _say(f'\ncron: jetqueue schedule add {queue} demo-tick --function echo --cron "{CRON}" --callback ...')
    add = ("schedule", "add", queue, "demo-tick", "--function", "echo", "--cron", CRON, "--data", "tick")
    await asyncio.to_thread(_jetqueue, nats_url, *add, "--callback", callback, "--replace")
    deadline = time.monotonic() + WAIT
    try:
        while len(ticks := sorted(c for c in callbacks if c.startswith(prefix))) < CRON_TICKS:
            if time.monotonic() > deadline:
                raise TourError(f"{len(ticks)} cron tick(s) called back after {WAIT:.0f}s; expected {CRON_TICKS}")
            await asyncio.sleep(0.05)
    finally:
        await asyncio.to_thread(_jetqueue, nats_url, "schedule", "rm", queue, "demo-tick")
    _say(f"  {CRON_TICKS} ticks, one call each, ids from the schedule and the tick: {', '.join(ticks[:CRON_TICKS])}")


def _slow_queue(queues: dict[str, Any]) -> tuple[str, str]:
    for name, q in sorted(queues.items()):
        if q.get("mode") == "static" and q.get("functions"):
            return name, q["functions"][0]
    raise TourError("the demo's queues.yaml has no static queue with a listed function to pause")


def _jetqueue(nats_url: str, *args: str) -> None:
    env = {**os.environ, "JETQUEUE_NATS_URL": nats_url}
    res = subprocess.run([sys.executable, "-m", "jetqueue", *args], env=env, capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        raise TourError(f"jetqueue {' '.join(args)} failed: {res.stderr.strip() or res.stdout.strip()}")
    for line in res.stdout.strip().splitlines():
        _say(f"    {line}")


async def _paused(
    http: aiohttp.ClientSession,
    gateway: str,
    callback: str,
    callbacks: dict[str, Any],
    nats_url: str,
    queue: str,
    function: str,
) -> None:
    _say(f"\npause: jetqueue pause {queue}")
    await asyncio.to_thread(_jetqueue, nats_url, "pause", queue)
    ids = [await _submit(http, gateway, function, b"0.1", **{"X-Callback-Url": callback}) for _ in range(PAUSED_CALLS)]
    await asyncio.sleep(PAUSED_FOR)
    states = [(await _state(http, gateway, c))["state"] for c in ids]
    ran = sum(c in callbacks for c in ids)
    _say(f"  {PAUSED_CALLS} calls to {function} accepted while paused; {PAUSED_FOR:.0f}s later: {states}, {ran} run")
    if ran:
        raise TourError(f"calls ran while {queue} was paused")
    t0 = time.monotonic()
    _say(f"resume: jetqueue resume {queue}")
    await asyncio.to_thread(_jetqueue, nats_url, "resume", queue)
    await _called_back(callbacks, ids)
    _say(f"  all {PAUSED_CALLS} ran and called back {time.monotonic() - t0:.1f}s after the resume")
