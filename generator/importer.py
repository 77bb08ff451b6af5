"""`jetqueue import openfaas VALUES...`: the queues.yaml for what OpenFaaS's charts run, checked by the validator,
with every value that could not be carried over listed (on stderr, and in the file's header).

Reading OpenFaaS's values is generator/openfaas.py; this module puts the releases together: one queue per
release, one NATS, the OpenFaaS gateway's API for the functions' annotations (they route and tune calls as they
did: `com.openfaas.queue`, `com.openfaas.retry.*`), and the header that says what happened.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from jetqueue.durations import parse_duration
from jetqueue.generator import openfaas
from jetqueue.generator.openfaas import ImportError_
from jetqueue.generator.render import dump_yaml
from jetqueue.generator.validate import Result, validate_text

AUTH_SECRET = "basic-auth"  # the OpenFaaS chart's Secret for its gateway's API


@dataclass
class Imported:
    text: str  # the queues.yaml
    lines: list[str]  # what could not be carried over, what changed, what to do
    result: Result  # the validator's verdict on `text`


def _set(data: dict[str, Any], top: dict[str, Any], label: str, lines: list[str], prefix: str = "") -> None:
    """`top` laid on `data`: the first release to set a value keeps it; a release that disagrees is told."""
    for key, value in top.items():
        if isinstance(value, dict):
            _set(data.setdefault(key, {}), value, label, lines, f"{prefix}{key}.")
        elif key not in data:
            data[key] = value
        elif data[key] != value:
            lines.append(f"{label}: {prefix}{key}={value}: not carried: an earlier release set {data[key]!r}")


def convert(releases: list[tuple[str, list[dict[str, Any]]]], namespace: str = "openfaas") -> Imported:
    """Each release: its label and its values documents (layered in order). Raises ImportError_ for input that
    cannot be converted at all."""
    data: dict[str, Any] = {}
    queues: dict[str, dict[str, Any]] = {}
    lines: list[str] = []
    shared = None
    for label, docs in releases:
        kind, r = openfaas.release(label, docs)
        if kind == "openfaas":
            if shared is not None:
                raise ImportError_(f"{label}: a second openfaas release; layer its files with commas (a.yaml,b.yaml)")
            name, queue, top = openfaas.from_openfaas(r, namespace)
            shared = name
        else:
            name, queue, top = openfaas.from_queue_worker(r, namespace)
        if name in queues:
            raise ImportError_(f"{label}: queue {name!r} again; OpenFaaS runs one queue-worker release per queue")
        queues[name] = queue
        lines += r.lines
        _set(data, top, label, lines)
    if not queues:
        raise ImportError_("no values files given")
    function_url = f"http://gateway.{namespace}:8080/function/{{function}}"
    gateway = data.setdefault("gateway", {})
    gateway.setdefault("functionURL", function_url)
    if shared is not None:
        gateway["defaultQueue"] = shared
    else:
        gateway["strictRouting"] = True
        lines.append(
            "note: no openfaas chart values given: functions routed to none of these queues (by their "
            "com.openfaas.queue or a queue's `functions`) are refused with 404 (gateway.strictRouting)"
        )
    nats = data.pop("nats", {})
    if nats.get("url"):
        data["nats"] = {"profile": "external", "url": nats["url"]}
        lines.append(
            "note: nats: jetqueue connects to the NATS OpenFaaS uses; its streams are OF_<queue> as OpenFaaS's are: "
            "drain and remove OpenFaaS's stream of a queue before its jetqueue worker starts, or give the jetqueue "
            "queue another name (docs/migrating-from-openfaas.md)"
        )
    else:
        lines.append(
            "note: nats: OpenFaaS's own NATS (one pod, no persistence) is not shared; queues.yaml declares jetqueue's "
            "own production NATS (nats.profile: dev for a test setup)"
        )
    data["openfaas"]["auth"] = {"secretName": AUTH_SECRET}
    lines.append(
        f"note: openfaas.auth: copy the Secret {AUTH_SECRET} from namespace {namespace} into jetqueue's namespace "
        "(the OpenFaaS gateway's API needs it to read the functions' annotations)"
    )
    for name, q in queues.items():
        if q.get("streamReplication") == 1 and data.get("nats", {}).get("profile") != "external":
            lines.append(
                f"note: queues.{name}.streamReplication: 1 as in OpenFaaS (its default, for development): a NATS "
                "server lost loses the queue's calls; 3 for production"
            )
        if q.get("functionURL") == gateway["functionURL"]:
            del q["functionURL"]
        if parse_duration(q.get("upstreamTimeout", "1m")) > 60:
            q["shutdownTimeout"] = q["upstreamTimeout"]
            lines.append(
                f"note: queues.{name}.shutdownTimeout: {q['upstreamTimeout']}, its upstreamTimeout, so a "
                "rollout lets running calls finish"
            )
    doc: dict[str, Any] = {k: data[k] for k in ("image", "nats", "gateway", "openfaas") if k in data}
    doc["queues"] = queues
    sources = openfaas.one_line(", ".join(label for label, _ in releases))
    header = [f"# Generated by `jetqueue import openfaas` from {sources}."]
    header.append("# Check it with `jetqueue validate`; docs/migrating-from-openfaas.md explains the switch.")
    if lines:
        header += ["#", "# What did not carry over, what changed, and what to do:"]
        header += [f"#   {openfaas.one_line(line)}" for line in lines]
    text = "\n".join(header) + "\n" + dump_yaml(doc)
    return Imported(text, lines, validate_text(text))


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "import",
        help="write a queues.yaml from another system's configuration (openfaas)",
        description="Write a queues.yaml from another system's configuration.",
    )
    kinds = p.add_subparsers(dest="source", metavar="SOURCE", required=True)
    o = kinds.add_parser(
        "openfaas",
        help="from OpenFaaS chart values (chart/openfaas, chart/queue-worker)",
        description="Turn OpenFaaS Helm values into a queues.yaml: one argument per Helm release (the openfaas "
        "chart's values: its shared queue; each queue-worker chart's values: one dedicated queue), and "
        "`a.yaml,b.yaml` to layer files as `helm -f a.yaml -f b.yaml`. Every value that cannot be carried over is "
        "listed with the reason, on stderr and in the file's header. Exit 0 when the result validates, 1 when it "
        "does not, 2 when a file cannot be read or is not OpenFaaS values.",
    )
    o.add_argument("values", nargs="+", metavar="VALUES", help="values file(s) of one release, comma-separated")
    o.add_argument("-o", "--out", default="-", help="queues file to write (default: - = stdout)")
    o.add_argument("--namespace", default="openfaas", help="namespace of the OpenFaaS release (default: openfaas)")
    o.set_defaults(func=cmd_import_openfaas)


def cmd_import_openfaas(args: argparse.Namespace, read: Callable[[str], str] | None = None) -> int:
    read = read or (lambda path: Path(path).read_text(encoding="utf-8"))
    releases = []
    try:
        for arg in args.values:
            docs = []
            for path in arg.split(","):
                doc = yaml.safe_load(read(path))
                if not isinstance(doc, dict):
                    raise ImportError_(f"{path}: not a values file (a YAML mapping)")
                docs.append(doc)
            releases.append((arg, docs))
        imported = convert(releases, args.namespace)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ImportError_) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in imported.lines:
        print(line, file=sys.stderr)
    for problem in imported.result.problems:
        print(problem.format(args.out), file=sys.stderr)
    if args.out == "-":
        sys.stdout.write(imported.text)
    else:
        Path(args.out).write_text(imported.text, encoding="utf-8")
        print(
            f"wrote {args.out} ({len(imported.result.config['queues']) if imported.result.config else 0} queue(s))",
            file=sys.stderr,
        )
    return 1 if imported.result.errors else 0
