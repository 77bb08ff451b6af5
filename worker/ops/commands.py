"""The runtime's subcommands: worker, gateway, submit, and the queue operations."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from jetqueue import contract, logs
from jetqueue.durations import parse_duration
from jetqueue.ops import deadletters, pauses, queues, results, schedules, status
from jetqueue.settings import GatewaySettings, SettingsError, SharedSettings, WorkerSettings

ENV_HELP = "Every setting is an environment variable; see docs/reference/settings.md."


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "worker",
        help="run a queue-worker (settings from JETQUEUE_* variables)",
        description="Pull calls for one queue from JetStream and invoke the functions: retries, "
        "dead letters, callbacks, long-job ack extension, metrics on JETQUEUE_HTTP_PORT. " + ENV_HELP,
    )
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser(
        "gateway",
        help="run the async gateway (settings from JETQUEUE_* variables)",
        description="Accept POST /async-function/<name>, store each call in JetStream and answer "
        "202 once stored; cancel and status under /async-calls. " + ENV_HELP,
    )
    p.set_defaults(func=cmd_gateway)

    def nats_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--nats-url",
            help="NATS URL(s) (default: JETQUEUE_NATS_URL or nats://127.0.0.1:4222); "
            "credentials come from the JETQUEUE_NATS_* variables",
        )

    p = sub.add_parser(
        "submit",
        help="submit a call and print its id",
        description="Submit an async call through the gateway (--gateway) or straight to NATS "
        "by the message contract (default). Prints the call id.",
    )
    p.add_argument("function", help="function name (name or name.namespace)")
    p.add_argument("--data", default="", help="body: text, @FILE, or - for standard input")
    p.add_argument("--callback", default="", help="callback URL")
    p.add_argument("--failure-callback", default="", metavar="URL", help="callback URL called only if the call fails")
    p.add_argument("--header", action="append", default=[], metavar="K=V", help="a header for the function")
    p.add_argument("--call-id", default="", help="call id (default: a new UUID)")
    p.add_argument(
        "--delay", default="", metavar="DURATION", help="run it no sooner than this from now (90s, 1h30m, or seconds)"
    )
    p.add_argument("--gateway", help="gateway URL, e.g. http://127.0.0.1:8080 (token: JETQUEUE_AUTH_TOKEN)")
    p.add_argument("--queue", default=contract.DEFAULT_QUEUE, help="queue, when publishing to NATS directly")
    p.add_argument(
        "--partitions",
        type=int,
        default=1,
        help="the queue's partitions as in queues.yaml, when publishing to NATS directly (default 1)",
    )
    p.add_argument(
        "--partition-key",
        default="",
        metavar="KEY",
        help="choose the partition by KEY instead of the function (sent as X-Partition-Key through the gateway)",
    )
    p.add_argument("--concurrency-key", default="", metavar="KEY", help="the call's X-Concurrency-Key (docs/keys.md)")
    levels = [level.value for level in contract.LEVELS]
    p.add_argument("--priority", default="", choices=levels, help="the call's X-Priority (docs/priorities.md)")
    nats_args(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser(
        "status",
        help="pending, scheduled, in-flight, dead and expired calls, and pauses, per queue and function",
        description="Per queue (FUNCTION *) and per function: PENDING calls waiting to run, SCHEDULED calls held "
        "for later, IN FLIGHT (per function in function mode, once functions have consumers of their own), "
        "REDELIVERED, DEAD LETTERS, EXPIRED (dead letters older than maxEventAge, among the latest 10000), "
        "CONSUMERS, REPLICAS, LEADER, and PAUSED (until when).",
    )
    p.add_argument("queue", nargs="?", help="one queue (default: every OF_* stream)")
    nats_args(p)
    p.set_defaults(func=lambda a: _ops(a, lambda nc: status.status(nc.jetstream(), a.queue)))

    p = sub.add_parser(
        "result",
        help="a finished call's result: the function's answer body to stdout, its status to stderr",
        description="The answer a finished call's function gave (docs/results.md), found from the call id alone: "
        "the body to stdout byte for byte, the function's status (and whether the body was cut at the workers' "
        "resultMaxBytes) to stderr. Exit 1 when there is none (unknown call, not finished, no answer kept).",
    )
    p.add_argument("call_id", metavar="ID", help="the call id (X-Call-Id of the 202)")
    p.add_argument("--json", action="store_true", help="print status, headers, size and body (base64) as JSON")
    nats_args(p)
    p.set_defaults(
        func=lambda a: _ops(
            a, lambda nc: results.result(nc.jetstream(), a.call_id, sys.stdout.buffer, sys.stderr, a.json)
        )
    )

    p = sub.add_parser(
        "pause",
        help="start no more calls of a queue (or of one function) until resumed or until a time",
        description=pauses.PAUSE_HELP,
        epilog=pauses.PAUSE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("queue", type=pauses.queue_argument, help="the queue, as named in queues.yaml")
    p.add_argument(
        "--function",
        type=pauses.function_argument,
        help="only this function (function mode; a static-mode queue is paused whole)",
    )
    p.add_argument(
        "--until",
        type=pauses.until_argument,
        metavar="TIME",
        help=f"end the pause by itself then: {pauses.TIME_HELP} (default: until resumed)",
    )
    nats_args(p)
    p.set_defaults(func=lambda a: _ops(a, lambda nc: pauses.pause(nc.jetstream(), a.queue, a.function or "", a.until)))

    p = sub.add_parser(
        "resume",
        help="start a paused queue's (or function's) calls again",
        description="Without --function: the queue's pause ends, and every pause of one of its functions. With "
        "--function: that function's own pause ends (a pause of the whole queue still holds it, and the command "
        "says so). The calls kept meanwhile then run.",
    )
    p.add_argument("queue", type=pauses.queue_argument, help="the queue, as named in queues.yaml")
    p.add_argument("--function", type=pauses.function_argument, help="only this function's own pause")
    nats_args(p)
    p.set_defaults(func=lambda a: _ops(a, lambda nc: pauses.resume(nc.jetstream(), a.queue, a.function or "")))

    for name, text in (
        ("purge", "drop the queued calls of a queue (stream and consumers kept)"),
        ("reset", "delete a queue's stream and consumers; running workers and gateways recreate them"),
    ):
        p = sub.add_parser(name, help=text, description=text + ". Asks for confirmation, or --yes.")
        p.add_argument("queue")
        p.add_argument("--yes", action="store_true", help="do not ask")
        nats_args(p)
        action = getattr(queues, name)
        p.set_defaults(func=lambda a, act=action: _ops(a, lambda nc: act(nc.jetstream(), a.queue, queues.ask(a.yes))))

    p = sub.add_parser(
        "dlq",
        help="list, show, replay or purge dead letters",
        description="Dead letters live in OF_<queue>_DLQ with why they failed. Replay puts them "
        "back on the queue as new calls (fresh attempt count) and removes them from the DLQ.",
    )
    p.add_argument("action", choices=("list", "show", "replay", "purge"))
    p.add_argument("queue")
    p.add_argument("--function", help="only this function")
    p.add_argument(
        "--callbacks",
        action="store_const",
        const=contract.CALLBACK_DLQ_FUNCTION,
        dest="function",
        help="only callbacks that could not be delivered (refused, redirected, rejected or out of attempts)",
    )
    p.add_argument("--call-id", help="only this call")
    p.add_argument("--yes", action="store_true", help="do not ask (replay, purge)")
    nats_args(p)
    p.set_defaults(func=cmd_dlq)

    p = sub.add_parser(
        "schedule",
        help="add, list or remove cron schedules (a call at every tick, exactly once)",
        description=schedules.HELP,
        epilog=schedules.EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="{add,list,rm}")
    a = actions.add_parser("add", help="add a schedule (or replace one with --replace)", description=schedules.HELP)
    a.add_argument("queue", type=pauses.queue_argument, help="the queue whose worker makes the calls")
    a.add_argument("name", help="a DNS-1123 label; it names the calls: cron.<queue>.<name>.<UTC time>")
    a.add_argument("--function", required=True, help="function to call (name or name.namespace)")
    a.add_argument("--cron", required=True, metavar="EXPR", help='cron expression, e.g. "0 0 2 * * *" or "@hourly"')
    a.add_argument("--time-zone", default="UTC", metavar="ZONE", help="IANA time zone of the expression (default UTC)")
    a.add_argument("--data", default="", help="body of every call: text, @FILE, or - for standard input")
    a.add_argument("--header", action="append", default=[], metavar="K=V", help="a header for the function")
    a.add_argument("--callback", default="", metavar="URL", help="callback URL of every call")
    a.add_argument("--failure-callback", default="", metavar="URL", help="called only when a call ends failed")
    a.add_argument("--replace", action="store_true", help="replace a schedule of that name added before")
    nats_args(a)
    a.set_defaults(func=cmd_schedule_add)
    a = actions.add_parser("list", help="every schedule: function, cron, zone, next run, last run")
    a.add_argument("queue", nargs="?", help="one queue (default: every queue)")
    nats_args(a)
    a.set_defaults(func=lambda x: _ops(x, lambda nc: schedules.schedule_list(nc.jetstream(), x.queue)))
    a = actions.add_parser("rm", help="remove a schedule (not one queues.yaml declares, unless --force)")
    a.add_argument("queue", type=pauses.queue_argument)
    a.add_argument("name")
    a.add_argument(
        "--force",
        action="store_true",
        help="remove it even if queues.yaml declares it (a queue removed from queues.yaml keeps its schedules; "
        "a worker applying a queues.yaml that still declares it makes it again)",
    )
    nats_args(a)
    a.set_defaults(func=lambda x: _ops(x, lambda nc: schedules.schedule_rm(nc.jetstream(), x.queue, x.name, x.force)))

    from jetqueue.dashboard.command import add_command as add_dashboard

    add_dashboard(sub)


def _settings_for_cli(nats_url: str | None) -> SharedSettings:
    s = SharedSettings.from_env()
    if nats_url:
        s.nats_url = nats_url
    return s


def _ops(args: argparse.Namespace, action: Callable[..., Awaitable[int]]) -> int:
    from jetqueue.connection import connect

    async def go() -> int:
        nc = await connect(_settings_for_cli(args.nats_url), "jetqueue-cli", connect_attempts=3)
        try:
            return await action(nc)
        finally:
            await nc.close()

    try:
        return asyncio.run(go())
    except (queues.OpsError, ConnectionError, SettingsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def cmd_dlq(args: argparse.Namespace) -> int:
    if args.action == "list":
        return _ops(args, lambda nc: deadletters.dlq_list(nc.jetstream(), args.queue, args.function, args.call_id))
    if args.action == "show":
        return _ops(args, lambda nc: deadletters.dlq_show(nc.jetstream(), args.queue, args.function, args.call_id))
    if args.action == "replay":
        return _ops(
            args, lambda nc: deadletters.dlq_replay(nc, args.queue, args.function, args.call_id, queues.ask(args.yes))
        )
    return _ops(args, lambda nc: deadletters.dlq_purge(nc.jetstream(), args.queue, args.function, queues.ask(args.yes)))


def cmd_schedule_add(args: argparse.Namespace) -> int:
    from jetqueue.egress import Egress
    from jetqueue.schedules import Schedule

    try:
        headers = dict(h.split("=", 1) for h in args.header)
        body = _body(args.data)
        shared = _settings_for_cli(args.nats_url)
        egress = Egress.parse(shared.callback_hosts, shared.callback_blocked_networks)
    except (OSError, ValueError, SettingsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    schedule = Schedule(
        name=args.name,
        function=args.function,
        cron=args.cron,
        time_zone=args.time_zone,
        body=body,
        headers=headers,
        callback_url=args.callback,
        failure_callback_url=args.failure_callback,
    )
    if problems := schedule.problems(egress):
        flags = {"name": "NAME", "timeZone": "--time-zone", "callbackUrl": "--callback", "body": "--data"}
        flags |= {"failureCallbackUrl": "--failure-callback", "headers": "--header"}
        for key, message in problems:
            print(f"error: {flags.get(key, '--' + key)}: {message}", file=sys.stderr)
        return 2
    return _ops(args, lambda nc: schedules.schedule_add(nc.jetstream(), args.queue, schedule, egress, args.replace))


def _body(data: str) -> bytes:
    if data == "-":
        return sys.stdin.buffer.read()
    if data.startswith("@"):
        with open(data[1:], "rb") as f:
            return f.read()
    return data.encode()


def cmd_submit(args: argparse.Namespace) -> int:
    from jetqueue.client import SubmitError, submit_http, submit_nats

    try:
        body = _body(args.data)
        headers = dict(h.split("=", 1) for h in args.header)
        delay = parse_duration(args.delay) if args.delay else 0.0
        if not 1 <= args.partitions <= contract.MAX_PARTITIONS:
            raise ValueError(f"--partitions must be 1 to {contract.MAX_PARTITIONS}")
        if args.partition_key and (reason := contract.partition_key_problem(args.partition_key)):
            raise ValueError(reason)
        if args.concurrency_key and (reason := contract.concurrency_key_problem(args.concurrency_key)):
            raise ValueError(reason)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    async def go() -> str:
        if args.gateway:
            if args.partition_key:
                headers[contract.PARTITION_KEY] = args.partition_key
            given = {contract.CONCURRENCY_KEY: args.concurrency_key, contract.PRIORITY_HEADER: args.priority}
            headers.update({k: v for k, v in given.items() if v})
            return await submit_http(
                args.gateway,
                args.function,
                body,
                args.callback,
                headers,
                args.call_id,
                token=os.environ.get("JETQUEUE_AUTH_TOKEN", ""),
                delay=delay,
                failure_callback_url=args.failure_callback,
            )
        from jetqueue.connection import connect

        nc = await connect(_settings_for_cli(args.nats_url), "jetqueue-submit", connect_attempts=3)
        try:
            return await submit_nats(
                nc,
                args.function,
                body,
                args.queue,
                args.callback,
                headers,
                args.call_id,
                delay=delay,
                partitions=args.partitions,
                partition_key=args.partition_key,
                failure_callback_url=args.failure_callback,
                concurrency_key=args.concurrency_key,
                priority=args.priority,
            )
        finally:
            await nc.close()

    try:
        print(asyncio.run(go()))
    except (SubmitError, ConnectionError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def serve(main: Coroutine[Any, Any, int]) -> int:
    """Run a long-lived server (worker, gateway) on uvloop where it is installed: less CPU per call than
    asyncio's own loop (bench/results.md)."""
    try:
        import uvloop
    except ImportError:  # not on this platform
        return asyncio.run(main)
    return uvloop.run(main)


def cmd_worker(args: argparse.Namespace) -> int:
    try:
        settings = WorkerSettings.from_env()
        logs.setup(settings.log_format, settings.log_level)
        from jetqueue.queueworker.policy import Policies

        Policies.from_settings(settings)  # a bad overrides file fails now, not at the first call
        if settings.schedules_file:
            from jetqueue.schedules import ScheduleError, load_file

            try:
                load_file(settings.schedules_file)
            except (OSError, ValueError, ScheduleError) as e:
                raise SettingsError(f"JETQUEUE_SCHEDULES_FILE: {e}") from None
    except SettingsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from jetqueue.queueworker.process import run

    return serve(run(settings))


def cmd_gateway(args: argparse.Namespace) -> int:
    try:
        settings = GatewaySettings.from_env()
        logs.setup(settings.log_format, settings.log_level)
        from jetqueue.gateway.routing import Routing

        Routing.from_settings(settings)
    except SettingsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from jetqueue.gateway.server import run

    return serve(run(settings))
