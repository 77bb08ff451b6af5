"""`jetqueue validate | render | install | dev | docs | import`: the generator's commands."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from jetqueue.generator import docs, importer, install
from jetqueue.generator.render import render, write_atomically
from jetqueue.generator.validate import Result, validate_text


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "validate",
        help="check queues.yaml and print every problem at once",
        description="Check queues.yaml against the schema and the semantic rules. Prints each "
        "problem as FILE:LINE:COL: $.path: message. Exit 0 valid, 1 invalid, 2 usage error.",
    )
    p.add_argument("-f", "--file", default="queues.yaml", help="queues file (default: queues.yaml)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(
        "render",
        help="validate, then write Helm values and the install plan",
        description="Validate queues.yaml, then render values for the NATS chart, one values "
        "file per queue worker, the gateway values and install-plan.json into OUT. OUT is "
        "replaced atomically: on any error it is left as it was.",
    )
    p.add_argument("-f", "--file", default="queues.yaml", help="queues file (default: queues.yaml)")
    p.add_argument("-o", "--out", default="out", help="output directory (default: out)")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser(
        "install",
        help="helm upgrade --install everything in the install plan, in order",
        description="Install NATS, the queue workers and the gateway with helm, in the order "
        "of the plan that `jetqueue render` wrote. Needs helm and a kube context.",
    )
    p.add_argument("--plan", default="out/install-plan.json", help="plan file (default: out/install-plan.json)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.set_defaults(func=lambda a: install.run(Path(a.plan), a.dry_run))

    p = sub.add_parser(
        "dev",
        help="run the whole system locally on an embedded NATS and show calls flow",
        description="Start nats-server, the gateway, one worker per queue and sample functions "
        "(echo, sleep, flaky, limited, fail) on loopback, submit a burst of calls, show progress and "
        "a summary, then keep running for curl experiments until Ctrl-C.",
    )
    p.add_argument("-f", "--file", default=None, help="queues file (default: examples/dev.yaml)")
    p.add_argument("--calls", type=int, default=40, help="calls per sample function (default: 40)")
    p.add_argument("--no-load", action="store_true", help="submit nothing; just run the system")
    p.add_argument("--exit", action="store_true", help="stop after the summary")
    p.add_argument("--port", type=int, default=None, help="gateway port (default: a free one)")
    p.add_argument("--keep-data", action="store_true", help="keep the temporary directory (JetStream data, logs)")
    p.set_defaults(func=cmd_dev)

    p = sub.add_parser("docs", help="regenerate the docs site's reference pages and the chart READMEs from the schemas")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--write", action="store_true", help="rewrite the generated blocks under docs/ and the chart READMEs"
    )
    g.add_argument("--check", action="store_true", help="exit 1 if they are stale (default)")
    p.set_defaults(func=lambda a: docs.run(a.write))

    importer.add_command(sub)


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        print(f"error: {path}: no such file", file=sys.stderr)
    except (OSError, UnicodeDecodeError) as e:
        print(f"error: {path}: cannot read: {e}", file=sys.stderr)
    return None


def _report(result: Result, path: str) -> None:
    for p in result.problems:
        print(p.format(path), file=sys.stderr)
    errors, warnings = len(result.errors), len(result.problems) - len(result.errors)
    if errors:
        print(f"{path}: {errors} error(s), {warnings} warning(s)", file=sys.stderr)


def cmd_validate(args: argparse.Namespace) -> int:
    text = _read(args.file)
    if text is None:
        return 2
    result = validate_text(text)
    _report(result, args.file)
    if result.errors:
        return 1
    assert result.config is not None
    print(f"{args.file}: valid ({len(result.config['queues'])} queue(s))")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    text = _read(args.file)
    if text is None:
        return 2
    t0 = time.perf_counter()
    result = validate_text(text)
    _report(result, args.file)
    if result.errors or result.config is None:
        print(f"nothing written; {args.out}/ is unchanged", file=sys.stderr)
        return 1
    files = render(result.config, source=Path(args.file).name)
    try:
        write_atomically(files, Path(args.out))
    except OSError as e:
        print(f"error: cannot write {args.out}/: {e}; it is unchanged", file=sys.stderr)
        return 1
    ms = (time.perf_counter() - t0) * 1000
    print(f"rendered {len(files)} files into {args.out}/ in {ms:.0f} ms:")
    for rel in sorted(files):
        print(f"  {args.out}/{rel}")
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    import asyncio

    from jetqueue.generator import dev

    file = Path(args.file) if args.file else dev.DEFAULT_FILE
    return asyncio.run(dev.run(file, args.calls, args.no_load, args.exit, args.port, args.keep_data))
