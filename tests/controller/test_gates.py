"""The gate truth table (docs/gates.md), row by row, its properties, and the machine that applies it."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from controller.rollout_engine.effects import Dispatch, GateDecided
from controller.rollout_engine.gates import (
    Evidence,
    WaveEvidence,
    evaluate_gate,
    evidence_of,
    evidence_of_timeout,
    wilson_lower_bound,
)
from schemas import (
    GateAction,
    GateSpec,
    GateVerdict,
    JobOutcome,
    ReasonCode,
    RolloutSpec,
    RolloutStatus,
    WaveSpec,
)
from tests.controller.rollout_world import SUCCESS, candidates, started_world

DEFAULT = GateSpec()
LENIENT = GateSpec(success_threshold=0.0, min_sample=5)
"""No success threshold, so the short-sample rows show on their own."""


# --- evidence --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "reason", "evidence"),
    [
        (JobOutcome.SUCCEEDED, ReasonCode.OK, Evidence.SUCCESS),
        (JobOutcome.SUCCEEDED, ReasonCode.ALREADY_ON_TARGET, Evidence.SUCCESS),
        (JobOutcome.FAILED, ReasonCode.UPLOAD_FAILED, Evidence.FAILURE),
        (JobOutcome.FAILED, ReasonCode.DEVICE_ERROR, Evidence.FAILURE),
        (JobOutcome.FAILED, ReasonCode.TEST_FAILED, Evidence.FAILURE),
        (JobOutcome.FAILED, ReasonCode.VERIFY_FAILED, Evidence.FAILURE),
        (JobOutcome.FAILED, ReasonCode.CONFIRM_FAILED, Evidence.FAILURE),
        (JobOutcome.FAILED, ReasonCode.REBOOT_TIMEOUT, Evidence.FAILURE),
        (JobOutcome.REVERTED, ReasonCode.REVERTED, Evidence.FAILURE),
        (JobOutcome.TIMED_OUT, ReasonCode.UPLOAD_FAILED, Evidence.FAILURE),
        (JobOutcome.REJECTED, ReasonCode.UNKNOWN_DEVICE, Evidence.NOT_COUNTED),
        (JobOutcome.REJECTED, ReasonCode.EXPIRED, Evidence.NOT_COUNTED),
        (JobOutcome.REJECTED, ReasonCode.WRONG_CURRENT_VERSION, Evidence.NOT_COUNTED),
        (JobOutcome.REJECTED, ReasonCode.BAD_IMAGE, Evidence.NOT_COUNTED),
        (JobOutcome.REJECTED, ReasonCode.UPLOAD_FAILED, Evidence.NOT_COUNTED),
        (JobOutcome.FAILED, ReasonCode.DOWNLOAD_FAILED, Evidence.NOT_COUNTED),
        (JobOutcome.FAILED, ReasonCode.DEVICE_UNREACHABLE, Evidence.NOT_COUNTED),
        (JobOutcome.FAILED, ReasonCode.AGENT_ERROR, Evidence.NOT_COUNTED),
        (JobOutcome.CANCELED, ReasonCode.CANCELED, Evidence.NONE),
    ],
)
def test_only_outcomes_decided_at_the_device_are_evidence(
    outcome: JobOutcome, reason: ReasonCode, evidence: Evidence
) -> None:
    """The first table of docs/gates.md: a rejection or a failure before the device counts neither way."""
    assert evidence_of(outcome, reason) is evidence


def test_a_controller_timeout_counts_only_after_progress() -> None:
    """A job that never showed progress never reached the device as far as anyone knows."""
    assert evidence_of_timeout(progressed=True) is Evidence.FAILURE
    assert evidence_of_timeout(progressed=False) is Evidence.NOT_COUNTED


# --- the verdict, row by row -----------------------------------------------------------------------


def test_row_1_a_wave_that_can_no_longer_reach_the_threshold_fails_at_once() -> None:
    """One failure among ten with 0.95 required: at best 9/10, so it pauses while nine still run."""
    result = evaluate_gate(DEFAULT, WaveEvidence(failed=1, remaining=9))
    assert result.verdict is GateVerdict.PAUSE and "cannot reach" in result.reason
    aborting = GateSpec(on_failure=GateAction.ABORT)
    assert evaluate_gate(aborting, WaveEvidence(failed=1, remaining=9)).verdict is GateVerdict.ABORT
    assert (
        evaluate_gate(DEFAULT, WaveEvidence(succeeded=19, failed=1, remaining=0)).verdict
        is GateVerdict.PROMOTE
    )


def test_row_2_the_failure_bound_trips_with_its_sample() -> None:
    """Two failures of two do not trip a sample of three on the bound; three of three do."""
    gate = GateSpec(success_threshold=0.0, failure_min_sample=3, failure_threshold=0.2)
    assert evaluate_gate(gate, WaveEvidence(failed=2, remaining=8)).verdict is GateVerdict.WAIT
    result = evaluate_gate(gate, WaveEvidence(failed=3, remaining=7))
    assert result.verdict is GateVerdict.PAUSE and "lower bound" in result.reason
    assert result.failure_rate == 1.0 and result.failure_lower_bound == wilson_lower_bound(3, 3, 0.9)


def test_row_3_a_running_wave_waits() -> None:
    """Devices remain and nothing has tripped: wait."""
    assert evaluate_gate(LENIENT, WaveEvidence(succeeded=10, remaining=1)).verdict is GateVerdict.WAIT


def test_row_4_an_empty_wave_passes() -> None:
    """A wave that rounds to no device has nothing to judge; one whose devices left unheard holds."""
    assert evaluate_gate(LENIENT, WaveEvidence()).verdict is GateVerdict.PROMOTE
    assert evaluate_gate(LENIENT, WaveEvidence(without_result=2)).verdict is GateVerdict.PAUSE


def test_row_5_a_short_sample_holds_and_never_promotes() -> None:
    """Two failures of two with min_sample 5: never a promotion, whatever the thresholds."""
    for spec in (LENIENT, GateSpec(min_sample=5)):
        result = evaluate_gate(spec, WaveEvidence(failed=2))
        assert result.verdict is GateVerdict.PAUSE
    short = evaluate_gate(LENIENT, WaveEvidence(succeeded=2))
    assert (short.verdict, short.short_sample) == (GateVerdict.PAUSE, True)
    assert "short sample: 2 decided" in short.reason


def test_row_6_an_operator_accepts_a_short_sample_by_resuming() -> None:
    """The same short sample promotes once accepted, and says so."""
    result = evaluate_gate(LENIENT, WaveEvidence(succeeded=2), short_sample_accepted=True)
    assert result.verdict is GateVerdict.PROMOTE and "accepted by an operator" in result.reason


def test_row_7_enough_evidence_over_the_threshold_promotes() -> None:
    """Five of five decided with min_sample 5: promote, the numbers in the reason."""
    result = evaluate_gate(LENIENT, WaveEvidence(succeeded=5, not_counted=3))
    assert result.verdict is GateVerdict.PROMOTE
    assert "5/5 succeeded, 0 failed, 3 not counted" in result.reason


def test_rejections_alone_are_no_evidence() -> None:
    """Three rejections that never reached a device: not "3/3 failed", a hold on an empty sample."""
    result = evaluate_gate(DEFAULT, WaveEvidence(not_counted=3))
    assert result.verdict is GateVerdict.PAUSE and result.short_sample
    assert result.evidence.decided == 0 and result.failure_rate == 0.0


tallies = st.builds(
    WaveEvidence,
    succeeded=st.integers(0, 30),
    failed=st.integers(0, 30),
    not_counted=st.integers(0, 30),
    remaining=st.integers(0, 30),
    without_result=st.integers(0, 3),
)
specs = st.builds(
    GateSpec,
    success_threshold=st.floats(0, 1),
    min_sample=st.integers(0, 20),
    failure_threshold=st.floats(0, 1),
    failure_min_sample=st.integers(0, 20),
)


@given(specs, tallies, st.booleans())
def test_a_promotion_always_has_its_evidence(spec: GateSpec, tally: WaveEvidence, accepted: bool) -> None:
    """Promote only with no device remaining, the threshold met, and the sample met, accepted or empty."""
    result = evaluate_gate(spec, tally, short_sample_accepted=accepted)
    if result.verdict is GateVerdict.PROMOTE:
        assert tally.remaining == 0
        assert tally.decided == 0 or tally.succeeded / tally.decided >= spec.success_threshold
        empty = tally.decided + tally.not_counted + tally.without_result == 0
        assert tally.decided >= spec.min_sample or accepted or empty


@given(specs, tallies, st.integers(0, 50))
def test_what_never_reached_a_device_never_moves_the_gate(
    spec: GateSpec, tally: WaveEvidence, extra: int
) -> None:
    """Any number of not-counted jobs leaves the verdict of a wave with devices as it was."""
    assume(tally.decided + tally.not_counted + tally.remaining + tally.without_result > 0)
    more = dataclasses.replace(tally, not_counted=tally.not_counted + extra)
    assert evaluate_gate(spec, more).verdict is evaluate_gate(spec, tally).verdict


@given(specs, tallies)
def test_one_more_failure_never_turns_a_failing_gate_into_a_passing_one(
    spec: GateSpec, tally: WaveEvidence
) -> None:
    """Failures only ever push the gate towards tripping."""
    failing = {GateVerdict.PAUSE, GateVerdict.ABORT}
    before = evaluate_gate(spec, tally)
    after = evaluate_gate(spec, dataclasses.replace(tally, failed=tally.failed + 1))
    if before.verdict in failing and not before.short_sample:
        assert after.verdict in failing and not after.short_sample


# --- the machine applies it ------------------------------------------------------------------------


def _two_waves(gates: GateSpec) -> RolloutSpec:
    return RolloutSpec(
        software_type="app",
        target_version="1.1.0",
        waves=[WaveSpec(count=2), WaveSpec(percent=100)],
        gates=gates,
    )


def test_a_canary_with_two_failures_of_two_and_a_sample_of_five_never_promotes() -> None:
    """The audit's case: the machine pauses on the canary with the numbers in its decision."""
    reverted = (JobOutcome.REVERTED, ReasonCode.REVERTED, False)
    world = started_world(
        _two_waves(GateSpec(success_threshold=0.0, min_sample=5)), candidates(10), answer=lambda _: reverted
    )
    world.run()
    decisions = [e.decision for e in world.effects if isinstance(e, GateDecided)]
    assert world.machine.status is RolloutStatus.PAUSED
    assert [d.verdict for d in decisions] == [GateVerdict.PAUSE]
    assert (decisions[0].decided, decisions[0].failed, decisions[0].short_sample) == (2, 2, True)
    assert all(d.wave == 0 for d in decisions) and len(world.dispatched) == 2


def test_rejections_that_never_reached_a_device_do_not_pause_as_failures() -> None:
    """Three canary devices the agent no longer hears: not counted, shown apart, no "3/3 failed"."""
    unheard: set[str] = set()

    def answer(dispatch: Dispatch) -> tuple[JobOutcome, ReasonCode, bool]:
        return (
            (JobOutcome.REJECTED, ReasonCode.UNKNOWN_DEVICE, False) if dispatch.serial in unheard else SUCCESS
        )

    spec = RolloutSpec(
        software_type="app", target_version="1.1.0", waves=[WaveSpec(count=4), WaveSpec(percent=100)]
    )
    world = started_world(spec, candidates(10), answer=answer)
    plan = world.machine.plan
    assert plan is not None
    unheard.update(d.device_serial for d in plan.waves[0].devices[:3])
    world.run()
    decisions = [e.decision for e in world.effects if isinstance(e, GateDecided)]
    assert world.machine.status is RolloutStatus.COMPLETED, world.machine.state(world.now).paused_reason
    canary = decisions[0]
    assert (canary.verdict, canary.decided, canary.succeeded, canary.not_counted) == (
        GateVerdict.PROMOTE,
        1,
        1,
        3,
    )
    wave = world.machine.state(world.now).waves[0]
    assert (wave.decided, wave.not_counted, wave.counts.rejected) == (1, 3, 3)


def test_resuming_a_short_sample_hold_accepts_it_and_the_rollout_goes_on() -> None:
    """The hold is the gate's (alerted on); the operator's resume promotes the wave on what it has."""
    world = started_world(_two_waves(GateSpec(min_sample=5)), candidates(10))
    world.run()
    machine = world.machine
    held = (machine.status, machine.held_by_gate)
    machine.resume(world.now)
    world.run()
    decisions = [e.decision for e in world.effects if isinstance(e, GateDecided)]
    assert held == (RolloutStatus.PAUSED, GateVerdict.PAUSE)
    assert machine.status is RolloutStatus.COMPLETED
    assert [d.verdict for d in decisions] == [GateVerdict.PAUSE, GateVerdict.PROMOTE, GateVerdict.PROMOTE]
    assert "accepted by an operator" in decisions[1].reason and decisions[2].decided == 8


def test_a_failed_boot_is_a_failure_and_is_never_sent_again() -> None:
    """A device that never comes back from its test boot (reboot_timeout, even "retryable") is not resent."""

    def answer(dispatch: Dispatch) -> tuple[JobOutcome, ReasonCode, bool]:
        return (
            (JobOutcome.FAILED, ReasonCode.REBOOT_TIMEOUT, True) if dispatch.serial == "S00000" else SUCCESS
        )

    spec = RolloutSpec(
        software_type="app",
        target_version="1.1.0",
        waves=[WaveSpec(percent=100)],
        gates=GateSpec(success_threshold=0.5),
    )
    world = started_world(spec, candidates(4), answer=answer)
    world.run()
    assert [d.serial for d in world.dispatched].count("S00000") == 1
    record = world.machine.device("S00000")
    assert record is not None and record.evidence is Evidence.FAILURE and record.reason == "reboot_timeout"
    decision = next(e.decision for e in world.effects if isinstance(e, GateDecided))
    assert (decision.decided, decision.failed) == (4, 1)
