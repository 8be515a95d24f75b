"""Encoders and reply parsers for the OS (group 0) and image management (group 1) commands we use."""

from dataclasses import dataclass
from typing import Any, Final

from agent.errors import SmpRemoteError
from agent.smp.frame import Group, Op, encode_request

OS_ECHO: Final = 0
OS_RESET: Final = 5
OS_PARAMS: Final = 6
IMAGE_STATE: Final = 0
IMAGE_UPLOAD: Final = 1
IMAGE_ERASE: Final = 5


@dataclass(frozen=True, slots=True)
class SlotState:
    """One entry of an image state read."""

    image: int
    slot: int
    version: str
    hash_sha256: bytes
    bootable: bool
    pending: bool
    confirmed: bool
    active: bool
    permanent: bool


@dataclass(frozen=True, slots=True)
class McumgrParams:
    """The device's SMP buffer parameters (OS group command 6)."""

    buf_size: int
    buf_count: int


@dataclass(frozen=True, slots=True)
class UploadAck:
    """An upload reply: the offset the device expects next, and `match` on the last chunk."""

    off: int
    match: bool | None


@dataclass(frozen=True, slots=True)
class FirstChunkFields:
    """Fields only the first chunk (offset 0) carries."""

    length_bytes: int
    sha256: bytes
    """SHA-256 of the whole file: the device's resume key and `match` reference."""
    upgrade: bool
    image: int = 0


def encode_echo(sequence: int, text: str) -> bytes:
    """Encode an OS echo write."""
    return encode_request(Op.WRITE, Group.OS, OS_ECHO, sequence, {"d": text})


def encode_reset(sequence: int) -> bytes:
    """Encode an OS reset write (the device replies, then reboots)."""
    return encode_request(Op.WRITE, Group.OS, OS_RESET, sequence, {})


def encode_params_read(sequence: int) -> bytes:
    """Encode an MCUmgr parameters read."""
    return encode_request(Op.READ, Group.OS, OS_PARAMS, sequence, {})


def encode_state_read(sequence: int) -> bytes:
    """Encode an image state read."""
    return encode_request(Op.READ, Group.IMAGE, IMAGE_STATE, sequence, {})


def encode_state_write(sequence: int, *, image_hash: bytes | None, confirm: bool) -> bytes:
    """Encode an image state write: test (hash, confirm False), permanent or confirm the running image."""
    body: dict[str, Any] = {"confirm": confirm}
    if image_hash is not None:
        body["hash"] = image_hash
    return encode_request(Op.WRITE, Group.IMAGE, IMAGE_STATE, sequence, body)


def encode_upload(sequence: int, offset: int, data: bytes, first: FirstChunkFields | None) -> bytes:
    """Encode one upload chunk; the first chunk (offset 0) carries `first`'s fields."""
    body: dict[str, Any] = {"off": offset, "data": data}
    if first is not None:
        body.update(image=first.image, len=first.length_bytes, sha=first.sha256, upgrade=first.upgrade)
    return encode_request(Op.WRITE, Group.IMAGE, IMAGE_UPLOAD, sequence, body)


def _flag(entry: dict[str, Any], name: str) -> bool:
    value = entry.get(name, False)
    if not isinstance(value, bool):
        raise SmpRemoteError(f"image state flag {name} is not a boolean: {value!r}")
    return value


def parse_state(body: dict[str, Any]) -> list[SlotState]:
    """Parse an image state read/write reply (full or frugal flag lists).

    Raises:
        SmpRemoteError: `images` is missing or an entry is malformed.
    """
    images = body.get("images")
    if not isinstance(images, list):
        raise SmpRemoteError(f"image state has no images list: {body!r:.200}")
    slots = []
    for entry in images:
        if not isinstance(entry, dict):
            raise SmpRemoteError(f"image state entry is not a map: {entry!r:.200}")
        slot, version, image_hash = entry.get("slot"), entry.get("version"), entry.get("hash")
        image = entry.get("image", 0)
        if not isinstance(slot, int) or not isinstance(image, int):
            raise SmpRemoteError(f"image state entry without slot: {entry!r:.200}")
        if not isinstance(version, str) or not isinstance(image_hash, bytes):
            raise SmpRemoteError(f"image state entry without version or hash: {entry!r:.200}")
        slots.append(
            SlotState(
                image=image,
                slot=slot,
                version=version,
                hash_sha256=image_hash,
                bootable=_flag(entry, "bootable"),
                pending=_flag(entry, "pending"),
                confirmed=_flag(entry, "confirmed"),
                active=_flag(entry, "active"),
                permanent=_flag(entry, "permanent"),
            )
        )
    return slots


def parse_params(body: dict[str, Any]) -> McumgrParams:
    """Parse an MCUmgr parameters reply.

    Raises:
        SmpRemoteError: a field is missing or not a positive integer.
    """
    size, count = body.get("buf_size"), body.get("buf_count")
    if not isinstance(size, int) or not isinstance(count, int) or size < 64 or count < 1:
        raise SmpRemoteError(f"bad MCUmgr parameters: {body!r:.200}")
    return McumgrParams(buf_size=size, buf_count=count)


def parse_upload_ack(body: dict[str, Any]) -> UploadAck:
    """Parse an upload reply.

    Raises:
        SmpRemoteError: no offset (Zephyr always sends one in a success reply).
    """
    off, match = body.get("off"), body.get("match")
    if not isinstance(off, int) or isinstance(off, bool) or off < 0:
        raise SmpRemoteError(f"upload reply without a valid off: {body!r:.200}")
    if match is not None and not isinstance(match, bool):
        raise SmpRemoteError(f"upload reply match is not a boolean: {match!r}")
    return UploadAck(off=off, match=match)
