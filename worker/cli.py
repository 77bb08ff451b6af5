"""`jetqueue`: one command for the generator (validate, render, install, docs, import) and the runtime.

The generator's commands are imported only when asked for, so the worker image (which does not
carry pyyaml/jsonschema) still runs `jetqueue worker` and `jetqueue gateway`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from jetqueue import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jetqueue",
        description="Async function queues on NATS JetStream: validate and render queues.yaml, run the "
        "gateway and the queue-workers, operate the queues.",
        epilog="Runtime settings come from JETQUEUE_* environment variables; see docs/reference/settings.md.",
    )
    parser.add_argument("--version", action="version", version=f"jetqueue {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    try:
        from jetqueue.generator.cli import add_commands
    except ImportError as e:  # the worker image: no generator dependencies
        missing = str(e)

        def unavailable(args: argparse.Namespace) -> int:
            print(
                f"error: `jetqueue {args.command}` needs the generator extra ({missing}); "
                "pip install 'jetqueue[generator]'",
                file=sys.stderr,
            )
            return 2

        for name in ("validate", "render", "install", "docs", "import"):
            stand_in = sub.add_parser(name, help="(needs the generator extra)")
            stand_in.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)  # say why, not "usage"
            stand_in.set_defaults(func=unavailable)
    else:
        add_commands(sub)
    from jetqueue.ops.commands import add_commands as add_runtime_commands

    add_runtime_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return code
