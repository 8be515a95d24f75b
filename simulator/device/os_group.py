"""OS management (group 0): echo, reset, MCUmgr parameters and bootloader information.

Rules (zephyrproject-rtos/zephyr:subsys/mgmt/mcumgr/grp/os_mgmt/src/os_mgmt.c): echo answers `d`
as `r` for reads and writes; reset is write-only, answers `{}` and reboots after the reply; params
is read-only; bootloader info answers `MCUboot`, or the mode for `query: "mode"`, or group error 3
for another query (a build without it, like the native_sim_udp one, answers rc 8). A payload that
does not decode is rc 3 where the handler reads one.

OS info (command 7, CONFIG_MCUMGR_GRP_OS_INFO; os_mgmt.c `os_mgmt_info`), as measured on the
Zephyr 4.4.0 native_sim_udp build: read-only; `format` is a text string of letters, each selecting
one field (s kernel name, n node name, r release, v version, b build time, m machine, p processor,
i hardware platform, o operating system, a all of them); the output joins the selected fields with
single spaces in that fixed order whatever the order or repetition of the letters; a missing or
empty format means "s"; another letter is group error 2 (INVALID_FORMAT); a format that is not
text is rc 3.
"""

from dataclasses import dataclass, field
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


_OS_INFO_ORDER = "snrvbmpio"


@dataclass(frozen=True, slots=True)
class OsInfo:
    """What OS info reports (defaults: the native_sim_udp build's answers, build time aside)."""

    kernel_name: str = "Zephyr"
    node_name: str = "unknown"
    release: str = "684c9e8f32e4"
    version: str = "4.4.0"
    build_time: str = "Wed Jun  3 22:19:37 2026"
    machine: str = "posix"
    processor: str = "x86"
    platform: str = "native_sim/native"
    operating_system: str = "Zephyr"

    def field(self, letter: str) -> str:
        """The field one `format` letter selects."""
        return {
            "s": self.kernel_name,
            "n": self.node_name,
            "r": self.release,
            "v": self.version,
            "b": self.build_time,
            "m": self.machine,
            "p": self.processor,
            "i": self.platform,
            "o": self.operating_system,
        }[letter]


@dataclass(frozen=True, slots=True)
class OsParameters:
    """What the OS group reports about the firmware build."""

    buf_size_bytes: int
    buf_count: int
    bootloader_mode: BootloaderMode = BootloaderMode.SWAP_WITHOUT_SCRATCH
    bootloader_info: bool = True
    """CONFIG_MCUMGR_GRP_OS_BOOTLOADER_INFO: whether command 8 has a handler."""
    os_info: OsInfo = field(default_factory=OsInfo)


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
            return _os_info(payload, parameters.os_info)
        case (OsCommand.BOOTLOADER_INFO, Op.READ) if parameters.bootloader_info:
            return _bootloader_info(payload, parameters)
    return None


def _os_info(payload: bytes, info: OsInfo) -> Reply:
    try:
        letters = RequestMap.decode(payload).tstr("format") or "s"
    except CborDecodeError:
        return MgmtError(MgmtErr.EINVAL)
    if "a" in letters:
        letters = letters.replace("a", _OS_INFO_ORDER)
    if any(letter not in _OS_INFO_ORDER for letter in letters):
        return GroupError(Group.OS, OsErr.INVALID_FORMAT)
    return Ok({"output": " ".join(info.field(letter) for letter in _OS_INFO_ORDER if letter in letters)})


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
