"""Chart READMEs generated from the `# -- description` comments in each chart's values.yaml (the library
chart's from its templates' comments), and every other generated file under charts/ (generator/chartenv.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from jetqueue.generator import chartenv

CHARTS = Path(__file__).resolve().parent.parent / "charts"
_KEY = re.compile(r"^(\s*)([A-Za-z][A-Za-z0-9_]*):")
_COMMENT = re.compile(r"\{\{/\*(.*?)\*/\}\}\s*", re.S)
_DEFINE = re.compile(r'\{\{-? define "([^"]+)"')


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


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def library_readme(chart: Path, meta: dict[str, Any]) -> str:
    """A library chart renders nothing: its README lists the templates it defines, each with its comment."""
    lines = [
        f"# {meta['name']}",
        "",
        meta["description"],
        "",
        f"Library chart version {meta['version']}. Generated from the templates' comments by `make docs`; a test "
        "fails when it is stale. The queue-worker and gateway charts load it from `charts/jetqueue-lib`, a symlink "
        "to this directory that Helm follows, so `helm install charts/<chart>` needs no `helm dependency build`.",
        "",
        "| template | meaning |",
        "|---|---|",
    ]
    for tpl in sorted((chart / "templates").glob("*.tpl")):
        text = tpl.read_text(encoding="utf-8")
        for m in _COMMENT.finditer(text):
            define = _DEFINE.match(text, m.end())
            if define:
                lines.append(f"| `{define.group(1)}` | {_cell(m.group(1))} |")
    return "\n".join(lines) + "\n"


def env_table(chart: str) -> list[str]:
    """The container's JETQUEUE_* variables and the value each is set from (worker/settings.py)."""
    lines = [
        "",
        "## Environment",
        "",
        "The container's `JETQUEUE_*` variables, generated into `templates/_env.tpl` from worker/settings.py; the "
        "variables not listed keep the defaults in the runtime settings reference (docs/reference/settings.md).",
        "",
        "| variable | set from |",
        "|---|---|",
    ]
    for w in chartenv.wiring(chart):
        how = f" (template `{w.helper}`)" if w.helper else f" (mounted as `{w.file}`)" if w.file else ""
        lines.append(f"| `{w.name}` | `{w.path}`{how}{' when set' if w.if_set else ''} |")
    return lines


def readme(chart: Path) -> str:
    meta = yaml.safe_load((chart / "Chart.yaml").read_text(encoding="utf-8"))
    if meta.get("type") == "library":
        return library_readme(chart, meta)
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
    if chart.name in chartenv.SETTINGS:
        lines += env_table(chart.name)
    return "\n".join(lines) + "\n"


def charts() -> list[Path]:
    return sorted(p for p in CHARTS.iterdir() if (p / "Chart.yaml").is_file())


def stale(write: bool) -> list[Path]:
    """Generated files under charts/ that are out of date (each chart's README, the app charts' env templates);
    rewritten when `write`. `jetqueue docs` calls this, so the env templates need no hook of their own."""
    out = []
    generated = {chart / "README.md": readme(chart) for chart in charts()} | chartenv.files()
    for target, fresh in generated.items():
        if not target.exists() or target.read_text(encoding="utf-8") != fresh:
            out.append(target)
            if write:
                target.write_text(fresh, encoding="utf-8")
    return out
