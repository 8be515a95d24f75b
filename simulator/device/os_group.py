"""OS management (group 0): echo, reset, MCUmgr parameters and bootloader information.

Rules (zephyrproject-rtos/zephyr:subsys/mgmt/mcumgr/grp/os_mgmt/src/os_mgmt.c): echo answers `d`
as `r` for reads and writes; reset is write-only, answers `{}` and reboots after the reply; params
is read-only; bootloader info answers `MCUboot`, or the mode for `query: "mode"`, or group error 3
for another query (a build without it, like the native_sim_udp one, answers rc 8). A payload that
does not decode is rc 3 where the handler reads one.

OS info (command 7) is answered as the real Zephyr 4.4.0 smp_server builds answer it (measured on
native_sim_udp): every read is `{"rc": 3}` whatever its `format` (none, "s", "snrvmpio", "q", an
integer), and a write has no handler (rc 8).
"""

from dataclasses import dataclass
from enum import IntEnum

from simulator.device.cbor import RequestMap
from simulator.device.codes import Group, MgmtErr, Op, OsCommand, OsErr
from simulator.device.replies import GroupError, MgmtError, Ok, Reply, ResetRequested
from simulator.errors import CborDecodeError


class BootloaderMode(IntEnum):
    """MCUboot modes as bootloader info reports them (smp `MCUbootMode`)."""

    SINGLE_APPLICATION = 0
    SWAP_USING_SCRATCH = 1
    OVERWRITE_ONLY = 2
    SWAP_WITHOUT_SCRATCH = 3
    DIRECT_XIP_WITHOUT_REVERT = 4
    DIRECT_XIP_WITH_REVERT = 5
    RAM_LOADER = 6


@dataclass(frozen=True, slots=True)
class OsParameters:
    """What the OS group reports about the firmware build."""

    buf_size_bytes: int
    buf_count: int
    bootloader_mode: BootloaderMode = BootloaderMode.SWAP_WITHOUT_SCRATCH
    bootloader_info: bool = True
    """CONFIG_MCUMGR_GRP_OS_BOOTLOADER_INFO: whether command 8 has a handler."""


def handle_os(  # noqa: PLR0911 - one return per command, as os_mgmt.c registers them
    command_id: int, op: int, payload: bytes, parameters: OsParameters
) -> Reply | None:
    """Handle one OS group request; None when the command has no handler for `op`."""
    match (command_id, op):
        case (OsCommand.ECHO, Op.READ | Op.WRITE):
            try:
                text = RequestMap.decode(payload).tstr("d")
            except CborDecodeError:
                return MgmtError(MgmtErr.EINVAL)
            return Ok({"r": text or ""})
        case (OsCommand.RESET, Op.WRITE):
            return Ok({}, (ResetRequested(),))
        case (OsCommand.MCUMGR_PARAMETERS, Op.READ):
            return Ok({"buf_size": parameters.buf_size_bytes, "buf_count": parameters.buf_count})
        case (OsCommand.INFO, Op.READ):
            return MgmtError(MgmtErr.EINVAL)
        case (OsCommand.BOOTLOADER_INFO, Op.READ) if parameters.bootloader_info:
            return _bootloader_info(payload, parameters)
    return None


def _bootloader_info(payload: bytes, parameters: OsParameters) -> Reply:
    try:
        query = RequestMap.decode(payload).tstr("query")
    except CborDecodeError:
        return MgmtError(MgmtErr.EINVAL)
    if query is None:
        return Ok({"bootloader": "MCUboot"})
    if query == "mode":
        return Ok({"mode": int(parameters.bootloader_mode)})
    return GroupError(Group.OS, OsErr.QUERY_YIELDS_NO_ANSWER)
