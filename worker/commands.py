"""The runtime's subcommands: worker, gateway, and the queue operations."""

from __future__ import annotations

import argparse
import asyncio
import sys

from worker import logs
from worker.settings import SettingsError, WorkerSettings


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "worker",
        help="run a queue-worker (settings from JETQUEUE_* environment variables)",
        description="Pull calls for one queue from JetStream and invoke the functions: retries, dead letters, "
        "callbacks, long-job ack extension, metrics on JETQUEUE_HTTP_PORT. Every setting is an environment "
        "variable; see README.md, 'Runtime settings'.",
    )
    p.set_defaults(func=cmd_worker)


def cmd_worker(args: argparse.Namespace) -> int:
    try:
        settings = WorkerSettings.from_env()
        logs.setup(settings.log_format, settings.log_level)
        from worker.functions import Policies

        Policies.from_settings(settings)  # a bad overrides file fails now, not at the first call
    except SettingsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from worker.worker import run

    return asyncio.run(run(settings))
