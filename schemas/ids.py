"""Identifier types that appear in topics and payloads, with the constraints that keep topics safe.

An id that is a topic level must not contain `/`, the wildcards `+` and `#`, control characters
or white space, must not start with `$` (reserved for broker topics) and is bounded in length, so
that a hostile id can neither escape its subtree nor match someone else's ACL pattern.
"""

import re
from typing import Annotated, Final, NewType

import msgspec

ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$"
"""Allowed id spelling: ASCII letters, digits and `._:@-`, starting with a letter or digit."""

ID_MAX_LENGTH: Final = 64
SERIAL_MAX_LENGTH: Final = 128
_ID_RE: Final = re.compile(ID_PATTERN)

GatewayId = NewType("GatewayId", str)
"""A gateway's id; equals its MQTT username so that `%u` ACL patterns confine it."""
DeviceSerial = NewType("DeviceSerial", str)
"""A device's Memfault `device_serial` (group 128, command 0)."""
RolloutId = NewType("RolloutId", str)
"""An operator-chosen or generated rollout id."""
JobId = NewType("JobId", str)
"""One attempt to update one device; the agent's idempotency key."""
RequestId = NewType("RequestId", str)
"""An operator request id, echoed in its reply."""
ControllerId = NewType("ControllerId", str)
"""One controller process (replica)."""

GatewayIdField = Annotated[
    GatewayId,
    msgspec.Meta(pattern=ID_PATTERN, min_length=1, max_length=ID_MAX_LENGTH, description="Gateway id."),
]
DeviceSerialField = Annotated[
    DeviceSerial,
    msgspec.Meta(
        pattern=ID_PATTERN, min_length=1, max_length=SERIAL_MAX_LENGTH, description="Memfault device serial."
    ),
]
RolloutIdField = Annotated[
    RolloutId,
    msgspec.Meta(pattern=ID_PATTERN, min_length=1, max_length=ID_MAX_LENGTH, description="Rollout id."),
]
JobIdField = Annotated[
    JobId, msgspec.Meta(pattern=ID_PATTERN, min_length=1, max_length=ID_MAX_LENGTH, description="Job id.")
]
RequestIdField = Annotated[
    RequestId,
    msgspec.Meta(pattern=ID_PATTERN, min_length=1, max_length=ID_MAX_LENGTH, description="Request id."),
]
ControllerIdField = Annotated[
    ControllerId,
    msgspec.Meta(pattern=ID_PATTERN, min_length=1, max_length=ID_MAX_LENGTH, description="Controller id."),
]

Sha256Hex = Annotated[
    str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$", description="SHA-256 digest, 64 lowercase hex digits.")
]
Md5Hex = Annotated[
    str, msgspec.Meta(pattern=r"^[0-9a-f]{32}$", description="MD5 digest, 32 lowercase hex digits.")
]
Sha1Hex = Annotated[
    str, msgspec.Meta(pattern=r"^[0-9a-f]{40}$", description="SHA-1 digest, 40 lowercase hex digits.")
]
Version = Annotated[
    str,
    msgspec.Meta(
        min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9.+_-]*$", description="Software version."
    ),
]
ShortText = Annotated[str, msgspec.Meta(max_length=256)]
LongText = Annotated[str, msgspec.Meta(max_length=4096)]
Epoch = Annotated[int, msgspec.Meta(ge=0, description="Session epoch: grows with every new session.")]
Sequence = Annotated[int, msgspec.Meta(ge=0, description="Per-session message sequence number.")]


def is_valid_id(value: str, max_length: int = ID_MAX_LENGTH) -> bool:
    """Tell whether `value` may be used as an id and a topic level."""
    return 0 < len(value) <= max_length and _ID_RE.fullmatch(value) is not None
