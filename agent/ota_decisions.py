"""What one OTA job does next, given the device's image slots, the job's journal and its command.

Rules of this file:
- Pure: no I/O, no clock, no randomness. `agent.ota.OtaJob` reads the device, calls `decide`, and
  carries out the step it returns; every choice the job makes about the device is made here.
- Success needs slot 0 to run the target image (hash and version from the image state read) and
  to be confirmed; group 128's `current_version` must agree as well when the device has the group.
- A test boot is only ever requested for an image whose hash was read back from slot 1.
- Past the point of no return (a test boot requested, or slot 0 already running the target
  unconfirmed) the job never stops early and never uploads again: it resets, waits, verifies and
  confirms, or reports why not.
- Device data is hostile: an unreadable version never matches and never raises.
"""

from dataclasses import dataclass
from enum import StrEnum
from typing import Final, assert_never

from agent.smp.commands import SlotState
from schemas import JobOutcome, JobPhase, ReasonCode
from schemas.versions import InvalidVersion, same_version, version_key

PHASES_AFTER_TEST_WRITE: Final = frozenset({JobPhase.REBOOTING, JobPhase.VERIFYING, JobPhase.CONFIRMING})
"""Journal phases recorded only after the device accepted the test request."""


class Stage(StrEnum):
    """Where the job stands when it looks at the device."""

    FIRST_LOOK = "first_look"
    """The first image state read of this run (a fresh job, or one resumed after a restart)."""
    UPLOADED = "uploaded"
    """An upload just finished."""
    TEST_REQUESTED = "test_requested"
    """The view is the test request's reply."""
    RESET_REQUESTED = "reset_requested"
    """A reset was asked for; the view is a read after reconnecting."""
    CONFIRM_REQUESTED = "confirm_requested"
    """The view is the confirm request's reply."""


@dataclass(frozen=True, slots=True)
class Target:
    """What the command wants running, from the verified artifact and the command."""

    image_hash: bytes
    version: str
    expected_current_version: str | None = None
    allow_downgrade: bool = False


@dataclass(frozen=True, slots=True)
class DeviceView:
    """What the job read from the device."""

    slots: tuple[SlotState, ...]
    group128_version: str | None = None
    """Group 128's `current_version`; None when the device has no group 128."""

    def slot(self, number: int) -> SlotState | None:
        """Image 0's entry for `slot`, if the device listed it."""
        return next((s for s in self.slots if s.image == 0 and s.slot == number), None)


@dataclass(frozen=True, slots=True)
class Upload:
    """Upload the image to slot 1 (resuming where the device's upload session stands)."""


@dataclass(frozen=True, slots=True)
class RequestTest:
    """Mark slot 1's image pending for one test boot."""


@dataclass(frozen=True, slots=True)
class RequestReset:
    """Reset the device so MCUboot swaps the pending image in."""


@dataclass(frozen=True, slots=True)
class AwaitReboot:
    """The device has not rebooted yet (the test image is still pending): ask again later."""


@dataclass(frozen=True, slots=True)
class RequestConfirm:
    """Confirm the image running in slot 0."""


@dataclass(frozen=True, slots=True)
class Finish:
    """The job ends with this result."""

    outcome: JobOutcome
    reason: ReasonCode
    retryable: bool
    detail: str = ""
    running_version: str = ""
    old_image_running: bool | None = None
    """After a failed test boot: whether the device answered on its previous confirmed image."""


Step = Upload | RequestTest | RequestReset | AwaitReboot | RequestConfirm | Finish


def decide(
    target: Target,
    view: DeviceView,
    stage: Stage,
    *,
    journal_phase: JobPhase | None = None,
    did_work: bool = False,
) -> Step:
    """The next step of the job.

    `journal_phase` is the phase the journal held when this run started (None for a new job);
    `did_work` says whether this job uploaded or test-booted, so success is `OK` rather than
    `ALREADY_ON_TARGET`.
    """
    match stage:
        case Stage.FIRST_LOOK:
            return _first_look(target, view, journal_phase, did_work=did_work)
        case Stage.UPLOADED:
            return _after_upload(target, view)
        case Stage.TEST_REQUESTED:
            return _after_test_request(target, view)
        case Stage.RESET_REQUESTED:
            if _holds_pending_target(view, target):
                return AwaitReboot()
            return _verify(target, view, did_work=True)
        case Stage.CONFIRM_REQUESTED:
            return _after_confirm_request(target, view, did_work=did_work)
        case _:
            assert_never(stage)


def _first_look(target: Target, view: DeviceView, journal_phase: JobPhase | None, *, did_work: bool) -> Step:
    running = view.slot(0)
    if running is not None and running.hash_sha256 == target.image_hash:
        return _verify(target, view, did_work=did_work or not running.confirmed)
    if _holds_pending_target(view, target):
        return RequestReset()
    if journal_phase in PHASES_AFTER_TEST_WRITE:
        # The device accepted the test request before the agent restarted, and runs another
        # image with nothing pending: MCUboot booted the test image and reverted.
        return _reverted(view)
    refusal = _refusal(target, _current_version(view))
    if refusal is not None:
        return refusal
    return RequestTest() if _holds_target(view, target) else Upload()


def _after_upload(target: Target, view: DeviceView) -> Step:
    if not _holds_target(view, target):
        return Finish(
            JobOutcome.FAILED,
            ReasonCode.VERIFY_FAILED,
            retryable=True,
            detail="slot 1 does not hold the uploaded image after the upload",
        )
    return RequestReset() if _holds_pending_target(view, target) else RequestTest()


def _after_test_request(target: Target, view: DeviceView) -> Step:
    if not _holds_pending_target(view, target):
        return Finish(
            JobOutcome.FAILED,
            ReasonCode.TEST_FAILED,
            retryable=True,
            detail="slot 1 is not pending after the test request",
        )
    return RequestReset()


def _after_confirm_request(target: Target, view: DeviceView, *, did_work: bool) -> Step:
    running = view.slot(0)
    if running is None or not running.confirmed or running.hash_sha256 != target.image_hash:
        return Finish(
            JobOutcome.FAILED,
            ReasonCode.CONFIRM_FAILED,
            retryable=True,
            detail="the running image is not confirmed after the confirm request",
            running_version=_current_version(view),
        )
    return _verify(target, view, did_work=did_work)


def _holds_target(view: DeviceView, target: Target) -> bool:
    staged = view.slot(1)
    return staged is not None and staged.hash_sha256 == target.image_hash


def _holds_pending_target(view: DeviceView, target: Target) -> bool:
    staged = view.slot(1)
    return staged is not None and staged.hash_sha256 == target.image_hash and staged.pending


def past_point_of_no_return(target: Target, view: DeviceView) -> bool:
    """Whether a test boot of the target was already requested (a cancel must not stop the job)."""
    running = view.slot(0)
    if running is not None and running.hash_sha256 == target.image_hash and not running.confirmed:
        return True
    return _holds_pending_target(view, target)


def _runs_target(view: DeviceView, target: Target) -> bool:
    running = view.slot(0)
    return running is not None and running.hash_sha256 == target.image_hash


def _current_version(view: DeviceView) -> str:
    """What the device runs: group 128's `current_version` when it has the group, else slot 0's."""
    if view.group128_version is not None:
        return view.group128_version
    running = view.slot(0)
    return running.version if running is not None else ""


def _refusal(target: Target, current_version: str) -> Finish | None:
    expected = target.expected_current_version
    if expected is not None and not same_version(current_version, expected):
        return Finish(
            JobOutcome.REJECTED,
            ReasonCode.WRONG_CURRENT_VERSION,
            retryable=False,
            detail=f"device runs {current_version}, expected {expected}",
            running_version=current_version,
        )
    if target.allow_downgrade:
        return None
    try:
        not_newer = version_key(current_version) >= version_key(target.version)
    except InvalidVersion:
        return None  # an unknown current version cannot be compared; the device's own check decides
    if not_newer:
        return Finish(
            JobOutcome.REJECTED,
            ReasonCode.DOWNGRADE_REFUSED,
            retryable=False,
            detail=f"device runs {current_version}, image is {target.version}",
            running_version=current_version,
        )
    return None


def _reverted(view: DeviceView) -> Finish:
    running = view.slot(0)
    version = running.version if running is not None else ""
    return Finish(
        JobOutcome.REVERTED,
        ReasonCode.REVERTED,
        retryable=False,
        detail=f"the device booted {version or 'no image'} again",
        running_version=version,
        old_image_running=running is not None and running.confirmed,
    )


def _verify(target: Target, view: DeviceView, *, did_work: bool) -> Step:
    running = view.slot(0)
    if running is None or running.hash_sha256 != target.image_hash:
        return _reverted(view)
    if not same_version(running.version, target.version):
        return Finish(
            JobOutcome.FAILED,
            ReasonCode.VERIFY_FAILED,
            retryable=True,
            detail=f"slot 0 reports version {running.version}, expected {target.version}",
            running_version=running.version,
        )
    reported = view.group128_version
    if reported is not None and not same_version(reported, target.version):
        return Finish(
            JobOutcome.FAILED,
            ReasonCode.VERIFY_FAILED,
            retryable=True,
            detail=f"group 128 reports {reported}, expected {target.version}",
            running_version=reported,
        )
    if not running.confirmed:
        return RequestConfirm()
    return _succeeded(view, did_work=did_work)


def _succeeded(view: DeviceView, *, did_work: bool) -> Finish:
    return Finish(
        JobOutcome.SUCCEEDED,
        ReasonCode.OK if did_work else ReasonCode.ALREADY_ON_TARGET,
        retryable=False,
        running_version=_current_version(view),
    )


PHASES_PAST_THE_POINT_OF_NO_RETURN: Final = PHASES_AFTER_TEST_WRITE | {JobPhase.TESTING}
"""Journal phases from which the test request may have reached the device."""


def cancellable(journal_phase: JobPhase | None) -> bool:
    """Whether a cancel may stop a job the journal left in `journal_phase` (a resumed job).

    From TESTING on, the test request may have reached the device: stopping then could leave it
    running an unconfirmed image that the next reboot silently reverts, so the job finishes.
    """
    return journal_phase not in PHASES_PAST_THE_POINT_OF_NO_RETURN
