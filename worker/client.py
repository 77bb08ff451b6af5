"""Submit a call from code: through the gateway over HTTP, or straight to NATS by the message contract.

from jetqueue.client import submit_http, submit_nats
call_id = await submit_http("http://gateway:8080", "resize", b"...", callback_url="http://me/done")
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp
from nats.aio.client import Client

from jetqueue import contract


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
) -> str:
    """POST /async-function/<function>; returns the call id once the gateway stored the call (202)."""
    h = dict(headers or {})
    if callback_url:
        h["X-Callback-Url"] = callback_url
    if call_id:
        h["X-Call-Id"] = call_id
    if token:
        h["Authorization"] = f"Bearer {token}"
    own = session is None
    s = session or aiohttp.ClientSession()
    try:
        async with s.post(f"{gateway.rstrip('/')}/async-function/{function}", data=body, headers=h) as r:
            text = await r.text()
            if r.status != 202:
                raise SubmitError(f"gateway answered {r.status}: {text.strip()}")
            return r.headers["X-Call-Id"]
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
) -> str:
    """Publish by the message contract and wait for JetStream's PubAck; returns the call id."""
    if not contract.FUNCTION_NAME.match(function):
        raise SubmitError(f"{function!r} is not a valid function name")
    call = contract.Call(
        call_id=call_id or contract.new_call_id(),
        queue=queue,
        function=function,
        body=body,
        callback_url=callback_url,
        headers=dict(headers or {}),
    )
    await nc.jetstream().publish(contract.subject(queue, function), body, headers=call.to_headers())
    return call.call_id
