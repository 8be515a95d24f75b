"""The Memfault MCUmgr command group (SMP group 128): device info and project key.

Two faces of the same definitions:
- `parse_device_info` / `parse_project_key` / `classify_error`: the agent's tolerant decoding of
  replies (extra fields ignored, legacy `rc: 0` accepted, both error shapes understood).
- `DeviceInfoRead` / `ProjectKeyRead`: request/response/error classes in the `smp` library's style
  (like Memfault's own smpmgr plugin, but tolerant), so `smpclient.SMPClient.request()` works with
  them unchanged.
"""

import enum
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import smp.error as smperr
import smp.message as smpmsg
from pydantic import ConfigDict

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


# smp-library classes (for smpclient.SMPClient.request); tolerant where smp's defaults are strict.

_TOLERANT: Final = ConfigDict(extra="ignore", frozen=True)


class MemfaultErrorV1(smperr.ErrorV1):
    """A plain `rc` error from group 128 (any integer code accepted)."""

    model_config = _TOLERANT
    _GROUP_ID: ClassVar[int] = Group.MEMFAULT
    rc: int  # type: ignore[assignment]  # smp narrows rc to MGMT_ERR; devices send others


class MemfaultErrorV2(smperr.ErrorV2[MemfaultRc]):
    """An SMP v2 group error from group 128."""

    model_config = _TOLERANT
    _GROUP_ID: ClassVar[int] = Group.MEMFAULT


class DeviceInfoReadResponse(smpmsg.ReadResponse):
    """Success reply to group 128 command 0."""

    model_config = _TOLERANT
    _GROUP_ID: ClassVar[int] = Group.MEMFAULT
    _COMMAND_ID: ClassVar[int] = DEVICE_INFO_COMMAND
    device_serial: str
    hardware_version: str
    software_type: str
    current_version: str
    rc: int | None = None


class DeviceInfoRead(smpmsg.ReadRequest):
    """Read the device info (group 128 command 0)."""

    _GROUP_ID: ClassVar[int] = Group.MEMFAULT
    _COMMAND_ID: ClassVar[int] = DEVICE_INFO_COMMAND
    _Response: ClassVar[type[DeviceInfoReadResponse]] = DeviceInfoReadResponse
    _ErrorV1: ClassVar[type[MemfaultErrorV1]] = MemfaultErrorV1
    _ErrorV2: ClassVar[type[MemfaultErrorV2]] = MemfaultErrorV2


class ProjectKeyReadResponse(smpmsg.ReadResponse):
    """Success reply to group 128 command 1."""

    model_config = _TOLERANT
    _GROUP_ID: ClassVar[int] = Group.MEMFAULT
    _COMMAND_ID: ClassVar[int] = PROJECT_KEY_COMMAND
    project_key: str
    rc: int | None = None


class ProjectKeyRead(smpmsg.ReadRequest):
    """Read the Memfault project key (group 128 command 1)."""

    _GROUP_ID: ClassVar[int] = Group.MEMFAULT
    _COMMAND_ID: ClassVar[int] = PROJECT_KEY_COMMAND
    _Response: ClassVar[type[ProjectKeyReadResponse]] = ProjectKeyReadResponse
    _ErrorV1: ClassVar[type[MemfaultErrorV1]] = MemfaultErrorV1
    _ErrorV2: ClassVar[type[MemfaultErrorV2]] = MemfaultErrorV2
