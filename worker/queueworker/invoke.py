"""Invoke a function over HTTP: the original method, path, query, headers and body."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from jetqueue.contract import Call
from jetqueue.openfaas import INTERNAL_HEADER

BODY_EXCERPT = 512
CANCELLED = "cancelled"  # Outcome.error of a call its caller cancelled
MAX_REMEMBERED = 10_000


@dataclass
class Outcome:
    status: int | None  # None: the platform failed (refused, reset, timeout)
    body: bytes = b""
    content_type: str = ""
    content_encoding: str = ""  # the body is passed on as the function sent it (auto_decompress is off)
    retry_after: str | None = None
    internal: bool = False  # it carries X-OpenFaaS-Internal: the OpenFaaS gateway's own error, not the function's
    error: str = ""
    duration: float = 0.0
    headers: Mapping[str, str] = field(default_factory=dict)  # the function's response headers (for its result)

    @property
    def cancelled(self) -> bool:
        return self.status is None and self.error == CANCELLED

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def excerpt(self) -> str:
        text = self.error or self.body[:BODY_EXCERPT].decode("utf-8", "replace")
        return " ".join(text.split())[:BODY_EXCERPT]


def function_base(template: str, function: str) -> str:
    return str(URL(template.replace("{function}", function).rstrip("/")))


def function_url(base: str, call: Call) -> URL:
    """The function's URL (`base`: `function_base`) with the call's path and query appended as they were sent
    (already percent-encoded and checked by the contract): built encoded, so nothing normalises or re-decodes
    a dot segment."""
    return URL(base + call.path + (f"?{call.query}" if call.query else ""), encoded=True)


class Invoker:
    """One shared ClientSession with keep-alive for every invocation of a worker."""

    def __init__(self, template: str, limit: int) -> None:
        self.template = template
        # Connections beyond max_inflight would never be used; 0 would mean unlimited.
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max(limit, 1), limit_per_host=0, ttl_dns_cache=60),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )
        # Per function and per timeout, made once: parsing a URL and building a timeout cost on every call.
        self._bases: dict[str, str] = {}
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    async def invoke(self, call: Call, timeout: float) -> Outcome:
        headers = CIMultiDict(call.headers)
        headers["X-Call-Id"] = call.call_id
        headers["X-Start-Time"] = str(call.start_time_ns)
        base = self._bases.get(call.function)
        if base is None:
            if len(self._bases) >= MAX_REMEMBERED:  # function names come from subjects: bound what is kept
                self._bases.clear()
            base = self._bases[call.function] = function_base(self.template, call.function)
        limit = self._timeouts.get(timeout)
        if limit is None:
            limit = self._timeouts[timeout] = aiohttp.ClientTimeout(total=timeout)
        t0 = time.monotonic()
        try:
            async with self.session.request(
                call.method,
                function_url(base, call),
                data=call.body if call.body or call.method not in ("GET", "HEAD") else None,
                headers=headers,
                timeout=limit,
                allow_redirects=False,
            ) as resp:
                body = await resp.read()
                return Outcome(
                    status=resp.status,
                    body=body,
                    content_type=resp.headers.get("Content-Type", ""),
                    content_encoding=resp.headers.get("Content-Encoding", ""),
                    retry_after=resp.headers.get("Retry-After"),
                    internal=INTERNAL_HEADER in resp.headers,
                    duration=time.monotonic() - t0,
                    headers=resp.headers,
                )
        except TimeoutError:
            return Outcome(status=None, error=f"timed out after {timeout:g}s", duration=time.monotonic() - t0)
        except (aiohttp.ClientError, OSError) as e:
            return Outcome(status=None, error=f"{type(e).__name__}: {e}", duration=time.monotonic() - t0)

    async def close(self) -> None:
        await self.session.close()
        await asyncio.sleep(0)
