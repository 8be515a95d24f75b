"""The SMP frame format: the 8-byte header and the reply payload shapes Zephyr's smp.c writes.

Byte 0 is `res:3 | version:2 | op:3`, then flags, a big-endian u16 payload length, a big-endian
u16 group, the sequence number and the command id (zephyrproject-rtos/zephyr:
doc/services/device_mgmt/smp_protocol.rst).
"""

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from simulator.device import cbor
from simulator.device.cbor import ReplyValue
from simulator.device.codes import Op, SmpVersion

HEADER_SIZE_BYTES: Final = 8
_HEADER: Final = struct.Struct("!BBHHBB")


@dataclass(frozen=True, slots=True)
class Header:
    """An SMP header, with the raw op and version (a server must answer undefined values too)."""

    op: int
    version: int
    flags: int
    length: int
    group: int
    sequence: int
    command_id: int

    @classmethod
    def parse(cls, data: bytes) -> "Header":
        """Read the first 8 bytes of `data` (the caller checks there are 8)."""
        first, flags, length, group, sequence, command_id = _HEADER.unpack_from(data)
        return cls(first & 0x07, (first >> 3) & 0x03, flags, length, group, sequence, command_id)

    def pack(self) -> bytes:
        """The header's 8 bytes."""
        first = (self.version & 0x03) << 3 | (self.op & 0x07)
        return _HEADER.pack(first, self.flags, self.length, self.group, self.sequence, self.command_id)

    def reply_header(self, length: int) -> "Header":
        """`smp_make_rsp_hdr()`: read -> read_rsp, anything else -> write_rsp; version capped at v2."""
        op = Op.READ_RSP if self.op == Op.READ else Op.WRITE_RSP
        version = min(self.version, SmpVersion.V2)
        return Header(op, version, 0, length, self.group, self.sequence, self.command_id)


def reply_frame(request: Header, payload: bytes) -> bytes:
    """The reply to `request` carrying `payload`."""
    return request.reply_header(len(payload)).pack() + payload


def ok_payload(
    fields: Mapping[str, ReplyValue],
    *,
    legacy_rc: bool = False,
    extra: Mapping[str, ReplyValue] | None = None,
) -> bytes:
    """A success map; `legacy_rc` prepends `"rc": 0` (CONFIG_MCUMGR_SMP_LEGACY_RC_BEHAVIOUR)."""
    body: dict[str, ReplyValue] = {"rc": 0} if legacy_rc else {}
    body.update(fields)
    if extra:
        body.update(extra)
    return cbor.encode(body)


def rc_payload(rc: int) -> bytes:
    """`smp_build_err_rsp()`: `{"rc": n}`."""
    return cbor.encode({"rc": rc})


def group_error_payload(group: int, rc: int) -> bytes:
    """`smp_add_cmd_err()` in an otherwise empty reply: `{"err": {"group": g, "rc": n}}`."""
    return cbor.encode({"err": {"group": group, "rc": rc}})
