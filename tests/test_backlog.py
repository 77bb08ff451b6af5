"""backlog.py: held calls counted per function from the schedule stream."""

from __future__ import annotations

from jetqueue import backlog, contract, provision
from jetqueue.client import submit_nats
from jetqueue.contract import jetstream
from tests.helpers import connect


async def test_held_calls_are_counted_per_function(nats_server):
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    assert await backlog.held(js, "q") == backlog.Held()  # no schedule stream yet
    await provision.ensure_stream(js, jetstream.schedule_stream("q"))
    for function, n in (("a", 3), ("b.ns", 1)):
        for _ in range(n):
            await submit_nats(nc, function, b"", queue="q", delay=3600)
    await js.publish(contract.due_subject("q", "a"), b"")  # due, not held
    held = await backlog.held(js, "q")
    assert held.per_function == {"a": 3, "b.ns": 1} and held.total == 4 and held.complete
    await nc.close()
