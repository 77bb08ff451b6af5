"""The runtime settings table of docs/reference/settings.md, generated from the settings (`jetqueue docs`)."""

from __future__ import annotations

import dataclasses
from dataclasses import fields
from typing import Any

from jetqueue.durations import format_duration
from jetqueue.settings import PREFIX, GatewaySettings, WorkerSettings, chart_values


def env_reference() -> str:
    """Markdown table of every variable, for docs/reference/settings.md."""
    rows = ["| variable | worker | gateway | chart value | default | meaning |", "|---|---|---|---|---|---|"]
    w = {f.name: f for f in fields(WorkerSettings)}
    g = {f.name: f for f in fields(GatewaySettings)}
    for name in list(w) + [n for n in g if n not in w]:
        f = w.get(name) or g[name]
        shown = _fmt(f, f.default)
        if name in w and name in g and w[name].default != g[name].default:
            shown = f"{_fmt(w[name], w[name].default)} (worker), {_fmt(g[name], g[name].default)} (gateway)"
        help_text = f.metadata["help"] + (
            " One of " + ", ".join(f"`{c}`" for c in f.metadata["choices"]) + "." if f.metadata["choices"] else ""
        )
        if name in w and name in g and w[name].metadata["help"] != g[name].metadata["help"]:
            help_text = f"Worker: {w[name].metadata['help']} Gateway: {g[name].metadata['help']}"
        marks = " | ".join("✓" if name in side else "" for side in (w, g))
        chart = _chart_cell(w.get(name), g.get(name))
        rows.append(f"| `{PREFIX}{name.upper()}` | {marks} | {chart} | {shown} | {help_text} |")
    return "\n".join(rows)


def _chart_cell(worker: dataclasses.Field[Any] | None, gateway: dataclasses.Field[Any] | None) -> str:
    """Where each chart sets a variable from; one entry when both charts agree."""
    cells: dict[str, str] = {}
    for side, chart, f in (("worker", "queue-worker", worker), ("gateway", "gateway", gateway)):
        if f is None:
            continue
        path = chart_values(f, chart)
        if not path:
            cells[side] = f"— ({f.metadata['not_in_chart']})"
        elif f.metadata["helper"]:
            cells[side] = f"`{path}` via `{f.metadata['helper']}`"
        else:
            cells[side] = f"`{path}`" + (" (mounted file)" if f.metadata["file"] else "")
    if len(set(cells.values())) == 1:
        return next(iter(cells.values()))
    return "; ".join(f"{side}: {cell}" for side, cell in cells.items())


def _fmt(f: dataclasses.Field[Any], value: Any) -> str:
    kind = f.metadata["kind"]
    if kind == "duration":
        return f"`{format_duration(value)}`"
    if kind == "codes":
        return "`" + ",".join(str(c) for c in value) + "`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value == "":
        return "(empty)"
    return f"`{value}`"
