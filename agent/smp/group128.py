"""The Memfault MCUmgr command group (SMP group 128): device info and project key.

The agent's tolerant decoding of replies (extra fields ignored, legacy `rc: 0` accepted, both error
shapes understood) and its two requests. The `smp`-library classes for the same commands, which
only tests use against the simulator and smpmgr, live in `tests/simulator/clients.py`.
"""

import enum
from dataclasses import dataclass
from typing import Any, Final

from agent.errors import SmpDeviceError, SmpRemoteError
from agent.smp.frame import Group, McumgrErr, Op, encode_request
from schemas import MemfaultAccess

DEVICE_INFO_COMMAND: Final = 0
PROJECT_KEY_COMMAND: Final = 1
DEVICE_INFO_FIELDS: Final = ("device_serial", "hardware_version", "software_type", "current_version")


class MemfaultRc(enum.IntEnum):
    """Group 128's own return codes (`enum memfault_mgmt_err_code_t`)."""

    OK = 0
    UNKNOWN = 1
    NO_PROJECT_KEY = 2


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """Group 128 command 0: what the Memfault SDK says about the device."""

    device_serial: str
    hardware_version: str
    software_type: str
    current_version: str


def encode_device_info_read(sequence: int, *, version: int = 1) -> bytes:
    """Encode a device-info read (an empty map) with the given sequence number."""
    return encode_request(Op.READ, Group.MEMFAULT, DEVICE_INFO_COMMAND, sequence, {}, version=version)


def encode_project_key_read(sequence: int, *, version: int = 1) -> bytes:
    """Encode a project-key read (an empty map) with the given sequence number."""
    return encode_request(Op.READ, Group.MEMFAULT, PROJECT_KEY_COMMAND, sequence, {}, version=version)


def parse_device_info(body: dict[str, Any]) -> DeviceInfo:
    """Build a DeviceInfo from a success body; unknown fields are ignored.

    Raises:
        SmpRemoteError: a field is missing or not text.
    """
    values = {}
    for name in DEVICE_INFO_FIELDS:
        value = body.get(name)
        if not isinstance(value, str):
            raise SmpRemoteError(f"device info field {name} missing or not text: {value!r}")
        values[name] = value
    return DeviceInfo(**values)


def parse_project_key(body: dict[str, Any]) -> str:
    """Return the project key from a success body.

    Raises:
        SmpRemoteError: the key is missing or not text.
    """
    key = body.get("project_key")
    if not isinstance(key, str):
        raise SmpRemoteError(f"project_key missing or not text: {key!r}")
    return key


def classify_error(error: SmpDeviceError) -> MemfaultAccess:
    """Map a group-128 error to what the device report says about Memfault access."""
    if not error.group_error:
        if error.rc == McumgrErr.ENOTSUP:
            return MemfaultAccess.NO_GROUP
        if error.rc == McumgrErr.EACCESSDENIED:
            return MemfaultAccess.ACCESS_DENIED
        if error.rc == McumgrErr.ENOENT:
            # What a v1 request gets for NO_PROJECT_KEY through the original-protocol translation.
            return MemfaultAccess.NO_PROJECT_KEY
        return MemfaultAccess.ERROR
    if error.group == Group.MEMFAULT and error.rc == MemfaultRc.NO_PROJECT_KEY:
        return MemfaultAccess.NO_PROJECT_KEY
    return MemfaultAccess.ERROR
