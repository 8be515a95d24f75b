"""Wave gates: promote a wave when enough devices succeeded, stop the rollout when too many failed.

Unreachable and canceled devices are not in the denominator: a device nobody can reach says
nothing about the release. The failure gate uses the lower bound of the Wilson score interval,
so three failures out of three trip it while one failure out of three does not.
"""

from __future__ import annotations

import math
from statistics import NormalDist

from schemas import GateSpec, GateVerdict, StateCounts


def attempted(counts: StateCounts) -> int:
    """Devices whose update got a verdict about the release."""
    return counts.succeeded + counts.failed + counts.rejected + counts.timed_out + counts.reverted


def failed(counts: StateCounts) -> int:
    """Devices whose update failed, for any reason."""
    return counts.failed + counts.rejected + counts.timed_out + counts.reverted


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


def evaluate_gate(spec: GateSpec, counts: StateCounts, *, wave_done: bool) -> tuple[GateVerdict, str, float]:
    """Decide about a wave: (verdict, reason, failure lower bound)."""
    total = attempted(counts)
    failures = failed(counts)
    bound = wilson_lower_bound(failures, total, spec.confidence)
    if total >= spec.failure_min_sample and bound > spec.failure_threshold:
        verdict = GateVerdict.ABORT if spec.on_failure == "abort" else GateVerdict.PAUSE
        reason = f"{failures}/{total} failed; lower bound {bound:.2f} > {spec.failure_threshold:.2f}"
        return verdict, reason, bound
    if not wave_done:
        return GateVerdict.WAIT, "wave in progress", bound
    if total < spec.min_sample:
        # Too few attempts to judge (devices unreachable): promote, the next wave will tell.
        return GateVerdict.PROMOTE, f"only {total} attempted, below the sample of {spec.min_sample}", bound
    success = counts.succeeded / total if total else 1.0
    if success >= spec.success_threshold:
        return GateVerdict.PROMOTE, f"{counts.succeeded}/{total} succeeded", bound
    verdict = GateVerdict.ABORT if spec.on_failure == "abort" else GateVerdict.PAUSE
    return verdict, f"success {success:.2f} below {spec.success_threshold:.2f}", bound
