"""YAML loading that remembers where every key and value stands, and rejects duplicate keys.

PyYAML's composer gives nodes with marks; we build plain Python data from them ourselves so that
every JSON path maps to a line and column, and a duplicate key is a problem instead of a silent
overwrite.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from jetqueue.generator.problems import Path, Problem


@dataclass
class Source:
    data: Any
    # Path -> (line, col) of the value at that path, 1-based.
    values: dict[Path, tuple[int, int]] = field(default_factory=dict)
    # Path -> (line, col) of the mapping key naming that path.
    keys: dict[Path, tuple[int, int]] = field(default_factory=dict)
    # Duplicate keys and the like: reported, but the rest of the document is still checked.
    problems: list[Problem] = field(default_factory=list)

    def where(self, path: Path, key: bool = False) -> tuple[int, int]:
        """Position of a path, or of its nearest existing ancestor (a missing key points at its parent)."""
        table = self.keys if key else self.values
        p = path
        while p:
            if p in table:
                return table[p]
            if p in self.values:
                return self.values[p]
            p = p[:-1]
        return self.values.get((), (1, 1))


class SourceError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(p.message for p in problems))
        self.problems = problems


def _pos(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def load(text: str) -> Source:
    """Parse one YAML document. Raises SourceError on a syntax error; duplicate keys are recorded in
    `problems` (the first value wins) so the rest of the document is still checked."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise SourceError([Problem(line, col, (), f"invalid YAML: {e.problem or e}")]) from None
    except yaml.YAMLError as e:
        raise SourceError([Problem(1, 1, (), f"invalid YAML: {e}")]) from None
    src = Source(data=None)
    if node is None:
        return src
    constructor = yaml.SafeLoader("")
    src.data = _build(node, (), src, src.problems, constructor)
    return src


def _build(node: yaml.Node, path: Path, src: Source, problems: list[Problem], c: yaml.SafeLoader) -> Any:
    src.values[path] = _pos(node)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for knode, vnode in node.value:
            if knode.tag == "tag:yaml.org,2002:merge":
                problems.append(Problem(*_pos(knode), path, "YAML merge keys (<<) are not supported"))
                continue
            if not isinstance(knode, yaml.ScalarNode):
                problems.append(Problem(*_pos(knode), path, "mapping keys must be plain strings"))
                continue
            key = str(c.construct_object(knode, deep=True))
            child = (*path, key)
            if key in out:
                first = src.keys[child]
                problems.append(
                    Problem(*_pos(knode), child, f"duplicate key {key!r} (first defined at line {first[0]})")
                )
                continue
            src.keys[child] = _pos(knode)
            out[key] = _build(vnode, child, src, problems, c)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(v, (*path, i), src, problems, c) for i, v in enumerate(node.value)]
    try:
        return c.construct_object(node, deep=True)
    except yaml.YAMLError as e:
        problems.append(Problem(*_pos(node), path, f"invalid value: {e}"))
        return None
