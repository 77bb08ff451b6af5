"""A stored call's status (`GET /async-calls/{id}`) and its cancel (`DELETE /async-calls/{id}`, and
OpenFaaS's `DELETE /async-function/{id}`), found from the call id alone (statuslookup.py). A cancel is stored as a
request every worker of the call's queue watches (cancels.py): a worker skips the call when it comes, or aborts it
if it runs it already. A call not running is also marked `cancelled` at once, by compare-and-set on its status
record."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from nats.js.errors import KeyWrongLastSequenceError

from jetqueue import callstatus, cancels, contract
from jetqueue.contract import CallState
from jetqueue.gateway.accept import RETRY_AFTER
from jetqueue.gateway.auth import problem
from jetqueue.gateway.backend import Backend
from jetqueue.settings import GatewaySettings

CANCEL_TRIES = 5


class Calls:
    def __init__(self, s: GatewaySettings, backend: Backend, recent: Callable[[str], callstatus.Record | None]) -> None:
        self.s = s
        self.backend = backend
        self.recent = recent  # accept.py: the record of a call accepted here a moment ago, not readable yet

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
        return entry if isinstance(entry, web.Response) else web.json_response(entry.record)

    async def cancel(self, request: web.Request) -> web.Response:
        call_id = request.match_info.get("call_id") or request.match_info["name"]
        if (bad := self._check_id(call_id)) is not None:
            return bad
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
