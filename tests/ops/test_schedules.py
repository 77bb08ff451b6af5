"""`jetqueue schedule add|list|rm` as a user runs it, against a real nats-server; `purge` keeps schedules."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from jetqueue import contract, provision, schedules
from jetqueue.contract import jetstream
from tests.helpers import connect

Q = "jobs"


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"JETQUEUE_NATS_URL": url, "PATH": ""}
    return subprocess.run(
        [sys.executable, "-m", "jetqueue", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


async def run(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(cli, url, *args)


async def test_add_list_rm(nats_server):
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    await provision.ensure_stream(js, jetstream.work_stream(Q))
    url = nats_server.url
    add = ["schedule", "add", Q, "nightly", "--function", "report", "--cron", "0 0 2 * * *"]
    added = await run(url, *add, "--time-zone", "Europe/Berlin", "--data", "{}", "--header", "Content-Type=a/json")
    assert added.returncode == 0, added.stderr
    assert "added schedule nightly in queue jobs" in added.stdout and "02:00:00 +0" in added.stdout
    again = await run(url, *add)
    assert again.returncode == 1 and "exists; --replace replaces it" in again.stderr
    replaced = await run(url, *add, "--replace", "--cron", "@hourly")
    assert replaced.returncode == 0 and "replaced schedule nightly" in replaced.stdout

    listed = await run(url, "schedule", "list")
    assert listed.returncode == 0
    header, row = listed.stdout.splitlines()
    assert header.split() == "QUEUE SCHEDULE FUNCTION CRON ZONE NEXT RUN LAST RUN TICKS OWNER".split()
    assert row.split()[:5] == ["jobs", "nightly", "report", "@hourly", "UTC"] and row.split()[-3:] == ["-", "0", "cli"]
    stored = (await schedules.stored(js, Q))["nightly"]
    assert stored.body == b"" and stored.headers == {} and stored.cron == "@hourly"  # replaced whole

    # Declared in queues.yaml: the CLI refuses to change or remove it.
    await schedules.apply(js, Q, [schedules.Schedule("daily", "report", "@daily", owner=schedules.FROM_FILE)])
    for args in (["rm", Q, "daily"], ["add", Q, "daily", "--function", "x", "--cron", "@hourly", "--replace"]):
        refused = await run(url, "schedule", *args)
        assert refused.returncode == 1 and "declared in queues.yaml (queues.jobs.schedules.daily)" in refused.stderr

    forced = await run(url, "schedule", "rm", Q, "daily", "--force")  # a queue gone from queues.yaml: its schedules
    assert forced.returncode == 0 and "removed schedule daily" in forced.stdout
    assert (await run(url, "schedule", "rm", Q, "nightly")).returncode == 0
    missing = await run(url, "schedule", "rm", Q, "nightly")
    assert missing.returncode == 1 and "has no schedule 'nightly'" in missing.stderr
    assert await schedules.stored(js, Q) == {}
    await nc.close()


async def test_bad_input_is_refused_before_connecting():
    bad = await run(
        "nats://127.0.0.1:1",
        *("schedule", "add", Q, "Bad_Name", "--function", "f", "--cron", "0 0 25 * * *", "--time-zone", "Mars/X"),
    )
    assert bad.returncode == 2
    assert "error: NAME: schedule name 'Bad_Name' must be a DNS-1123 label" in bad.stderr
    assert "error: --time-zone: unknown time zone 'Mars/X'" in bad.stderr
    cron = await run("nats://127.0.0.1:1", "schedule", "add", Q, "x", "--function", "f", "--cron", "0 0 25 * * *")
    assert cron.returncode == 2 and "error: --cron: hour '25': 25 is above the maximum 23" in cron.stderr


async def test_a_queue_without_a_stream_is_named(nats_server):
    out = await run(nats_server.url, "schedule", "add", "nowhere", "x", "--function", "f", "--cron", "@daily")
    assert out.returncode == 1 and "queue 'nowhere' has no stream OF_nowhere" in out.stderr


async def test_purge_keeps_cron_schedules_and_reset_says_it_drops_them(nats_server):
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    await provision.ensure_stream(js, jetstream.work_stream(Q))
    await schedules.ensure_stream(js, Q)
    await schedules.put(js, Q, schedules.Schedule("weekly", "report", "@weekly"))
    call = contract.Call("held-1", Q, "report")
    subject, headers = contract.held_message(call, call.to_headers(), 4e9, "held-1")
    await js.publish(subject, b"", headers=headers)
    purged = await run(nats_server.url, "purge", Q, "--yes")
    assert purged.returncode == 0 and "1 from OF_jobs_SCHED" in purged.stdout
    assert "1 cron schedule(s) kept" in purged.stdout
    assert set(await schedules.stored(js, Q)) == {"weekly"}
    reset = await run(nats_server.url, "reset", Q)
    assert reset.returncode == 1 and "its 1 cron schedule(s)" in reset.stdout
    await nc.close()
