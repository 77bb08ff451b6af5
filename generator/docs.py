"""Reference docs generated from the contracts, so README.md cannot drift from them.

README.md holds marked blocks (`<!-- BEGIN name -->` … `<!-- END name -->`); `jetqueue docs --write`
rewrites them, `jetqueue docs --check` (and a test) fails when one is stale.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jetqueue.generator.model import schema

README = Path(__file__).resolve().parent.parent / "README.md"


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


def _rows(node: dict[str, Any], prefix: str) -> list[str]:
    rows = []
    for key, prop in node.get("properties", {}).items():
        path = f"{prefix}.{key}" if prefix else key
        desc = prop.get("description", "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{path}` | {_type(prop)} | {_default(prop)} | {desc} |")
        if prop.get("type") == "object" and prop.get("properties"):
            rows.extend(_rows(prop, path))
        extra = prop.get("additionalProperties")
        if isinstance(extra, dict) and extra.get("properties"):
            rows.extend(_rows(extra, f"{path}.<name>"))
    return rows


def queues_reference() -> str:
    s = schema()
    head = ["| key | type | default | meaning |", "|---|---|---|---|"]
    body: list[str] = []
    for key, prop in s["properties"].items():
        if key == "queues":
            desc = prop["description"]
            body.append(f"| `queues` | object | | {desc} |")
            body.extend(_rows(prop["additionalProperties"], "queues.<name>"))
            continue
        body.append(f"| `{key}` | {_type(prop)} | {_default(prop)} | {prop.get('description', '')} |")
        body.extend(_rows(prop, key))
    return "\n".join(head + body)


def settings_reference() -> str:
    from jetqueue.generator.settingsdoc import env_reference

    return env_reference()


BLOCKS: dict[str, Callable[[], str]] = {
    "queues-reference": queues_reference,
    "settings-reference": settings_reference,
}


def _block_re(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- BEGIN {name} -->\n)(.*?)(<!-- END {name} -->)", re.S)


def update(text: str) -> str:
    for name, make in BLOCKS.items():
        m = _block_re(name).search(text)
        if not m:
            raise ValueError(f"README.md has no <!-- BEGIN {name} --> … <!-- END {name} --> block")
        text = text[: m.start(2)] + make() + "\n" + text[m.end(2) :]
    return text


def run(write: bool, path: Path = README) -> int:
    from jetqueue.generator.chartdocs import stale

    current = path.read_text(encoding="utf-8")
    fresh = update(current)
    charts = stale(write)
    if fresh == current and not charts:
        print("README.md and the chart READMEs are up to date")
        return 0
    if write:
        if fresh != current:
            path.write_text(fresh, encoding="utf-8")
        print("rewrote: " + ", ".join([*([path.name] if fresh != current else []), *map(str, charts)]))
        return 0
    print("stale: " + ", ".join([*([path.name] if fresh != current else []), *map(str, charts)]) + "; run `make docs`")
    return 1
