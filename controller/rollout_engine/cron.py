"""Maintenance windows: five-field cron expressions (minute hour day month weekday) in a time zone.

A window is open at `now` when some start matched by the cron expression lies in
`(now - duration, now]`. Only what operators write in practice is supported: `*`, numbers, ranges,
lists and steps (`*/15`, `1-5`, `0,30`); weekday 0 and 7 are Sunday.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from controller.errors import RolloutError

_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))


@dataclass(frozen=True, slots=True)
class CronSchedule:
    """The sets of minutes, hours, days, months and weekdays a cron expression matches."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]

    def matches(self, moment: datetime) -> bool:
        """Whether a start at this (local) minute is scheduled."""
        weekday = (moment.weekday() + 1) % 7  # cron: Sunday is 0
        return (
            moment.minute in self.minutes
            and moment.hour in self.hours
            and moment.day in self.days
            and moment.month in self.months
            and weekday in self.weekdays
        )


def parse_cron(expression: str) -> CronSchedule:
    """Parse a five-field cron expression.

    Raises:
        RolloutError: the expression is malformed.
    """
    fields = expression.split()
    if len(fields) != 5:
        raise RolloutError(f"cron {expression!r}: expected 5 fields")
    sets = [
        _parse_field(text, low, high, expression) for text, (low, high) in zip(fields, _RANGES, strict=True)
    ]
    weekdays = frozenset(0 if day == 7 else day for day in sets[4])
    return CronSchedule(sets[0], sets[1], sets[2], sets[3], weekdays)


def _parse_field(text: str, low: int, high: int, expression: str) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        body, _, step_text = part.partition("/")
        try:
            step = int(step_text) if step_text else 1
            if body == "*":
                start, end = low, high
            elif "-" in body:
                start, end = (int(x) for x in body.split("-", 1))
            else:
                start = end = int(body)
        except ValueError:
            raise RolloutError(f"cron {expression!r}: bad field {text!r}") from None
        if step < 1 or start < low or end > high or start > end:
            raise RolloutError(f"cron {expression!r}: {text!r} outside {low}-{high}")
        values.update(range(start, end + 1, step))
    return frozenset(values)


def zone(name: str) -> ZoneInfo:
    """The IANA time zone, or a RolloutError naming it."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise RolloutError(f"unknown time zone {name!r}") from None


def open_window_start(
    schedule: CronSchedule, tz: ZoneInfo, duration_s: float, now: datetime
) -> datetime | None:
    """The start of the window occurrence open at `now`, or None when the window is closed."""
    local = now.astimezone(tz).replace(second=0, microsecond=0)
    earliest = local - timedelta(seconds=duration_s)
    moment = local
    while moment > earliest:
        if moment.month not in schedule.months or moment.day not in schedule.days:
            moment = moment.replace(hour=0, minute=0) - timedelta(minutes=1)
            continue
        if moment.hour not in schedule.hours:
            moment = moment.replace(minute=0) - timedelta(minutes=1)
            continue
        if schedule.matches(moment):
            return moment
        moment -= timedelta(minutes=1)
    return None
