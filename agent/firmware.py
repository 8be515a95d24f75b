"""Checks an artifact is a sound MCUboot image for the job before any byte goes to a device."""

import hashlib
import struct
from dataclasses import dataclass
from typing import Final

from pydantic import ValidationError
from smpclient.mcuboot import (
    IMAGE_HEADER_SIZE,
    IMAGE_TLV,
    IMAGE_TLV_INFO_MAGIC,
    IMAGE_TLV_PROT_INFO_MAGIC,
    ImageHeader,
    ImageInfo,
    ImageTLVInfo,
    MCUBootImageError,
)

from agent.errors import ImageError

_TLV_INFO_SIZE: Final = 4


@dataclass(frozen=True, slots=True)
class ImageFacts:
    """What the agent needs to know about an MCUboot image."""

    version: str
    """As the device reports it: "major.minor.revision", plus ".build" when the build is not 0."""
    image_hash: bytes
    """The SHA256 TLV: what image state reads report and state writes name."""
    size_bytes: int


def format_version(major: int, minor: int, revision: int, build: int) -> str:
    """Format an image version the way Zephyr's img_mgmt does."""
    text = f"{major}.{minor}.{revision}"
    return f"{text}.{build}" if build else text


def inspect_image(data: bytes) -> ImageFacts:
    """Parse the header and TLVs and check the SHA256 TLV against the image contents.

    Raises:
        ImageError: not an MCUboot image, truncated, or its hash TLV does not match.
    """
    try:
        header = ImageHeader.loads(data[:IMAGE_HEADER_SIZE])
        body_end = header.hdr_size + header.img_size
        if header.hdr_size < IMAGE_HEADER_SIZE or body_end > len(data):
            raise ImageError(f"image claims {body_end} bytes of header and body, file has {len(data)}")
        offset = body_end
        if header.protect_tlv_size:
            ImageTLVInfo.loads(data[offset : offset + _TLV_INFO_SIZE], IMAGE_TLV_PROT_INFO_MAGIC)
            offset += header.protect_tlv_size
        info = ImageTLVInfo.loads(data[offset : offset + _TLV_INFO_SIZE], IMAGE_TLV_INFO_MAGIC)
        region = data[offset + _TLV_INFO_SIZE : offset + info.tlv_tot]
        if len(region) != info.tlv_tot - _TLV_INFO_SIZE:
            raise ImageError("TLV area is truncated")
        tlvs = ImageInfo.parse_tlvs(region)
    except (MCUBootImageError, struct.error, ValidationError, ValueError) as error:
        raise ImageError(f"not a valid MCUboot image: {error}") from None
    hashes = [tlv.value for tlv in tlvs if tlv.header.type == IMAGE_TLV.SHA256]
    if len(hashes) != 1 or len(hashes[0]) != hashlib.sha256().digest_size:
        raise ImageError("image must carry exactly one 32-byte SHA256 TLV")
    # MCUboot hashes the header, the body and the protected TLV area.
    computed = hashlib.sha256(data[: body_end + header.protect_tlv_size]).digest()
    if computed != hashes[0]:
        raise ImageError("SHA256 TLV does not match the image contents")
    ver = header.ver
    return ImageFacts(
        version=format_version(ver.major, ver.minor, ver.revision, ver.build_num),
        image_hash=hashes[0],
        size_bytes=len(data),
    )
