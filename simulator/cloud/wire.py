"""The Memfault release API's wire shapes: query parsing, the release JSON and error bodies (pure)."""

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Final

import msgspec

from simulator.cloud.decision import DeviceQuery, Offer, Refusal
from simulator.cloud.releases import Artifact, ArtifactKind
from simulator.cloud.versions import is_version

REQUIRED_PARAMETERS: Final = ("device_serial", "hardware_version", "software_type")
OPTIONAL_PARAMETERS: Final = ("current_version",)
MAX_PARAMETER_CHARS: Final = 128
ARTIFACT_TYPE: Final = "firmware"
DELTA_ARTIFACT_TYPE: Final = "delta"


class ArtifactReply(msgspec.Struct, frozen=True):
    """One artifact of a release reply (every field is required by Nordic's iOS decoder)."""

    id: int
    created_date: str
    type: str
    hardware_version: str
    filename: str
    file_size: int
    url: str
    md5: str
    sha1: str
    sha256: str


class ReleaseReply(msgspec.Struct, frozen=True):
    """The 200 body of `GET /api/v0/releases/latest` (protocol.md section 6.1)."""

    id: int
    created_date: str
    version: str
    revision: str
    must_pass_through: bool
    notes: str
    reason: str
    is_delta: bool
    artifacts: list[ArtifactReply]


class ErrorDetail(msgspec.Struct, frozen=True):
    """The inside of an error body."""

    message: str


class ErrorReply(msgspec.Struct, frozen=True):
    """An error body: `{"error": {"message": ...}}`."""

    error: ErrorDetail


JSON_ENCODER: Final = msgspec.json.Encoder()


def parse_device_query(parameters: Mapping[str, Sequence[str]]) -> DeviceQuery | Refusal:
    """The device query of a latest-release request, or the HTTP 400 that its parameters earn.

    Args:
        parameters: every value of every query parameter, by name.
    """
    values: dict[str, str] = {}
    for name in (*REQUIRED_PARAMETERS, *OPTIONAL_PARAMETERS):
        given = parameters.get(name, ())
        if len(given) > 1:
            return _bad(f"Parameter {name} given more than once")
        value = given[0] if given else ""
        if not value and name in REQUIRED_PARAMETERS:
            return _bad(f"Missing required parameter {name}")
        if len(value) > MAX_PARAMETER_CHARS or not value.isprintable():
            return _bad(f"Invalid value for parameter {name}")
        values[name] = value
    current_version = values["current_version"]
    if current_version and not is_version(current_version):
        return _bad(f"Invalid current_version {current_version!r}")
    return DeviceQuery(
        device_serial=values["device_serial"],
        hardware_version=values["hardware_version"],
        software_type=values["software_type"],
        current_version=current_version,
    )


def release_reply(
    offer: Offer, artifact_url: str, full_image: tuple[Artifact, str] | None = None
) -> ReleaseReply:
    """The release JSON for an offer: first the artifact the device should download.

    For a delta, `full_image` (the release's whole image for the hardware, with its URL) follows,
    so a client that cannot apply patches can take the whole image (type `firmware`; the patch is
    type `delta`).
    """
    release = offer.release
    listed = [(offer.artifact, artifact_url)]
    if offer.is_delta and full_image is not None:
        listed.append(full_image)
    return ReleaseReply(
        id=release.id,
        created_date=iso_date(release.created_s),
        version=release.version,
        revision=release.revision,
        must_pass_through=release.must_pass_through,
        notes=release.notes,
        reason=offer.reason.value,
        is_delta=offer.is_delta,
        artifacts=[
            ArtifactReply(
                id=artifact.id,
                created_date=iso_date(artifact.created_s),
                type=DELTA_ARTIFACT_TYPE if artifact.kind is ArtifactKind.DELTA else ARTIFACT_TYPE,
                hardware_version=artifact.hardware_version,
                filename=artifact.filename,
                file_size=artifact.size_bytes,
                url=url,
                md5=artifact.md5,
                sha1=artifact.sha1,
                sha256="" if release.without_sha256 else artifact.sha256,
            )
            for artifact, url in listed
        ],
    )


def error_body(message: str) -> bytes:
    """A JSON error body with this message."""
    return JSON_ENCODER.encode(ErrorReply(ErrorDetail(message)))


def iso_date(epoch_s: float) -> str:
    """ISO-8601 with microseconds and offset, as Memfault writes dates: `2026-01-01T00:00:00.000000+00:00`."""
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="microseconds")


def _bad(message: str) -> Refusal:
    return Refusal(HTTPStatus.BAD_REQUEST, message)
