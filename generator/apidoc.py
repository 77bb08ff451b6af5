"""The gateway API page's reference, generated from schemas/gateway.openapi.json (`jetqueue docs`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OPENAPI = Path(__file__).resolve().parent.parent / "schemas" / "gateway.openapi.json"
_METHODS = ("get", "post", "put", "patch", "delete")


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    t = schema.get("type", "")
    t = " \\| ".join(map(str, t)) if isinstance(t, list) else str(t)
    if schema.get("format"):
        t += f" ({schema['format']})"
    return t


def _operation(op: dict[str, Any]) -> list[str]:
    out: list[str] = []
    if op.get("description"):
        out += [_cell(op["description"]), ""]
    params = op.get("parameters", [])
    if params:
        out += ["| parameter | in | required | type | meaning |", "|---|---|---|---|---|"]
        for p in params:
            req = "yes" if p.get("required") else ""
            kind, meaning = _type(p.get("schema", {})), _cell(p.get("description", ""))
            out.append(f"| `{p['name']}` | {p['in']} | {req} | {kind} | {meaning} |")
        out.append("")
    body = op.get("requestBody")
    if body:
        kinds = ", ".join(f"`{k}`" for k in body.get("content", {}))
        out += [f"Body: {kinds}{' (required)' if body.get('required') else ''}.", ""]
    out += ["| answer | meaning | headers | body |", "|---|---|---|---|"]
    for code, resp in op.get("responses", {}).items():
        headers = "<br>".join(
            f"`{name}`" + (f": {_cell(h['description'])}" if h.get("description") else "")
            for name, h in resp.get("headers", {}).items()
        )
        content = resp.get("content", {})
        bodies = ", ".join(f"`{kind}` {_type(c.get('schema', {}))}" for kind, c in content.items())
        out.append(f"| {code} | {_cell(resp.get('description', ''))} | {headers} | {bodies} |")
    return [*out, ""]


def _schema(name: str, schema: dict[str, Any]) -> list[str]:
    required = set(schema.get("required", []))
    out = [f"### {name}", "", "| field | type | required | meaning |", "|---|---|---|---|"]
    for field, prop in schema.get("properties", {}).items():
        req = "yes" if field in required else ""
        out.append(f"| `{field}` | {_type(prop)} | {req} | {_cell(prop.get('description', ''))} |")
    return [*out, ""]


def api_reference(path: Path = OPENAPI) -> str:
    """Markdown for every path of the OpenAPI document: methods with the same operation written once."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    out: list[str] = []
    for route, item in doc["paths"].items():
        groups: dict[str, list[str]] = {}
        ops: dict[str, dict[str, Any]] = {}
        for method in _METHODS:
            if method in item:
                op = item[method]
                key = json.dumps({k: v for k, v in op.items() if k != "summary"}, sort_keys=True)
                groups.setdefault(key, []).append(method)
                ops[key] = op
        for key, methods in groups.items():
            op = ops[key]
            title = op.get("summary", "").split(" (")[0].rstrip(".") or route
            out += [f"### {' '.join(m.upper() for m in methods)} `{route}`", "", f"{title}.", ""]
            out += _operation(op)
    schemas = doc.get("components", {}).get("schemas", {})
    if schemas:
        out += ["## Schemas", ""]
        for name, schema in schemas.items():
            out += _schema(name, schema)
    return "\n".join(out).rstrip("\n")
