"""OTA jobs: commands from the controller to a gateway, and the gateway's progress and results.

A job is one attempt to bring one device to one release through one gateway. Its id is the agent's
idempotency key: a command whose job id was seen before is answered with the job's current state
and never run twice.
"""

import enum
from datetime import datetime
from typing import Annotated

import msgspec

from schemas.ids import (
    DeviceSerialField,
    Epoch,
    GatewayIdField,
    JobIdField,
    LongText,
    Md5Hex,
    RolloutIdField,
    Sha1Hex,
    Sha256Hex,
    ShortText,
    Version,
)

SizeBytes = Annotated[int, msgspec.Meta(ge=1, le=64 * 1024 * 1024, description="Artifact size in bytes.")]
Url = Annotated[str, msgspec.Meta(min_length=8, max_length=2048, pattern=r"^https?://[^\s]+$")]


class Artifact(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """The firmware file to install, as resolved from Memfault right before dispatch.

    The agent verifies every digest given before any byte reaches a device: sha256 when Memfault
    supplies it, otherwise md5 (and sha1). At least one of sha256 and md5 is present; a command
    with sha256 only encodes as before, so agents that predate md5 keep working.
    """

    url: Url
    size_bytes: SizeBytes
    sha256: Sha256Hex | None = None
    md5: Md5Hex | None = None
    sha1: Sha1Hex | None = None


class OtaCommand(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="ota", tag_field="kind"
):
    """Update one device: download, verify, upload, test-boot, verify, confirm, report."""

    job_id: JobIdField
    rollout_id: RolloutIdField | None = None
    device_serial: DeviceSerialField
    attempt: Annotated[int, msgspec.Meta(ge=1, le=100)] = 1
    issued_at: datetime
    deadline: datetime
    """The agent refuses the command after this instant and abandons the job when it passes."""
    artifact: Artifact
    target_version: Version
    expected_current_version: Version | None = None
    """When set, the device must be running this version or the command is rejected."""
    allow_downgrade: bool = False
    """Upgrade or downgrade flag: when False the agent sets SMP `upgrade` and refuses older images."""
    controller_epoch: Epoch = 0
    """Epoch of the controller leadership that issued it; an agent ignores older epochs than seen."""


class CancelJob(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="cancel", tag_field="kind"
):
    """Cancel a queued or running job (a running upload stops before the test-boot step)."""

    job_id: JobIdField
    reason: ShortText = ""
    controller_epoch: Epoch = 0


class RebirthRequest(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="rebirth", tag_field="kind"
):
    """Ask the gateway to republish its birth and its whole inventory (a gap or a fresh controller)."""

    reason: ShortText = ""


GatewayCommand = OtaCommand | CancelJob | RebirthRequest
"""Everything the controller may send on a gateway's command topic."""


class JobPhase(enum.StrEnum):
    """Where a running job is."""

    QUEUED = "queued"
    DOWNLOADING = "downloading"
    UPLOADING = "uploading"
    TESTING = "testing"
    REBOOTING = "rebooting"
    VERIFYING = "verifying"
    CONFIRMING = "confirming"


class JobOutcome(enum.StrEnum):
    """How a job ended."""

    SUCCEEDED = "succeeded"
    """Confirmed on the target version: the only outcome that counts as success."""
    REJECTED = "rejected"
    """Refused before touching the device, or refused by it; retrying the same job cannot help."""
    FAILED = "failed"
    """Something went wrong that another attempt may fix (see `retryable`)."""
    TIMED_OUT = "timed_out"
    """The deadline passed before the job finished."""
    REVERTED = "reverted"
    """The new image did not come up: MCUboot booted the old one again. Never retried."""
    CANCELED = "canceled"


class ReasonCode(enum.StrEnum):
    """Machine-readable reason for a job outcome."""

    OK = "ok"
    DUPLICATE_JOB = "duplicate_job"
    EXPIRED = "expired"
    UNKNOWN_DEVICE = "unknown_device"
    WRONG_CURRENT_VERSION = "wrong_current_version"
    DOWNGRADE_REFUSED = "downgrade_refused"
    ALREADY_ON_TARGET = "already_on_target"
    ACCESS_DENIED = "access_denied"
    INVALID_COMMAND = "invalid_command"
    URL_NOT_ALLOWED = "url_not_allowed"
    DOWNLOAD_FAILED = "download_failed"
    ARTIFACT_TOO_LARGE = "artifact_too_large"
    SIZE_MISMATCH = "size_mismatch"
    HASH_MISMATCH = "hash_mismatch"
    BAD_IMAGE = "bad_image"
    VERSION_MISMATCH = "version_mismatch"
    DEVICE_UNREACHABLE = "device_unreachable"
    UPLOAD_FAILED = "upload_failed"
    DEVICE_ERROR = "device_error"
    TEST_FAILED = "test_failed"
    REBOOT_TIMEOUT = "reboot_timeout"
    REVERTED = "reverted"
    VERIFY_FAILED = "verify_failed"
    CONFIRM_FAILED = "confirm_failed"
    DEADLINE_PASSED = "deadline_passed"
    CANCELED = "canceled"
    GATEWAY_BUSY = "gateway_busy"
    """Load shedding: the queue is full. Never consumes an attempt."""
    INTERNAL_ERROR = "internal_error"
    AGENT_ERROR = "agent_error"
    """The agent hit a bug of its own; retryable, and counted so it gets noticed."""


class JobProgress(msgspec.Struct, frozen=True, kw_only=True):
    """Progress of a running job (QoS 0, at most one a second per job)."""

    gateway_id: GatewayIdField
    job_id: JobIdField
    device_serial: DeviceSerialField
    phase: JobPhase
    rollout_id: RolloutIdField | None = None
    """The rollout of the command (echoed so the controller routes without a lookup; None from old agents)."""
    bytes_done: Annotated[int, msgspec.Meta(ge=0)] = 0
    bytes_total: Annotated[int, msgspec.Meta(ge=0)] = 0
    seq: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Per-job sequence, so readers drop progress that arrives out of order."""
    at: datetime


class JobResult(msgspec.Struct, frozen=True, kw_only=True):
    """The end of a job (QoS 1, kept in the agent's outbox until the broker acknowledged it)."""

    gateway_id: GatewayIdField
    job_id: JobIdField
    device_serial: DeviceSerialField
    rollout_id: RolloutIdField | None = None
    """The rollout of the command (echoed so the controller routes without a lookup; None from old agents)."""
    attempt: int = 1
    outcome: JobOutcome
    reason: ReasonCode
    retryable: bool
    detail: LongText = ""
    running_version: ShortText = ""
    """The version the device runs after the job, when known."""
    old_image_running: bool | None = None
    """After a failed test boot: True when the device answered on its previous confirmed image
    (MCUboot reverted), None when it never answered (reboot_timeout: it may run the unconfirmed test
    image until its next reset)."""
    uploads: Annotated[int, msgspec.Meta(ge=0)] = 0
    """How many times an image was written to the device for this job (never more than one flash)."""
    finished_at: datetime
