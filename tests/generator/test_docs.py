"""The README's reference tables are generated from the schema and the settings: never stale."""

from __future__ import annotations

import json

import pytest
from jsonschema import Draft202012Validator

from jetqueue.generator import docs, model
from jetqueue.generator.model import document, schema


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
    """Checked where each object applies, with its `$ref`s followed: `additionalProperties: false`, or
    `unevaluatedProperties: false` where it extends a `$defs` block (additionalProperties does not see the
    keys that come through a `$ref`)."""

    def objects(node, path="$"):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                yield path, node
            for k, v in node.items():
                yield from objects(v, f"{path}/{k}")

    found = list(objects(schema()))
    assert len(found) > 20
    for path, node in found:
        closed = node.get("additionalProperties") is False or node.get("unevaluatedProperties") is False
        assert closed, f"{path} accepts unknown keys"


def test_every_def_is_used_and_no_ref_is_left_in_the_view():
    text = json.dumps(document())
    for name in document()["$defs"]:
        assert f'"#/$defs/{name}"' in text, f"$defs/{name} is never used"
    assert "$ref" not in json.dumps(schema()) and "$defs" not in schema()


def test_repeated_blocks_are_written_once():
    text = json.dumps(document())
    assert text.count('"maxAttempts"') == 2  # retryPolicy and callbackRetry
    assert text.count(json.dumps(document()["$defs"]["duration"]["pattern"])) == 1


def test_deref_refuses_a_merge_that_would_validate_differently(monkeypatch):
    closed = {"type": "object", "additionalProperties": False, "properties": {"a": {}}}
    fake = {"$defs": {"closed": closed, "open": {"properties": {"a": {}}}, "int": {"type": "integer"}}}
    monkeypatch.setattr(model, "document", lambda: fake)
    assert model.deref({"$ref": "#/$defs/open", "properties": {"b": {}}, "description": "d"}) == {
        "properties": {"a": {}, "b": {}},
        "description": "d",
    }
    with pytest.raises(ValueError, match="closes itself"):
        model.deref({"$ref": "#/$defs/closed", "properties": {"b": {}}})
    with pytest.raises(ValueError, match="'type' is set both"):
        model.deref({"$ref": "#/$defs/int", "type": "integer"})
    with pytest.raises(ValueError, match="only local"):
        model.deref({"$ref": "other.json#/x"})


def test_schema_is_valid_2020_12():
    Draft202012Validator.check_schema(document())
    Draft202012Validator.check_schema(schema())
    assert json.loads(json.dumps(schema()))["$schema"].endswith("2020-12/schema")
