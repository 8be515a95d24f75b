"""SMP frames: the 8-byte header, request encoding, and tolerant reply decoding.

Requests are encoded as definite-length canonical CBOR, byte-identical to the `smp` library's
models (pinned by golden tests). Replies are decoded tolerantly: both map encodings, unknown
fields, legacy `rc: 0` in successful replies, and both error shapes (plain `rc`, SMP v2 `err` map).
"""

import enum
import struct
from dataclasses import dataclass
from typing import Any, Final

import cbor2

from agent.errors import SmpDeviceError, SmpRemoteError

HEADER: Final = struct.Struct("!BBHHBB")
HEADER_SIZE: Final = HEADER.size


class Op(enum.IntEnum):
    """SMP operation codes (header byte 0, bits 0-2)."""

    READ = 0
    READ_RSP = 1
    WRITE = 2
    WRITE_RSP = 3


class Group(enum.IntEnum):
    """SMP groups the agent speaks."""

    OS = 0
    IMAGE = 1
    MEMFAULT = 128


class McumgrErr(enum.IntEnum):
    """`mcumgr_err_t`: the plain `rc` codes."""

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


class ImgMgmtErr(enum.IntEnum):
    """`img_mgmt_err_code_t` (Zephyr's img_mgmt.h): the image group's own `err.rc` codes.

    Only those the agent acts on or names in a detail; any other code keeps its number.
    """

    OK = 0
    UNKNOWN = 1
    NO_IMAGE = 3
    NO_FREE_SLOT = 9
    FLASH_WRITE_FAILED = 12
    FLASH_ERASE_FAILED = 13
    INVALID_OFFSET = 20
    INVALID_LENGTH = 21
    INVALID_IMAGE_HEADER = 22
    INVALID_HASH = 24
    CURRENT_VERSION_IS_NEWER = 27
    """The `upgrade` check refused an image that is not newer than the running one."""
    IMAGE_ALREADY_PENDING = 28
    IMAGE_CONFIRMATION_DENIED = 32
    IMAGE_SETTING_TEST_TO_ACTIVE_DENIED = 33


@dataclass(frozen=True, slots=True)
class Header:
    """A decoded SMP header."""

    op: int
    version: int
    flags: int
    length: int
    group: int
    sequence: int
    command: int


@dataclass(frozen=True, slots=True)
class Reply:
    """A decoded reply frame whose body is a map (success or error still undecided)."""

    header: Header
    body: dict[str, Any]

    def raise_for_error(self) -> dict[str, Any]:
        """Return the success body (legacy `rc: 0` removed) or raise the device's error.

        Raises:
            SmpDeviceError: the body is an `rc` error or an SMP v2 `err` map.
            SmpRemoteError: the error fields are malformed.
        """
        body = self.body
        if "err" in body:
            err = body["err"]
            if not isinstance(err, dict) or not isinstance(err.get("rc"), int):
                raise SmpRemoteError(f"malformed err map: {err!r}")
            group = err.get("group", self.header.group)
            if not isinstance(group, int):
                raise SmpRemoteError(f"malformed err group: {group!r}")
            if err["rc"] != 0:
                raise SmpDeviceError(group, err["rc"], group_error=True)
        rc = body.get("rc", 0)
        if not isinstance(rc, int) or isinstance(rc, bool):
            raise SmpRemoteError(f"malformed rc: {rc!r}")
        if rc != 0:
            reason = body.get("rsn", "")
            raise SmpDeviceError(self.header.group, rc, group_error=False, reason=str(reason)[:200])
        return {key: value for key, value in body.items() if key not in ("rc", "err", "rsn")}


def encode_request(
    op: Op, group: int, command: int, sequence: int, body: dict[str, Any], *, version: int = 1
) -> bytes:
    """Encode one request frame (SMP v2 header by default; `version=0` for SMP v1)."""
    payload = cbor2.dumps(body, canonical=True)
    return HEADER.pack((version << 3) | op, 0, len(payload), group, sequence & 0xFF, command) + payload


def decode_header(frame: bytes) -> Header:
    """Decode the 8-byte header at the start of `frame`.

    Raises:
        SmpRemoteError: the frame is shorter than a header.
    """
    if len(frame) < HEADER_SIZE:
        raise SmpRemoteError(f"frame of {len(frame)} bytes is shorter than an SMP header")
    byte0, flags, length, group, sequence, command = HEADER.unpack_from(frame)
    return Header(byte0 & 0x07, (byte0 >> 3) & 0x03, flags, length, group, sequence, command)


def decode_reply(frame: bytes) -> Reply:
    """Decode a reply frame.

    Raises:
        SmpRemoteError: short frame, length mismatch, a request op, garbage CBOR or a non-map body.
    """
    header = decode_header(frame)
    if header.op not in (Op.READ_RSP, Op.WRITE_RSP):
        raise SmpRemoteError(f"op {header.op} is not a reply")
    payload = frame[HEADER_SIZE:]
    if len(payload) != header.length:
        raise SmpRemoteError(f"header says {header.length} payload bytes, frame has {len(payload)}")
    try:
        body = cbor2.loads(payload) if payload else {}
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as error:
        raise SmpRemoteError(f"reply is not valid CBOR: {error}") from None
    if not isinstance(body, dict) or not all(isinstance(key, str) for key in body):
        raise SmpRemoteError(f"reply body is not a map with text keys: {type(body).__name__}")
    return Reply(header, body)


def cbor_head_size(value: int) -> int:
    """Bytes CBOR needs for the head of an unsigned int or a byte string of length `value`."""
    if value < 24:
        return 1
    if value < 0x100:
        return 2
    if value < 0x10000:
        return 3
    if value < 0x100000000:
        return 5
    return 9
