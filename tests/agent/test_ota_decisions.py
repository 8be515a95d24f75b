"""The pure decisions of one OTA job: invariants over every device state, and walks to the end."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.ota_decisions import (
    PHASES_AFTER_TEST_WRITE,
    AwaitReboot,
    DeviceView,
    Finish,
    RequestConfirm,
    RequestReset,
    RequestTest,
    Stage,
    Step,
    Target,
    Upload,
    cancellable,
    decide,
    past_point_of_no_return,
)
from agent.smp.commands import SlotState
from schemas import JobOutcome, JobPhase, ReasonCode
from schemas.versions import same_version

TARGET_HASH = b"\x11" * 32
OLD_HASH = b"\x22" * 32
OTHER_HASH = b"\x33" * 32
VERSIONS = ("1.0.0", "1.1.0", "2.0.0", "1.1.0.7", "", "not-a-version")


def slot_state(slot: int, image_hash: bytes, version: str, **flags: bool) -> SlotState:
    """An image state entry of image 0 (flags default to False)."""
    return SlotState(
        image=0,
        slot=slot,
        version=version,
        hash_sha256=image_hash,
        bootable=True,
        pending=flags.get("pending", False),
        confirmed=flags.get("confirmed", False),
        active=flags.get("active", slot == 0),
        permanent=flags.get("permanent", False),
    )


@st.composite
def slots(draw: st.DrawFn, slot: int) -> SlotState | None:
    """Any entry a device may report for `slot` (or none), hashes from a small set so they collide."""
    if draw(st.booleans()) and slot == 1:
        return None
    return slot_state(
        slot,
        draw(st.sampled_from((TARGET_HASH, OLD_HASH, OTHER_HASH))),
        draw(st.sampled_from(VERSIONS)),
        pending=draw(st.booleans()),
        confirmed=draw(st.booleans()),
        permanent=draw(st.booleans()),
    )


@st.composite
def views(draw: st.DrawFn) -> DeviceView:
    """Any device report: slot 0, maybe slot 1, maybe group 128's version."""
    entries = tuple(s for s in (draw(slots(0)), draw(slots(1))) if s is not None)
    if draw(st.booleans()):
        entries = entries[:1]  # also a device that lists nothing but slot 0, or nothing
    return DeviceView(entries, draw(st.one_of(st.none(), st.sampled_from(VERSIONS))))


targets = st.builds(
    Target,
    st.just(TARGET_HASH),
    st.sampled_from(("1.1.0", "2.0.0", "1.1.0.7")),
    expected_current_version=st.one_of(st.none(), st.sampled_from(VERSIONS)),
    allow_downgrade=st.booleans(),
)
phases = st.one_of(st.none(), st.sampled_from(JobPhase))


@given(targets, views(), st.sampled_from(Stage), phases, st.booleans())
def test_a_test_boot_is_only_requested_for_the_hash_read_back_from_slot_1(
    target: Target, view: DeviceView, stage: Stage, phase: JobPhase | None, did_work: bool
) -> None:
    """RequestTest and RequestReset only when slot 1 holds the target's hash (pending, for a reset)."""
    step = decide(target, view, stage, journal_phase=phase, did_work=did_work)
    staged = view.slot(1)
    if isinstance(step, RequestTest):
        assert staged is not None and staged.hash_sha256 == TARGET_HASH
    if isinstance(step, RequestReset):
        assert staged is not None and staged.hash_sha256 == TARGET_HASH and staged.pending


@given(targets, views(), st.sampled_from(Stage), phases, st.booleans())
def test_confirm_and_success_need_slot_0_running_the_target_hash_and_version(
    target: Target, view: DeviceView, stage: Stage, phase: JobPhase | None, did_work: bool
) -> None:
    """Never confirm or succeed unless slot 0 runs the target (hash, version, group 128 when present)."""
    step = decide(target, view, stage, journal_phase=phase, did_work=did_work)
    if isinstance(step, RequestConfirm) or (
        isinstance(step, Finish) and step.outcome is JobOutcome.SUCCEEDED
    ):
        running = view.slot(0)
        assert running is not None and running.hash_sha256 == TARGET_HASH
        assert same_version(running.version, target.version)
        assert view.group128_version is None or same_version(view.group128_version, target.version)
    if isinstance(step, Finish) and step.outcome is JobOutcome.SUCCEEDED:
        running = view.slot(0)
        assert running is not None and running.confirmed


@given(targets, views(), phases, st.booleans())
def test_a_job_past_the_point_of_no_return_carries_on(
    target: Target, view: DeviceView, phase: JobPhase | None, did_work: bool
) -> None:
    """Test boot requested (or the target running unconfirmed): no new upload, test or refusal."""
    if not past_point_of_no_return(target, view):
        return
    step = decide(target, view, Stage.FIRST_LOOK, journal_phase=phase, did_work=did_work)
    assert not isinstance(step, Upload | RequestTest)
    assert not (isinstance(step, Finish) and step.outcome in (JobOutcome.REJECTED, JobOutcome.CANCELED))


@given(st.sampled_from(JobPhase))
def test_a_resumed_job_past_its_test_request_is_never_cancellable(phase: JobPhase) -> None:
    """Once the journal says the test boot may have been requested, a cancel must not stop the job."""
    past = phase in PHASES_AFTER_TEST_WRITE or phase is JobPhase.TESTING
    assert cancellable(phase) is not past


@given(targets, views(), st.sampled_from(Stage), phases, st.booleans())
def test_an_image_already_in_slot_1_is_never_uploaded_again(
    target: Target, view: DeviceView, stage: Stage, phase: JobPhase | None, did_work: bool
) -> None:
    """Upload only at the first look, and only when slot 1 does not hold the target."""
    step = decide(target, view, stage, journal_phase=phase, did_work=did_work)
    if isinstance(step, Upload):
        staged = view.slot(1)
        assert stage is Stage.FIRST_LOOK
        assert staged is None or staged.hash_sha256 != TARGET_HASH


@given(targets, views(), phases)
def test_a_device_still_pending_after_the_reset_has_not_rebooted_yet(
    target: Target, view: DeviceView, phase: JobPhase | None
) -> None:
    """After the reset, a pending target in slot 1 means "wait", never "reverted" or "failed"."""
    step = decide(target, view, Stage.RESET_REQUESTED, journal_phase=phase)
    staged = view.slot(1)
    pending = staged is not None and staged.hash_sha256 == TARGET_HASH and staged.pending
    assert isinstance(step, AwaitReboot) is pending


@given(targets, views(), st.sampled_from(Stage), phases, st.booleans())
def test_refusals_happen_only_before_anything_was_done(
    target: Target, view: DeviceView, stage: Stage, phase: JobPhase | None, did_work: bool
) -> None:
    """REJECTED (precondition) results come only from the first look, never mid-flow."""
    step = decide(target, view, stage, journal_phase=phase, did_work=did_work)
    if isinstance(step, Finish) and step.outcome is JobOutcome.REJECTED:
        assert stage is Stage.FIRST_LOOK


# --- walks: the decisions carried out on a toy device until the job ends -----------------


def _apply(step: Step, view: DeviceView, *, bad_build: bool) -> tuple[DeviceView, Stage]:
    """What a well-behaved MCUboot device does with each step (a bad build swaps back at once)."""
    running, staged = view.slot(0), view.slot(1)
    assert running is not None
    match step:
        case Upload():
            return DeviceView(
                (running, slot_state(1, TARGET_HASH, "1.1.0")), view.group128_version
            ), Stage.UPLOADED
        case RequestTest():
            assert staged is not None
            return DeviceView(
                (running, replace(staged, pending=True)), view.group128_version
            ), Stage.TEST_REQUESTED
        case RequestReset() | AwaitReboot():
            assert staged is not None
            if bad_build:
                return DeviceView((running, replace(staged, pending=False))), Stage.RESET_REQUESTED
            swapped = (
                replace(staged, slot=0, pending=False, active=True),
                replace(running, slot=1, active=False),
            )
            group = None if view.group128_version is None else staged.version
            return DeviceView(swapped, group), Stage.RESET_REQUESTED
        case RequestConfirm():
            return DeviceView(
                (replace(running, confirmed=True), *view.slots[1:]), view.group128_version
            ), Stage.CONFIRM_REQUESTED
    raise AssertionError(step)


def _walk(target: Target, view: DeviceView, *, bad_build: bool = False) -> Finish:
    # As OtaJob does: a device found past the point of no return was test-booted by this job.
    stage, did_work = Stage.FIRST_LOOK, past_point_of_no_return(target, view)
    for _ in range(10):
        step = decide(target, view, stage, did_work=did_work)
        if isinstance(step, Finish):
            return step
        did_work = did_work or isinstance(step, Upload | RequestTest | RequestReset)
        view, stage = _apply(step, view, bad_build=bad_build)
    raise AssertionError("the job did not end within ten steps")


@pytest.mark.parametrize("group128", ["1.0.0", None])
@pytest.mark.parametrize(
    "staged",
    [
        None,
        slot_state(1, OTHER_HASH, "0.9.0"),
        slot_state(1, TARGET_HASH, "1.1.0"),
        slot_state(1, TARGET_HASH, "1.1.0", pending=True),
    ],
)
def test_every_starting_point_walks_to_success(group128: str | None, staged: SlotState | None) -> None:
    """From an old confirmed image and any slot 1, with or without group 128, the job ends on target."""
    running = slot_state(0, OLD_HASH, "1.0.0", confirmed=True)
    view = DeviceView(tuple(s for s in (running, staged) if s is not None), group128)
    result = _walk(Target(TARGET_HASH, "1.1.0"), view)
    assert (result.outcome, result.reason, result.running_version) == (
        JobOutcome.SUCCEEDED,
        ReasonCode.OK,
        "1.1.0",
    )


def test_a_bad_build_walks_to_reverted() -> None:
    """MCUboot swapping back ends the job REVERTED with the old version, never SUCCEEDED."""
    view = DeviceView((slot_state(0, OLD_HASH, "1.0.0", confirmed=True),))
    result = _walk(Target(TARGET_HASH, "1.1.0"), view, bad_build=True)
    assert (result.outcome, result.running_version) == (JobOutcome.REVERTED, "1.0.0")


def test_a_device_already_on_target_is_only_confirmed_or_reported() -> None:
    """Target running confirmed: ALREADY_ON_TARGET; running unconfirmed: confirm, then OK."""
    target = Target(TARGET_HASH, "1.1.0")
    confirmed = DeviceView((slot_state(0, TARGET_HASH, "1.1.0", confirmed=True),), "1.1.0")
    assert _walk(target, confirmed).reason is ReasonCode.ALREADY_ON_TARGET
    unconfirmed = DeviceView((slot_state(0, TARGET_HASH, "1.1.0"),), "1.1.0")
    assert decide(target, unconfirmed, Stage.FIRST_LOOK) == RequestConfirm()
    assert _walk(target, unconfirmed).reason is ReasonCode.OK


def test_group_128_reporting_another_version_fails_verification() -> None:
    """Slot 0 runs the target but group 128 says otherwise: VERIFY_FAILED, no confirm."""
    view = DeviceView((slot_state(0, TARGET_HASH, "1.1.0"),), "1.0.0")
    step = decide(Target(TARGET_HASH, "1.1.0"), view, Stage.RESET_REQUESTED)
    assert isinstance(step, Finish) and step.reason is ReasonCode.VERIFY_FAILED


def test_a_resumed_job_whose_test_boot_reverted_is_reported_reverted() -> None:
    """Journal past the test request, device back on the old image with nothing pending: REVERTED."""
    view = DeviceView((slot_state(0, OLD_HASH, "1.0.0", confirmed=True), slot_state(1, TARGET_HASH, "1.1.0")))
    step = decide(Target(TARGET_HASH, "1.1.0"), view, Stage.FIRST_LOOK, journal_phase=JobPhase.REBOOTING)
    assert isinstance(step, Finish) and step.outcome is JobOutcome.REVERTED
    fresh = decide(Target(TARGET_HASH, "1.1.0"), view, Stage.FIRST_LOOK, journal_phase=JobPhase.UPLOADING)
    assert fresh == RequestTest()
