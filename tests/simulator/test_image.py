"""The pure-Python MCUboot image builder and parser, checked against imgtool itself."""

import contextlib
import hashlib
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulator.errors import ImageFormatError
from simulator.image import (
    IMAGE_MAGIC,
    ImageVersion,
    build_mcuboot_image,
    parse_mcuboot_image,
    verify_mcuboot_image,
)

IMGTOOL = Path(sys.executable).with_name("imgtool")


@pytest.mark.parametrize(("version", "payload_size"), [("1.2.3+4", 1000), ("0.9", 4096)])
def test_builder_matches_imgtool_byte_for_byte(tmp_path: Path, version: str, payload_size: int) -> None:
    """`imgtool create --header-size 32 --pad-header --align 4` writes exactly the same bytes."""
    payload = bytes(range(256)) * (payload_size // 256) + b"\x5a" * (payload_size % 256)
    source, target = tmp_path / "app.bin", tmp_path / "app.signed.bin"
    source.write_bytes(payload)
    subprocess.run(
        [
            *(str(IMGTOOL), "create", "--version", version, "--header-size", "32", "--pad-header"),
            *("--align", "4", "--slot-size", str(0x40000), str(source), str(target)),
        ],
        check=True,
        capture_output=True,
    )
    assert build_mcuboot_image(version, payload) == target.read_bytes()


def test_parse_reads_version_hash_and_sizes() -> None:
    """Parsing a built image gives back its version, its SHA256 TLV and its sizes."""
    image = build_mcuboot_image("2.1.7+9", payload_size=500, seed=3)
    info = parse_mcuboot_image(image)
    assert info.version == "2.1.7.9"
    assert info.version_parts == ImageVersion(2, 1, 7, 9)
    assert info.hash_sha256 == hashlib.sha256(image[: 32 + 500]).digest()
    assert (info.image_size, info.header_size, info.total_size_bytes) == (500, 32, len(image))
    assert info.bootable
    assert verify_mcuboot_image(image)


def test_larger_header_is_padded_with_erased_bytes() -> None:
    """A 64-byte header area is the header plus 0xff padding, and the payload follows it."""
    image = build_mcuboot_image("1.0.0", b"app", header_size=64)
    assert image[32:64] == b"\xff" * 32
    assert image[64:67] == b"app"
    assert parse_mcuboot_image(image).header_size == 64


def test_generated_payload_is_deterministic_per_seed() -> None:
    """The same version, size and seed give the same image; another seed gives another hash."""
    first = build_mcuboot_image("1.0.0", seed=1)
    assert first == build_mcuboot_image("1.0.0", seed=1)
    assert (
        parse_mcuboot_image(first).hash_sha256
        != parse_mcuboot_image(build_mcuboot_image("1.0.0", seed=2)).hash_sha256
    )


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda image: image[:20], "shorter than"),
        (lambda image: b"\0\0\0\0" + image[4:], "magic"),
        (lambda image: image[:-40], "truncated"),
        (lambda image: image[:-36] + b"\x11" + image[-35:], "no SHA256"),
    ],
    ids=["short", "magic", "no-tlv-area", "no-hash"],
)
def test_parse_rejects_broken_images(mutate: object, message: str) -> None:
    """Broken images raise ImageFormatError saying what is wrong."""
    image = build_mcuboot_image("1.0.0", payload_size=64)
    with pytest.raises(ImageFormatError, match=message):
        parse_mcuboot_image(mutate(image))  # type: ignore[operator]


def test_verify_catches_a_corrupted_payload() -> None:
    """An image whose payload changed still parses but no longer verifies (MCUboot would refuse it)."""
    image = bytearray(build_mcuboot_image("1.0.0", payload_size=64))
    image[40] ^= 0xFF
    assert parse_mcuboot_image(image).version == "1.0.0"
    assert not verify_mcuboot_image(image)


@pytest.mark.parametrize("text", ["1.2.3-rc1", "01.2", "1.2.3+", "256.0.0", "1.2.65536", "", "1.2.3\n"])
def test_bad_versions_are_rejected(text: str) -> None:
    """Versions imgtool refuses, or that do not fit the header, raise ImageFormatError."""
    with pytest.raises(ImageFormatError):
        ImageVersion.parse(text)


@given(st.binary(max_size=200))
def test_parse_raises_only_image_format_error_on_garbage(data: bytes) -> None:
    """Random bytes either parse or raise ImageFormatError, nothing else."""
    with contextlib.suppress(ImageFormatError):
        parse_mcuboot_image(data)


@given(st.binary(max_size=120), st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFF))
def test_parse_survives_hostile_headers(
    tail: bytes, header_size: int, image_size: int, protected: int
) -> None:
    """A valid magic with random sizes and TLV bytes never escapes as anything but ImageFormatError."""
    header = struct.pack("<IIHHII", IMAGE_MAGIC, 0, header_size, protected, image_size, 0) + bytes(12)
    with contextlib.suppress(ImageFormatError):
        parse_mcuboot_image(header + tail)
