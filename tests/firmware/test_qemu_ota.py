"""OTA over serial against real Zephyr 4.4 + MCUboot builds in QEMU, driven through the agent's MQTT path.

The boards have no Memfault group 128: the agent reports them as `no_group` under their serial
identity and verifies an update by the image state alone (slot 0 runs the target hash, confirmed).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec
import pytest

from agent.errors import TransportError
from agent.firmware import inspect_image
from agent.link.device_link import serial_identity, serial_link
from agent.link.image_upload import upload_image
from agent.link.session import SmpSession
from agent.service import AgentService
from agent.settings import DiscoveryConfig, JobsConfig, SerialDevice
from agent.smp import commands
from schemas import JobOutcome, MemfaultAccess, ReasonCode, Transport
from simulator.cloud import CloudEmulator
from tests.firmware.fixtures import FirmwareBuild, build, fixture
from tests.firmware.images import app_body, hanging_app, ram_load_address, resign, sign
from tests.firmware.qemu import QemuDevice, running_board
from tests.harness.broker import MosquittoBroker
from tests.integration.world import (
    HARDWARE,
    PROJECT_KEY,
    ControllerProbe,
    Release,
    agent_settings,
    controller_probe,
    ota_command,
    running_agent,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

M0: Final = "zephyr_4.4.0_smp_server_0eae053d_qemu_cortex_m0_serial.merged.hex"
M0_READY: Final = "smp_sample: build time"
M0_SLOT0_ADDRESS: Final = 0x8000
MPS2_512: Final = "zephyr_4.4.0_smp_server_0eae053d_mps2_an385_serial_recovery_buf512.hex"
MPS2_1024: Final = "zephyr_4.4.0_smp_server_0eae053d_mps2_an385_serial_recovery_buf1024.hex"
JOB_WAIT_S: Final = 180.0


def signed_app(board: FirmwareBuild) -> bytes:
    """The signed app paired with a board's hex (checked against SHA256SUMS)."""
    name = board.artifact.name.replace(".merged.hex", ".hex").replace(".hex", ".signed.bin")
    return fixture(name).read_bytes()


def serve_release(cloud: CloudEmulator, version: str, image: bytes) -> Release:
    """Put `image` behind a loopback HTTP artifact URL (the cloud emulator's)."""
    with contextlib.suppress(Exception):
        cloud.add_project(PROJECT_KEY)
    release = cloud.add_release(PROJECT_KEY, version, {HARDWARE: image})
    return Release(version, image, cloud.artifact_url(release.artifacts[0].id))


@dataclass
class World:
    """A board in QEMU, an agent that reaches it over serial, and a probe standing in for the controller."""

    board: QemuDevice
    agent: AgentService
    probe: ControllerProbe
    cloud: CloudEmulator
    serial: str


@contextlib.asynccontextmanager
async def serial_world(broker: MosquittoBroker, tmp_path: Path, board: QemuDevice) -> AsyncIterator[World]:
    """An agent configured with the board as its one `[[serial_devices]]` entry, the board reported."""
    base = agent_settings("gw-serial", broker, tmp_path / "agent", [])
    settings = msgspec.structs.replace(
        base,
        serial_devices=(SerialDevice(url=board.url),),
        discovery=DiscoveryConfig(refresh_interval_s=60.0, retry_interval_s=0.5, smp_timeout_s=2.0),
        # The shipped timeouts: an emulated board on a loaded 2-core CI machine answers late at times
        # (tighter ones failed there: "no progress at offset 4924 after 6 tries" and a reboot_timeout).
        jobs=JobsConfig(),
    )
    async with CloudEmulator() as cloud, controller_probe(broker) as probe, running_agent(settings) as agent:
        serial = serial_identity(SerialDevice(url=board.url))
        await probe.wait_for(lambda: serial in probe.reports, JOB_WAIT_S)
        yield World(board, agent, probe, cloud, serial)


async def run_job(world: World, job_id: str, release: Release) -> None:
    """Send an OTA command through MQTT and wait for its result."""
    world.probe.send("gw-serial", ota_command(job_id, world.serial, release, deadline_s=600.0))
    await world.probe.wait_for(lambda: job_id in world.probe.results, JOB_WAIT_S)


async def slot_states(board: QemuDevice) -> list[commands.SlotState]:
    """Read the image state over the board's serial link, from the test's own session."""
    session = await serial_link(board.url, timeout_s=3.0).connect()
    try:
        reply = await session.request(commands.encode_state_read)
        return commands.parse_state(reply.raise_for_error())
    finally:
        await session.close()


def running(slots: list[commands.SlotState]) -> commands.SlotState:
    """The image in slot 0."""
    return next(s for s in slots if s.image == 0 and s.slot == 0)


@pytest.mark.parametrize("artifact", [M0, MPS2_1024])
def test_imgtool_reproduces_the_fixture_image_byte_for_byte(artifact: str) -> None:
    """Keyless `imgtool sign` with the fixture's options rebuilds signed.bin exactly."""
    original = signed_app(build(artifact))
    header_bytes, body = app_body(original)
    load_address = ram_load_address(original)
    assert sign(body, "0.0.0", header_bytes=header_bytes, load_address=load_address) == original
    newer = resign(original, "1.1.0")
    assert newer != original and app_body(newer)[1] == body


async def test_a_full_ota_over_serial_swaps_confirms_and_survives_a_reset(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """Download, pipelined upload, test, reset, swap, confirm: success, and 1.1.0 stays after a reset."""
    board_build = build(M0)
    image = resign(signed_app(board_build), "1.1.0")
    async with running_board(board_build, ready_marker=M0_READY) as board:
        async with serial_world(broker, tmp_path, board) as world:
            report = world.probe.reports[world.serial]
            release = serve_release(world.cloud, "1.1.0", image)
            await run_job(world, "job-m0", release)
            result = world.probe.results["job-m0"]
        # The agent has stopped: the test's own session is now the line's only peer.
        assert report.transport is Transport.SERIAL and report.memfault is MemfaultAccess.NO_GROUP
        assert report.smp.buf_size == 384 and report.images[0].version == "0.0.0"
        assert (result.outcome, result.reason, result.running_version) == (
            JobOutcome.SUCCEEDED,
            ReasonCode.OK,
            "1.1.0",
        ), result.detail
        relay = board.relay
        assert relay.max_uploads_in_flight >= 2, "the upload was not pipelined"
        assert max(u.data_bytes for u in relay.uploads) > 256, "frames were not sized to buf_size - 4"
        assert board.count_lines("Starting swap using offset algorithm") == 1
        boots = board.count_lines(M0_READY)
        await board.watchdog_reset()
        await board.wait_for(lambda _: board.count_lines(M0_READY) > boots)
        after = running(await slot_states(board))
        last_boot = board.last_boot()
    assert (after.version, after.confirmed, after.hash_sha256) == (
        "1.1.0",
        True,
        inspect_image(image).image_hash,
    )
    # The reset after the confirm boots 1.1.0 again without a swap back (no revert).
    assert "I: Image version: v1.1.0" in last_boot and not any("Starting swap" in line for line in last_boot)


async def test_an_image_that_never_starts_is_reverted_by_the_watchdog(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """A test image that hangs is reset by the watchdog, MCUboot reverts, and the job fails with a reason."""
    board_build = build(M0)
    original = signed_app(board_build)
    image = hanging_app(original, "1.2.0", slot0_address=M0_SLOT0_ADDRESS)

    def hung_after_the_swap(_: object) -> bool:
        boot = board.last_boot()
        swapped = any("Starting swap" in line for line in boot)
        return swapped and boot[-1].startswith("I: Jumping to the first image slot")

    async with running_board(board_build, ready_marker=M0_READY) as board:
        async with serial_world(broker, tmp_path, board) as world:
            release = serve_release(world.cloud, "1.2.0", image)
            world.probe.send("gw-serial", ota_command("job-hang", world.serial, release, deadline_s=600.0))
            # MCUboot swaps and jumps to the test image, which never starts: the watchdog fires.
            await board.wait_for(hung_after_the_swap, JOB_WAIT_S)
            await board.watchdog_reset()
            await world.probe.wait_for(lambda: "job-hang" in world.probe.results, JOB_WAIT_S)
            result = world.probe.results["job-hang"]
        slots = await slot_states(board)
    # Never a success: the job ends reverted (a failure outcome), with the reason and what booted.
    assert (result.outcome, result.reason) == (JobOutcome.REVERTED, ReasonCode.REVERTED), result
    assert "0.0.0" in result.detail and result.running_version == "0.0.0"
    assert running(slots).version == "0.0.0" and running(slots).confirmed


async def test_a_link_drop_at_half_the_upload_resumes_from_the_device_offset(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """The serial link is cut mid-upload; the agent reconnects and continues where the device stopped."""
    board_build = build(M0)
    image = resign(signed_app(board_build), "1.3.0")
    half = len(image) // 2
    async with running_board(board_build, ready_marker=M0_READY) as board:
        async with serial_world(broker, tmp_path, board) as world:
            release = serve_release(world.cloud, "1.3.0", image)
            world.probe.send("gw-serial", ota_command("job-drop", world.serial, release, deadline_s=600.0))
            await board.wait_for(lambda relay: any(u.offset >= half for u in relay.uploads), JOB_WAIT_S)
            connection = board.relay.uploads[-1].connection
            board.drop_link()
            await world.probe.wait_for(lambda: "job-drop" in world.probe.results, JOB_WAIT_S)
            result = world.probe.results["job-drop"]
        slots = await slot_states(board)
    assert result.outcome is JobOutcome.SUCCEEDED, result.detail
    before = [u for u in board.relay.uploads if u.connection == connection]
    after = [u for u in board.relay.uploads if u.connection > connection]
    assert before and after, "the drop did not interrupt the upload"
    # Resumed, not restarted: the new link opens with one first chunk (offset 0, the file's sha:
    # Zephyr answers with the offset it holds), then every request streams from about half on (a
    # rewind goes back to the device's offset, which only grows). A restart from zero would stream
    # offsets below half again and send the whole image a second time.
    assert after[0].offset == 0 and [u.offset for u in after].count(0) == 1, after[:3]
    streamed = after[1:]
    # When the agent sent offset `half`, at most a window of requests (3 x 380 bytes) was unanswered.
    assert min(u.offset for u in streamed) >= half - 4 * 380, streamed[:3]
    assert sum(u.data_bytes for u in streamed) < len(image) - half // 2
    assert running(slots).version == "1.3.0" and running(slots).confirmed


@pytest.mark.parametrize("artifact", [MPS2_512, MPS2_1024])
async def test_frames_fill_a_larger_buffer_on_mps2_and_the_image_boots(artifact: str) -> None:
    """mps2-an385 with a 512- or 1024-byte buffer: the agent's upload fills buf_size - 4 and MCUboot boots it.

    These builds RAM-load (MCUboot runs the newest valid slot; `test` and `confirm` answer rc 8), so
    the agent's OTA flow, which test-boots and confirms, does not fit them yet: this drives the
    agent's session and uploader over the serial link instead.
    """
    board_build = build(artifact)
    image = resign(signed_app(board_build), "2.0.0")
    async with running_board(board_build, ready_marker=None) as board:
        session = await serial_link(board.url, timeout_s=5.0).connect()
        try:
            assert session.params is not None and session.params.buf_size == board_build.buf_size
            assert session.transport.max_frame_bytes == board_build.buf_size - 4
            report = await upload_image(session, image, upgrade=False, first_timeout_s=30.0)
            staged = next(s for s in await _states(session) if s.slot == 1)
            await session.request(commands.encode_reset)
        finally:
            await session.close()
        booted = await _wait_for_active(board, "2.0.0")
    assert report.window > 1 and report.frame_limit_bytes == board_build.buf_size - 4
    assert board.relay.max_uploads_in_flight >= 2
    sizes = [u.data_bytes for u in board.relay.uploads]
    # The largest chunks fill the frame (less the SMP header and CBOR keys), never beyond it.
    assert board_build.buf_size - 4 - 64 < max(sizes) < board_build.buf_size - 4, sizes[:5]
    assert staged.hash_sha256 == inspect_image(image).image_hash
    assert booted.confirmed and booted.hash_sha256 == inspect_image(image).image_hash


async def _states(session: SmpSession) -> list[commands.SlotState]:
    reply = await session.request(commands.encode_state_read)
    return commands.parse_state(reply.raise_for_error())


async def _wait_for_active(board: QemuDevice, version: str) -> commands.SlotState:
    """The active slot once the board answers again after its reset.

    These builds print nothing on the console, so there is no boot banner to await: poll.
    """
    async with asyncio.timeout(60.0):
        while True:
            with contextlib.suppress(TransportError):
                session = await serial_link(board.url, timeout_s=1.0).connect(0.5)
                try:
                    active = next((s for s in await _states(session) if s.active), None)
                finally:
                    await session.close()
                if active is not None and active.version == version:
                    return active
            await asyncio.sleep(0.2)
