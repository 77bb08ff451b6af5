"""cron.py reads expressions as nats-server does: known cases, and agreement with the real server on what it
accepts and on the ticks it fires."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime

import pytest
from nats.js.api import DiscardPolicy, RetentionPolicy, StreamConfig
from nats.js.errors import BadRequestError

from jetqueue import cron
from tests.helpers import connect


def at(text: str, zone: str = "UTC") -> float:
    return datetime.fromisoformat(text).replace(tzinfo=cron.zone(zone)).timestamp()


def wall(t: float, zone: str = "UTC") -> str:
    return datetime.fromtimestamp(t, cron.zone(zone)).strftime("%Y-%m-%d %H:%M:%S%z")


@pytest.mark.parametrize(
    ("text", "zone", "after", "ticks"),
    [
        ("0 */15 * * * *", "UTC", "2026-05-01 10:07:00", ["2026-05-01 10:15:00+0000", "2026-05-01 10:30:00+0000"]),
        ("*/15 * * * *", "UTC", "2026-05-01 10:07:00", ["2026-05-01 10:15:00+0000", "2026-05-01 10:30:00+0000"]),
        ("0 0 9 * * mon-fri", "UTC", "2026-05-01 10:00:00", ["2026-05-04 09:00:00+0000", "2026-05-05 09:00:00+0000"]),
        ("@daily", "Europe/Berlin", "2026-05-01 12:00:00", ["2026-05-02 00:00:00+0200", "2026-05-03 00:00:00+0200"]),
        ("0 0 0 1 jan,jul *", "UTC", "2026-05-01 00:00:00", ["2026-07-01 00:00:00+0000", "2027-01-01 00:00:00+0000"]),
        # Day of month and day of week, both restricted: either matches (the 13th, or a Friday).
        ("0 0 0 13 * fri", "UTC", "2026-11-10 00:00:00", ["2026-11-13 00:00:00+0000", "2026-11-20 00:00:00+0000"]),
        # A time the clock skips (Berlin, 29 March 2026, 02:00 -> 03:00) does not fire that day, as on the server.
        ("0 30 2 * * *", "Europe/Berlin", "2026-03-28 12:00:00", ["2026-03-30 02:30:00+0200"]),
        # A time the clock passes twice (25 October 2026, 03:00 -> 02:00) fires twice.
        ("0 30 2 * * *", "Europe/Berlin", "2026-10-25 00:00", ["2026-10-25 02:30:00+0200", "2026-10-25 02:30:00+0100"]),
        ("0 0 */6 * * *", "Asia/Kolkata", "2026-05-01 01:00", ["2026-05-01 06:00:00+0530", "2026-05-01 12:00:00+0530"]),
    ],
)
def test_ticks(text, zone, after, ticks):
    c = cron.parse(text, zone)
    t, got = at(after, zone), []
    for _ in ticks:
        t = c.next_after(t)
        got.append(wall(t, zone))
    assert got == ticks
    assert c.previous_before(t) == c.next_after(c.previous_before(c.previous_before(t)))  # and back


def test_previous_and_between():
    c = cron.parse("0 0 * * * *")
    t = at("2026-05-01 10:00:00")
    assert c.previous_before(t) == t - 3600
    assert c.previous_before(t + 1) == t
    assert c.between(t - 3 * 3600, t + 1, most=2) == [t - 3600, t]
    every = cron.parse("@every 90s")
    assert every.next_after(1000.2) == 1090 and every.previous_before(1090) == 1000
    assert every.pattern == "@every 90s"


@pytest.mark.parametrize(
    ("text", "zone", "says"),
    [
        ("* * * *", "UTC", "has 4 fields"),
        ("0 0 0 30 2 *", "UTC", "matches no time"),
        ("60 * * * * *", "UTC", "above the maximum 59"),
        ("0 0 0 * * 7", "UTC", "day of week '7': 7 is above the maximum 6"),
        ("0 0 0 L * *", "UTC", "is not a number"),
        ("0 0 0 * foo *", "UTC", "or a name (jan"),
        ("5-1 * * * * *", "UTC", "starts after it ends"),
        ("*/0 * * * * *", "UTC", "positive"),
        ("@every 500ms", "UTC", "at least 1s"),
        ("@every 1m", "Europe/Berlin", "takes no time zone"),
        ("@often", "UTC", "not a predefined schedule"),
        ("", "UTC", "empty"),
        ("@hourly", "Local", "not an IANA time zone name"),
        ("@hourly", "Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
    ],
)
def test_bad_expressions_say_why(text, zone, says):
    with pytest.raises(cron.CronError, match=None) as e:
        cron.parse(text, zone)
    assert says in str(e.value)


def _expressions(rnd: random.Random, n: int) -> list[tuple[str, str]]:
    """Mostly well-formed expressions (each field in its bounds, ranges either way round), a third with one
    field drawn from anything, and field counts, zones, @every and names around the edges."""

    def part(low: int, high: int, names: list[str], wild: bool) -> str:
        lo, hi = (low - 1, high + 1) if wild else (low, high)
        a, b = rnd.randint(lo, hi), rnd.randint(lo, hi)
        k = rnd.random()
        if k < 0.2:
            return rnd.choice(["*", "?"])
        if k < 0.35:
            return str(a)
        if k < 0.5:
            return f"{min(a, b)}-{max(a, b)}" if not wild else f"{a}-{b}"
        if k < 0.6:
            return f"*/{rnd.randint(0 if wild else 1, high + 2)}"
        if k < 0.7:
            return f"{a}/{rnd.randint(0 if wild else 1, 5)}"
        if k < 0.8 and names:
            return rnd.choice(names) + rnd.choice(["", f"-{rnd.choice(names)}"])
        if k < 0.9 or not wild:
            return f"{min(a, b)}-{max(a, b)}/{rnd.randint(1, 4)}"
        return rnd.choice(["x", "1-2-3", "1//2", ",", "1,", "-1", "+2", "05", "3/2/1", "**"])

    months, days = ["jan", "FEB", "dec"], ["sun", "Fri"]
    bounds = [(0, 59, []), (0, 59, []), (0, 23, []), (1, 31, []), (1, 12, months), (0, 6, days)]
    out = []
    for _ in range(n):
        wild = rnd.randrange(6) if rnd.random() < 0.35 else -1
        fields = [",".join(part(*b, i == wild) for _ in range(rnd.choice([1, 1, 2]))) for i, b in enumerate(bounds)]
        drop = rnd.random()
        if drop < 0.1:
            fields = fields[: rnd.randint(1, 5)]
        elif drop < 0.15:
            fields.append("*")
        zone = rnd.choice(["UTC", "UTC", "Europe/Berlin", "America/St_Johns", "Nowhere/Town", "Asia/Kathmandu"])
        out.append((" ".join(fields), zone))
    out += [(f"@every {d}", z) for d in ("1s", "0s", "90s", "1h30m", "2") for z in ("UTC", "Europe/Berlin")]
    out += [(p, z) for p in ("@yearly", "@weekly", "@hourly", "@midnight") for z in ("UTC", "Asia/Tokyo")]
    return out


async def test_the_server_accepts_what_cron_accepts_and_refuses_the_rest(nats_server):
    """Every expression cron.py accepts, the server accepts as cron.py sends it (the 6-field form); every one it
    refuses, the server refuses as written. (cron.py is stricter on purpose in two places, not drawn here: the
    zone `Local`, which depends on the server's host, and @every with a fraction of a second.)"""
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(
            name="S",
            subjects=["s.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            discard=DiscardPolicy.OLD,
            allow_msg_schedules=True,
        )
    )
    disagree = []
    try:
        for i, (text, zone) in enumerate(_expressions(random.Random(23), 400)):
            try:
                c = cron.parse(text, zone)
                pattern, ours = c.pattern, True
            except cron.CronError:
                pattern, ours = text, False
            headers = {"Nats-Schedule": pattern, "Nats-Schedule-Target": "s.due"}
            if zone != "UTC":
                headers["Nats-Schedule-Time-Zone"] = zone
            try:
                await js.publish(f"s.sched.{i}", b"", headers=headers)
                theirs = True
            except BadRequestError:
                theirs = False
            if ours != theirs and not (not ours and len(text.split()) == 5):  # 5 fields: cron.py adds the seconds
                disagree.append((text, zone, ours, theirs))
    finally:
        await js.delete_stream("S")
        await nc.close()
    assert disagree == []


async def test_ticks_the_server_fires_are_the_ticks_cron_computes(nats_server):
    """The server writes the next tick into each message it fires; cron.py finds the same next tick and, from it,
    the tick fired (that is how a tick's call id is derived: queueworker/ticks.py)."""
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(
            name="S",
            subjects=["s.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            discard=DiscardPolicy.OLD,
            allow_msg_schedules=True,
        )
    )
    cases = {
        "a": cron.parse("*/2 * * * * *", "Asia/Kathmandu"),  # +05:45
        "b": cron.parse("1-59/3 * * * * *", "America/St_Johns"),  # -03:30 (or -02:30)
        "c": cron.parse("@every 2s"),
        "d": cron.parse("* * * * * *", "Pacific/Chatham"),
    }
    sub = await js.pull_subscribe("s.due.>", durable="due", stream="S")
    try:
        for name, c in cases.items():
            headers = {"Nats-Schedule": c.pattern, "Nats-Schedule-Target": f"s.due.{name}"}
            if c.zone != "UTC":
                headers["Nats-Schedule-Time-Zone"] = c.zone
            await js.publish(f"s.sched.{name}", b"", headers=headers)
        seen: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
        deadline = time.monotonic() + 30
        while min(len(v) for v in seen.values()) < 3 and time.monotonic() < deadline:
            try:
                msgs = await sub.fetch(20, timeout=1)
            except TimeoutError:
                continue
            for m in msgs:
                nxt = datetime.fromisoformat((m.headers or {})["Nats-Schedule-Next"]).timestamp()
                seen[m.subject.rpartition(".")[2]].append((nxt, m.metadata.timestamp.timestamp()))
                await m.ack()
    finally:
        await js.delete_stream("S")
        await nc.close()
    for name, fired in seen.items():
        c = cases[name]
        assert len(fired) >= 3, name
        for nxt, stored in fired[1:]:  # the first @every tick counts from when it was stored
            tick = c.previous_before(nxt)
            assert c.next_after(tick) == nxt, (name, wall(tick), wall(nxt))
            assert tick <= stored < tick + 1, (name, wall(tick), stored)  # fired in the tick's second
    assert all(datetime.fromtimestamp(n, UTC).microsecond == 0 for f in seen.values() for n, _ in f)
