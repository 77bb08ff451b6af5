"""Property-based: random and mutated documents never crash validate/render, never leave a partial out/."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from jetqueue.generator import model
from jetqueue.generator.render import render, write_atomically
from jetqueue.generator.validate import validate_text

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = yaml.safe_load((ROOT / "queues.yaml").read_text())

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 10**6),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.sampled_from(["30s", "0s", "1m", "-1s", "10Gi", "function", "static", "dev", "external", "production"]),
)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    doc = copy.deepcopy(EXAMPLE)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(_paths(doc)))
        if not path:
            continue
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(values)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=10))] = draw(values)
    return doc


def check(text: str) -> None:
    result = validate_text(text)  # must not raise
    for p in result.problems:
        assert p.line >= 1 and p.col >= 1 and p.message
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        out.mkdir()
        (out / "previous.txt").write_text("kept")
        if result.errors:
            assert result.config is None
            return
        assert result.config is not None
        files = render(result.config)
        write_atomically(files, out)
        written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
        assert written == sorted(files)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_documents(doc):
    check(yaml.safe_dump(doc, allow_unicode=True))


@settings(max_examples=150, deadline=None)
@given(values)
def test_random_documents(doc):
    check(yaml.safe_dump(doc, allow_unicode=True))


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200))
def test_random_text(text):
    check(text)


def _errors(schema: dict[str, Any], doc: Any) -> list[tuple[str, str, str]]:
    found = Draft202012Validator(schema).iter_errors(doc)
    return sorted((str(list(e.absolute_path)), str(e.validator), e.message) for e in found)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_the_view_validates_like_the_document(doc):
    """model.schema() (every $ref followed) is what the generator reads; it must mean what the file says."""
    assert _errors(model.schema(), doc) == _errors(model.document(), doc)
