"""The agent's uploader on simulated devices with the shared request/reply pool, over real UDP sockets."""

from dataclasses import replace

from agent.link.image_upload import UploadReport, upload_image
from agent.link.session import SmpSession
from agent.link.transport.udp import UdpTransport
from simulator.device import LinkProfile, SimDevice
from simulator.image import build_mcuboot_image, parse_mcuboot_image
from simulator.server import FleetServer
from tests.simulator.frames import FAST_FIRMWARE, make_device

IMAGE = build_mcuboot_image("1.1.0", payload_size=60_000, seed=11)
PROCESSING_S = 0.002
"""Each request takes 2 ms to handle (a flash write), so requests sent together find it busy."""


async def _upload(device: SimDevice) -> UploadReport:
    async with FleetServer([device], base_host="127.0.0.1", port_per_device=True) as server:
        host, port = server.endpoints[device.identity.serial]
        session = SmpSession(UdpTransport(host, port))
        await session.open()
        await session.handshake()
        try:
            return await upload_image(session, IMAGE, upgrade=False, chunk_timeout_s=2.0)
        finally:
            await session.close()


def _device(link: LinkProfile) -> SimDevice:
    return make_device(link=link, options=replace(FAST_FIRMWARE, processing_s=PROCESSING_S))


async def test_a_pool_smaller_than_reported_shrinks_the_window_and_the_upload_completes() -> None:
    """Told 4 buffers but holding 2, the device drops; the window falls from 3 to 1 and the image arrives."""
    device = _device(LinkProfile(buf_count=2, reported_buf_count=4))
    report = await _upload(device)
    secondary = device.slot_image(1)
    assert secondary is not None and secondary.hash_sha256 == parse_mcuboot_image(IMAGE).hash_sha256
    assert report.window == 3
    assert report.window_smallest == 1
    assert device.counters.no_buffer_drops > 0
    assert report.overtaken > 0  # drops were noticed from the next reply, not waited out
    assert report.window_decreases >= 1


async def test_a_pool_as_large_as_reported_keeps_buf_count_minus_one_in_flight_without_a_drop() -> None:
    """With 4 buffers, 3 requests in flight fit: one processed (request + reply buffer), two waiting."""
    device = _device(LinkProfile(buf_count=4))
    report = await _upload(device)
    assert device.counters.no_buffer_drops == 0
    assert (report.window, report.window_smallest, report.window_final) == (3, 3, 3)
    assert report.bytes_sent == len(IMAGE)
