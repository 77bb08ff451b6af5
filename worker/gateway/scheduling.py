"""When a submission may run: `X-Delay` (a Go duration such as `90s` or `1h30m`, or plain seconds) or
`X-Not-Before` (RFC 3339, or unix seconds) become a time, or the reason for a 400.

A time already past (or a delay of 0) runs the call at once, still through the schedule stream: a client
retrying the same submission after its time is then deduplicated with the first (same stream, same id).
More than `max_delay` ahead is refused. The server holds a scheduled call to the second, rounded up: it
never runs early, and up to a second late.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import datetime

from jetqueue.durations import format_duration, parse_duration

DELAY = "X-Delay"
NOT_BEFORE = "X-Not-Before"
_NUMBER = re.compile(r"^[0-9]+(\.[0-9]+)?$")


class BadSchedule(ValueError):
    """The reason a schedule header cannot be honoured (the gateway answers 400 with it)."""


def not_before(headers: Mapping[str, str], now: float, max_delay: float) -> float:
    """Unix seconds before which the call must not run; 0.0 when no schedule was asked for. Raises BadSchedule."""
    delay, at = headers.get(DELAY, "").strip(), headers.get(NOT_BEFORE, "").strip()
    if delay and at:
        raise BadSchedule(f"send {DELAY} or {NOT_BEFORE}, not both")
    if delay:
        try:
            seconds = parse_duration(delay)
        except ValueError:
            raise BadSchedule(
                f"{DELAY} {delay[:40]!r} is not a delay: use a Go duration (90s, 1h30m) or seconds (90)"
            ) from None
        when = now + seconds
    elif at:
        when = _time(at)
    else:
        return 0.0
    if not math.isfinite(when) or when - now > max_delay:
        raise BadSchedule(
            f"the call would run more than {format_duration(max_delay)} from now (the gateway's maxDelay)"
        )
    return max(when, 1.0)  # a time past is kept (not 0.0): the call is still held, and deduplicated there


def _time(text: str) -> float:
    if _NUMBER.match(text):
        return float(text)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise BadSchedule(
            f"{NOT_BEFORE} {text[:40]!r} is not a time: use RFC 3339 with a zone (2026-05-01T09:00:00Z) or unix seconds"
        )
    return parsed.timestamp()
