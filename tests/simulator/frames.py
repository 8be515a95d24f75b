"""Test helpers: build SMP request frames, read reply frames, and make small simulated devices."""

import hashlib
import struct
from typing import Any

import cbor2

from simulator.device import DeviceIdentity, FaultPlan, FirmwareOptions, LinkProfile, MemfaultMode, SimDevice
from simulator.fleet import firmware_image
from simulator.image import build_mcuboot_image, parse_mcuboot_image

HEADER = struct.Struct("!BBHHBB")
FAST_FIRMWARE = FirmwareOptions(reset_delay_s=0.01, boot_time_s=0.01, swap_time_s=0.01)
"""Firmware timings short enough for tests that wait for real reboots."""


def request(
    group: int,
    command: int,
    body: dict[str, Any] | bytes | None = None,
    *,
    op: int = 0,
    version: int = 1,
    sequence: int = 1,
) -> bytes:
    """An SMP request frame; a dict body is encoded as canonical (definite-length) CBOR."""
    if body is None:
        body = {}
    payload = body if isinstance(body, bytes) else cbor2.dumps(body, canonical=True)
    return HEADER.pack((version << 3) | op, 0, len(payload), group, sequence, command) + payload


def reply(frame: bytes) -> tuple[tuple[int, int, int, int, int, int, int], Any]:
    """Split a reply into `(op, version, flags, length, group, sequence, command)` and its decoded map."""
    first, flags, length, group, sequence, command = HEADER.unpack_from(frame)
    assert len(frame) == 8 + length, "the header length must match the payload"
    return (first & 7, (first >> 3) & 3, flags, length, group, sequence, command), cbor2.loads(frame[8:])


def echo_of_size(size_bytes: int, sequence: int = 1) -> bytes:
    """An echo write request of exactly `size_bytes` (header included)."""
    text_bytes = size_bytes
    while True:
        frame = request(0, 0, {"d": "y" * text_bytes}, op=2, sequence=sequence)
        if len(frame) == size_bytes:
            return frame
        text_bytes += size_bytes - len(frame)


def body(frames: list[bytes]) -> Any:
    """The decoded map of the only reply frame."""
    assert len(frames) == 1, f"expected one reply, got {len(frames)}"
    return reply(frames[0])[1]


def make_device(
    version: str = "1.0.0",
    *,
    serial: str = "SIM-0001",
    faults: FaultPlan | None = None,
    link: LinkProfile | None = None,
    options: FirmwareOptions = FAST_FIRMWARE,
    memfault_mode: MemfaultMode = MemfaultMode.NORMAL,
    project_key: str = "sim-project-key",
) -> SimDevice:
    """A device running `version`, with fast reboots."""
    identity = DeviceIdentity(serial, "nrf54l15dk", "app", project_key)
    return SimDevice(
        identity,
        firmware_image(version),
        faults=faults,
        link=link,
        options=options,
        memfault_mode=memfault_mode,
    )


def exchange(device: SimDevice, frame: bytes, now_s: float = 0.0) -> list[bytes]:
    """Feed one datagram and return the reply frames (ignoring when they are sent)."""
    return [out.frame for out in device.handle(frame, now_s)]


NEW = build_mcuboot_image("1.1.0", payload_size=3000, seed=5)
NEW_HASH = parse_mcuboot_image(NEW).hash_sha256
OLD_HASH = parse_mcuboot_image(firmware_image("1.0.0")).hash_sha256
CHUNK = 1000


def upload(device: SimDevice, image: bytes = NEW, **first: Any) -> list[Any]:
    """Upload `image` in 1000-byte chunks, following the device's offsets; return every reply."""
    fields = {
        "off": 0,
        "data": image[:CHUNK],
        "len": len(image),
        "sha": hashlib.sha256(image).digest(),
        **first,
    }
    replies = [body(exchange(device, request(1, 1, fields, op=2)))]
    while "off" in replies[-1] and replies[-1]["off"] < len(image):
        off = replies[-1]["off"]
        replies.append(
            body(exchange(device, request(1, 1, {"off": off, "data": image[off : off + CHUNK]}, op=2)))
        )
    return replies
