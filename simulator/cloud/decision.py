"""Which release Memfault offers a device: cohort, staging, precedence and version checks (pure).

Rules of this file (protocol.md section 6.5): a release applies to a device only if it is active in
the device's cohort, the device is staged for that activation, its software type matches and it has
an artifact for the device's hardware. Among the releases newer than the running version the
precedence is Delta (highest target with a patch from the running version) > Must-pass-through
(lowest) > Full (highest). Nothing older than the running version is offered unless the cohort
disables version checking. Refusals (HTTP 400/403) and "no update" reasons (HTTP 204) are values.
"""

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from http import HTTPStatus

from simulator.cloud.model import DEFAULT_COHORT, CloudModel, Cohort, Project
from simulator.cloud.releases import Artifact, ArtifactKind, Release
from simulator.cloud.versions import VersionKey, version_key


class NoUpdateReason(StrEnum):
    """Why a device gets no release (sent in the `memfault-reason` header of a 204)."""

    LATEST = "latest"
    """The device already runs the newest release it may get."""
    NOT_NEWER = "not_newer"
    """The active release is older than the running version: downgrades are refused."""
    NOT_STAGED = "not_staged"
    """A staged rollout is active in the cohort but does not include this device yet."""
    NO_ACTIVE_RELEASE = "no_active_release"
    """Nothing of this software type is active in the device's cohort."""
    NO_ARTIFACT_FOR_HARDWARE = "no_artifact_for_hardware"
    """The active releases have no payload for the device's hardware version."""
    UNKNOWN_DEVICE = "unknown_device"
    """The project does not register new devices and has never seen this one."""


class OfferReason(StrEnum):
    """Why this release was chosen (sent in the `reason` field of a 200)."""

    DELTA = "delta"
    MUST_PASS_THROUGH = "must_pass_through"  # noqa: S105 (a release kind, not a password)
    NEWEST = "newest"
    VERSION_CHECKING_DISABLED = "version_checking_disabled"


@dataclass(frozen=True, slots=True)
class DeviceQuery:
    """The parameters of a latest-release request (already checked for shape)."""

    device_serial: str
    hardware_version: str
    software_type: str
    current_version: str
    """Empty when the device did not say; then every active release counts as newer."""


@dataclass(frozen=True, slots=True)
class Offer:
    """A release for the device and the artifact it should download."""

    release: Release
    artifact: Artifact
    reason: OfferReason

    @property
    def is_delta(self) -> bool:
        """Whether the artifact is a patch from the running version."""
        return self.artifact.kind is ArtifactKind.DELTA


@dataclass(frozen=True, slots=True)
class NoUpdate:
    """No release for the device (HTTP 204)."""

    reason: NoUpdateReason


@dataclass(frozen=True, slots=True)
class Refusal:
    """The request itself is refused (HTTP 400 or 403) with a message for the error body."""

    status: HTTPStatus
    message: str


Decision = Offer | NoUpdate | Refusal


def staging_bucket(project_key: str, release: Release, device_serial: str) -> int:
    """A device's stable place (0..99) in a release's staged rollout: staged when below the percent."""
    identity = f"{project_key}\0{release.software_type}\0{release.version}\0{device_serial}"
    digest = hashlib.sha256(identity.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % 100


def decide(model: CloudModel, project_key: str, query: DeviceQuery) -> Decision:
    """The answer to a latest-release request for this project key and device."""
    project = model.projects.get(project_key)
    if project is None:
        return Refusal(HTTPStatus.FORBIDDEN, "Invalid project key")
    if query.hardware_version not in project.hardware_versions():
        return Refusal(HTTPStatus.BAD_REQUEST, f"Unknown hardware_version {query.hardware_version!r}")
    if query.software_type not in project.software_types():
        return Refusal(HTTPStatus.BAD_REQUEST, f"Unknown software_type {query.software_type!r}")
    cohort_name = project.cohort_by_device.get(query.device_serial)
    if cohort_name is None and not project.auto_register:
        return NoUpdate(NoUpdateReason.UNKNOWN_DEVICE)
    cohort = project.cohorts.get(cohort_name or DEFAULT_COHORT) or Cohort(DEFAULT_COHORT)
    return _choose(project, cohort, query)


def _choose(project: Project, cohort: Cohort, query: DeviceQuery) -> Offer | NoUpdate:
    staged = _staged_releases(project, cohort, query)
    if isinstance(staged, NoUpdate):
        return staged
    hardware, current = query.hardware_version, query.current_version
    fulls = [Offer(r, a, OfferReason.NEWEST) for r in staged if (a := r.full_artifact(hardware)) is not None]
    deltas = [
        Offer(r, a, OfferReason.DELTA)
        for r in staged
        if current and (a := r.delta_artifact(hardware, current)) is not None
    ]
    if not fulls and not deltas:
        return NoUpdate(NoUpdateReason.NO_ARTIFACT_FOR_HARDWARE)
    if not current:
        return _highest(fulls)
    return _by_precedence(fulls, deltas, version_key(current), cohort)


def _by_precedence(
    fulls: Sequence[Offer], deltas: Sequence[Offer], current_key: VersionKey, cohort: Cohort
) -> Offer | NoUpdate:
    """Delta > must-pass-through (lowest) > full (highest) among releases newer than the device's."""
    newer_deltas = [offer for offer in deltas if offer.release.version_key > current_key]
    newer_fulls = [offer for offer in fulls if offer.release.version_key > current_key]
    must_pass = [offer for offer in newer_fulls if offer.release.must_pass_through]
    if newer_deltas:
        return _highest(newer_deltas)
    if must_pass:
        return replace(min(must_pass, key=_by_version), reason=OfferReason.MUST_PASS_THROUGH)
    if newer_fulls:
        return _highest(newer_fulls)
    return _without_newer(fulls, current_key, cohort)


def _staged_releases(project: Project, cohort: Cohort, query: DeviceQuery) -> list[Release] | NoUpdate:
    """The releases of the query's software type active in the cohort and staged for the device."""
    active = [
        release
        for release in project.releases
        if release.software_type == query.software_type and release.id in cohort.percent_by_release_id
    ]
    percents = cohort.percent_by_release_id
    staged = [r for r in active if staging_bucket(project.key, r, query.device_serial) < percents[r.id]]
    if not active:
        return NoUpdate(NoUpdateReason.NO_ACTIVE_RELEASE)
    return staged or NoUpdate(NoUpdateReason.NOT_STAGED)


def _without_newer(fulls: Sequence[Offer], current_key: VersionKey, cohort: Cohort) -> Offer | NoUpdate:
    """Nothing newer is active: the device is up to date, or its cohort allows a downgrade."""
    if not fulls:
        return NoUpdate(NoUpdateReason.LATEST)
    highest = _highest(fulls)
    if highest.release.version_key == current_key:
        return NoUpdate(NoUpdateReason.LATEST)
    if cohort.allow_downgrade:
        return replace(highest, reason=OfferReason.VERSION_CHECKING_DISABLED)
    return NoUpdate(NoUpdateReason.NOT_NEWER)


def _by_version(offer: Offer) -> VersionKey:
    return offer.release.version_key


def _highest(offers: Sequence[Offer]) -> Offer:
    return max(offers, key=_by_version)
