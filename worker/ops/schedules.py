"""`jetqueue schedule add|list|rm`: cron schedules of a queue (the design: jetqueue/schedules.py).

Schedules declared in queues.yaml are applied by the queue's workers at start and owned by the file: `add` and
`rm` refuse to change one of them (the next worker start would undo it) and say where to change it instead.
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
from datetime import datetime
from typing import TextIO

from nats.js import JetStreamContext

from jetqueue import contract, cron, keyvalue, schedules
from jetqueue.egress import Egress
from jetqueue.ops.queues import OpsError, table
from jetqueue.ops.status import queue_names
from jetqueue.schedules import Schedule, ScheduleError

HELP = textwrap.fill(
    "A cron schedule makes a call of FUNCTION at every tick of a cron expression, in a time zone, exactly once "
    "per tick across every worker replica (nats-server message schedules, 2.12+: the server fires each tick, the "
    "queue's worker makes it a call with the id cron.<queue>.<name>.<UTC time>). Schedules declared in "
    "queues.yaml (`schedules:` of a queue) are applied by the queue's workers at start and can only be changed "
    "there; these commands manage the others.",
    width=80,
)
EXAMPLES = """cron expressions (as nats-server reads them; see docs/cron.md):
  "0 0 2 * * *"      second minute hour day month weekday: 02:00:00 every day
  "0 2 * * *"        crontab's five fields: the same, at second 0
  "0 */15 9-17 * * mon-fri", "@hourly", "@daily", "@weekly", "@every 90s"

examples:
  jetqueue schedule add faas-request nightly-report --function report --cron "0 0 2 * * *" \\
      --time-zone Europe/Berlin --data '{"scope":"all"}' --header Content-Type=application/json
  jetqueue schedule list
  jetqueue schedule rm faas-request nightly-report"""
HEADER = ["QUEUE", "SCHEDULE", "FUNCTION", "CRON", "ZONE", "NEXT RUN", "LAST RUN", "TICKS", "OWNER"]


def _when(t: float, zone: str) -> str:
    return datetime.fromtimestamp(t, cron.zone(zone)).strftime("%Y-%m-%d %H:%M:%S %z")


async def _record(js: JetStreamContext, queue: str, name: str) -> dict[str, object]:
    try:
        found = await keyvalue.latest(js, contract.SCHEDULE_BUCKET, contract.cron_key(queue, name))
    except Exception:  # no bucket yet: no tick made
        return {}
    return json.loads(found[0]) if found else {}


async def schedule_list(js: JetStreamContext, queue: str | None, out: TextIO = sys.stdout) -> int:
    rows = [HEADER]
    now = time.time()
    for q in [queue] if queue else await queue_names(js):
        for s in (await schedules.stored(js, q)).values():
            try:
                nxt = _when(cron.parse(s.cron, s.time_zone).next_after(now), s.time_zone)
            except cron.CronError as e:
                nxt = f"never: {e}"
            rec = await _record(js, q, s.name)
            last = rec.get("last")
            last_run = _when(float(last), s.time_zone) if isinstance(last, int | float) and last >= s.since else "-"
            rows.append([q, s.name, s.function, s.cron, s.time_zone, nxt, last_run, str(rec.get("ticks", 0)), s.owner])
    if len(rows) == 1:
        out.write(f"no cron schedules{f' in queue {queue}' if queue else ''}\n")
        return 0
    table(rows, out)
    return 0


def _owned(queue: str, name: str, verb: str) -> OpsError:
    return OpsError(
        f"schedule {name!r} of queue {queue!r} is declared in queues.yaml (queues.{queue}.schedules.{name}) and "
        f"applied by the queue's workers at every start: {verb} it there and roll the workers out"
        + (" (or, for a queue that has no workers any more, --force)" if verb == "remove" else "")
    )


async def schedule_add(
    js: JetStreamContext, queue: str, schedule: Schedule, egress: Egress, replace: bool, out: TextIO = sys.stdout
) -> int:
    have = (await schedules.stored(js, queue)).get(schedule.name)
    if have is not None and have.owner == schedules.FROM_FILE:
        raise _owned(queue, schedule.name, "change")
    if have is not None and not replace:
        raise OpsError(f"schedule {schedule.name!r} of queue {queue!r} exists; --replace replaces it")
    try:
        await schedules.ensure_stream(js, queue)
        stored = await schedules.put(js, queue, schedule, egress)
    except ScheduleError as e:
        raise OpsError(str(e)) from None
    nxt = cron.parse(stored.cron, stored.time_zone).next_after(time.time())
    verb = "replaced" if have is not None else "added"
    out.write(
        f"{verb} schedule {stored.name} in queue {queue}: {stored.function} at {stored.cron!r} ({stored.time_zone}); "
        f"next run {_when(nxt, stored.time_zone)}\n"
    )
    return 0


async def schedule_rm(
    js: JetStreamContext, queue: str, name: str, force: bool = False, out: TextIO = sys.stdout
) -> int:
    have = (await schedules.stored(js, queue)).get(name)
    if have is None:
        raise OpsError(f"queue {queue!r} has no schedule {name!r} (see `jetqueue schedule list {queue}`)")
    if have.owner == schedules.FROM_FILE and not force:
        raise _owned(queue, name, "remove")
    await schedules.remove(js, queue, name)
    out.write(f"removed schedule {name} from queue {queue}: no tick after now makes a call\n")
    return 0
