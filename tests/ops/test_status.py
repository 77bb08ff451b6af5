"""ops/status.py: per queue and per function, pending, scheduled, expired and paused."""

from __future__ import annotations

import asyncio
import io
import time
from datetime import UTC, datetime, timedelta

from aiohttp import web

from jetqueue import contract
from jetqueue.client import submit_nats
from jetqueue.ops import pauses as ops
from jetqueue.ops.status import collect, status
from tests.helpers import connect, dead_letters, enqueue, running_worker, worker_settings
from tests.servers import eventually


def rows(text: str) -> dict[tuple[str, str], dict[str, str]]:
    """The status table by (queue, function); a function row's queue is the one above it."""
    lines = text.splitlines()
    header = lines[0]
    starts = [header.index(name) for name in header.split("  ") if name]
    names = [name.strip() for name in header.split("  ") if name]
    table: dict[tuple[str, str], dict[str, str]] = {}
    queue = ""
    for line in lines[1:]:
        if line.startswith("note:"):
            continue
        line = line.ljust(len(header) + 40)
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        row = dict(zip(names, cells, strict=True))
        queue = row["QUEUE"] or queue
        table[(queue, row["FUNCTION"])] = row
    return table


async def test_status_shows_pending_scheduled_expired_and_paused(nats_server, functions):
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    static = worker_settings(nats_server.url, functions.url_template, max_event_age=60.0)
    by_function = worker_settings(nats_server.url, functions.url_template, queue="fnq", mode="function")
    async with running_worker(static), running_worker(by_function):
        hour_ago = time.time_ns() - 3600 * 10**9
        await enqueue(nc, "old", call_id="too-old", start_time_ns=hour_ago)  # older than maxEventAge: expired
        for _ in range(200):
            if (await js.stream_info(contract.dlq_stream_name(contract.DEFAULT_QUEUE))).state.messages:
                break
            await asyncio.sleep(0.05)
        assert functions.calls["old"] == []
        assert [m.headers[contract.H_DLQ_REASON] for m in await dead_letters(nc)] == ["expired"]
        await submit_nats(nc, "later", b"", delay=3600)  # held for an hour
        until = datetime.now(UTC) + timedelta(hours=1)
        await ops.pause(js, contract.DEFAULT_QUEUE, "", until, io.StringIO())
        await enqueue(nc, "echo")
        await enqueue(nc, "echo")
        await ops.pause(js, "fnq", "slow", None, io.StringIO())
        await enqueue(nc, "slow", queue="fnq")
        out = io.StringIO()
        assert await status(js, None, out) == 0
    text = out.getvalue()
    table = rows(text)
    q = contract.DEFAULT_QUEUE
    assert table[(q, "*")]["PAUSED"] == f"until {until.strftime('%Y-%m-%dT%H:%M:%SZ')}"
    assert (table[(q, "*")]["PENDING"], table[(q, "*")]["SCHEDULED"], table[(q, "*")]["EXPIRED"]) == ("2", "1", "1")
    assert table[(q, "echo")]["PENDING"] == "2" and table[(q, "echo")]["PAUSED"].startswith("until 20")
    assert table[(q, "later")]["SCHEDULED"] == "1" and table[(q, "later")]["PENDING"] == "0"
    assert table[(q, "old")]["EXPIRED"] == "1" and table[(q, "old")]["DEAD LETTERS"] == "1"
    assert table[("fnq", "*")]["PAUSED"] == "-"  # one function paused, not the queue
    assert table[("fnq", "slow")]["PAUSED"] == "until resumed" and table[("fnq", "slow")]["PENDING"] == "1"
    assert table[(q, "echo")]["IN FLIGHT"] == "" and table[("fnq", "slow")]["IN FLIGHT"] == "0"  # static: per queue
    assert "note:" not in text
    await nc.close()


async def test_function_mode_shows_each_functions_running_calls(nats_server, functions):
    release = asyncio.Event()

    async def hang(request, _):
        await release.wait()
        return web.Response(text="done")

    functions.handlers["hang"] = hang
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    async with running_worker(worker_settings(nats_server.url, functions.url_template, queue="fnq", mode="function")):
        await enqueue(nc, "hang", queue="fnq")
        await enqueue(nc, "hang", queue="fnq")
        await eventually(lambda: len(functions.calls["hang"]) == 2)
        reports = await collect(js, "fnq")
        hang_row = next(f for f in reports[0].functions if f.name == "hang")
        # Pending counts what the stream holds: a running call stays stored until acked. The shared consumer
        # delivered both: the server does not tell its calls apart by function, so only the queue's row counts them.
        assert (reports[0].in_flight, hang_row.running, hang_row.pending) == (2, None, 2)
        release.set()
        await eventually(lambda: len(functions.completed["hang"]) == 2)
    await nc.close()
