"""The fleet over real UDP: smpclient runs full updates, reverts and faults against simulated devices."""

import asyncio
import contextlib
import hashlib
import random
import socket
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import cast

import pytest
from smp.error import MGMT_ERR
from smp.image_management import ImageStatesReadResponse
from smpclient import SMPClient
from smpclient.exceptions import SMPValidationException
from smpclient.generics import success
from smpclient.requests.image_management import ImageStatesRead, ImageStatesWrite
from smpclient.requests.os_management import EchoWrite, ResetWrite
from smpclient.transport.udp import SMPUDPTransport

from simulator.device import BootOutcome, DevicePhase, FaultPlan, MemfaultMode, SimDevice
from simulator.device.calibration import native_sim_udp_device
from simulator.errors import ServerError
from simulator.fleet import DeviceSpec, Fleet
from simulator.image import build_mcuboot_image, parse_mcuboot_image
from simulator.server import FleetServer
from tests.simulator.clients import (
    DeviceInfoRead,
    MemfaultErrorV1,
    MemfaultErrorV2,
    MemfaultRC,
    ProjectKeyRead,
    RawUdpClient,
    smp_client,
)
from tests.simulator.frames import FAST_FIRMWARE, body, reply, request

pytestmark = pytest.mark.integration

NEW = build_mcuboot_image("1.1.0", payload_size=20_000, seed=11)
NEW_HASH = parse_mcuboot_image(NEW).hash_sha256
SERIALS = ("SIM-A", "SIM-B", "SIM-C")


@pytest.fixture
async def server() -> AsyncIterator[FleetServer]:
    """Three fast-booting devices on 127.0.0.1, each on its own ephemeral port."""
    fleet = Fleet(tuple(DeviceSpec(serial, firmware=FAST_FIRMWARE) for serial in SERIALS))
    async with FleetServer(fleet, base_host="127.0.0.1", port_per_device=True) as running:
        yield running


@pytest.fixture
async def client(server: FleetServer) -> AsyncIterator[SMPClient]:
    """An smpclient connected to SIM-A."""
    async with smp_client(server.endpoints["SIM-A"]) as connected:
        yield connected


def uploads_of(client: SMPClient, image: bytes) -> AsyncGenerator[int, None]:
    """`client.upload(image)` with its real type, so it can be closed part-way."""
    return cast("AsyncGenerator[int, None]", client.upload(image))


async def read_state(client: SMPClient) -> list[tuple[int, str, bool, bool]]:
    """(slot, version, active, confirmed) per slot, through smpclient's models."""
    response = await client.request(ImageStatesRead())
    assert isinstance(response, ImageStatesReadResponse)
    return [
        (image.slot, image.version, bool(image.active), bool(image.confirmed)) for image in response.images
    ]


async def upload_test_and_reset(client: SMPClient, server: FleetServer, device: SimDevice) -> None:
    """Upload NEW, mark it for test, reset, and wait until the device has booted."""
    offsets = [offset async for offset in client.upload(NEW)]
    assert offsets[-1] == len(NEW)
    written = await client.request(ImageStatesWrite(hash=NEW_HASH))
    assert success(written)
    boots = len(device.boots)
    assert success(await client.request(ResetWrite()))
    await server.wait_until(
        lambda: len(device.boots) > boots and device.phase is DevicePhase.RUNNING, timeout_s=5
    )


async def test_full_update_test_reset_confirm(server: FleetServer, client: SMPClient) -> None:
    """Stock smpclient uploads, tests, resets and confirms; the device then reports the new version."""
    device = server.device("SIM-A")
    assert await read_state(client) == [(0, "1.0.0", True, True)]
    await upload_test_and_reset(client, server, device)
    assert await read_state(client) == [(0, "1.1.0", True, False), (1, "1.0.0", False, True)]
    assert success(await client.request(ImageStatesWrite(confirm=True)))
    assert await read_state(client) == [(0, "1.1.0", True, True), (1, "1.0.0", False, False)]
    info = await client.request(DeviceInfoRead())
    assert success(info)
    assert (info.device_serial, info.current_version) == ("SIM-A", "1.1.0")


async def test_revert_when_not_confirmed(server: FleetServer, client: SMPClient) -> None:
    """Without a confirm, a second reset brings the old image back."""
    device = server.device("SIM-A")
    await upload_test_and_reset(client, server, device)
    assert success(await client.request(ResetWrite()))
    await server.wait_until(
        lambda: len(device.boots) == 2 and device.phase is DevicePhase.RUNNING, timeout_s=5
    )
    assert device.boots[-1].outcome is BootOutcome.REVERTED
    assert await read_state(client) == [(0, "1.0.0", True, True), (1, "1.1.0", False, False)]


async def test_bad_build_reverts_by_itself(server: FleetServer, client: SMPClient) -> None:
    """A build that never comes up leaves the device on its old image after the test reset."""
    device = server.device("SIM-A")
    device.faults = FaultPlan(bad_build_versions=frozenset({"1.1.0"}))
    await upload_test_and_reset(client, server, device)
    assert device.boots[-1].outcome is BootOutcome.BAD_BUILD_REVERTED
    assert await read_state(client) == [(0, "1.0.0", True, True), (1, "1.1.0", False, False)]


async def test_resume_by_sha(server: FleetServer, client: SMPClient) -> None:
    """An upload abandoned after a few chunks resumes where the device stopped when re-run."""
    async with contextlib.aclosing(uploads_of(client, NEW)) as first_run:
        async for offset in first_run:
            if offset > 5000:
                break
    stopped_at = server.device("SIM-A").upload_session
    assert stopped_at is not None and stopped_at.offset > 5000
    second_run = [offset async for offset in client.upload(NEW)]
    assert second_run[0] == stopped_at.offset
    assert second_run[-1] == len(NEW)


async def test_out_of_order_chunk_over_udp(server: FleetServer) -> None:
    """A chunk at the wrong offset is answered with the offset the device expects."""
    raw = await RawUdpClient.connect(server.endpoints["SIM-B"])
    try:
        sha = hashlib.sha256(NEW).digest()
        first = request(1, 1, {"off": 0, "data": NEW[:1000], "len": len(NEW), "sha": sha}, op=2)
        assert reply(await raw.exchange(first))[1] == {"off": 1000}
        skipped = request(1, 1, {"off": 3000, "data": NEW[3000:4000]}, op=2, sequence=2)
        header, fields = reply(await raw.exchange(skipped))
        assert (header[5], fields) == (2, {"off": 1000})
    finally:
        raw.close()


async def test_memfault_group_through_smpclient(server: FleetServer) -> None:
    """Group 128 parses with the SDK plugin's models: info, key, missing key, denied access, no group."""
    device = server.device("SIM-B")
    async with smp_client(server.endpoints["SIM-B"]) as client:
        key = await client.request(ProjectKeyRead())
        assert success(key) and key.project_key == "sim-project-key"
        device.memfault_mode = MemfaultMode.NO_PROJECT_KEY
        missing = await client.request(ProjectKeyRead())
        assert isinstance(missing, MemfaultErrorV2) and missing.err.rc is MemfaultRC.NO_PROJECT_KEY
        device.memfault_mode = MemfaultMode.ACCESS_DENIED
        denied = await client.request(DeviceInfoRead())
        assert isinstance(denied, MemfaultErrorV1) and denied.rc is MGMT_ERR.EACCESSDENIED
        device.memfault_mode = MemfaultMode.GROUP_ABSENT
        absent = await client.request(DeviceInfoRead())
        assert isinstance(absent, MemfaultErrorV1) and absent.rc is MGMT_ERR.ENOTSUP


async def test_dropped_reply_times_out_and_the_next_request_works(server: FleetServer) -> None:
    """With the first reply after connect dropped, that request times out and the next one succeeds."""
    server.device("SIM-C").faults = FaultPlan(drop_responses=frozenset({2}))
    async with smp_client(server.endpoints["SIM-C"], timeout_s=0.3) as client:
        with pytest.raises(TimeoutError):
            await client.request(EchoWrite(d="lost"))
        echoed = await client.request(EchoWrite(d="found"))
        assert success(echoed) and echoed.r == "found"


async def test_delayed_reply_is_sent_late(server: FleetServer) -> None:
    """A delayed reply leaves the server only after its delay (scheduled on the event loop)."""
    server.device("SIM-C").faults = FaultPlan(delay_responses_s={1: 0.3})
    raw = await RawUdpClient.connect(server.endpoints["SIM-C"])
    try:
        loop = asyncio.get_running_loop()
        sent_s = loop.time()
        assert body([await raw.exchange(request(0, 6))]) == {"buf_size": 2048, "buf_count": 4}
        assert loop.time() - sent_s >= 0.29
    finally:
        raw.close()


async def test_silence_mid_upload_then_resume(server: FleetServer, client: SMPClient) -> None:
    """The device goes silent at an offset; once it answers again the upload resumes there."""
    device = server.device("SIM-A")
    device.faults = FaultPlan(silent_at_upload_offset=8000, silent_duration_s=0.3)
    with pytest.raises(TimeoutError):
        async for _ in client.upload(NEW, subsequent_timeout_s=0.2):
            pass
    session = device.upload_session
    assert session is not None
    resume_at = session.offset
    assert 8000 <= resume_at < 8000 + 1500  # the chunk that reached the offset was dropped
    await server.wait_until(lambda: device.phase is DevicePhase.RUNNING, timeout_s=2)
    offsets = [offset async for offset in client.upload(NEW)]
    assert offsets[0] == resume_at
    assert offsets[-1] == len(NEW)


async def test_reboot_mid_upload_restarts_the_upload(server: FleetServer, client: SMPClient) -> None:
    """A reboot mid-upload loses the session; the next upload starts from the first chunk again."""
    device = server.device("SIM-A")
    device.faults = FaultPlan(reboot_at_upload_offset=6000)
    with pytest.raises(TimeoutError):
        async for _ in client.upload(NEW, subsequent_timeout_s=0.2):
            pass
    await server.wait_until(lambda: device.phase is DevicePhase.RUNNING, timeout_s=2)
    assert device.upload_session is None
    offsets = [offset async for offset in client.upload(NEW)]
    assert offsets[0] < 1500 and offsets[-1] == len(NEW)


async def test_slow_erase_holds_the_first_chunk(server: FleetServer, client: SMPClient) -> None:
    """The first chunk's reply waits for the erase delay; the upload still completes."""
    server.device("SIM-A").faults = FaultPlan(first_chunk_erase_delay_s=0.4)
    loop = asyncio.get_running_loop()
    started_s = loop.time()
    uploads = uploads_of(client, NEW)
    async with contextlib.aclosing(uploads):
        first = await anext(uploads)
        assert loop.time() - started_s >= 0.39
        assert first < len(NEW)


async def test_legacy_rc_breaks_strict_client_models(server: FleetServer, client: SMPClient) -> None:
    """`rc: 0` in success replies fails smp's strict group 128 model, while upload's model allows it."""
    server.device("SIM-A").faults = FaultPlan(legacy_rc=True)
    with pytest.raises(SMPValidationException):
        await client.request(DeviceInfoRead())
    offsets = [offset async for offset in client.upload(NEW)]
    assert offsets[-1] == len(NEW)


async def test_a_burst_queued_at_once_is_read_as_the_link_spaces_it_however_slow_the_loop() -> None:
    """A queued burst is fed at one time: a loop slower than a request still gets 0, 2, 4 answered."""
    device = native_sim_udp_device()
    async with FleetServer([device], base_host="127.0.0.1", port_per_device=True) as server:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.connect(server.endpoints[device.identity.serial])
        turn: list[asyncio.Handle] = []

        def slow_turn() -> None:
            time.sleep(0.005)  # a loaded machine: every turn of the loop takes 5 ms
            turn[:] = [loop.call_soon(slow_turn)]

        slow_turn()
        try:
            for sequence in range(5):
                sock.send(request(0, 0, {"d": "x"}, op=2, sequence=sequence))
            await server.wait_until(lambda: device.counters.datagrams_received == 5, timeout_s=5)
        finally:
            turn[0].cancel()
        try:
            async with asyncio.timeout(5):
                answered = [reply(await loop.sock_recv(sock, 2048))[0][5] for _ in range(3)]
        finally:
            sock.close()
    assert answered == [0, 2, 4]
    assert device.counters.no_buffer_drops == 2


async def test_loopback_address_per_device_on_port_1337() -> None:
    """In the default mode each device has its own 127.x address on port 1337, so stock smpclient works."""
    rng = random.Random()
    base = f"127.{rng.randint(64, 250)}.{rng.randint(0, 255)}.{rng.randint(1, 200)}"
    fleet = Fleet(tuple(DeviceSpec(serial, firmware=FAST_FIRMWARE) for serial in SERIALS))
    async with FleetServer(fleet, base_host=base) as server:
        hosts = [server.endpoints[serial] for serial in SERIALS]
        assert [port for _, port in hosts] == [1337] * 3
        assert len({host for host, _ in hosts}) == 3
        async with SMPClient(SMPUDPTransport(), hosts[2][0], timeout_s=2.0) as client:
            info = await client.request(DeviceInfoRead())
            assert success(info) and info.device_serial == "SIM-C"


async def test_server_lifecycle_errors(server: FleetServer) -> None:
    """Starting twice, an unknown serial and a wait that never comes true are reported."""
    with pytest.raises(ServerError):
        await server.start()
    with pytest.raises(ServerError):
        server.device("nope")
    with pytest.raises(TimeoutError):
        await server.wait_until(lambda: False, timeout_s=0.05)
