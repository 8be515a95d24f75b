"""The pipelined uploader against a simulated device in memory: whole images, losses, reboots."""

from __future__ import annotations

from agent.link.image_upload import UploadReport, upload_image
from simulator.device import FaultPlan, LinkProfile
from simulator.image import parse_mcuboot_image
from tests.agent.memory_link import MemoryDevice
from tests.agent.ota_world import image, memory_device

SMALL_LINK = LinkProfile(buf_size_bytes=512, buf_count=4)


async def _upload(device: MemoryDevice, data: bytes) -> UploadReport:
    session = await device.link(timeout_s=0.3).connect()

    async def reconnect() -> None:
        await session.reopen(handshake_timeout_s=0.3)

    try:
        report = await upload_image(
            session,
            data,
            upgrade=True,
            first_timeout_s=1.0,
            chunk_timeout_s=0.2,
            reconnect=reconnect,
        )
    finally:
        await session.close()
    return report


def _staged_hash(device: MemoryDevice) -> bytes | None:
    staged = device.device.slot_image(1)
    return None if staged is None else staged.hash_sha256


async def test_an_image_lands_in_slot_1_byte_for_byte_in_frames_that_fit_the_buffer() -> None:
    """A clean upload sends the image once, never a frame above `buf_size`, and slot 1 holds it."""
    device = memory_device(link=SMALL_LINK)
    data = image("1.1.0")
    report = await _upload(device, data)
    assert report.bytes_sent == len(data) and report.rewinds == 0
    assert report.window == SMALL_LINK.buf_count - 1
    assert _staged_hash(device) == parse_mcuboot_image(data).hash_sha256
    assert device.device.mcuboot.secondary.content[: len(data)] == data
    assert max(len(frame) for frame in device.sent_frames) <= SMALL_LINK.buf_size_bytes


async def test_lost_replies_are_covered_by_the_next_offset_nothing_is_sent_twice() -> None:
    """Replies lost mid-window: later replies carry the device's offset, so no chunk goes twice."""
    device = memory_device(link=SMALL_LINK, faults=FaultPlan(drop_responses=frozenset({6, 14})))
    data = image("1.1.0")
    report = await _upload(device, data)
    assert device.device.counters.replies_dropped == 2
    assert (report.bytes_sent, report.rewinds) == (len(data), 0)
    assert _staged_hash(device) == parse_mcuboot_image(data).hash_sha256


async def test_a_reboot_mid_upload_starts_over_and_completes() -> None:
    """The device reboots at a third of the image (its upload session is lost): start over, finish."""
    data = image("1.1.0")
    device = memory_device(link=SMALL_LINK, faults=FaultPlan(reboot_at_upload_offset=len(data) // 3))
    report = await _upload(device, data)
    assert report.bytes_sent > len(data)
    assert len(device.device.boots) == 1
    assert _staged_hash(device) == parse_mcuboot_image(data).hash_sha256


async def test_a_dropped_link_resumes_by_sha_from_the_device_offset() -> None:
    """The link drops at half the image: after reconnecting, at most the in-flight chunks go again."""
    data = image("1.1.0")
    device = memory_device(link=SMALL_LINK)
    half = len(data) // 2
    device.drop_link_when(lambda sim: sim.upload_session is not None and sim.upload_session.offset >= half)
    report = await _upload(device, data)
    assert device.drops == 1 and report.reconnects == 1
    in_flight_bytes = SMALL_LINK.buf_count * SMALL_LINK.buf_size_bytes
    assert report.bytes_sent <= len(data) + in_flight_bytes
    assert _staged_hash(device) == parse_mcuboot_image(data).hash_sha256
