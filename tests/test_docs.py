"""The README's reference tables are generated from the schema and the settings: never stale."""

from __future__ import annotations

import json

from jetqueue.generator import docs
from jetqueue.generator.model import schema


def test_readme_reference_is_current(repo_root):
    text = (repo_root / "README.md").read_text()
    assert docs.update(text) == text, "README.md is stale: run `make docs`"


def _walk(node, path="$"):
    if (isinstance(node, dict) and node.get("type") == "object") or "properties" in node:
        for k, sub in node.get("properties", {}).items():
            yield f"{path}.{k}", sub
            yield from _walk(sub, f"{path}.{k}")
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            yield from _walk(extra, f"{path}.*")


def test_every_property_has_description_and_default():
    s = schema()
    for path, prop in _walk(s):
        assert prop.get("description"), f"{path} has no description"
        assert "default" in prop, f"{path} has no default"


def test_every_object_is_closed():
    def objects(node, path="$"):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                yield path, node
            for k, v in node.items():
                yield from objects(v, f"{path}/{k}")

    for path, node in objects(schema()):
        assert node.get("additionalProperties") is False, f"{path} accepts unknown keys"


def test_schema_is_valid_2020_12():
    from jsonschema import Draft202012Validator

    Draft202012Validator.check_schema(schema())
    assert json.loads(json.dumps(schema()))["$schema"].endswith("2020-12/schema")
