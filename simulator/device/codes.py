"""SMP numbers: ops, versions, groups, command ids, error codes and the v1 error translation hooks.

Values from zephyrproject-rtos/zephyr:include/zephyr/mgmt/mcumgr/mgmt/mgmt_defines.h, img_mgmt.h,
os_mgmt.h and memfault/memfault-firmware-sdk:ports/zephyr/include/memfault/ports/zephyr/memfault_mcumgr.h.

Written again on purpose, apart from the agent's `agent.smp.frame`: the simulator is the oracle the
agent is tested against, so its numbers and header layout (here, in `codec.py` and `enum_group.py`)
come from Zephyr's headers independently. One shared definition would let a wrong number pass on
both sides; the duplicate-code scan's pairs between these files and `agent/smp/` are expected.
"""

from enum import IntEnum


class Op(IntEnum):
    """The SMP header's operation (3 bits; 4-7 are undefined)."""

    READ = 0
    READ_RSP = 1
    WRITE = 2
    WRITE_RSP = 3


class SmpVersion(IntEnum):
    """The SMP header's version bits."""

    V1 = 0
    V2 = 1


class Group(IntEnum):
    """The management groups a simulated device can serve."""

    OS = 0
    IMAGE = 1
    ENUMERATION = 10
    MEMFAULT = 128


class OsCommand(IntEnum):
    """OS group commands the simulator implements."""

    ECHO = 0
    RESET = 5
    MCUMGR_PARAMETERS = 6
    INFO = 7
    BOOTLOADER_INFO = 8


class EnumCommand(IntEnum):
    """Enumeration group (10) commands (zephyr:include/zephyr/mgmt/mcumgr/grp/enum_mgmt/enum_mgmt.h)."""

    COUNT = 0
    LIST = 1
    SINGLE = 2
    DETAILS = 3


class ImageCommand(IntEnum):
    """Image group commands the simulator implements (2-4 are declared without handlers)."""

    STATE = 0
    UPLOAD = 1
    ERASE = 5


class MemfaultCommand(IntEnum):
    """Memfault group 128 commands."""

    DEVICE_INFO = 0
    PROJECT_KEY = 1


class MgmtErr(IntEnum):
    """`mcumgr_err_t`: the plain `rc` of SMP-level errors."""

    EOK = 0
    EUNKNOWN = 1
    ENOMEM = 2
    EINVAL = 3
    ETIMEOUT = 4
    ENOENT = 5
    EBADSTATE = 6
    EMSGSIZE = 7
    ENOTSUP = 8
    ECORRUPT = 9
    EBUSY = 10
    EACCESSDENIED = 11
    UNSUPPORTED_TOO_OLD = 12
    UNSUPPORTED_TOO_NEW = 13


class OsErr(IntEnum):
    """`os_mgmt_err_code_t`: OS group errors."""

    OK = 0
    UNKNOWN = 1
    INVALID_FORMAT = 2
    QUERY_YIELDS_NO_ANSWER = 3
    RTC_NOT_SET = 4
    RTC_COMMAND_FAILED = 5
    QUERY_RESPONSE_VALUE_NOT_VALID = 6


class ImgErr(IntEnum):
    """`img_mgmt_err_code_t`: image group errors."""

    OK = 0
    UNKNOWN = 1
    FLASH_CONFIG_QUERY_FAIL = 2
    NO_IMAGE = 3
    NO_TLVS = 4
    INVALID_TLV = 5
    TLV_MULTIPLE_HASHES_FOUND = 6
    TLV_INVALID_SIZE = 7
    HASH_NOT_FOUND = 8
    NO_FREE_SLOT = 9
    FLASH_OPEN_FAILED = 10
    FLASH_READ_FAILED = 11
    FLASH_WRITE_FAILED = 12
    FLASH_ERASE_FAILED = 13
    INVALID_SLOT = 14
    NO_FREE_MEMORY = 15
    FLASH_CONTEXT_ALREADY_SET = 16
    FLASH_CONTEXT_NOT_SET = 17
    FLASH_AREA_DEVICE_NULL = 18
    INVALID_PAGE_OFFSET = 19
    INVALID_OFFSET = 20
    INVALID_LENGTH = 21
    INVALID_IMAGE_HEADER = 22
    INVALID_IMAGE_HEADER_MAGIC = 23
    INVALID_HASH = 24
    INVALID_FLASH_ADDRESS = 25
    VERSION_GET_FAILED = 26
    CURRENT_VERSION_IS_NEWER = 27
    IMAGE_ALREADY_PENDING = 28
    INVALID_IMAGE_VECTOR_TABLE = 29
    INVALID_IMAGE_TOO_LARGE = 30
    INVALID_IMAGE_DATA_OVERRUN = 31
    IMAGE_CONFIRMATION_DENIED = 32
    IMAGE_SETTING_TEST_TO_ACTIVE_DENIED = 33


class MemfaultErr(IntEnum):
    """`memfault_mgmt_err_code_t`: Memfault group errors."""

    OK = 0
    UNKNOWN = 1
    NO_PROJECT_KEY = 2


_IMG_TO_MGMT: dict[int, MgmtErr] = {
    ImgErr.NO_IMAGE: MgmtErr.ENOENT,
    ImgErr.NO_TLVS: MgmtErr.ENOENT,
    ImgErr.NO_FREE_SLOT: MgmtErr.EBADSTATE,
    ImgErr.CURRENT_VERSION_IS_NEWER: MgmtErr.EBADSTATE,
    ImgErr.IMAGE_ALREADY_PENDING: MgmtErr.EBADSTATE,
    ImgErr.NO_FREE_MEMORY: MgmtErr.ENOMEM,
    ImgErr.INVALID_SLOT: MgmtErr.EINVAL,
    ImgErr.INVALID_PAGE_OFFSET: MgmtErr.EINVAL,
    ImgErr.INVALID_OFFSET: MgmtErr.EINVAL,
    ImgErr.INVALID_LENGTH: MgmtErr.EINVAL,
    ImgErr.INVALID_IMAGE_HEADER: MgmtErr.EINVAL,
    ImgErr.INVALID_HASH: MgmtErr.EINVAL,
    ImgErr.INVALID_FLASH_ADDRESS: MgmtErr.EINVAL,
}
_OS_TO_MGMT: dict[int, MgmtErr] = {
    OsErr.INVALID_FORMAT: MgmtErr.EINVAL,
    OsErr.QUERY_YIELDS_NO_ANSWER: MgmtErr.ENOENT,
    OsErr.RTC_NOT_SET: MgmtErr.ENOENT,
    OsErr.QUERY_RESPONSE_VALUE_NOT_VALID: MgmtErr.ENOENT,
}
_MEMFAULT_TO_MGMT: dict[int, MgmtErr] = {MemfaultErr.NO_PROJECT_KEY: MgmtErr.ENOENT}
_TRANSLATIONS: dict[int, dict[int, MgmtErr]] = {
    Group.OS: _OS_TO_MGMT,
    Group.IMAGE: _IMG_TO_MGMT,
    Group.MEMFAULT: _MEMFAULT_TO_MGMT,
}


def translate_group_error(group: int, rc: int) -> MgmtErr:
    """The v1 `rc` for a group error: the group's `mg_translate_error` hook, or EUNKNOWN without one."""
    table = _TRANSLATIONS.get(group)
    if table is None:
        return MgmtErr.EUNKNOWN
    return table.get(rc, MgmtErr.EUNKNOWN)
