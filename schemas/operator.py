"""Operator requests to the controller and the controller's replies.

Every request carries a request id that its reply echoes, errors included. A request names its
reply topic as its MQTT v5 response topic, with correlation data: the topic must lie in the
operator's own reply subtree (`ops/reply/<operator>/<request>`, see `schemas.topics`), or the
request is refused on the default reply topic named after its request id and not acted on.
When the controller requires signed requests, `key_id` and `signature` carry an Ed25519 signature
over the request encoded with both fields empty (see `signing_payload`); the signed bytes include
`issued_at`, so a captured request expires.
"""

import enum
from datetime import datetime
from typing import Annotated

import msgspec

from schemas.ids import DeviceSerialField, RequestIdField, RolloutIdField, ShortText
from schemas.rollout import RolloutSpec

Signature = Annotated[str, msgspec.Meta(max_length=256, pattern=r"^[A-Za-z0-9+/=_-]*$")]


class _Request(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="op"):
    """Fields every operator request has."""

    request_id: RequestIdField
    operator: ShortText = ""
    key_id: ShortText = ""
    signature: Signature = ""
    issued_at: Annotated[datetime, msgspec.Meta(tz=True)] | None = None
    """When the request was signed; required (and checked against the controller's clock) when
    the controller requires signatures."""


class CreateRollout(_Request, frozen=True, kw_only=True, tag="create"):
    """Create a rollout (it is planned but not started)."""

    rollout_id: RolloutIdField
    spec: RolloutSpec


class PreviewRollout(_Request, frozen=True, kw_only=True, tag="preview"):
    """Publish (again) the rollout's plan: devices per wave, gateway per device, exclusions, ETA."""

    rollout_id: RolloutIdField


class StartRollout(_Request, frozen=True, kw_only=True, tag="start"):
    """Start a rollout, approving the plan with this id (a stale plan id is rejected)."""

    rollout_id: RolloutIdField
    plan_id: ShortText


class PauseRollout(_Request, frozen=True, kw_only=True, tag="pause"):
    """Stop starting new jobs; jobs in flight finish."""

    rollout_id: RolloutIdField
    reason: ShortText = ""


class ResumeRollout(_Request, frozen=True, kw_only=True, tag="resume"):
    """Resume a paused rollout."""

    rollout_id: RolloutIdField


class AbortRollout(_Request, frozen=True, kw_only=True, tag="abort"):
    """Abort: no new jobs, queued jobs canceled; devices already updated stay updated."""

    rollout_id: RolloutIdField
    reason: ShortText = ""


class CancelDevice(_Request, frozen=True, kw_only=True, tag="cancel_device"):
    """Take one device out of a rollout (its running job is canceled)."""

    rollout_id: RolloutIdField
    device_serial: DeviceSerialField


class RetryFailed(_Request, frozen=True, kw_only=True, tag="retry_failed"):
    """Give failed devices (all, or the listed ones) a fresh attempt budget."""

    rollout_id: RolloutIdField
    device_serials: Annotated[list[DeviceSerialField], msgspec.Meta(max_length=100_000)] = msgspec.field(
        default_factory=list
    )


class AcceptKeyChange(_Request, frozen=True, kw_only=True, tag="accept_key_change"):
    """Accept a known device's new Memfault project key (an override: the `admin` role).

    The controller refuses a project key that differs from the one it holds for a device and keeps
    it pending; this names the pending key by its fingerprint (as in the refusal's audit line), so
    a key that changed again after the operator looked is not accepted.
    """

    device_serial: DeviceSerialField
    fingerprint: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{16}$")]


OperatorRequest = (
    CreateRollout
    | PreviewRollout
    | StartRollout
    | PauseRollout
    | ResumeRollout
    | AbortRollout
    | CancelDevice
    | RetryFailed
    | AcceptKeyChange
)
"""Every request an operator may publish on the request topic."""


class ReplyStatus(enum.StrEnum):
    """Whether the controller accepted a request."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"


class OperatorReply(msgspec.Struct, frozen=True, kw_only=True):
    """The controller's answer to one operator request."""

    request_id: ShortText
    """The request's id, or "" when the request was too malformed to carry one."""
    op: ShortText = ""
    status: ReplyStatus
    reason: ShortText = ""
    """Machine-readable reason when rejected (e.g. `invalid_payload`, `unknown_rollout`)."""
    message: ShortText = ""
    rollout_id: ShortText = ""


def signing_payload(request: OperatorRequest) -> bytes:
    """Return the bytes an operator signs: the request as JSON with `key_id` and `signature` empty.

    Every other field is signed, `request_id`, `operator` and `issued_at` included.

    The request is normalised through one JSON round trip first, so a value built in Python (an
    int where the field is a float) signs the same as the value the controller decodes.
    """
    unsigned = msgspec.structs.replace(request, key_id="", signature="")
    normalised = msgspec.json.decode(msgspec.json.encode(unsigned), type=type(unsigned))
    return msgspec.json.encode(normalised, order="sorted")
