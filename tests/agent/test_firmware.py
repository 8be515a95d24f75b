"""MCUboot image checks against images built by MCUboot's own imgtool."""

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import ImageError
from agent.firmware import format_version, inspect_image

IMGTOOL = Path(sys.executable).with_name("imgtool")


def _imgtool_image(tmp_path: Path, version: str, body: bytes) -> bytes:
    source, target = tmp_path / "body.bin", tmp_path / "signed.bin"
    source.write_bytes(body)
    subprocess.run(
        [
            str(IMGTOOL),
            "create",
            "--version",
            version,
            "--header-size",
            "32",
            "--pad-header",
            "--slot-size",
            "0x40000",
            "--align",
            "4",
            str(source),
            str(target),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return target.read_bytes()


@pytest.fixture
def image(tmp_path: Path) -> bytes:
    return _imgtool_image(tmp_path, "1.2.3+4", bytes(range(256)) * 20)


def test_imgtool_image_is_understood(image: bytes) -> None:
    """Version (with build), size and the SHA256 TLV are read from an imgtool image."""
    facts = inspect_image(image)
    assert facts.version == "1.2.3.4"
    assert facts.size_bytes == len(image)
    assert len(facts.image_hash) == 32


def test_build_zero_is_omitted_like_zephyr(tmp_path: Path) -> None:
    """A zero build number is not shown, matching img_mgmt's version strings."""
    assert inspect_image(_imgtool_image(tmp_path, "2.0.1", b"\x01" * 100)).version == "2.0.1"


def test_a_flipped_body_byte_breaks_the_hash(image: bytes) -> None:
    """A corrupted body is refused: the SHA256 TLV no longer matches."""
    corrupted = bytearray(image)
    corrupted[100] ^= 0xFF
    with pytest.raises(ImageError, match="does not match"):
        inspect_image(bytes(corrupted))


@pytest.mark.parametrize("cut", [0, 10, 32, 200, -1])
def test_truncated_images_are_refused(image: bytes, cut: int) -> None:
    """Any truncation is an ImageError."""
    with pytest.raises(ImageError):
        inspect_image(image[:cut])


def test_wrong_magic_is_refused(image: bytes) -> None:
    """A file without MCUboot's magic is not an image."""
    with pytest.raises(ImageError, match="not a valid MCUboot image"):
        inspect_image(b"\x00\x00\x00\x00" + image[4:])


@given(st.binary(max_size=400))
def test_garbage_is_only_ever_an_image_error(data: bytes) -> None:
    """Arbitrary bytes never raise anything but ImageError."""
    try:
        inspect_image(b"\x3d\xb8\xf3\x96" + data)
    except ImageError:
        return


def test_versions_are_formatted_as_img_mgmt_reports_them() -> None:
    """The build number appears as a fourth number only when it is not 0 (their order: tests/schemas)."""
    assert format_version(1, 2, 3, 0) == "1.2.3"
    assert format_version(1, 2, 3, 4) == "1.2.3.4"
