"""The Memfault MCUmgr group (128): device info and project key, with the SDK's failure modes.

Rules (memfault/memfault-firmware-sdk:ports/zephyr/common/memfault_mcumgr.c): both commands are
read-only and read no request field. Device info writes `device_serial`, `hardware_version`,
`software_type`, `current_version` in that order (a missing string is `""`). A missing or empty
project key is group error 2 (v1: rc 5); a denying access callback is plain rc 11 for both.
"""

from dataclasses import dataclass
from enum import StrEnum

from simulator.device.codes import Group, MemfaultCommand, MemfaultErr, MgmtErr, Op
from simulator.device.replies import GroupError, MgmtError, Ok, Reply


class MemfaultMode(StrEnum):
    """How a device's Memfault group behaves."""

    NORMAL = "normal"
    NO_PROJECT_KEY = "no_project_key"
    """Built with the run-time key option: the group never has a key (group error 2)."""
    ACCESS_DENIED = "access_denied"
    """The application's access callback refuses: rc 11 for both commands."""
    GROUP_ABSENT = "group_absent"
    """CONFIG_MEMFAULT_MCUMGR_GRP=n: the whole group is rc 8."""
    EMPTY_STRINGS = "empty_strings"
    """`memfault_platform_get_device_info()` leaves every string NULL, sent as `""`."""


@dataclass(frozen=True, slots=True)
class MemfaultDeviceInfo:
    """`sMemfaultDeviceInfo` (its `software_version` is sent as `current_version`)."""

    device_serial: str
    hardware_version: str
    software_type: str
    current_version: str


def handle_memfault(  # noqa: PLR0911 - one return per SDK path
    command_id: int, op: int, *, info: MemfaultDeviceInfo, project_key: str, mode: MemfaultMode
) -> Reply | None:
    """Handle one group 128 request; None when there is no handler (the caller answers rc 8)."""
    if mode is MemfaultMode.GROUP_ABSENT or op != Op.READ:
        return None
    match command_id:
        case MemfaultCommand.DEVICE_INFO:
            if mode is MemfaultMode.ACCESS_DENIED:
                return MgmtError(MgmtErr.EACCESSDENIED)
            if mode is MemfaultMode.EMPTY_STRINGS:
                info = MemfaultDeviceInfo("", "", "", "")
            return Ok(
                {
                    "device_serial": info.device_serial,
                    "hardware_version": info.hardware_version,
                    "software_type": info.software_type,
                    "current_version": info.current_version,
                }
            )
        case MemfaultCommand.PROJECT_KEY:
            if mode is MemfaultMode.ACCESS_DENIED:
                return MgmtError(MgmtErr.EACCESSDENIED)
            if mode is MemfaultMode.NO_PROJECT_KEY or not project_key:
                return GroupError(Group.MEMFAULT, MemfaultErr.NO_PROJECT_KEY)
            return Ok({"project_key": project_key})
    return None
