"""Chart READMEs generated from the `# -- description` comments in each chart's values.yaml."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

CHARTS = Path(__file__).resolve().parent.parent / "charts"
_KEY = re.compile(r"^(\s*)([A-Za-z][A-Za-z0-9_]*):")


def values_table(values_file: Path) -> list[tuple[str, Any, str]]:
    """(path, default, description) for every key documented with a `# --` comment."""
    data = yaml.safe_load(values_file.read_text(encoding="utf-8"))
    rows: list[tuple[str, Any, str]] = []
    stack: list[tuple[int, str]] = []
    pending = ""
    for line in values_file.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if stripped.startswith("# -- "):
            pending = stripped[5:]
            continue
        m = _KEY.match(line)
        if not m:
            if not stripped.startswith("#"):
                pending = ""
            continue
        indent, key = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([*(k for _, k in stack), key])
        stack.append((indent, key))
        if pending:
            node: Any = data
            for part in path.split("."):
                node = node[part]
            rows.append((path, node, pending))
            pending = ""
    return rows


def readme(chart: Path) -> str:
    meta = yaml.safe_load((chart / "Chart.yaml").read_text(encoding="utf-8"))
    lines = [
        f"# {meta['name']}",
        "",
        meta["description"],
        "",
        f"Chart version {meta['version']}, app version {meta['appVersion']}. Generated from `values.yaml` by "
        "`make docs`; a test fails when it is stale. `jetqueue render` writes the values for each release from "
        "queues.yaml; `values.schema.json` rejects unknown keys and wrong types.",
        "",
        "| value | default | meaning |",
        "|---|---|---|",
    ]
    for path, default, desc in values_table(chart / "values.yaml"):
        lines.append(f"| `{path}` | `{json.dumps(default)}` | {desc.replace('|', chr(92) + '|')} |")
    return "\n".join(lines) + "\n"


def charts() -> list[Path]:
    return sorted(p for p in CHARTS.iterdir() if (p / "Chart.yaml").is_file())


def stale(write: bool) -> list[Path]:
    out = []
    for chart in charts():
        target = chart / "README.md"
        fresh = readme(chart)
        if not target.exists() or target.read_text(encoding="utf-8") != fresh:
            out.append(target)
            if write:
                target.write_text(fresh, encoding="utf-8")
    return out
