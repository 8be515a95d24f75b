"""Maintenance windows: five-field cron expressions (minute hour day month weekday) in a time zone.

A window occurrence starts at every time the expression matches, in the window's time zone, and
lasts `duration_s` of real (elapsed) time: it is open at `now` when its latest start is at most
`duration_s` before `now`.

Matching is cronsim's (Healthchecks.io's maintained cron library), chosen over croniter (declared
abandoned in 2025, since taken over by pallets-eco) for its deliberate Debian/Vixie semantics:

- day-of-month and day-of-week are ORed when both are restricted (`0 2 1 * 1` is the 1st of the
  month *and* every Monday), ANDed when either starts with `*`;
- a start that falls in a DST gap (02:30 on the spring-forward night) runs at the first minute
  after the gap, once; a start in the overlap (01:30 on the fall-back night) runs once, at its
  first occurrence; `*`-hour and `*`-minute expressions follow the wall clock, as cron does.

Pure: no I/O and no clock (every function takes `now`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from controller.errors import RolloutError

_FIELDS = 5


@dataclass(frozen=True, slots=True)
class CronSchedule:
    """A validated five-field cron expression."""

    expression: str


def parse_cron(expression: str) -> CronSchedule:
    """Validate a five-field cron expression (cronsim's syntax: lists, ranges, steps, names, L, #).

    Raises:
        RolloutError: the expression is malformed, or it has seconds (six fields).
    """
    if len(expression.split()) != _FIELDS:
        raise RolloutError(f"cron {expression!r}: expected 5 fields (minute hour day month weekday)")
    try:
        CronSim(expression, datetime(2026, 1, 1))
    except CronSimError as error:
        raise RolloutError(f"cron {expression!r}: {error}") from None
    return CronSchedule(expression)


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
    local = now.astimezone(tz)
    # Iterating in reverse yields starts strictly before the given time: one second on includes `now`.
    previous = _first(
        CronSim(schedule.expression, local.replace(microsecond=0) + timedelta(seconds=1), reverse=True)
    )
    # Timestamps, not datetime subtraction: two datetimes in one zone subtract as wall clock.
    if previous is None or now.timestamp() - previous.timestamp() >= duration_s:
        return None
    return previous


def next_window_start(schedule: CronSchedule, tz: ZoneInfo, after: datetime) -> datetime | None:
    """The first window start strictly after `after` (None: the expression never matches again)."""
    return _first(CronSim(schedule.expression, after.astimezone(tz).replace(microsecond=0)))


def _first(starts: CronSim) -> datetime | None:
    try:
        return next(starts)
    except StopIteration:
        return None
