"""MCUboot images in pure Python: build them byte for byte as `imgtool create` does, and parse them.

The layout (mcu-tools/mcuboot docs, design.md "Image format"): a little-endian 32-byte header, the
header padding, the payload, an optional protected TLV area (magic 0x6908) and the TLV area (magic
0x6907) whose SHA256 entry (type 0x10) hashes the header, the padding, the payload and the protected
TLVs. `parse_mcuboot_image` reads an image as Zephyr's `img_mgmt_read_info()` does: it trusts the
hash TLV; `verify_mcuboot_image` recomputes it, as MCUboot does before it boots an image.
"""

import hashlib
import random
import re
import struct
from dataclasses import dataclass
from typing import Final, Self

from simulator.errors import ImageFormatError

IMAGE_MAGIC: Final = 0x96F3B83D
IMAGE_HEADER_SIZE_BYTES: Final = 32
TLV_INFO_MAGIC: Final = 0x6907
TLV_PROTECTED_INFO_MAGIC: Final = 0x6908
TLV_TYPE_SHA256: Final = 0x10
SHA256_SIZE_BYTES: Final = 32
IMAGE_F_NON_BOOTABLE: Final = 0x10
ERASED_BYTE: Final = 0xFF

_HEADER: Final = struct.Struct("<IIHHIIBBHI4x")
_TLV_INFO: Final = struct.Struct("<HH")
_TLV: Final = struct.Struct("<BxH")
# imgtool's grammar (imgtool/version.py), plus the dotted build form Zephyr prints in image state.
_NUMBER: Final = r"(0|[1-9]\d*)"
_IMGTOOL_VERSION: Final = re.compile(rf"{_NUMBER}(?:\.{_NUMBER}(?:\.{_NUMBER}(?:\+{_NUMBER})?)?)?")
_DOTTED_VERSION: Final = re.compile(rf"{_NUMBER}\.{_NUMBER}\.{_NUMBER}\.{_NUMBER}")


@dataclass(frozen=True, slots=True, order=True)
class ImageVersion:
    """The version in an MCUboot header: major u8, minor u8, revision u16, build number u32."""

    major: int
    minor: int
    revision: int
    build: int = 0

    def __post_init__(self) -> None:
        limits = (
            ("major", self.major, 0xFF),
            ("minor", self.minor, 0xFF),
            ("revision", self.revision, 0xFFFF),
            ("build", self.build, 0xFFFFFFFF),
        )
        for name, value, limit in limits:
            if not 0 <= value <= limit:
                raise ImageFormatError(f"version {name} {value} does not fit the MCUboot header")

    @classmethod
    def parse(cls, text: str) -> Self:
        """Parse `maj[.min[.rev[+build]]]` (imgtool's form) or `maj.min.rev.build` (Zephyr's form)."""
        match = _IMGTOOL_VERSION.fullmatch(text) or _DOTTED_VERSION.fullmatch(text)
        if match is None:
            raise ImageFormatError(f"invalid image version {text!r}: expected maj.min.rev+build")
        major, minor, revision, build = (int(part) if part else 0 for part in match.groups())
        return cls(major, minor, revision, build)

    @property
    def release(self) -> tuple[int, int, int]:
        """Major, minor and revision: what Zephyr compares for an `upgrade` upload by default."""
        return (self.major, self.minor, self.revision)

    def __str__(self) -> str:
        """Zephyr's `img_mgmt_ver_str()`: `maj.min.rev`, plus `.build` only when it is not zero."""
        text = f"{self.major}.{self.minor}.{self.revision}"
        return f"{text}.{self.build}" if self.build else text


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What a parsed MCUboot image reports: its version, its SHA256 TLV and its sizes."""

    version: str
    """The Zephyr image-state form of the version (`1.2.3`, or `1.2.3.4` with a build number)."""
    hash_sha256: bytes
    """The SHA256 TLV: the hash `image state-write` names an image by (not the file's SHA-256)."""
    image_size: int
    """The header's `img_size`: payload bytes after the header."""
    header_size: int
    flags: int
    version_parts: ImageVersion
    total_size_bytes: int
    """Header, payload and TLV areas: where the image ends in a slot."""
    signed_size_bytes: int
    """Header, payload and protected TLVs: the bytes the SHA256 TLV covers."""

    @property
    def bootable(self) -> bool:
        """Zephyr reports `bootable` unless the header has the NON_BOOTABLE flag."""
        return not self.flags & IMAGE_F_NON_BOOTABLE


def build_mcuboot_image(
    version: str,
    payload: bytes | None = None,
    *,
    payload_size: int = 4096,
    seed: int = 0,
    header_size: int = IMAGE_HEADER_SIZE_BYTES,
) -> bytes:
    """Build the image `imgtool create --version V --header-size H --pad-header --align 4` would.

    Args:
        version: imgtool's `maj.min.rev+build` (later parts optional).
        payload: the application binary; default: `payload_size` deterministic bytes from `seed`.
        payload_size: bytes of generated payload when `payload` is None.
        seed: seed of the generated payload.
        header_size: the header area, at least 32 bytes; imgtool fills the padding with 0xff.

    Raises:
        ImageFormatError: a bad version, header size or payload size.
    """
    parts = ImageVersion.parse(version)
    if not IMAGE_HEADER_SIZE_BYTES <= header_size <= 0xFFFF:
        raise ImageFormatError(f"header size {header_size} is outside 32..65535")
    if payload is None:
        if payload_size < 0:
            raise ImageFormatError(f"payload size {payload_size} is negative")
        payload = random.Random(seed).randbytes(payload_size)
    header = _HEADER.pack(
        IMAGE_MAGIC, 0, header_size, 0, len(payload), 0, parts.major, parts.minor, parts.revision, parts.build
    )
    signed = header + bytes([ERASED_BYTE]) * (header_size - IMAGE_HEADER_SIZE_BYTES) + payload
    digest = hashlib.sha256(signed).digest()
    tlvs = _TLV.pack(TLV_TYPE_SHA256, SHA256_SIZE_BYTES) + digest
    return signed + _TLV_INFO.pack(TLV_INFO_MAGIC, _TLV_INFO.size + len(tlvs)) + tlvs


def parse_mcuboot_image(data: bytes | bytearray | memoryview) -> ImageInfo:
    """Parse an MCUboot image as Zephyr's `img_mgmt_read_info()` does (the hash TLV is trusted).

    Raises:
        ImageFormatError: bad magic, areas outside `data`, no TLV area, no or several SHA256 TLVs.
    """
    with memoryview(data) as view:
        return _parse(view)


def verify_mcuboot_image(data: bytes | bytearray) -> bool:
    """Whether `data` parses and its SHA256 TLV matches the bytes it covers (MCUboot's boot check)."""
    try:
        info = parse_mcuboot_image(data)
    except ImageFormatError:
        return False
    return hashlib.sha256(data[: info.signed_size_bytes]).digest() == info.hash_sha256


def _parse(view: memoryview) -> ImageInfo:
    if len(view) < _HEADER.size:
        raise ImageFormatError(f"{len(view)} bytes is shorter than the 32-byte image header")
    magic, _load, header_size, protected_size, image_size, flags, *version = _HEADER.unpack_from(view)
    if magic != IMAGE_MAGIC:
        raise ImageFormatError(f"bad image magic 0x{magic:08x}")
    offset = header_size + image_size
    if protected_size:
        offset = _tlv_area_end(view, offset, TLV_PROTECTED_INFO_MAGIC)
    signed_size = offset
    end = _tlv_area_end(view, offset, TLV_INFO_MAGIC)
    digest = _find_sha256(view, offset + _TLV_INFO.size, end)
    parts = ImageVersion(*version)
    return ImageInfo(
        version=str(parts),
        hash_sha256=digest,
        image_size=image_size,
        header_size=header_size,
        flags=flags,
        version_parts=parts,
        total_size_bytes=end,
        signed_size_bytes=signed_size,
    )


def _tlv_area_end(view: memoryview, offset: int, magic: int) -> int:
    if offset + _TLV_INFO.size > len(view):
        raise ImageFormatError(f"no TLV area at offset {offset}: the image is truncated")
    found_magic, total = _TLV_INFO.unpack_from(view, offset)
    end: int = offset + total
    if found_magic != magic:
        raise ImageFormatError(
            f"TLV area at offset {offset} has magic 0x{found_magic:04x}, not 0x{magic:04x}"
        )
    if end > len(view) or total < _TLV_INFO.size:
        raise ImageFormatError(f"TLV area at offset {offset} claims {total} bytes")
    return end


def _find_sha256(view: memoryview, offset: int, end: int) -> bytes:
    digest: bytes | None = None
    while offset + _TLV.size <= end:
        kind, length = _TLV.unpack_from(view, offset)
        offset += _TLV.size
        if kind == TLV_TYPE_SHA256 and length == SHA256_SIZE_BYTES:
            if digest is not None:
                raise ImageFormatError("the image has more than one SHA256 TLV")
            if offset + SHA256_SIZE_BYTES > end:
                raise ImageFormatError("the SHA256 TLV runs past the TLV area")
            digest = bytes(view[offset : offset + SHA256_SIZE_BYTES])
        offset += length
    if digest is None:
        raise ImageFormatError("the image has no SHA256 TLV")
    return digest
