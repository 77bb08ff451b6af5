"""pauses.py: the pause record, what it covers, and consumers brought to it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from nats.js.api import AckPolicy, ConsumerConfig

from jetqueue import contract, pauses, provision
from jetqueue.contract import jetstream
from jetqueue.pauses import FOREVER, Pause
from tests.helpers import connect

NOW = datetime(2026, 11, 23, 16, 0, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def test_a_consumer_is_paused_until_the_latest_active_record_covering_it():
    records = [
        Pause("q", "", NOW + HOUR, NOW),
        Pause("q", "f", NOW + 2 * HOUR, NOW),
        Pause("q", "ended", NOW - HOUR, NOW - 2 * HOUR),
        Pause("other", "", FOREVER, NOW),
    ]
    assert pauses.pause_until(records, "q", None, NOW) == NOW + HOUR  # the static consumer: the queue's only
    assert pauses.pause_until(records, "q", "f", NOW) == NOW + 2 * HOUR
    assert pauses.pause_until(records, "q", "ended", NOW) == NOW + HOUR
    assert pauses.pause_until(records[1:], "q", "g", NOW) is None
    assert pauses.pause_until(records, "q", "f", NOW + 3 * HOUR) is None  # every record has ended
    assert pauses.pause_until(records, "other", "f", NOW) == FOREVER


def test_records_are_readable_json_under_their_key():
    timed = Pause("q", "f.ns", NOW + HOUR, NOW)
    assert timed.key == "q.f.ns" and contract.pause_of_key(timed.key) == ("q", "f.ns")
    assert json.loads(timed.encode()) == {"until": "2026-11-23T17:00:00Z", "since": "2026-11-23T16:00:00Z"}
    assert Pause.decode(timed.key, timed.encode()) == timed
    forever = Pause("q", "", FOREVER, NOW)
    assert json.loads(forever.encode())["until"] is None and forever.key == "q"
    assert Pause.decode("q", forever.encode()).indefinite
    assert pauses.describe(None) == "-" and pauses.describe(FOREVER) == "until resumed"
    assert pauses.parse_rfc3339("2026-11-23T17:00:00.123456789Z") == NOW + HOUR + timedelta(microseconds=123456)


async def test_consumers_are_brought_to_the_records_and_no_other_is_touched(nats_server):
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    await provision.ensure_stream(js, jetstream.work_stream("q"))
    stream = contract.stream_name("q")
    for function in ("a", "b"):
        await provision.ensure_consumer(js, jetstream.function_consumer("q", function, 30.0, 10, 16, 60.0))
    foreign = ConsumerConfig(durable_name="mine", filter_subject="q.c", ack_policy=AckPolicy.EXPLICIT)
    await js.add_consumer(stream, foreign)
    now = datetime.now(UTC)
    one = [Pause("q", "a", now + HOUR, now)]
    changed = await pauses.bring_consumers(js, "q", stream, contract.durable_name("q"), one, now)
    assert [name for name, _ in changed] == ["q-fn-a"]
    assert await pauses.bring_consumers(js, "q", stream, contract.durable_name("q"), one, now) == []  # as it is
    everything = [*one, Pause("q", "", FOREVER, now)]
    changed = await pauses.bring_consumers(js, "q", stream, contract.durable_name("q"), everything, now)
    assert sorted(changed) == [("q-fn-a", "paused until resumed"), ("q-fn-b", "paused until resumed")]
    assert not (await js.consumer_info(stream, "mine")).paused
    changed = await pauses.bring_consumers(js, "q", stream, contract.durable_name("q"), [], now)
    assert sorted(changed) == [("q-fn-a", "resumed"), ("q-fn-b", "resumed")]
    assert not any(c.paused for c in await pauses.all_consumers(js, stream))
    await nc.close()
