"""A queue's partitions as the server has them: which partition work streams exist, and how many partitions the
queue was last set up with (what the worker and `jetqueue status|purge|reset|pause|dlq` work from).

Streams are never deleted by jetqueue itself, so a queue whose `partitions` was lowered keeps the streams of the
partitions beyond it: workers drain them (queueworker/process.py), gateways no longer publish there, and these
functions list them (`found`) beside the count in force (`declared`, the partition-0 stream's metadata written by
the gateway or worker that set it up last).
"""

from __future__ import annotations

import json

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from jetqueue import contract
from jetqueue.contract import jetstream

NAMES_PAGE = 1024  # stream names the server lists per request


async def stream_names(js: JetStreamContext) -> list[str]:
    """Every stream's name (the server lists them a page at a time)."""
    names: list[str] = []
    while True:
        request = json.dumps({"offset": len(names)}).encode()
        page = await js._api_request(f"{js._prefix}.STREAM.NAMES", request, timeout=5)
        found = page.get("streams") or []
        names.extend(found)
        if len(found) < NAMES_PAGE or len(names) >= int(page.get("total", 0)):
            return names


async def found(js: JetStreamContext, queue: str, names: list[str] | None = None) -> dict[int, str]:
    """partition -> work stream, for every partition of `queue` whose stream exists now."""
    out: dict[int, str] = {}
    for name in names if names is not None else await stream_names(js):
        where = contract.partition_of_stream(name)
        if where is not None and where[0] == queue:
            out[where[1]] = name
    return dict(sorted(out.items()))


async def declared(js: JetStreamContext, queue: str) -> int:
    """The partitions the queue was last set up with (1 when its stream says none, or it has no stream)."""
    try:
        info = await js.stream_info(contract.stream_name(queue))
    except NotFoundError:
        return 1
    value = (info.config.metadata or {}).get(jetstream.PARTITIONS_METADATA, "1")
    return int(value) if value.isdigit() and 1 <= int(value) <= contract.MAX_PARTITIONS else 1
