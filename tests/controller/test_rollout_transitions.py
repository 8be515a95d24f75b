"""The rollout's status table: every row is what the machine does, and nothing else is allowed."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

import controller.rollout_engine.machine as machine_module
from controller.errors import RolloutError
from controller.rollout_engine.machine import RolloutMachine
from controller.rollout_engine.planner import plan_rollout
from controller.rollout_engine.transitions import TRANSITIONS, StatusEvent, may_take, next_status
from schemas import (
    GateSpec,
    JobOutcome,
    ReasonCode,
    RetrySpec,
    RolloutPlan,
    RolloutSpec,
    RolloutStatus,
    WaveSpec,
)
from tests.controller.rollout_world import SUCCESS, T0, World, candidates, started_world

# Written out by value, apart from the module, so that a changed row fails here until it is meant.
EXPECTED_ROWS = {
    ("created", "plan"): "planned",
    ("planned", "plan"): "planned",
    ("planned", "start"): "running",
    ("running", "pause"): "paused",
    ("paused", "resume"): "running",
    ("running", "complete"): "completed",
    ("completed", "reopen"): "running",
    ("created", "abort"): "aborted",
    ("planned", "abort"): "aborted",
    ("running", "abort"): "aborted",
    ("paused", "abort"): "aborted",
}
FORBIDDEN = [
    (status, event)
    for status, event in itertools.product(RolloutStatus, StatusEvent)
    if (status.value, event.value) not in EXPECTED_ROWS
]
ONE_WAVE = RolloutSpec(
    software_type="app",
    target_version="1.1.0",
    waves=[WaveSpec(percent=100)],
    retry=RetrySpec(max_attempts=1),
    gates=GateSpec(failure_threshold=0.99, success_threshold=0.0),
)


def _plan(plan_id: str = "p1") -> RolloutPlan:
    return plan_rollout(
        "r1",
        plan_id,
        ONE_WAVE,
        candidates(2),
        T0,
        image_size_bytes=100_000,
        throughput_bytes_per_s=10_000,
        reboot_s=5,
    )


def test_the_table_is_exactly_the_documented_lifecycle() -> None:
    """The module's table holds the eleven rows of the lifecycle, no more and no fewer."""
    as_values = {(s.value, e.value): after.value for (s, e), after in TRANSITIONS.items()}
    assert as_values == EXPECTED_ROWS


def test_the_table_cannot_be_changed_at_run_time() -> None:
    """The table is read-only, so no caller can add a transition behind the file's back."""
    with pytest.raises(TypeError):
        TRANSITIONS[RolloutStatus.ABORTED, StatusEvent.RESUME] = RolloutStatus.RUNNING  # type: ignore[index]


@pytest.mark.parametrize(("row", "after"), sorted(EXPECTED_ROWS.items()))
def test_every_row_applies(row: tuple[str, str], after: str) -> None:
    """Each (status, event) of the lifecycle is allowed and leads to its new status."""
    status, event = RolloutStatus(row[0]), StatusEvent(row[1])
    assert may_take(status, event)
    assert next_status(status, event) is RolloutStatus(after)


@pytest.mark.parametrize(("status", "event"), FORBIDDEN)
def test_a_change_not_in_the_table_is_refused(status: RolloutStatus, event: StatusEvent) -> None:
    """Every other pair is refused with a RolloutError naming the status, the event and what is allowed."""
    assert not may_take(status, event)
    with pytest.raises(RolloutError) as refused:
        next_status(status, event)
    message = str(refused.value)
    assert f"rollout is {status}" in message and f"cannot take {event}" in message
    assert refused.value.reason == "invalid_state"


def test_finished_rollouts_take_no_event() -> None:
    """Aborted is final; completed only reopens (an operator's retry)."""
    assert [e for e in StatusEvent if may_take(RolloutStatus.ABORTED, e)] == []
    assert [e for e in StatusEvent if may_take(RolloutStatus.COMPLETED, e)] == [StatusEvent.REOPEN]
    with pytest.raises(RolloutError, match="from aborted only: none"):
        next_status(RolloutStatus.ABORTED, StatusEvent.RESUME)


def test_the_machine_changes_status_only_through_the_table_and_reaches_every_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Driving real machines through their requests and ticks takes every row, each via `next_status`."""
    taken: list[tuple[RolloutStatus, StatusEvent, RolloutStatus]] = []

    def recording(status: RolloutStatus, event: StatusEvent) -> RolloutStatus:
        after = next_status(status, event)
        taken.append((status, event, after))
        return after

    monkeypatch.setattr(machine_module, "next_status", recording)

    def expect(machine: RolloutMachine, status: RolloutStatus) -> None:
        assert machine.status is status
        assert taken[-1][2] is status  # the status stored is the one the table gave

    # The long road: plan twice, start, pause, resume, fail to completion, reopen, abort.
    world = World(
        RolloutMachine.create("r1", ONE_WAVE, T0),
        {c.serial: c for c in candidates(2)},
        answer=lambda d: (JobOutcome.FAILED, ReasonCode.UPLOAD_FAILED, True),
    )
    machine = world.machine
    machine.set_plan(_plan("p0"))
    expect(machine, RolloutStatus.PLANNED)
    machine.set_plan(_plan("p1"))
    expect(machine, RolloutStatus.PLANNED)
    machine.start("p1", T0)
    expect(machine, RolloutStatus.RUNNING)
    machine.pause("")
    expect(machine, RolloutStatus.PAUSED)
    machine.resume(T0)
    expect(machine, RolloutStatus.RUNNING)
    world.run()
    expect(machine, RolloutStatus.COMPLETED)
    machine.retry_failed([], world.now)
    expect(machine, RolloutStatus.RUNNING)
    machine.abort("enough", world.now)
    expect(machine, RolloutStatus.ABORTED)

    # Aborts from the other statuses that allow one.
    created = RolloutMachine.create("r2", ONE_WAVE, T0)
    created.abort("never planned", T0)
    expect(created, RolloutStatus.ABORTED)
    planned = RolloutMachine.create("r3", ONE_WAVE, T0)
    planned.set_plan(_plan())
    planned.abort("never started", T0)
    expect(planned, RolloutStatus.ABORTED)
    paused = started_world(ONE_WAVE, candidates(2)).machine
    paused.pause("")
    paused.abort("while paused", T0)
    expect(paused, RolloutStatus.ABORTED)

    assert {(s, e): after for s, e, after in taken} == dict(TRANSITIONS)


def test_the_failure_gate_pauses_through_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tripped gate (not an operator) takes the same PAUSE row."""
    events: list[StatusEvent] = []

    def recording(status: RolloutStatus, event: StatusEvent) -> RolloutStatus:
        events.append(event)
        return next_status(status, event)

    rollout = RolloutSpec(software_type="app", target_version="1.1.0", waves=[WaveSpec(percent=100)])
    world = started_world(
        rollout, candidates(20), answer=lambda d: (JobOutcome.REVERTED, ReasonCode.REVERTED, False)
    )
    monkeypatch.setattr(machine_module, "next_status", recording)
    world.run()
    assert world.machine.status is RolloutStatus.PAUSED and events == [StatusEvent.PAUSE]
    assert world.machine.held_by_gate is not None


def test_a_refused_request_leaves_a_completed_rollout_as_it_was() -> None:
    """Requests the table forbids raise before anything changes; a retry with nothing to retry keeps it."""
    world = started_world(ONE_WAVE, candidates(2), answer=lambda d: SUCCESS)
    world.run()
    machine = world.machine
    assert machine.status is RolloutStatus.COMPLETED
    before = machine.to_snapshot()
    requests: list[Callable[[], object]] = [
        lambda: machine.set_plan(_plan("p2")),
        lambda: machine.start("p1", world.now),
        lambda: machine.pause(""),
        lambda: machine.resume(world.now),
        lambda: machine.abort("late", world.now),
    ]
    for request in requests:
        with pytest.raises(RolloutError):
            request()
        assert machine.to_snapshot() == before
    machine.retry_failed([], world.now)  # nothing failed, so nothing reopens
    assert machine.status is RolloutStatus.COMPLETED
