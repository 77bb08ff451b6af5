"""The docs site's reference pages are generated from the schema, the settings and the OpenAPI document: never
stale; and the site builds strictly (a broken link or anchor fails it)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from jetqueue.generator import docs, model
from jetqueue.generator.model import document, schema


@pytest.mark.parametrize("page", sorted(docs.PAGES))
def test_generated_pages_are_current(repo_root, page):
    text = (repo_root / "docs" / page).read_text()
    assert docs.update(text, docs.PAGES[page], page) == text, f"docs/{page} is stale: run `make docs`"


def test_a_queue_key_is_documented_once_and_says_whether_it_is_inherited(repo_root):
    text = docs.queues_reference()
    assert "defaults." not in text and "queues.<name>." not in text  # one row per key, not one per place
    rows = {line.split("`")[1]: line for line in text.splitlines()[2:]}
    assert rows["retry.maxAttempts"].endswith("| yes |")
    assert rows["functions"].endswith("| no: `queues.<name>` only |")
    assert rows["schedules.<name>.cron"].endswith("| no: `queues.<name>` only |")
    assert all(k in rows for k in schema()["properties"]["defaults"]["properties"])


def test_every_gateway_route_is_in_the_api_page(repo_root):
    openapi = json.loads((repo_root / "schemas" / "gateway.openapi.json").read_text())
    text = (repo_root / "docs" / "reference" / "gateway-api.md").read_text()
    for route, item in openapi["paths"].items():
        heads = [line for line in text.splitlines() if line.startswith("### ") and line.endswith(f"`{route}`")]
        methods = {m for line in heads for m in line[4:].split("`")[0].split()}
        assert methods == {m.upper() for m in item if m in ("get", "post", "put", "patch", "delete")}, route


def _build(root: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site), "-f", str(root / "mkdocs.yml")],
        capture_output=True,
        text=True,
        timeout=300,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
    )


def test_the_site_builds_strictly(repo_root, tmp_path):
    """`make docs`'s build: every page in the nav, every link and anchor found, the outside files shown."""
    result = _build(repo_root, tmp_path / "site")
    assert result.returncode == 0, result.stdout + result.stderr
    site = tmp_path / "site"
    for page in ("reference/queues-yaml", "reference/gateway-api", "security", "benchmarks/results"):
        assert (site / page / "index.html").is_file(), page
    assert (site / "benchmarks" / "throughput.png").read_bytes() == (
        repo_root / "bench" / "throughput.png"
    ).read_bytes()
    cron = (site / "cron" / "index.html").read_text()
    assert "../reference/message-contract/#cron-schedules" in cron  # a link between repository files, repointed


def test_a_broken_link_fails_the_build(repo_root, tmp_path):
    copy = tmp_path / "repo"
    for name in ("docs", "bench", "schemas", "charts"):
        shutil.copytree(repo_root / name, copy / name, ignore=shutil.ignore_patterns("*.tgz", "templates"))
    for name in ("mkdocs.yml", "SECURITY.md"):
        shutil.copy(repo_root / name, copy / name)
    assert _build(copy, tmp_path / "ok").returncode == 0
    page = copy / "docs" / "concepts.md"
    page.write_text(page.read_text() + "\n[gone](operations.md#no-such-section)\n")
    result = _build(copy, tmp_path / "broken")
    assert result.returncode != 0 and "no-such-section" in result.stdout + result.stderr


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


def test_the_readme_is_short_and_its_links_and_picture_exist(repo_root):
    text = (repo_root / "README.md").read_text()
    assert len(text.splitlines()) <= 150, "README.md is the front door: keep it under 150 lines, move the rest to docs/"
    targets = re.findall(r"\]\((?!https?:)([^)#\s]+)", text)
    assert "docs/assets/call-life.svg" in targets
    assert [t for t in targets if not (repo_root / t).exists()] == []


def test_every_setting_the_docs_name_exists(repo_root):
    """A page naming `JETQUEUE_SOMETHING` that no process reads would send an operator after a variable in vain."""
    known = set(re.findall(r"`(JETQUEUE_[A-Z0-9_]+)`", docs.settings_reference()))
    tests = "\n".join(p.read_text() for p in (repo_root / "tests").rglob("*.py"))
    known |= set(re.findall(r"environ\.get\(\"(JETQUEUE_[A-Z0-9_]+)\"", tests))  # a test's own switch
    pages = [repo_root / "README.md", *sorted((repo_root / "docs").rglob("*.md"))]
    named = {(p.name, v) for p in pages for v in re.findall(r"\b(JETQUEUE_[A-Z0-9_]*[A-Z0-9])\b", p.read_text())}
    assert sorted((page, v) for page, v in named if v not in known) == []


def test_the_reference_example_is_valid_and_inherits_as_the_page_says(repo_root):
    from jetqueue.generator.validate import validate_text

    page = (repo_root / "docs" / "reference" / "queues-yaml.md").read_text()
    example = re.search(r"```yaml\n(.*?)```", page, re.S)
    assert example, "the queues.yaml reference lost its example"
    result = validate_text(example.group(1))
    assert result.problems == [] and result.config is not None
    batch = result.config["queues"]["ml-batch"]
    assert batch["maxInflight"] == 2 and batch["retry"]["maxAttempts"] == 5  # as its comments say
