"""`jetqueue result ID`: a finished call's result (results.py), read from NATS by the call id alone: the body to
stdout as the function sent it, its status (and a truncation) to stderr; `--json` prints all of it as JSON."""

from __future__ import annotations

import base64
import json
from typing import BinaryIO, TextIO

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig

from jetqueue import contract, results
from jetqueue.callstatus import QueueStatus, StatusStore
from jetqueue.contract import CallState
from jetqueue.ops.status import queue_names
from jetqueue.statuslookup import StatusLookup


def lookup(js: JetStreamContext, queues: list[str]) -> StatusLookup:
    """A status lookup over the queues on the server, creating nothing (their other buckets are listed by it)."""
    stores = {
        q: QueueStatus([StatusStore(js, KeyValueConfig(bucket=contract.status_bucket_name(q)), create=False)])
        for q in queues
    }
    return StatusLookup(js, stores)


async def result(js: JetStreamContext, call_id: str, out: BinaryIO, err: TextIO, as_json: bool = False) -> int:
    if not contract.CALL_ID.match(call_id):
        err.write(f"error: {call_id!r} is not a call id\n")
        return 2
    entry = await lookup(js, await queue_names(js)).get(call_id)
    if entry is None:
        err.write(f"no call {call_id!r} (unknown, or its status expired)\n")
        return 1
    record = entry.record
    state = CallState(record["state"])
    found = record.get("result")
    if not state.final or not isinstance(found, dict):
        why = "no result yet" if not state.final else "no result kept (no answer from the function, or results off)"
        err.write(f"call {call_id!r} is {state}: {why}\n")
        return 1
    bodies = results.ResultBodies(js, contract.result_bucket_name(str(record.get("queue", ""))))
    body = await results.body_of(found, bodies)
    if body is None:
        err.write(f"the result body of call {call_id!r} is gone (expired, or its bucket deleted)\n")
        return 1
    if as_json:
        doc = {k: v for k, v in found.items() if k not in ("body", "object")}
        doc.update(call_id=call_id, state=state.value, body=base64.b64encode(body).decode())
        out.write(json.dumps(doc, indent=2).encode() + b"\n")
        return 0
    cut = f" (truncated: {found.get('size')} bytes sent)" if found.get("truncated") else ""
    err.write(f"call {call_id} {state}: function status {found['status']}{cut}\n")
    out.write(body)
    return 0
