"""A call's priority (`X-Priority`): its level, and how a worker shares its slots among the levels.

A queue with `priorities: true` has three levels. Its work streams take each level on subjects of their own
(names.subject: `<queue>.<function>` normal, as always, `<queue>_HI.<function>` high, `<queue>_LO.<function>` low;
`<queue>_P<p>_HI...` in partition p), and a static worker pulls each level from a consumer of its own
(`<queue>-workers`, `-workers-high`, `-workers-low`), so the server hands out a level's calls in their order and
a lower level's backlog never stands in front of a higher one's call.

The rule (queueworker/priorities.py): while calls of several levels wait, a worker gives its free slots to them in
turn, by calls started, HIGH : NORMAL : LOW = 4 : 2 : 1 (stride scheduling); a level with nothing waiting gives its
turns to the others. So when a queue is backed up a high call is taken about twice as often as a normal one and
four times as often as a low one, and a low call is never starved: it is taken at 1/7 of the worker's rate at the
least while it waits.
"""

from __future__ import annotations

from enum import StrEnum

PRIORITY_HEADER = "X-Priority"  # the HTTP header a caller sets a call's level with


class Priority(StrEnum):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


LEVELS = (Priority.HIGH, Priority.NORMAL, Priority.LOW)  # highest first
WEIGHTS = {Priority.HIGH: 4, Priority.NORMAL: 2, Priority.LOW: 1}  # slots given per turn, while levels wait
LEVEL_MARKS = {Priority.HIGH: "_HI", Priority.LOW: "_LO"}  # after the partition token; normal has none


def parse_priority(value: str) -> Priority | None:
    """The level an `X-Priority` (or `Jq-Priority`) value names, case and blanks aside, or None."""
    try:
        return Priority(value.strip().lower())
    except ValueError:
        return None


def priority_problem(value: str) -> str | None:
    """Why an `X-Priority` value cannot be used (the gateway answers 400 with it), or None."""
    if parse_priority(value) is None:
        return f"{PRIORITY_HEADER} must be one of {', '.join(LEVELS)}, not {value[:40]!r}"
    return None
