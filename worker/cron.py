"""Cron expressions exactly as nats-server's message schedules read them (ADR-51; server/cron.go, a port of
robfig/cron's parser), so what `jetqueue validate` and `jetqueue schedule add` accept is what the server runs.

- six fields, seconds first: `second minute hour day-of-month month day-of-week`; a five-field expression
  (`minute hour day month weekday`, as crontab writes it) is taken as firing at second 0;
- each field a comma-separated list of `*` or `?`, `N`, `N-M`, each optionally `/step` (`N/step` is `N-max/step`);
  months `jan`-`dec` and weekdays `sun`-`sat` (0-6, 0 = Sunday) by name, any case; no `L`, `W` or `#`;
- day of month and day of week: both must match when either starts with `*` (a step above 1 excepted), either
  one otherwise (Vixie cron's rule);
- `@yearly` (`@annually`), `@monthly`, `@weekly`, `@daily` (`@midnight`), `@hourly`;
- `@every <Go duration>`, at least 1s, counted from when the schedule was stored; UTC only.

A time zone is an IANA name (`Europe/Berlin`), sent as `Nats-Schedule-Time-Zone`; the server refuses a time zone
with `@every`. The server fires a tick once even when it missed several (it was down, or its leader changed);
queueworker/ticks.py gives each missed tick its call.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jetqueue.durations import parse_duration

_PREDEFINED = {
    "@yearly": "0 0 0 1 1 *",
    "@annually": "0 0 0 1 1 *",
    "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 0",
    "@daily": "0 0 0 * * *",
    "@midnight": "0 0 0 * * *",
    "@hourly": "0 0 * * * *",
}
_MONTHS = {m: i + 1 for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split())}
_DAYS = {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())}
# (name, low, high, names) per field, seconds first, as the server's bounds.
_FIELDS = (
    ("second", 0, 59, None),
    ("minute", 0, 59, None),
    ("hour", 0, 23, None),
    ("day of month", 1, 31, None),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 6, _DAYS),
)
_STAR = 1 << 63  # the field began with * or ?: day of month and day of week then combine with AND
_INT = re.compile(r"^[+-]?[0-9]+$")  # what Go's strconv.Atoi accepts
_YEARS_AHEAD = 5  # the server refuses a pattern with no time within five years (31 February)
MAX_EXPRESSION = 200


class CronError(ValueError):
    """Why an expression or time zone cannot be a schedule (said so the user can fix it)."""


def zone(name: str) -> ZoneInfo:
    """The IANA time zone `name`; CronError when there is none by that name."""
    if name in ("", "Local") or name != name.strip():
        raise CronError(f"time zone {name!r} is not an IANA time zone name such as UTC or Europe/Berlin")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CronError(f"unknown time zone {name!r}: use an IANA name such as UTC or Europe/Berlin") from None


@dataclass(frozen=True)
class Cron:
    text: str  # as written
    pattern: str  # as the server takes it (Nats-Schedule): six fields, a predefined name, or `@every <duration>`
    zone: str  # IANA name
    every: float = 0.0  # seconds, for `@every`
    bits: tuple[int, ...] = ()  # per field, bit N set when N matches

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.zone)

    def next_after(self, t: float) -> float:
        """The first tick after unix time `t` (whole seconds; the server's parseCron)."""
        if self.every:
            return float(math.floor(t + 0.5) + self.every)  # Go's Round: the server's @every anchor
        found = _next(self.bits, self.tz, math.floor(t) + 1)
        if found is None:
            raise CronError(f"{self.text!r} has no time within {_YEARS_AHEAD} years")
        return float(found)

    def previous_before(self, t: float) -> float:
        """The last tick before unix time `t` (the tick whose next one is `t`, for a `t` the server gave)."""
        if self.every:
            return t - self.every
        span = 60.0
        while span < (_YEARS_AHEAD + 1) * 366 * 86400:
            tick, last = self.next_after(t - span - 1), None
            while tick < t:
                last, tick = tick, self.next_after(tick)
            if last is not None:
                return last
            span *= 2
        raise CronError(f"{self.text!r} has no time within {_YEARS_AHEAD} years before {t}")

    def between(self, after: float, before: float, most: int) -> list[float]:
        """Up to the `most` latest ticks strictly between `after` and `before`, oldest first."""
        out: list[float] = []
        tick = self.next_after(after)
        while tick < before:
            out.append(tick)
            if len(out) > most:
                out.pop(0)
            tick = self.next_after(tick)
        return out


def parse(text: str, zone_name: str = "UTC") -> Cron:
    """The expression `text` in time zone `zone_name`; CronError saying what is wrong."""
    tz = zone(zone_name)
    spec = " ".join(text.split())
    if not spec:
        raise CronError("the cron expression is empty")
    if len(spec) > MAX_EXPRESSION:
        raise CronError(f"the cron expression is longer than {MAX_EXPRESSION} characters")
    if spec.startswith("@every "):
        if zone_name != "UTC":
            raise CronError("@every counts from when the schedule was stored: it takes no time zone (leave it UTC)")
        try:
            seconds = parse_duration(spec[len("@every ") :])
        except ValueError as e:
            raise CronError(f"@every: {e}") from None
        if seconds < 1:
            raise CronError("@every needs an interval of at least 1s")
        if seconds != int(seconds):
            raise CronError("@every needs a whole number of seconds (schedules fire on whole seconds)")
        return Cron(text, f"@every {int(seconds)}s", zone_name, every=seconds)
    pattern = _PREDEFINED.get(spec, spec)
    if spec.startswith("@") and spec not in _PREDEFINED:
        names = ", ".join(sorted(_PREDEFINED))
        raise CronError(f"{spec!r} is not a predefined schedule: use {names} or @every <duration>")
    fields = pattern.split(" ")
    if len(fields) == 5:  # crontab's form: at second 0
        fields = ["0", *fields]
    if len(fields) != 6:
        raise CronError(
            f"{text!r} has {len(fields)} fields; a cron expression has 6 (second minute hour day month weekday) "
            "or 5 (minute hour day month weekday)"
        )
    bits = tuple(_field(f, *spec_) for f, spec_ in zip(fields, _FIELDS, strict=True))
    cron = Cron(text, " ".join(fields), zone_name, bits=bits)
    if _next(bits, tz, int(datetime.now(UTC).timestamp()) + 1) is None:
        raise CronError(f"{text!r} matches no time within {_YEARS_AHEAD} years (a day the month does not have?)")
    return cron


def _field(text: str, name: str, low: int, high: int, names: dict[str, int] | None) -> int:
    bits = 0
    for expr in (part for part in text.split(",") if part):  # Go's FieldsFunc: empty parts are dropped
        bits |= _range(expr, name, low, high, names)
    return bits


def _range(expr: str, name: str, low: int, high: int, names: dict[str, int] | None) -> int:
    range_step = expr.split("/")
    low_high = range_step[0].split("-")
    extra = 0
    if low_high[0] in ("*", "?"):
        start, end, extra = low, high, _STAR
    else:
        start = _number(low_high[0], name, names)
        if len(low_high) == 1:
            end = start
        elif len(low_high) == 2:
            end = _number(low_high[1], name, names)
        else:
            raise CronError(f"{name} {expr!r}: too many hyphens")
    if len(range_step) == 1:
        step = 1
    elif len(range_step) == 2:
        step = _number(range_step[1], name, None)
        if len(low_high) == 1:  # N/step: from N to the field's maximum
            end = high
        if step > 1:
            extra = 0
    else:
        raise CronError(f"{name} {expr!r}: too many slashes")
    if start < low:
        raise CronError(f"{name} {expr!r}: {start} is below the minimum {low}")
    if end > high:
        raise CronError(f"{name} {expr!r}: {end} is above the maximum {high}")
    if start > end:
        raise CronError(f"{name} {expr!r}: the range starts after it ends")
    if step == 0:
        raise CronError(f"{name} {expr!r}: the step must be a positive number")
    out = 0
    for n in range(start, end + 1, step):
        out |= 1 << n
    return out | extra


def _number(text: str, name: str, names: dict[str, int] | None) -> int:
    if names is not None and text.lower() in names:
        return names[text.lower()]
    if not _INT.match(text):
        hint = f" or a name ({', '.join(names)})" if names else ""
        raise CronError(f"{name} {text!r} is not a number{hint}")
    n = int(text)
    if n < 0:
        raise CronError(f"{name} {text!r}: negative numbers are not allowed")
    return n


# ---- the server's search for the next time, on unix seconds and wall clocks in the zone --------------------


def _wall(t: int, tz: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(t, tz)


def _date(year: int, month: int, day: int, hour: int, tz: ZoneInfo, minute: int = 0, second: int = 0) -> int:
    """Go's time.Date(year, month, day, hour, minute, second, 0, tz) as unix seconds: months and days past their
    end roll over, and a wall time a DST change skips or repeats is placed as Go places it."""
    year, month = year + (month - 1) // 12, (month - 1) % 12 + 1
    day0 = date(year, month, 1) + timedelta(days=day - 1)
    naive = datetime(day0.year, day0.month, day0.day) + timedelta(hours=hour, minutes=minute, seconds=second)
    unix = int((naive - datetime(1970, 1, 1)).total_seconds())
    offset = _offset(unix, tz)  # the offset in force at the wall time read as UTC, then checked at the result
    utc = unix - offset
    if _offset(utc, tz) != offset:
        offset = _offset(utc, tz)
    return unix - offset


def _offset(t: int, tz: ZoneInfo) -> int:
    off = datetime.fromtimestamp(t, tz).utcoffset()
    return int(off.total_seconds()) if off is not None else 0


def _day_matches(dom: int, dow: int, w: datetime) -> bool:
    dom_match = bool(1 << w.day & dom)
    dow_match = bool(1 << (w.isoweekday() % 7) & dow)
    if dom & _STAR or dow & _STAR:
        return dom_match and dow_match
    return dom_match or dow_match


def _next(bits: tuple[int, ...], tz: ZoneInfo, t: int) -> int | None:
    """The first time at or after unix second `t` that matches, or None within five years (server/cron.go)."""
    second, minute, hour, dom, month, dow = bits
    truncated = False
    limit = _wall(t, tz).year + _YEARS_AHEAD
    while True:  # each pass is Go's WRAP label
        w = _wall(t, tz)
        if w.year > limit:
            return None
        wrapped = False
        while not (1 << w.month & month):
            if not truncated:
                truncated = True
                t = _date(w.year, w.month, 1, 0, tz)
                w = _wall(t, tz)
            t = _date(w.year, w.month + 1, w.day, w.hour, tz, w.minute, w.second)  # AddDate(0, 1, 0)
            w = _wall(t, tz)
            if w.month == 1:
                wrapped = True
                break
        if wrapped:
            continue
        while not _day_matches(dom, dow, w):
            if not truncated:
                truncated = True
                t = _date(w.year, w.month, w.day, 0, tz)
                w = _wall(t, tz)
            t = _date(w.year, w.month, w.day + 1, w.hour, tz, w.minute, w.second)  # AddDate(0, 0, 1)
            w = _wall(t, tz)
            if w.day == 1:
                wrapped = True
                break
        if wrapped:
            continue
        while not (1 << w.hour & hour):
            if not truncated:
                truncated = True
                t = _date(w.year, w.month, w.day, w.hour, tz)
            t += 3600
            w = _wall(t, tz)
            if w.hour == 0:
                wrapped = True
                break
        if wrapped:
            continue
        while not (1 << w.minute & minute):
            if not truncated:
                truncated = True
                t -= t % 60
            t += 60
            w = _wall(t, tz)
            if w.minute == 0:
                wrapped = True
                break
        if wrapped:
            continue
        while not (1 << w.second & second):
            if not truncated:
                truncated = True
            t += 1
            w = _wall(t, tz)
            if w.second == 0:
                wrapped = True
                break
        if wrapped:
            continue
        return t
