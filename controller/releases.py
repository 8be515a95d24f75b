"""What Memfault answers about one device: a release offer, "up to date", or a device-level refusal.

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
    """One OTA payload of a release (its URL expires: resolve it right before dispatch)."""

    url: str
    size_bytes: int
    sha256: str
    hardware_version: str
    filename: str


@dataclass(frozen=True, slots=True)
class ReleaseOffer:
    """Memfault offers this release to the device."""

    release_id: int
    version: str
    is_delta: bool
    must_pass_through: bool
    artifact: ArtifactRef


@dataclass(frozen=True, slots=True)
class UpToDate:
    """Memfault has nothing newer for the device (HTTP 204)."""

    reason: str


@dataclass(frozen=True, slots=True)
class DeviceRefused:
    """Memfault refuses the query for this device (HTTP 400 or 403): a device-level error."""

    status: int
    reason: str


ReleaseAnswer = ReleaseOffer | UpToDate | DeviceRefused
"""Every answer a latest-release query can have for one device."""
