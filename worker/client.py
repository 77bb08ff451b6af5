"""Submit a call from code: through the gateway over HTTP, or straight to NATS by the message contract.

from jetqueue.client import submit_http, submit_nats
call_id = await submit_http("http://gateway:8080", "resize", b"...", callback_url="http://me/done")
call_id = await submit_http("http://gateway:8080", "report", delay=3600)  # not run before an hour from now
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import aiohttp
from nats.aio.client import Client

from jetqueue import contract

MAX_RETRY_WAIT = 5.0


class SubmitError(RuntimeError):
    pass


async def submit_http(
    gateway: str,
    function: str,
    body: bytes = b"",
    callback_url: str = "",
    headers: Mapping[str, str] | None = None,
    call_id: str = "",
    token: str = "",
    session: aiohttp.ClientSession | None = None,
    attempts: int = 3,
    delay: float = 0.0,
    failure_callback_url: str = "",
) -> str:
    """POST /async-function/<function>; returns the call id once the gateway stored the call (202).

    Always sends a call id (a new one unless given), so retrying a 503 or a lost answer (up to `attempts`
    tries, waiting as Retry-After says, at most MAX_RETRY_WAIT) can never enqueue the call twice. `delay`:
    seconds before the call may run, sent as the time it becomes due (X-Not-Before), so a retry keeps it."""
    h = dict(headers or {})
    h["X-Call-Id"] = call_id or contract.new_call_id()
    if delay:
        h["X-Not-Before"] = f"{time.time() + delay:.3f}"
    if callback_url:
        h["X-Callback-Url"] = callback_url
    if failure_callback_url:  # called only when the call ends failed
        h["X-Failure-Callback-Url"] = failure_callback_url
    if token:
        h["Authorization"] = f"Bearer {token}"
    url = f"{gateway.rstrip('/')}/async-function/{function}"
    own = session is None
    s = session or aiohttp.ClientSession()
    try:
        error = SubmitError("no attempt made (attempts < 1)")
        for attempt in range(1, attempts + 1):
            wait = 1.0
            try:
                async with s.post(url, data=body, headers=h) as r:
                    text = await r.text()
                    if r.status == 202:
                        return r.headers["X-Call-Id"]
                    error = SubmitError(f"gateway answered {r.status}: {text.strip()}")
                    if r.status != 503:
                        raise error
                    retry_after = r.headers.get("Retry-After", "")
                    wait = float(retry_after) if retry_after.isdigit() else 1.0
            except aiohttp.ClientError as e:  # no answer: it may have been stored; the same id makes a retry safe
                error = SubmitError(f"no answer from the gateway: {e!r}")
            if attempt < attempts:
                await asyncio.sleep(min(wait, MAX_RETRY_WAIT))
        raise error
    finally:
        if own:
            await s.close()


async def submit_nats(
    nc: Client,
    function: str,
    body: bytes = b"",
    queue: str = contract.DEFAULT_QUEUE,
    callback_url: str = "",
    headers: Mapping[str, str] | None = None,
    call_id: str = "",
    delay: float = 0.0,
    partitions: int = 1,
    partition_key: str = "",
    failure_callback_url: str = "",
    concurrency_key: str = "",
    priority: str = "",
) -> str:
    """Publish by the message contract and wait for JetStream's PubAck; returns the call id. With `delay`
    (seconds), the call is held in the queue's schedule stream until then (the queue's worker must have set it
    up: it creates `OF_<queue>_SCHED` at start). `partitions`: the queue's, as in queues.yaml (the partition is
    chosen as the gateway chooses it, by `partition_key` when given, else by the function). `priority`: high, normal
    or low, for a queue with `priorities: true` (its workers have added the levels' subjects: until then, and on a
    queue without priorities, a high or low publish fails with NoStreamResponseError and nothing is stored)."""
    if not contract.FUNCTION_NAME.match(function):
        raise SubmitError(f"{function!r} is not a valid function name")
    if partition_key and (reason := contract.partition_key_problem(partition_key)):
        raise SubmitError(reason)
    if concurrency_key and (reason := contract.concurrency_key_problem(concurrency_key)):
        raise SubmitError(reason)
    if priority and (reason := contract.priority_problem(priority)):
        raise SubmitError(reason)
    call = contract.Call(
        call_id=call_id or contract.new_call_id(queue),
        queue=queue,
        function=function,
        body=body,
        callback_url=callback_url,
        failure_callback_url=failure_callback_url,
        headers=dict(headers or {}),
        not_before=time.time() + delay if delay > 0 else 0.0,
        partition_key=partition_key,
        concurrency_key=concurrency_key,  # keyConcurrency and keyRate count by it (docs/keys.md)
        priority=contract.parse_priority(priority) or contract.Priority.NORMAL,
    )
    partition = contract.choose_partition(function, partitions, partition_key)
    subject, h = contract.subject(queue, function, partition, call.priority), call.to_headers()
    if call.not_before:
        subject, h = contract.held_message(call, h, call.not_before, call.call_id)
    await nc.jetstream().publish(subject, body, headers=h)
    return call.call_id
