"""Newer versions of a real fixture app, made with imgtool the way the fixture itself was signed.

The fixtures' MCUboot checks the SHA-256 TLV, not a signature, so `imgtool sign` without a key,
with `--erased-val 0` and the fixture's header size, reproduces `signed.bin` byte for byte (a test
proves it first); any other `--version` is then a genuine newer build of the same app.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Final

IMAGE_MAGIC: Final = 0x96F3B83D
HEADER: Final = struct.Struct("<IIHHII")
RAM_LOAD_FLAG: Final = 0x20
SLOT_SIZE_BYTES: Final = 0x40000
"""Larger than any of these apps; without `--pad` it only bounds the image, it does not change it."""
THUMB_BRANCH_TO_SELF: Final = b"\xfe\xe7"
"""`b .` in Thumb: a reset handler that never returns and never starts the app."""


def app_body(signed: bytes) -> tuple[int, bytes]:
    """The header size and the app binary inside a signed MCUboot image."""
    magic, _load, header_bytes, _protected, image_bytes, _flags = HEADER.unpack_from(signed)
    assert magic == IMAGE_MAGIC, "not an MCUboot image"
    return header_bytes, signed[header_bytes : header_bytes + image_bytes]


def ram_load_address(signed: bytes) -> int | None:
    """Where MCUboot copies the image to run it (RAM-load builds such as the mps2 ones), if anywhere."""
    _magic, load, _header, _protected, _size, flags = HEADER.unpack_from(signed)
    return load if flags & RAM_LOAD_FLAG else None


def sign(
    body: bytes,
    version: str,
    *,
    header_bytes: int,
    load_address: int | None = None,
    slot_size_bytes: int = SLOT_SIZE_BYTES,
) -> bytes:
    """`imgtool sign` of `body` as version `version`, keyless, with the fixtures' options."""
    imgtool = Path(sys.executable).with_name("imgtool")
    load = ["--load-addr", hex(load_address)] if load_address is not None else []
    with tempfile.TemporaryDirectory(prefix="mcufleet-imgtool-") as workdir:
        source, target = Path(workdir) / "app.bin", Path(workdir) / "signed.bin"
        source.write_bytes(body)
        subprocess.run(
            [
                str(imgtool),
                "sign",
                "--header-size",
                hex(header_bytes),
                "--pad-header",
                "--slot-size",
                hex(slot_size_bytes),
                "--erased-val",
                "0",
                "--version",
                version,
                *load,
                str(source),
                str(target),
            ],
            check=True,
            capture_output=True,
        )
        return target.read_bytes()


def resign(signed: bytes, version: str) -> bytes:
    """The same app as `signed`, signed again as `version`."""
    header_bytes, body = app_body(signed)
    return sign(body, version, header_bytes=header_bytes, load_address=ram_load_address(signed))


def hanging_app(signed: bytes, version: str, *, slot0_address: int) -> bytes:
    """A valid image of `version` whose app hangs at once (it never starts, never confirms).

    Its vector table keeps the real app's stack pointer and points the reset handler at a branch
    to itself, so MCUboot validates and boots it, and then nothing answers until a watchdog resets.
    """
    header_bytes, body = app_body(signed)
    stack_pointer = body[:4]
    reset_handler = slot0_address + header_bytes + 8
    stub = stack_pointer + struct.pack("<I", reset_handler | 1) + THUMB_BRANCH_TO_SELF
    return sign(stub + bytes(1024 - len(stub)), version, header_bytes=header_bytes)
