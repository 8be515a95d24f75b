"""What the controller believes from a gateway: pure rules, no I/O (ingest and coordinator apply them).

A gateway is authenticated by its topic (the broker ACL lets it publish only under its own
`gw/<id>/...` subtree), never by the ids written in its payloads. So:

- a job result or progress counts only when it arrives on the topic of the gateway the job was
  dispatched to, and names that same gateway;
- a credential (a device's Memfault project key) is accepted from any gateway that hears the
  device, but only for a project on the fleet's allow-list, only when its fingerprint matches the
  key, and, for a device whose key is already known, never as a different key unless an operator
  accepts the change (the key decides which firmware the device is offered).

Refusals are counted by `(kind, reason)`; every label set is known up front (`REFUSAL_LABELS`).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Collection
from typing import Final

FINGERPRINT_HEX_DIGITS: Final = 16


class RefusalReason(enum.StrEnum):
    """Why a gateway's message was not believed."""

    TOPIC_MISMATCH = "topic_mismatch"
    """The payload names another gateway than the topic it was published on."""
    FOREIGN_JOB = "foreign_job"
    """The job was dispatched to another gateway."""
    BAD_FINGERPRINT = "bad_fingerprint"
    """The credential's fingerprint is not the fingerprint of its key."""
    PROJECT_NOT_ALLOWED = "project_not_allowed"
    """The project key is not on the fleet's allow-list."""
    PROJECT_KEY_CHANGED = "project_key_changed"
    """A known device presents another project key; it waits for an operator."""


class RefusedKind(enum.StrEnum):
    """The gateway messages that can be refused (the `kind` label)."""

    JOB_RESULT = "job_result"
    JOB_PROGRESS = "job_progress"
    DEVICE_CREDENTIAL = "device_credential"
    DEVICE_REPORT = "device_report"


REFUSAL_LABELS: Final[tuple[tuple[str, str], ...]] = tuple(
    (kind.value, reason.value)
    for kind, reasons in (
        (RefusedKind.JOB_RESULT, (RefusalReason.TOPIC_MISMATCH, RefusalReason.FOREIGN_JOB)),
        (RefusedKind.JOB_PROGRESS, (RefusalReason.TOPIC_MISMATCH, RefusalReason.FOREIGN_JOB)),
        (RefusedKind.DEVICE_REPORT, (RefusalReason.TOPIC_MISMATCH,)),
        (
            RefusedKind.DEVICE_CREDENTIAL,
            (
                RefusalReason.TOPIC_MISMATCH,
                RefusalReason.BAD_FINGERPRINT,
                RefusalReason.PROJECT_NOT_ALLOWED,
                RefusalReason.PROJECT_KEY_CHANGED,
            ),
        ),
    )
    for reason in reasons
)
"""Every (kind, reason) a refusal counter can carry, so each starts at 0."""


def key_fingerprint(project_key: str) -> str:
    """The fingerprint reports carry: the first 16 hex digits of sha256(project key)."""
    return hashlib.sha256(project_key.encode()).hexdigest()[:FINGERPRINT_HEX_DIGITS]


def job_event_refusal(sender: str, claimed: str, dispatched_to: str | None) -> RefusalReason | None:
    """Why a job result or progress is not believed (None: it counts).

    Args:
        sender: the gateway whose topic carried the message (what the broker ACL vouches for).
        claimed: the gateway id written in the payload.
        dispatched_to: the gateway the job was dispatched to, or None when no rollout knows the job
            (then nothing acts on it anyway: stale, duplicate or unknown).
    """
    if claimed != sender:
        return RefusalReason.TOPIC_MISMATCH
    if dispatched_to is not None and dispatched_to != sender:
        return RefusalReason.FOREIGN_JOB
    return None


def credential_refusal(
    *,
    sender: str,
    claimed: str,
    project_key: str,
    fingerprint: str,
    known_key: str | None,
    allowed_keys: Collection[str],
) -> RefusalReason | None:
    """Why a credential is not saved as the device's key (None: save it).

    Args:
        sender: the gateway whose topic carried the credential.
        claimed: the gateway id written in the payload.
        project_key: the key presented.
        fingerprint: the fingerprint presented with it.
        known_key: the key the controller already holds for this device, if any.
        allowed_keys: the fleet's projects; empty means any project is accepted.
    """
    if claimed != sender:
        return RefusalReason.TOPIC_MISMATCH
    if fingerprint != key_fingerprint(project_key):
        return RefusalReason.BAD_FINGERPRINT
    if allowed_keys and project_key not in allowed_keys:
        return RefusalReason.PROJECT_NOT_ALLOWED
    if known_key is not None and known_key != project_key:
        return RefusalReason.PROJECT_KEY_CHANGED
    return None
