"""Reference pages generated from the contracts, so the documentation site cannot drift from them.

Each page under docs/ holds marked blocks (`<!-- BEGIN name -->` … `<!-- END name -->`); `jetqueue docs --write`
rewrites them (and the chart READMEs), `jetqueue docs --check` (and a test) fails when one is stale. `make docs`
then builds the site with `mkdocs build --strict`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jetqueue.generator.model import schema

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _default(prop: dict[str, Any]) -> str:
    if "default" not in prop or prop.get("type") == "object":
        return ""
    return "`" + json.dumps(prop["default"], ensure_ascii=False) + "`"


def _type(prop: dict[str, Any]) -> str:
    if "enum" in prop:
        return " \\| ".join(f"`{v}`" for v in prop["enum"])
    t = prop.get("type", "")
    if isinstance(t, list):
        return " \\| ".join(t)
    if "pattern" in prop and "duration" in prop.get("description", ""):
        return "duration"
    return str(t)


def _desc(prop: dict[str, Any]) -> str:
    return str(prop.get("description", "")).replace("|", "\\|").replace("\n", " ")


def _rows(node: dict[str, Any], prefix: str, mark: str | None = None) -> list[str]:
    """One row per key below `node`, its sub-keys after it; `mark` fills a last column when given."""
    rows = []
    for key, prop in node.get("properties", {}).items():
        path = f"{prefix}.{key}" if prefix else key
        tail = "" if mark is None else f" {mark} |"
        rows.append(f"| `{path}` | {_type(prop)} | {_default(prop)} | {_desc(prop)} |{tail}")
        if prop.get("type") == "object" and prop.get("properties"):
            rows.extend(_rows(prop, path, mark))
        extra = prop.get("additionalProperties")
        if isinstance(extra, dict) and extra.get("properties"):
            rows.extend(_rows(extra, f"{path}.<name>", mark))
    return rows


def queues_top_reference() -> str:
    """Every key outside `defaults` and `queues`."""
    head = ["| key | type | default | meaning |", "|---|---|---|---|"]
    body: list[str] = []
    for key, prop in schema()["properties"].items():
        if key in ("queues", "defaults"):
            continue
        body.append(f"| `{key}` | {_type(prop)} | {_default(prop)} | {_desc(prop)} |")
        body.extend(_rows(prop, key))
    return "\n".join(head + body)


def queues_reference() -> str:
    """A queue's keys, each once: whether `defaults` may set it (and every queue inherits it) or only a queue may."""
    props = schema()["properties"]
    queue = props["queues"]["additionalProperties"]
    defaults = props["defaults"]["properties"]
    head = ["| key | type | default | meaning | inherited from `defaults` |", "|---|---|---|---|---|"]
    body: list[str] = []
    for key, prop in queue["properties"].items():
        same = key in defaults and json.dumps(defaults[key], sort_keys=True) == json.dumps(prop, sort_keys=True)
        if key in defaults and not same:
            raise ValueError(f"defaults.{key} and queues.<name>.{key} differ in the schema: document them apart")
        mark = "yes" if same else "no: `queues.<name>` only"
        body.append(f"| `{key}` | {_type(prop)} | {_default(prop)} | {_desc(prop)} | {mark} |")
        node = {"properties": {key: prop}}
        body.extend(_rows(node, "", mark)[1:])
    if extra := sorted(set(defaults) - set(queue["properties"])):
        raise ValueError(f"defaults.{extra} have no queue key of the same name: document them")
    return "\n".join(head + body)


def settings_reference() -> str:
    from jetqueue.generator.settingsdoc import env_reference

    return env_reference()


def gateway_reference() -> str:
    from jetqueue.generator.apidoc import api_reference

    return api_reference()


# page (under docs/) -> its generated blocks
PAGES: dict[str, dict[str, Callable[[], str]]] = {
    "reference/queues-yaml.md": {"queues-top-reference": queues_top_reference, "queues-reference": queues_reference},
    "reference/settings.md": {"settings-reference": settings_reference},
    "reference/gateway-api.md": {"gateway-reference": gateway_reference},
}


def _block_re(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- BEGIN {name} -->\n)(.*?)(<!-- END {name} -->)", re.S)


def update(text: str, blocks: dict[str, Callable[[], str]], page: str = "page") -> str:
    for name, make in blocks.items():
        m = _block_re(name).search(text)
        if not m:
            raise ValueError(f"{page} has no <!-- BEGIN {name} --> … <!-- END {name} --> block")
        text = text[: m.start(2)] + make() + "\n" + text[m.end(2) :]
    return text


def stale_pages(write: bool, docs: Path = DOCS) -> list[Path]:
    """The generated pages that are out of date (rewritten when `write`)."""
    out = []
    for rel, blocks in PAGES.items():
        path = docs / rel
        current = path.read_text(encoding="utf-8")
        fresh = update(current, blocks, f"docs/{rel}")
        if fresh != current:
            out.append(path)
            if write:
                path.write_text(fresh, encoding="utf-8")
    return out


def run(write: bool, docs: Path = DOCS) -> int:
    from jetqueue.generator.chartdocs import stale

    changed = [*stale_pages(write, docs), *stale(write)]
    names = ", ".join(str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p) for p in changed)
    if not changed:
        print("the generated docs pages and the chart READMEs are up to date")
        return 0
    if write:
        print("rewrote: " + names)
        return 0
    print("stale: " + names + "; run `make docs`")
    return 1
