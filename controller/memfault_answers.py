"""What Memfault answers about one device: an offer, "up to date", a refusal, or no usable answer.

Plain values with no I/O, shared by the HTTP adapter (controller.memfault) and the pure cores.
"""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DeviceQuery:
    """The four group-128 fields that select a release, plus the project key to authenticate with."""

    device_serial: str
    hardware_version: str
    software_type: str
    current_version: str
    project_key: str


@dataclass(frozen=True, slots=True)
class ArtifactRef:
    """One OTA payload of a release (its URL expires: resolve it right before dispatch).

    Digests are lowercase hex, "" when Memfault gave none: sha256 is preferred, md5 (with sha1)
    is the fallback that the agent verifies when sha256 is absent.
    """

    url: str
    size_bytes: int
    sha256: str
    hardware_version: str
    filename: str
    md5: str = ""
    sha1: str = ""
    is_delta: bool = False
    """A patch from the version the device ran when Memfault was asked (never a whole image)."""


@dataclass(frozen=True, slots=True)
class ReleaseOffer:
    """Memfault offers this release to the device."""

    release_id: int
    version: str
    is_delta: bool
    must_pass_through: bool
    artifact: ArtifactRef
    """The payload Memfault chose (for a delta release: the patch)."""
    full_artifact: ArtifactRef | None = None
    """For a delta release, the release's whole image for the same hardware when Memfault lists it."""


@dataclass(frozen=True, slots=True)
class UpToDate:
    """Memfault has nothing newer for the device (HTTP 204)."""

    reason: str


@dataclass(frozen=True, slots=True)
class DeviceRefused:
    """Memfault refuses the query for this device (HTTP 400 or 403): a device-level error."""

    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class Unanswered:
    """Memfault gave this device no usable answer (404, a lasting 5xx, garbage, a truncated body).

    A device-level fault while Memfault answers other devices: the device is excluded with
    `reason`, nothing is counted against its gateway.
    """

    reason: str
    """A short label (`http_404`, `http_500`, `malformed`, `too_large`, `no_artifact`...)."""
    detail: str = ""


ReleaseAnswer = ReleaseOffer | UpToDate | DeviceRefused | Unanswered
"""Every answer a latest-release query can have for one device."""
