"""Wave gates: what counts as evidence about a release, and the verdict it supports.

Rules of this file (pure: no I/O, no clock; the truth table is docs/gates.md):

- Only outcomes decided at the device are evidence: a success, a failed upload, a device error,
  a failed test boot (reverted, or never back within the reboot deadline), a failed verify or
  confirm, and a job that timed out after the device had shown progress. `evidence_of` says which.
- Everything that never reached the device (the agent no longer hears it, the command expired,
  the artifact could not be fetched or is not the release, the device runs another version than
  planned, load shedding, Memfault's answer changed at dispatch) is NOT_COUNTED: tallied and shown
  apart, never for or against the release.
- The failure gate trips as soon as the wave can no longer reach `success_threshold` even if every
  device still running succeeds, or as soon as the lower Wilson bound of the failure rate passes
  `failure_threshold` with `failure_min_sample` decided: whichever comes first.
- With fewer than `min_sample` decided outcomes the gate never promotes: it waits while devices
  remain, and when none remain it holds the rollout (a pause saying the sample is short) until an
  operator resumes it, which accepts the short sample for that wave. A wave with no devices at all
  (a percentage that rounds to nothing) has nothing to judge and passes.
- Every verdict carries its numbers (`GateResult`), so an operator can check it by hand.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Final

from schemas import GateAction, GateSpec, GateVerdict, JobOutcome, ReasonCode


class Evidence(enum.StrEnum):
    """What one device's ended job says about the release."""

    NONE = ""
    """Not ended, or ended without a job result (canceled, unreachable)."""
    SUCCESS = "success"
    FAILURE = "failure"
    NOT_COUNTED = "not_counted"
    """Ended before anything touched the device: shown apart, never counted."""


AT_DEVICE_FAILURES: Final = frozenset(
    {
        ReasonCode.UPLOAD_FAILED,
        ReasonCode.DEVICE_ERROR,
        ReasonCode.TEST_FAILED,
        ReasonCode.REBOOT_TIMEOUT,
        ReasonCode.REVERTED,
        ReasonCode.VERIFY_FAILED,
        ReasonCode.CONFIRM_FAILED,
    }
)
"""Failure reasons the agent only reports after it wrote to or test-booted the device."""
FAILED_BOOTS: Final = frozenset({ReasonCode.REVERTED, ReasonCode.REBOOT_TIMEOUT})
"""The device ran the test image and did not come back on it: never re-dispatched the same build."""


def evidence_of(outcome: JobOutcome, reason: ReasonCode) -> Evidence:
    """What a job result says about the release (the agent's outcome and reason, both checked)."""
    if outcome is JobOutcome.SUCCEEDED:
        return Evidence.SUCCESS
    if outcome is JobOutcome.CANCELED:
        return Evidence.NONE
    at_device = outcome in (JobOutcome.FAILED, JobOutcome.REVERTED, JobOutcome.TIMED_OUT)
    if at_device and reason in AT_DEVICE_FAILURES:
        return Evidence.FAILURE
    return Evidence.NOT_COUNTED


def evidence_of_timeout(*, progressed: bool) -> Evidence:
    """A job the controller timed out: a failure only if the device had accepted it (progress seen)."""
    return Evidence.FAILURE if progressed else Evidence.NOT_COUNTED


@dataclass(frozen=True, slots=True)
class WaveEvidence:
    """One wave's tally, the gate's only input besides its spec."""

    succeeded: int = 0
    failed: int = 0
    not_counted: int = 0
    remaining: int = 0
    """Devices of the wave whose job has not ended (pending, waiting, in flight)."""
    without_result: int = 0
    """Devices that left the wave without a job result (canceled, unreachable)."""

    @property
    def decided(self) -> int:
        """Outcomes decided at the device: the denominator."""
        return self.succeeded + self.failed


@dataclass(frozen=True, slots=True)
class GateResult:
    """A verdict and the numbers behind it."""

    verdict: GateVerdict
    reason: str
    evidence: WaveEvidence
    failure_rate: float
    """failed / decided (0 with nothing decided)."""
    failure_lower_bound: float
    """Lower bound of the Wilson interval of the failure rate at the spec's confidence."""
    short_sample: bool = False


SHORT_SAMPLE_REASON: Final = "short sample"
"""How the reason of a hold on a short sample starts."""


def wilson_lower_bound(failures: int, total: int, confidence: float) -> float:
    """Lower bound of the Wilson score interval of a failure rate (two-sided `confidence`)."""
    if total == 0:
        return 0.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    rate = failures / total
    denominator = 1 + z * z / total
    centre = rate + z * z / (2 * total)
    margin = z * math.sqrt(rate * (1 - rate) / total + z * z / (4 * total * total))
    return max(0.0, (centre - margin) / denominator)


def evaluate_gate(  # noqa: PLR0911 (one return per row of the truth table)
    spec: GateSpec, evidence: WaveEvidence, *, short_sample_accepted: bool = False
) -> GateResult:
    """Judge a wave on its evidence (see the rules above and docs/gates.md)."""
    decided, failed = evidence.decided, evidence.failed
    rate = failed / decided if decided else 0.0
    bound = wilson_lower_bound(failed, decided, spec.confidence)

    def result(verdict: GateVerdict, reason: str, *, short: bool = False) -> GateResult:
        numbers = (
            f"{evidence.succeeded}/{decided} succeeded, {failed} failed, "
            f"{evidence.not_counted} not counted, {evidence.remaining} remaining; "
            f"failure rate {rate:.2f}, lower bound {bound:.2f}"
        )
        return GateResult(verdict, f"{reason} ({numbers})", evidence, rate, bound, short)

    failing = GateVerdict.ABORT if spec.on_failure == GateAction.ABORT else GateVerdict.PAUSE
    reachable = decided + evidence.remaining
    if reachable and (evidence.succeeded + evidence.remaining) / reachable < spec.success_threshold:
        return result(failing, f"cannot reach the success threshold {spec.success_threshold:.2f}")
    if decided >= spec.failure_min_sample and bound > spec.failure_threshold:
        return result(failing, f"failure lower bound above {spec.failure_threshold:.2f}")
    if evidence.remaining:
        return result(GateVerdict.WAIT, "wave in progress")
    if not decided and not evidence.not_counted and not evidence.without_result:
        return result(GateVerdict.PROMOTE, "empty wave")
    if decided < spec.min_sample and not short_sample_accepted:
        return result(
            GateVerdict.PAUSE,
            f"{SHORT_SAMPLE_REASON}: {decided} decided, below {spec.min_sample}; resume to promote",
            short=True,
        )
    if decided < spec.min_sample:
        return result(GateVerdict.PROMOTE, f"{SHORT_SAMPLE_REASON} accepted by an operator")
    return result(GateVerdict.PROMOTE, "success threshold met")
