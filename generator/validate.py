"""Validate queues.yaml: the schema, then the rules across fields (rules.py); every problem at once, each with
its position, best match first."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, relevance

from jetqueue.generator import model, rules
from jetqueue.generator.problems import Path, Problem
from jetqueue.generator.source import Source, SourceError, load


@dataclass
class Result:
    problems: list[Problem]
    config: dict[str, Any] | None  # resolved settings, when there is no error

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]


def validate_text(text: str) -> Result:
    try:
        src = load(text)
    except SourceError as e:
        return Result(sorted(e.problems), None)
    if src.data is None:
        return Result([Problem(1, 1, (), "the file is empty; it needs at least `queues:`")], None)
    schema_problems = src.problems + _schema_problems(src)
    semantic = list(_semantic_problems(src)) if not schema_problems else _tolerant(src)
    flagged = {p.path for p in schema_problems}
    problems = schema_problems + _unique(p for p in sorted(semantic) if p.path not in flagged)
    config = None
    if not any(p.severity == "error" for p in problems):
        config = model.resolve(src.data)
    return Result(problems, config)


def _unique(problems: Iterable[Problem]) -> list[Problem]:
    """One line per problem: a setting inherited from `defaults` by several queues is reported once."""
    seen: set[tuple[int, int, str]] = set()
    out = []
    for p in problems:
        key = (p.line, p.col, p.message)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _tolerant(src: Source) -> list[Problem]:
    """Semantic checks on a document that failed the schema: report what can be checked, skip the rest
    (the schema error already names what is wrong there)."""
    out: list[Problem] = []
    for check in rules.CHECKS:
        try:
            out.extend(check(src, src.data))
        except (TypeError, ValueError, KeyError, AttributeError):
            continue
    return out


# ---- schema -------------------------------------------------------------------------------------


def _schema_problems(src: Source) -> list[Problem]:
    validator = Draft202012Validator(model.document())
    errors = list(validator.iter_errors(src.data))
    if not errors:
        return []
    best = max(errors, key=relevance)
    problems: list[Problem] = []
    first: list[Problem] = []
    for err in errors:
        for p in _describe(err, src):
            (first if err is best else problems).append(p)
    return first + sorted(problems)


def _describe(err: ValidationError, src: Source) -> Iterator[Problem]:
    path: Path = tuple(err.absolute_path)
    # The failing node with its `$ref`s followed: the keys a queue gets from `$defs/queue`, the description of
    # the site that refers to `$defs/duration` (err.schema is the $ref target, which has neither).
    node = model.schema_at(list(err.absolute_schema_path)[:-1])
    if err.validator in ("additionalProperties", "unevaluatedProperties") and isinstance(err.instance, dict):
        allowed = list(node.get("properties", {}))
        for key in err.instance:
            if key in allowed:
                continue
            yield Problem(*src.where((*path, key), key=True), (*path, key), f"unknown key {key!r}{_hint(key, allowed)}")
        return
    if "propertyNames" in err.absolute_schema_path and isinstance(err.instance, str):  # a bad key: point at it
        path = (*path, err.instance)
        why = err.message.removeprefix(repr(err.instance) + " ")
        yield Problem(*src.where(path, key=True), path, f"name {err.instance!r} {why}")
        return
    if err.validator == "enum":
        options = ", ".join(repr(o) for o in err.validator_value)
        hint = _hint(str(err.instance), [str(o) for o in err.validator_value])
        yield Problem(*src.where(path), path, f"{err.instance!r} is not one of {options}{hint}")
        return
    if err.validator == "pattern":
        duration = err.validator_value == model.document()["$defs"]["duration"]["pattern"]
        what = "a Go duration such as 30s or 1m30s" if duration else f"a match for {err.validator_value}"
        yield Problem(*src.where(path), path, f"{err.instance!r} is not {what}")
        return
    if err.validator == "required":
        yield Problem(*src.where(path), path, err.message.replace("property", "key"))
        return
    if err.validator == "minProperties" and path == ("queues",):
        yield Problem(*src.where(path), path, "declare at least one queue")
        return
    yield Problem(*src.where(path), path, err.message)


def _hint(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if not close:
        close = [o for o in options if o.lower() == word.lower()]
    return f" (did you mean {close[0]!r}?)" if close else ""


# ---- semantic checks ----------------------------------------------------------------------------


def _semantic_problems(src: Source) -> Iterator[Problem]:
    for check in rules.CHECKS:
        yield from check(src, src.data)
