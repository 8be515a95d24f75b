"""A release and its artifacts: immutable values with their digests computed from the bytes (pure)."""

import hashlib
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from simulator.cloud.versions import VersionKey, version_key

SAFE_FILENAME: Final = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,127}", re.ASCII)
UNSAFE_FILENAME_CHARS: Final = re.compile(r"[^A-Za-z0-9._+-]", re.ASCII)


class ArtifactKind(StrEnum):
    """Whether an artifact is a whole image or a patch from one base version."""

    FULL = "full"
    DELTA = "delta"


@dataclass(frozen=True, slots=True)
class ArtifactSource:
    """A payload to add to a release: a full image, or a delta when `base_version` is set."""

    hardware_version: str
    content: bytes = field(repr=False)
    base_version: str | None = None
    filename: str | None = None
    """The download file name (default derived from software type, versions and hardware)."""


@dataclass(frozen=True, slots=True)
class Artifact:
    """One downloadable OTA payload of a release, for one hardware version."""

    id: int
    kind: ArtifactKind
    hardware_version: str
    filename: str
    content: bytes = field(repr=False)
    created_s: float
    base_version: str | None = None
    """The version a delta applies to (None for a full artifact)."""
    md5: str = field(init=False)
    sha1: str = field(init=False)
    sha256: str = field(init=False)

    def __post_init__(self) -> None:
        # md5 and sha1 are part of the reply shape that clients check, not a security measure.
        object.__setattr__(self, "md5", hashlib.md5(self.content, usedforsecurity=False).hexdigest())
        object.__setattr__(self, "sha1", hashlib.sha1(self.content, usedforsecurity=False).hexdigest())
        object.__setattr__(self, "sha256", hashlib.sha256(self.content).hexdigest())

    @property
    def size_bytes(self) -> int:
        """Length of the payload."""
        return len(self.content)


@dataclass(frozen=True, slots=True)
class Release:
    """A software version with its artifacts; shared by the project, activated per cohort."""

    id: int
    software_type: str
    version: str
    revision: str
    notes: str
    must_pass_through: bool
    created_s: float
    artifacts: tuple[Artifact, ...]
    without_sha256: bool = False
    """Replies list md5 and sha1 but an empty sha256, as some Memfault releases do."""

    @property
    def version_key(self) -> VersionKey:
        """The sort key of `version`."""
        return version_key(self.version)

    def full_artifact(self, hardware_version: str) -> Artifact | None:
        """The whole-image artifact for this hardware, if the release has one."""
        for artifact in self.artifacts:
            if artifact.kind is ArtifactKind.FULL and artifact.hardware_version == hardware_version:
                return artifact
        return None

    def delta_artifact(self, hardware_version: str, base_version: str) -> Artifact | None:
        """The patch from `base_version` for this hardware, if the release has one."""
        base_key = version_key(base_version)
        for artifact in self.artifacts:
            if (
                artifact.kind is ArtifactKind.DELTA
                and artifact.hardware_version == hardware_version
                and artifact.base_version is not None
                and version_key(artifact.base_version) == base_key
            ):
                return artifact
        return None
