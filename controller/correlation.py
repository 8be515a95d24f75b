"""Release correlation (pure): which payload a device gets for a rollout, which hop, or why none.

Rules of this file. Memfault chooses the release by its precedence (Delta > must-pass-through >
Full); this core decides what the controller does with that answer for one device:
- an answer counts only for the exact (serial, hardware, software type, current version, project
  key) it was asked for: any other is stale and excludes the device until it is asked again;
- a delta is used only when the device declared it can apply deltas and the answer was given for
  its current version (a delta applies only from its exact From version); otherwise the release's
  full image when Memfault listed one, otherwise the device is excluded;
- a must-pass-through release below the target is a hop: the device installs it within the
  rollout and is asked again afterwards; any other release that is not the target excludes it;
- a payload is usable only with a size and a sha256 or an md5 the agent can verify.
No I/O, no clock: answers and facts are arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import assert_never

from controller.memfault_answers import (
    ArtifactRef,
    DeviceQuery,
    DeviceRefused,
    ReleaseAnswer,
    ReleaseOffer,
    Unanswered,
    UpToDate,
)
from schemas.versions import InvalidVersion, version_key


@dataclass(frozen=True, slots=True)
class DeviceFacts:
    """What the registry knows about a device that selects its release."""

    serial: str
    hardware_version: str
    software_type: str
    current_version: str
    project_key: str
    accepts_delta: bool = False
    """Declared by the device's inventory (`accepts_delta`, default false)."""

    def query(self) -> DeviceQuery:
        """The latest-release query for these facts."""
        return DeviceQuery(
            self.serial, self.hardware_version, self.software_type, self.current_version, self.project_key
        )


class Exclusion(StrEnum):
    """Why a device gets nothing from this rollout (the label of the metrics counter)."""

    NO_PROJECT_KEY = "no_project_key"
    NOT_ASKED_YET = "not_asked_yet"
    STALE_ANSWER = "stale_answer"
    UP_TO_DATE = "up_to_date"
    REFUSED = "refused"
    UNANSWERED = "unanswered"
    OTHER_RELEASE = "other_release"
    UNORDERED_VERSION = "unordered_version"
    """The device's version or Memfault's offer cannot be ordered (see `schemas.versions`)."""
    DELTA_ONLY = "delta_only"
    NO_DIGEST = "no_digest"


@dataclass(frozen=True, slots=True)
class Install:
    """The device installs `artifact` (version `version`) in this rollout."""

    version: str
    artifact: ArtifactRef
    delta: bool
    hop: bool
    """A must-pass-through release below the target: another hop follows once it runs it."""


@dataclass(frozen=True, slots=True)
class Excluded:
    """The device gets nothing now, with the reason and a detail for the plan."""

    reason: Exclusion
    detail: str


Correlation = Install | Excluded


def correlate(  # noqa: PLR0911 (one return per exclusion; reads as the rules above)
    facts: DeviceFacts, answer: ReleaseAnswer | None, asked: DeviceQuery | None, target_version: str
) -> Correlation:
    """What `facts`'s device gets towards `target_version`, given Memfault's `answer` to `asked`."""
    if not facts.project_key:
        return Excluded(Exclusion.NO_PROJECT_KEY, "no project key known")
    if answer is None or asked is None:
        return Excluded(Exclusion.NOT_ASKED_YET, "memfault not asked yet")
    if asked != facts.query():
        return Excluded(
            Exclusion.STALE_ANSWER,
            f"memfault answered for version {asked.current_version}, not the current one",
        )
    match answer:
        case UpToDate():
            return Excluded(Exclusion.UP_TO_DATE, f"memfault offers nothing: up to date ({answer.reason})")
        case DeviceRefused():
            return Excluded(Exclusion.REFUSED, f"memfault refused: HTTP {answer.status} {answer.reason}")
        case Unanswered():
            return Excluded(
                Exclusion.UNANSWERED,
                f"memfault gave no usable answer: {answer.reason} {answer.detail}".strip(),
            )
        case ReleaseOffer():
            return _offer(facts, answer, target_version)
        case _:
            assert_never(answer)


def _offer(facts: DeviceFacts, offer: ReleaseOffer, target_version: str) -> Correlation:
    try:
        offered = version_key(offer.version)
    except InvalidVersion as error:
        return Excluded(
            Exclusion.UNORDERED_VERSION, f"memfault offers a version that cannot be ordered: {error}"
        )
    on_target = offered == version_key(target_version)
    hop = False
    if not on_target and offer.must_pass_through:
        try:
            current = version_key(facts.current_version)
        except InvalidVersion as error:
            return Excluded(Exclusion.UNORDERED_VERSION, f"the device's version cannot be ordered: {error}")
        hop = current < offered < version_key(target_version)
    if not on_target and not hop:
        return Excluded(Exclusion.OTHER_RELEASE, f"memfault offers {offer.version}, not {target_version}")
    artifact: ArtifactRef | None = offer.artifact
    delta = offer.is_delta or offer.artifact.is_delta
    if delta and not facts.accepts_delta:
        artifact, delta = offer.full_artifact, False
        if artifact is None:
            return Excluded(
                Exclusion.DELTA_ONLY,
                f"memfault offers only a delta to {offer.version}; the device takes none",
            )
    assert artifact is not None  # noqa: S101 (offer.artifact is never None)
    if artifact.size_bytes <= 0 or not (artifact.sha256 or artifact.md5):
        return Excluded(Exclusion.NO_DIGEST, f"release {offer.version} payload has no size or digest")
    return Install(version=offer.version, artifact=artifact, delta=delta, hop=hop)
