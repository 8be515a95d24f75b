"""Maintenance windows on cronsim: Vixie day matching, time zones through DST, and the window's end."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from controller.errors import RolloutError
from controller.rollout_engine.cron import next_window_start, open_window_start, parse_cron, zone
from controller.rollout_engine.effects import Cancel, Dispatch
from schemas import (
    DeviceJobState,
    JobOutcome,
    MaintenanceWindow,
    PhaseDeadlines,
    ReasonCode,
    RolloutSpec,
    WaveSpec,
    WindowEnd,
)
from tests.controller.rollout_world import candidates, started_world

BERLIN = ZoneInfo("Europe/Berlin")


def local(text: str, tz: ZoneInfo = BERLIN, fold: int = 0) -> datetime:
    """A wall-clock time in `tz`."""
    return datetime.fromisoformat(text).replace(tzinfo=tz, fold=fold)


def starts(expression: str, after: datetime, count: int) -> list[datetime]:
    """The next `count` window starts after `after`, in its zone."""
    schedule, found = parse_cron(expression), []
    moment = after
    for _ in range(count):
        nxt = next_window_start(schedule, after.tzinfo, moment)  # type: ignore[arg-type]
        assert nxt is not None
        found.append(nxt)
        moment = nxt
    return found


def test_day_of_month_and_day_of_week_are_ored_as_cron_does() -> None:
    """`0 2 1 * 1`: the 1st of the month and every Monday (December 2026 starts on a Tuesday)."""
    days = [d.day for d in starts("0 2 1 * 1", local("2026-11-30T12:00"), 5)]
    assert days == [1, 7, 14, 21, 28]
    # A `*` in either field ANDs them: `0 2 * * 1` is Mondays only.
    assert [d.day for d in starts("0 2 * * 1", local("2026-11-30T12:00"), 2)] == [7, 14]


def test_a_start_in_the_spring_gap_runs_once_after_it() -> None:
    """02:30 does not exist on 2026-03-29 in Berlin: the window starts at 03:00, once."""
    found = starts("30 2 * * *", local("2026-03-28T12:00"), 2)
    assert [d.isoformat() for d in found] == ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]


def test_a_start_in_the_autumn_overlap_runs_once() -> None:
    """01:30 happens twice on 2026-10-25 in Berlin: the window starts at the first one only."""
    found = starts("30 1 * * *", local("2026-10-24T12:00"), 2)
    assert found[0] == local("2026-10-25T01:30") and found[0].utcoffset() == timedelta(hours=2)
    assert found[1] == local("2026-10-26T01:30")


def test_a_window_lasts_real_time_across_the_change() -> None:
    """A 3-hour window from 01:00 on the fall-back night ends at 03:00 wall clock (one hour repeated)."""
    schedule = parse_cron("0 1 * * *")
    start = local("2026-10-25T01:00")
    assert open_window_start(schedule, BERLIN, 3 * 3600, local("2026-10-25T02:30", fold=1)) == start
    assert open_window_start(schedule, BERLIN, 3 * 3600, local("2026-10-25T03:01")) is None
    assert open_window_start(schedule, BERLIN, 3 * 3600, local("2026-10-25T00:59")) is None


def test_a_window_is_found_in_its_own_time_zone() -> None:
    """13:00 Paris is 12:00 UTC in December; the window is open at its first minute."""
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    start = open_window_start(parse_cron("0 13 * * *"), zone("Europe/Paris"), 3600, now)
    assert start is not None and start.hour == 13 and start.astimezone(UTC) == now


@pytest.mark.parametrize(
    "expression", ["61 * * * *", "* * *", "0 0 * * * *", "0 2 31 2 *", "nonsense x y z w"]
)
def test_bad_expressions_are_refused_with_the_reason(expression: str) -> None:
    """Out of range, too few or too many fields (seconds), never matching, garbage: RolloutError."""
    with pytest.raises(RolloutError, match="cron"):
        parse_cron(expression)


def test_an_unknown_zone_is_refused() -> None:
    """The zone is named in the error."""
    with pytest.raises(RolloutError, match="Mars/Olympus"):
        zone("Mars/Olympus")


def test_a_job_still_running_when_its_cancel_window_closes_is_canceled_and_goes_again() -> None:
    """`at_end = cancel`: at the window's end the job is canceled; canceled, it waits for the next window."""
    window = MaintenanceWindow(cron="0 12 * * *", duration_s=600, at_end=WindowEnd.CANCEL)
    spec = RolloutSpec(
        software_type="app",
        target_version="1.1.0",
        waves=[WaveSpec(percent=100)],
        windows=[window],
        deadlines=PhaseDeadlines(no_progress_s=86_400, job_total_s=86_400),
    )
    world = started_world(spec, candidates(1), answer=lambda _: None)  # the job never ends by itself
    world.step()
    first = [e for e in world.effects if isinstance(e, Dispatch)]
    assert len(first) == 1  # T0 is 12:00 UTC: inside the window
    for _ in range(11):
        world.step(advance_s=60)
    cancels = [e for e in world.effects if isinstance(e, Cancel)]
    assert [c.reason for c in cancels] == ["maintenance window closed"]
    world.effects += world.machine.on_result(
        first[0].job_id, JobOutcome.CANCELED, ReasonCode.CANCELED, False, world.now
    )
    record = world.machine.device("S00000")
    assert record is not None and record.state is DeviceJobState.PENDING and record.attempts == 0
    for _ in range(60):
        world.step(advance_s=60)
    assert len([e for e in world.effects if isinstance(e, Dispatch)]) == 1  # closed until tomorrow 12:00
    world.now = world.now.replace(hour=12, minute=0) + timedelta(days=1)
    world.step()
    assert len([e for e in world.effects if isinstance(e, Dispatch)]) == 2


def test_a_finish_window_lets_a_started_job_run_past_its_end() -> None:
    """The default `at_end = finish`: nothing is canceled when the window closes."""
    window = MaintenanceWindow(cron="0 12 * * *", duration_s=600)
    spec = RolloutSpec(
        software_type="app",
        target_version="1.1.0",
        waves=[WaveSpec(percent=100)],
        windows=[window],
        deadlines=PhaseDeadlines(no_progress_s=86_400, job_total_s=86_400),
    )
    world = started_world(spec, candidates(1), answer=lambda _: None)
    for _ in range(30):
        world.step(advance_s=60)
    assert not any(isinstance(e, Cancel) for e in world.effects)
