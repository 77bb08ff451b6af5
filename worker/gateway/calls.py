"""A stored call's status (`GET /async-calls/{id}`) and its cancel (`DELETE /async-calls/{id}`, and
OpenFaaS's `DELETE /async-function/{id}`), found from the call id alone (statuslookup.py). A cancel is stored as a
request every worker of the call's queue watches (cancels.py): a worker skips the call when it comes, or aborts it
if it runs it already. A call not running is also marked `cancelled` at once, by compare-and-set on its status
record."""

from __future__ import annotations

import asyncio
import base64
from collections import Counter
from collections.abc import Callable

from aiohttp import web
from nats.js.errors import KeyWrongLastSequenceError

from jetqueue import callstatus, cancels, contract, results, tags
from jetqueue.contract import CallState
from jetqueue.gateway.accept import RETRY_AFTER
from jetqueue.gateway.auth import problem
from jetqueue.gateway.backend import Backend
from jetqueue.results import ResultBodies
from jetqueue.settings import GatewaySettings

CANCEL_TRIES = 5
BULK_AT_ONCE = 32  # cancels of a tag's calls in flight at once
BULK_COUNTS = ("cancelled", "cancelling", "finished", "unknown", "failed")


class Calls:
    def __init__(self, s: GatewaySettings, backend: Backend, recent: Callable[[str], callstatus.Record | None]) -> None:
        self.s = s
        self.backend = backend
        self.recent = recent  # accept.py: the record of a call accepted here a moment ago, not readable yet
        self._bodies: dict[str, ResultBodies] = {}  # each queue's result bodies, opened on first read

    def _check_id(self, call_id: str) -> web.Response | None:
        if not contract.CALL_ID.match(call_id):
            return problem(400, "not a valid call id")
        if not self.backend.status_enabled:
            return problem(501, "call status is switched off on this gateway (JETQUEUE_CALL_STATUS=false)")
        return None

    async def _lookup(self, call_id: str) -> callstatus.Entry | web.Response:
        """The call's status entry, or the answer to give when there is none (404) or NATS fails (503)."""
        try:
            if self.backend.lookup is None:
                raise ConnectionError("not connected to NATS")
            entry = await self.backend.lookup.get(call_id)
        except Exception:
            return problem(503, "NATS is unavailable", **{"Retry-After": RETRY_AFTER})
        record = self.recent(call_id)  # newer than what is stored: its submission record has not landed yet
        if record is not None and (entry is None or record.get("start", 0) > entry.record.get("start", 0)):
            entry = callstatus.Entry(record, entry.revision if entry else 0, entry.store if entry else None)
        if entry is None:
            return problem(404, f"no call {call_id!r} (unknown, or its status expired)")
        return entry

    async def get_status(self, request: web.Request) -> web.Response:
        call_id = request.match_info["call_id"]
        if (bad := self._check_id(call_id)) is not None:
            return bad
        entry = await self._lookup(call_id)
        return entry if isinstance(entry, web.Response) else web.json_response(results.summary(entry.record))

    async def get_result(self, request: web.Request) -> web.Response:
        """The function's answer (results.py): its body as it sent it, its status in X-Function-Status; with
        `?format=json`, all of it as JSON (body in base64)."""
        call_id = request.match_info["call_id"]
        if (bad := self._check_id(call_id)) is not None:
            return bad
        entry = await self._lookup(call_id)
        if isinstance(entry, web.Response):
            return entry
        record = entry.record
        state = CallState(record["state"])
        if not state.final:
            return problem(409, f"call {call_id!r} is {state}: no result yet", **{"Retry-After": RETRY_AFTER})
        result = record.get("result")
        if not isinstance(result, dict):
            return problem(
                404,
                f"call {call_id!r} ended {state} with no result kept (no answer from the function, "
                "or results are off on its queue's workers)",
            )
        queue = str(record.get("queue", ""))
        if self.backend.js is None:
            return problem(503, "NATS is unavailable", **{"Retry-After": RETRY_AFTER})
        if queue not in self._bodies:
            self._bodies[queue] = ResultBodies(self.backend.js, contract.result_bucket_name(queue))
        try:
            body = await results.body_of(result, self._bodies[queue])
        except Exception:
            return problem(503, "NATS is unavailable", **{"Retry-After": RETRY_AFTER})
        if body is None:
            return problem(404, f"the result body of call {call_id!r} is gone (expired, or its bucket deleted)")
        facts = {"X-Call-Id": call_id, "X-Call-Status": str(state), "X-Function-Status": str(result["status"])}
        if result.get("truncated"):
            facts["X-Result-Truncated"] = f"true; size={result.get('size')}"
        if request.query.get("format") == "json":
            out = {k: v for k, v in result.items() if k not in ("body", "object")}
            out.update(call_id=call_id, state=state, body=base64.b64encode(body).decode())
            return web.json_response(out, headers=facts)
        kept = result.get("headers") or {}
        for name in ("Content-Type", "Content-Encoding"):
            for k, v in kept.items():
                if k.lower() == name.lower():
                    facts[name] = v
        return web.Response(body=body, headers=facts)

    async def cancel(self, request: web.Request) -> web.Response:
        call_id = request.match_info.get("call_id") or request.match_info["name"]
        if (bad := self._check_id(call_id)) is not None:
            return bad
        return await self.cancel_one(call_id)

    async def cancel_tagged(self, request: web.Request) -> web.Response:
        """`DELETE /async-calls?tag=…`: every call of the tag not finished yet, each through `cancel_one`."""
        tag = request.query.get("tag", "")
        if not tags.TAG.match(tag):
            return problem(400, f"give ?tag=<tag>: 1-32 characters of [A-Za-z0-9_-] ({tags.HEADER})")
        if not self.backend.status_enabled:
            return problem(501, "call status is switched off on this gateway (JETQUEUE_CALL_STATUS=false)")
        stores = [store for status in self.backend.status.values() for store in status.stores]
        if self.backend.lookup is None:
            return problem(503, "NATS is unavailable", **{"Retry-After": RETRY_AFTER})
        try:
            found = await asyncio.gather(*(s.indexed(contract.tag_keys(tag)) for s in stores))
        except Exception:
            return problem(503, "NATS is unavailable", **{"Retry-After": RETRY_AFTER})
        ids = sorted({contract.call_of_tag_key(k) for keys in found for k in keys})
        room = asyncio.Semaphore(BULK_AT_ONCE)

        async def one(call_id: str) -> str:
            async with room:
                answer = await self.cancel_one(call_id)
            if answer.status == 202:
                return "cancelling" if b'"cancelling"' in (answer.body or b"") else "cancelled"  # type: ignore[operator]
            return {409: "finished", 404: "unknown"}.get(answer.status, "failed")

        counts = Counter(await asyncio.gather(*(one(i) for i in ids)))
        out = {"tag": tag, "matched": len(ids), **{k: counts[k] for k in BULK_COUNTS}}
        return web.json_response(out)

    async def cancel_one(self, call_id: str) -> web.Response:
        """Cancel one call (`DELETE /async-calls/{id}`, and each of a tag's)."""
        for _ in range(CANCEL_TRIES):
            entry = await self._lookup(call_id)
            if isinstance(entry, web.Response):
                return entry
            state = CallState(entry.record["state"])
            if state.final:
                return problem(409, f"call {call_id!r} already {state}")
            queue = str(entry.record.get("queue", ""))
            try:  # stored before answering: a worker reconnecting right now still learns of it
                for kv in await self.backend.cancel_requests(queue):
                    await cancels.request(kv, call_id, entry.record.get("start"))
            except Exception:
                return problem(503, "NATS is unavailable", **{"Retry-After": RETRY_AFTER})
            if state == CallState.RUNNING:  # its worker aborts the HTTP call, then records `cancelled` itself
                return web.json_response({"call_id": call_id, "state": "cancelling"}, status=202)
            rec = {**entry.record, "state": CallState.CANCELLED, "updated_at": callstatus.now()}
            rec["finished_at"] = rec["updated_at"]
            # Where its records are (or, known only from this gateway's memory, are to be)
            store = entry.store or self.backend.queue_status(queue).store(call_id)
            try:
                await store.update(call_id, rec, entry.revision or None)
            except KeyWrongLastSequenceError:
                continue  # the worker moved it on meanwhile: look again
            except Exception:
                return problem(503, "NATS is unavailable", **{"Retry-After": RETRY_AFTER})
            return web.json_response({"call_id": call_id, "state": CallState.CANCELLED}, status=202)
        return problem(409, f"call {call_id!r} is changing state too fast to cancel; retry")
