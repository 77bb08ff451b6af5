"""A problem found in queues.yaml, printed as `FILE:LINE:COL: $.json.path: message`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

Path = tuple[str | int, ...]
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def json_path(path: Path) -> str:
    out = "$"
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.match(part):
            out += f".{part}"
        else:
            out += "[" + repr(part) + "]"
    return out


@dataclass(order=True)
class Problem:
    line: int
    col: int
    path: Path = field(compare=False)
    message: str = field(compare=False)
    severity: str = field(default="error", compare=False)

    def format(self, filename: str) -> str:
        tag = "" if self.severity == "error" else f"{self.severity}: "
        return f"{filename}:{self.line}:{self.col}: {json_path(self.path)}: {tag}{self.message}"
