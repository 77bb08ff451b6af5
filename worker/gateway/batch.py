"""`POST /async-batch`: up to `maxBatchCalls` calls in one request, each answered as its own submission would be.

The request body is a JSON array; each element is one call:

    {"function": "resize",                      required: the function (name or name.namespace)
     "method": "POST",                          POST (default), PUT, PATCH or GET
     "path": "/thumb?w=64",                     optional: sub-path and query, percent-encoded as in a URL
     "body": "text" | "bodyBase64": "aGk=",     optional: the body, as UTF-8 text or base64 (one of them)
     "headers": {"Content-Type": "..."},        optional: request headers, as a single submission would send them
     "callId", "callbackUrl", "failureCallbackUrl", "delay", "notBefore", "partitionKey", "concurrencyKey",
     "priority", "idempotencyKey", "tags"      optional: the X-Call-Id, X-Callback-Url, ... headers, as fields}

Each call goes through the same code as a single submission (accept.py: checks, partition, idempotency key,
PubAck), all of them at once: the publishes are pipelined on the connection, not awaited one by one. The answer
(200) is `{"accepted": n, "refused": m, "results": [...]}` with one result per call, in order: `status` (202, or
the 4xx/503 the call would get alone), and `callId`, `startTime`, `queue` (and `duplicate`, `notBefore`) of an
accepted one, `error` of a refused one. Every accepted call is stored (its PubAck received) before the answer.
The whole request is refused 400 when it is not such an array, 413 when it holds more calls than `maxBatchCalls`
or more bytes than `maxBatchBytes`: nothing is stored then.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from jetqueue import contract
from jetqueue.gateway.accept import FAILURE_CALLBACK, PREFIX, Accept
from jetqueue.gateway.auth import problem
from jetqueue.settings import GatewaySettings

METHODS = ("POST", "PUT", "PATCH", "GET")
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")  # an HTTP token (RFC 9110): nothing to inject
# Fields that stand for a submission's headers (the header wins nothing: giving both is refused).
FIELD_HEADERS = {
    "callId": "X-Call-Id",
    "callbackUrl": "X-Callback-Url",
    "failureCallbackUrl": FAILURE_CALLBACK,
    "delay": "X-Delay",
    "notBefore": "X-Not-Before",
    "partitionKey": contract.PARTITION_KEY,
    "concurrencyKey": contract.CONCURRENCY_KEY,
    "priority": contract.PRIORITY_HEADER,
    "idempotencyKey": "Idempotency-Key",
    "tags": "X-Call-Tags",
}
FIELDS = frozenset({"function", "method", "path", "body", "bodyBase64", "headers", *FIELD_HEADERS})
# Answer headers of a single submission, as result fields.
ANSWER_FIELDS = {"X-Call-Id": "callId", "X-Start-Time": "startTime", "X-Queue": "queue", "X-Not-Before": "notBefore"}


class BadItem(ValueError):
    pass


class Submission:
    """One call of a batch, shaped as the request accept.py takes (headers, method, read())."""

    def __init__(self, headers: CIMultiDict[str], method: str, body: bytes) -> None:
        self.headers = CIMultiDictProxy(headers)
        self.method = method
        self._body = body

    async def read(self) -> bytes:
        return self._body


def _text(item: Mapping[str, Any], key: str) -> str:
    value = item.get(key, "")
    if not isinstance(value, str):
        raise BadItem(f"{key!r} must be a string")
    return value


def parse_item(item: Any, max_body: int) -> tuple[str, str, str, Submission]:
    """(function, raw path, query, the submission) of one element, or BadItem saying what is wrong with it."""
    if not isinstance(item, dict):
        raise BadItem("each call must be a JSON object")
    unknown = sorted(set(item) - FIELDS)
    if unknown:
        raise BadItem(f"unknown field(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(FIELDS))}")
    function = _text(item, "function")
    if not function:
        raise BadItem("'function' is required")
    method = _text(item, "method").upper() or "POST"
    if method not in METHODS:
        raise BadItem(f"'method' must be one of {', '.join(METHODS)}")
    sub = _text(item, "path")
    if sub and not sub.startswith(("/", "?")):
        raise BadItem("'path' must start with / or ?")
    path, _, query = sub.partition("?")
    if "body" in item and "bodyBase64" in item:
        raise BadItem("give 'body' or 'bodyBase64', not both")
    try:
        body = base64.b64decode(_text(item, "bodyBase64"), validate=True) if "bodyBase64" in item else None
    except binascii.Error:
        raise BadItem("'bodyBase64' is not base64") from None
    if body is None:
        body = _text(item, "body").encode()
    if len(body) > max_body:
        raise BadItem(f"body larger than {max_body} bytes")
    given = item.get("headers") or {}
    if not isinstance(given, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in given.items()):
        raise BadItem("'headers' must be an object of strings")
    headers: CIMultiDict[str] = CIMultiDict(given)
    for field, header in FIELD_HEADERS.items():
        if field not in item:
            continue
        value = item[field]
        if field == "tags" and isinstance(value, list) and all(isinstance(t, str) for t in value):
            value = ",".join(value)
        if not isinstance(value, str):
            raise BadItem(f"{field!r} must be a string" + (" or a list of strings" if field == "tags" else ""))
        if header in headers:
            raise BadItem(f"{field!r} and the header {header} both given")
        headers[header] = value
    for k, v in headers.items():
        if not HEADER_NAME.fullmatch(k):
            raise BadItem(f"header name {k[:40]!r} is not an HTTP token")
        if any(ch in v for ch in "\r\n\0"):
            raise BadItem(f"header {k!r}: the value must not hold line breaks or NUL")
    return function, PREFIX + function + path, query, Submission(headers, method, body)


class Batch:
    def __init__(self, s: GatewaySettings, accept: Accept) -> None:
        self.s = s
        self.accept = accept

    async def submit(self, request: web.Request) -> web.Response:
        s = self.s
        chunks, size = [], 0
        async for chunk in request.content.iter_any():  # read up to the limit only, whatever the client claims
            size += len(chunk)
            if size > s.max_batch_bytes:
                return problem(413, f"batch larger than maxBatchBytes ({s.max_batch_bytes} bytes); send fewer calls")
            chunks.append(chunk)
        raw = b"".join(chunks)
        try:
            items = json.loads(raw)
        except ValueError as e:
            return problem(400, f"the body must be a JSON array of calls: {e}")
        if not isinstance(items, list) or not items:
            return problem(400, "the body must be a non-empty JSON array of calls (docs/results.md)")
        if len(items) > s.max_batch_calls:
            return problem(413, f"{len(items)} calls in one batch; at most maxBatchCalls = {s.max_batch_calls}")
        answers = await asyncio.gather(*(self._one(item) for item in items))
        accepted = sum(1 for a in answers if a["status"] == 202)
        return web.json_response({"accepted": accepted, "refused": len(answers) - accepted, "results": answers})

    async def _one(self, item: Any) -> dict[str, Any]:
        try:
            function, raw_path, query, submission = parse_item(item, self.s.max_body_size)
        except BadItem as e:
            return {"status": 400, "error": str(e)}
        try:
            answer = await self.accept.submit_as(submission, function, raw_path, query)
        except Exception as e:  # never let one call's failure lose the others' answers
            return {"status": 503, "error": f"not stored: {type(e).__name__}"}
        out: dict[str, Any] = {"status": answer.status}
        for header, field in ANSWER_FIELDS.items():
            if header in answer.headers:
                out[field] = answer.headers[header]
        if answer.headers.get("X-Duplicate") == "true":
            out["duplicate"] = True
        if answer.status != 202 and answer.body is not None:
            assert isinstance(answer.body, bytes)
            out["error"] = json.loads(answer.body).get("error", "")
        return out
