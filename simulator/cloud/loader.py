"""Loads projects, cohorts, devices, releases and artifact files from a directory's `cloud.toml`.

An example (artifact paths are relative to the directory and may not leave it)::

    [[projects]]
    key = "demo-project-key"
    hardware_versions = ["nrf54l15dk"]        # optional: known before any release names them
    devices = { "SIM-0001" = "canary" }       # device serial -> cohort (others: "default")
    cohorts = { canary = { allow_downgrade = false } }

    [[projects.releases]]
    version = "1.1.0"
    software_type = "app"                     # optional, default "app"
    must_pass_through = false
    notes = "Faster advertising"
    created_date = 2026-01-01T00:00:00Z       # optional, default: load time
    artifacts = [
        { hardware_version = "nrf54l15dk", file = "images/app-1.1.0.bin" },
        { hardware_version = "nrf54l15dk", file = "images/1.0.0-to-1.1.0.bin", delta_from = "1.0.0" },
    ]
    activations = [{ cohort = "canary", percent = 100 }, { cohort = "default", percent = 25 }]
"""

import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Final

import msgspec

from simulator.cloud.errors import CloudConfigError, ModelError
from simulator.cloud.model import DEFAULT_COHORT, DEFAULT_SOFTWARE_TYPE, CloudModel
from simulator.cloud.releases import ArtifactSource

CONFIG_FILENAME: Final = "cloud.toml"
MAX_ARTIFACT_BYTES: Final = 64 * 1024 * 1024


class ArtifactEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One artifact file of a release."""

    hardware_version: str
    file: str
    delta_from: str | None = None
    filename: str | None = None
    """The download file name (default: the file's own name)."""


class ActivationEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A release's activation in one cohort."""

    cohort: str = DEFAULT_COHORT
    percent: Annotated[int, msgspec.Meta(ge=0, le=100)] = 100


class ReleaseEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One release and its artifacts and activations."""

    version: str
    artifacts: list[ArtifactEntry]
    software_type: str = DEFAULT_SOFTWARE_TYPE
    revision: str = ""
    notes: str = ""
    must_pass_through: bool = False
    created_date: datetime | None = None
    activations: list[ActivationEntry] = []


class CohortEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Settings of one cohort."""

    allow_downgrade: bool = False


class ProjectEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One project, by project key."""

    key: str
    auto_register: bool = True
    hardware_versions: list[str] = []
    software_types: list[str] = []
    cohorts: dict[str, CohortEntry] = {}
    devices: dict[str, str] = {}
    releases: list[ReleaseEntry] = []


class CloudFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The whole `cloud.toml`."""

    projects: list[ProjectEntry]


def load_directory(directory: Path, *, now_s: float, model: CloudModel | None = None) -> CloudModel:
    """Read `directory/cloud.toml` and its artifact files into a model (a new one unless given).

    Args:
        directory: the directory holding `cloud.toml` and the artifact files.
        now_s: the creation time of releases without a `created_date`, seconds since the epoch.
        model: the model to add to.

    Raises:
        CloudConfigError: the file is missing or malformed, names a missing file or breaks a model rule.
    """
    config_path = directory / CONFIG_FILENAME
    try:
        with config_path.open("rb") as source:
            config = msgspec.convert(tomllib.load(source), CloudFile)
    except (OSError, tomllib.TOMLDecodeError, msgspec.ValidationError) as error:
        raise CloudConfigError(f"{config_path}: {error}") from None
    target = model if model is not None else CloudModel()
    for project in config.projects:
        try:
            _load_project(directory, project, target, now_s)
        except ModelError as error:
            raise CloudConfigError(f"{config_path}: project {project.key!r}: {error}") from None
    return target


def _load_project(directory: Path, entry: ProjectEntry, model: CloudModel, now_s: float) -> None:
    model.add_project(
        entry.key,
        auto_register=entry.auto_register,
        hardware_versions=entry.hardware_versions,
        software_types=entry.software_types,
    )
    for name, cohort in entry.cohorts.items():
        model.configure_cohort(entry.key, name, allow_downgrade=cohort.allow_downgrade)
    for serial, cohort_name in entry.devices.items():
        model.assign(entry.key, serial, cohort_name)
    for release in entry.releases:
        sources = [
            ArtifactSource(
                hardware_version=artifact.hardware_version,
                content=_read_artifact(directory, artifact.file),
                base_version=artifact.delta_from,
                filename=artifact.filename or Path(artifact.file).name,
            )
            for artifact in release.artifacts
        ]
        model.add_release(
            entry.key,
            release.version,
            sources,
            created_s=_epoch_s(release.created_date, now_s),
            software_type=release.software_type,
            must_pass_through=release.must_pass_through,
            notes=release.notes,
            revision=release.revision,
        )
        for activation in release.activations:
            model.activate(
                entry.key,
                release.version,
                activation.cohort,
                activation.percent,
                software_type=release.software_type,
            )


def _read_artifact(directory: Path, relative: str) -> bytes:
    root = directory.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise ModelError(f"artifact file {relative!r} is outside {directory}")
    try:
        with path.open("rb") as source:
            content = source.read(MAX_ARTIFACT_BYTES + 1)
    except OSError as error:
        raise ModelError(f"artifact file {relative!r}: {error.strerror}") from None
    if len(content) > MAX_ARTIFACT_BYTES:
        raise ModelError(f"artifact file {relative!r} is larger than {MAX_ARTIFACT_BYTES} bytes")
    return content


def _epoch_s(created: datetime | None, default_s: float) -> float:
    if created is None:
        return default_s
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return created.timestamp()
