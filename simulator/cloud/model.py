"""The emulated Memfault projects: their releases, cohorts, devices and activations (pure, no I/O).

Rules of this file: nothing here reads a clock (creation times are arguments) or does I/O; ids are
handed out by `CloudModel` in order; mutations check their arguments and raise `ModelError`.
Which release a device gets is decided in `simulator.cloud.decision`.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from simulator.cloud.errors import ModelError
from simulator.cloud.releases import (
    SAFE_FILENAME,
    UNSAFE_FILENAME_CHARS,
    Artifact,
    ArtifactKind,
    ArtifactSource,
    Release,
)
from simulator.cloud.versions import version_key

DEFAULT_COHORT: Final = "default"
DEFAULT_SOFTWARE_TYPE: Final = "app"


@dataclass(slots=True)
class Cohort:
    """A group of devices with its own release activations."""

    name: str
    allow_downgrade: bool = False
    """Memfault's "Disable Version Checking": an active release older than the device is offered."""
    percent_by_release_id: dict[int, int] = field(default_factory=dict)
    """Active releases and their staged-rollout percentage (100 = every device)."""


@dataclass(slots=True)
class Project:
    """One Memfault project, addressed by its project key."""

    key: str
    auto_register: bool = True
    """Whether devices never seen before join the default cohort (else they get no update)."""
    declared_hardware_versions: set[str] = field(default_factory=set)
    declared_software_types: set[str] = field(default_factory=set)
    releases: list[Release] = field(default_factory=list)
    cohorts: dict[str, Cohort] = field(default_factory=dict)
    cohort_by_device: dict[str, str] = field(default_factory=dict)

    def hardware_versions(self) -> set[str]:
        """Hardware versions the project knows: declared, or named by an artifact."""
        named = {artifact.hardware_version for release in self.releases for artifact in release.artifacts}
        return self.declared_hardware_versions | named

    def software_types(self) -> set[str]:
        """Software types the project knows: declared, or named by a release."""
        return self.declared_software_types | {release.software_type for release in self.releases}

    def cohort(self, name: str) -> Cohort:
        """The cohort of that name, created empty on first use."""
        return self.cohorts.setdefault(name, Cohort(name))

    def release(self, version: str, software_type: str = DEFAULT_SOFTWARE_TYPE) -> Release:
        """The release of that version and software type.

        Raises:
            ModelError: no such release.
        """
        wanted = version_key(version)
        for release in self.releases:
            if release.software_type == software_type and release.version_key == wanted:
                return release
        raise ModelError(f"project {self.key!r} has no {software_type} release {version!r}")


@dataclass(slots=True)
class CloudModel:
    """Every emulated project, and the artifacts by id for downloads."""

    projects: dict[str, Project] = field(default_factory=dict)
    artifacts_by_id: dict[int, Artifact] = field(default_factory=dict)
    _next_release_id: int = 1
    _next_artifact_id: int = 1

    def project(self, project_key: str) -> Project:
        """The project of that key, created empty on first use."""
        if not project_key:
            raise ModelError("a project key cannot be empty")
        return self.projects.setdefault(project_key, Project(project_key))

    def add_project(
        self,
        project_key: str,
        *,
        auto_register: bool = True,
        hardware_versions: Iterable[str] = (),
        software_types: Iterable[str] = (),
    ) -> Project:
        """Create or update a project.

        Declared hardware versions and software types are known before any release names them;
        queries naming unknown ones are refused with HTTP 400.
        """
        project = self.project(project_key)
        project.auto_register = auto_register
        project.declared_hardware_versions.update(hardware_versions)
        project.declared_software_types.update(software_types)
        return project

    def add_release(
        self,
        project_key: str,
        version: str,
        sources: Sequence[ArtifactSource],
        *,
        created_s: float,
        software_type: str = DEFAULT_SOFTWARE_TYPE,
        must_pass_through: bool = False,
        notes: str = "",
        revision: str = "",
        without_sha256: bool = False,
    ) -> Release:
        """Add a release with its artifacts (full images and deltas) to a project.

        Args:
            project_key: the project (created when new).
            version: the release version; unique per project and software type.
            sources: the payloads, at least one.
            created_s: creation time, seconds since the epoch.
            software_type: the software component the release updates.
            must_pass_through: devices may not skip this release on the way to a newer one.
            notes: release notes (text or HTML).
            revision: the source revision the release was built from.
            without_sha256: replies give md5 and sha1 only (the sha256 is empty).

        Raises:
            ModelError: a bad version or file name, a duplicate release, or no artifact.
        """
        key = version_key(version)
        if not software_type:
            raise ModelError("a software type cannot be empty")
        if not sources:
            raise ModelError(f"release {version!r} needs at least one artifact")
        project = self.project(project_key)
        if any(r.software_type == software_type and r.version_key == key for r in project.releases):
            raise ModelError(f"project {project_key!r} already has {software_type} release {version!r}")
        for source in sources:
            if not source.hardware_version:
                raise ModelError("an artifact needs a hardware version")
            if source.base_version is not None:
                version_key(source.base_version)
            if source.filename is not None and not SAFE_FILENAME.fullmatch(source.filename):
                raise ModelError(f"artifact file name {source.filename!r} is not a plain file name")
        artifacts = tuple(self._artifact(source, software_type, version, created_s) for source in sources)
        release = Release(
            id=self._next_release_id,
            software_type=software_type,
            version=version,
            revision=revision,
            notes=notes,
            must_pass_through=must_pass_through,
            created_s=created_s,
            artifacts=artifacts,
            without_sha256=without_sha256,
        )
        self._next_release_id += 1
        project.releases.append(release)
        return release

    def activate(
        self,
        project_key: str,
        version: str,
        cohort: str = DEFAULT_COHORT,
        percent: int = 100,
        *,
        software_type: str = DEFAULT_SOFTWARE_TYPE,
    ) -> None:
        """Activate a release in a cohort for `percent` of its devices (raising it keeps the staged ones).

        Raises:
            ModelError: unknown project or release, or a percent outside 0..100.
        """
        if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
            raise ModelError(f"percent must be an integer in 0..100, not {percent!r}")
        release = self._existing(project_key).release(version, software_type)
        self._existing(project_key).cohort(cohort).percent_by_release_id[release.id] = percent

    def deactivate(
        self,
        project_key: str,
        version: str,
        cohort: str = DEFAULT_COHORT,
        *,
        software_type: str = DEFAULT_SOFTWARE_TYPE,
    ) -> None:
        """Abort a release's activation in a cohort (no new device gets it).

        Raises:
            ModelError: unknown project or release.
        """
        project = self._existing(project_key)
        release = project.release(version, software_type)
        project.cohort(cohort).percent_by_release_id.pop(release.id, None)

    def configure_cohort(self, project_key: str, cohort: str, *, allow_downgrade: bool) -> None:
        """Set a cohort's "Disable Version Checking" (offer active releases older than the device)."""
        if not cohort:
            raise ModelError("a cohort name cannot be empty")
        self.project(project_key).cohort(cohort).allow_downgrade = allow_downgrade

    def assign(self, project_key: str, device_serial: str, cohort: str) -> None:
        """Put a device in a cohort (a device is in exactly one)."""
        if not device_serial or not cohort:
            raise ModelError("device serial and cohort cannot be empty")
        project = self.project(project_key)
        project.cohort(cohort)
        project.cohort_by_device[device_serial] = cohort

    def _existing(self, project_key: str) -> Project:
        project = self.projects.get(project_key)
        if project is None:
            raise ModelError(f"no project with key {project_key!r}")
        return project

    def _artifact(
        self, source: ArtifactSource, software_type: str, version: str, created_s: float
    ) -> Artifact:
        if source.filename is not None:
            filename = source.filename
        elif source.base_version is None:
            filename = f"{software_type}-{version}-{source.hardware_version}.bin"
        else:
            filename = (
                f"{software_type}-{source.base_version}-to-{version}-{source.hardware_version}.delta.bin"
            )
        artifact = Artifact(
            id=self._next_artifact_id,
            kind=ArtifactKind.FULL if source.base_version is None else ArtifactKind.DELTA,
            hardware_version=source.hardware_version,
            filename=UNSAFE_FILENAME_CHARS.sub("_", filename),
            content=bytes(source.content),
            created_s=created_s,
            base_version=source.base_version,
        )
        self._next_artifact_id += 1
        self.artifacts_by_id[artifact.id] = artifact
        return artifact
