"""The agent over BLE as a gateway runs it, without a radio: bleak's `backend=` and the simulated GATT world.

Discovery hears the simulated advertisements, the transport connects with the scanner's BLEDevice,
and the whole OTA flow runs through MQTT. Each test drives one behaviour a real BlueZ gateway needs:
rotating private addresses, a GATT database that changes with the image, a duty-cycled passive
scan, pairing only after rc 11, reconnecting on the advertisement after a reset, frames sized to
what the device reassembles, and a link drop mid-upload.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import msgspec
import pytest

from agent.ble_discovery import BleDiscovery, or_patterns
from agent.device_probe import fallback_serial
from agent.factory import BleBackends, Transports, build_agent
from agent.service import AgentService
from agent.settings import BleConfig
from schemas import JobOutcome, MemfaultAccess, ReasonCode, Transport
from simulator.cloud import CloudEmulator
from simulator.device import BootOutcome, FirmwareOptions
from simulator.fleet import DeviceSpec, Fleet, firmware_image
from simulator.gatt_bridge import (
    Peripheral,
    PeripheralState,
    ScanLog,
    SimDeviceRadio,
    SimulatedGattClient,
    SimulatedScanner,
)
from simulator.server import FleetServer
from tests.harness.broker import MosquittoBroker
from tests.integration.world import (
    FAST_FIRMWARE,
    HARDWARE,
    PROJECT_KEY,
    WAIT_S,
    ControllerProbe,
    Release,
    agent_settings,
    controller_probe,
    ota_command,
    publish_release,
)

pytestmark = pytest.mark.integration

MTU = 185
RELEASE_PAYLOAD_BYTES = 24_000
WRITE_BYTES = MTU - 3
PeripheralFor = Callable[[FleetServer, str], Peripheral]


@dataclass
class BleWorld:
    """A running agent with BLE discovery, its simulated devices and their peripherals."""

    probe: ControllerProbe
    devices: FleetServer
    service: AgentService
    release: Release
    peripherals: dict[str, PeripheralState]

    async def update(self, serial: str, job_id: str) -> None:
        """Send an OTA command for `serial` and wait for its result."""
        await self.probe.wait_for(lambda: serial in self.probe.reports)
        self.probe.send("gw-ble", ota_command(job_id, serial, self.release))
        await self.probe.wait_for(lambda: job_id in self.probe.results)


def plain(server: FleetServer, serial: str) -> Peripheral:
    """A peripheral always on air, with one GATT database, that reassembles frames."""
    host, port = server.endpoints[serial]
    return Peripheral(host, port, mtu=MTU)


def on_radio(**options: object) -> PeripheralFor:
    """Peripherals that follow their device's reboots and image (and take `options`)."""

    def build(server: FleetServer, serial: str) -> Peripheral:
        return replace(plain(server, serial), radio=SimDeviceRadio(server, serial), **options)  # type: ignore[arg-type]

    return build


@contextlib.asynccontextmanager
async def ble_world(
    broker: MosquittoBroker,
    tmp_path: Path,
    serials: list[str],
    *,
    ble: BleConfig | None = None,
    peripheral: PeripheralFor = plain,
    firmware: FirmwareOptions = FAST_FIRMWARE,
) -> AsyncIterator[BleWorld]:
    """Devices running 1.0.0 reachable only over simulated BLE, an agent scanning for them, 1.1.0 released."""
    SimulatedScanner.interval_s = 0.05
    fleet = Fleet(
        tuple(
            DeviceSpec(
                s,
                image_version="1.0.0",
                firmware=firmware,
                project_key=PROJECT_KEY,
                hardware_version=HARDWARE,
            )
            for s in serials
        )
    )
    config = ble or BleConfig()
    settings = msgspec.structs.replace(
        agent_settings("gw-ble", broker, tmp_path / "agent", []),
        ble=msgspec.structs.replace(config, enabled=True, adapters=("hci0",), max_links_per_adapter=2),
    )
    async with (
        CloudEmulator() as cloud,
        FleetServer(fleet, base_host="127.0.0.1", port_per_device=True) as devices,
        controller_probe(broker) as probe,
    ):
        release = publish_release(cloud, "1.1.0", RELEASE_PAYLOAD_BYTES)
        with registered(devices, serials, peripheral) as states:
            service = build_agent(
                settings,
                transports=Transports(ble=BleBackends(scanner=SimulatedScanner, client=SimulatedGattClient)),
            )
            task = asyncio.create_task(service.run())
            try:
                yield BleWorld(probe, devices, service, release, states)
            finally:
                await service.stop()
                await asyncio.wait_for(task, WAIT_S)


@contextlib.contextmanager
def registered(
    server: FleetServer, serials: list[str], peripheral: PeripheralFor
) -> Iterator[dict[str, PeripheralState]]:
    """Register one simulated peripheral per device; yields serial -> its state."""
    states = {}
    for index, serial in enumerate(serials):
        address = f"C0:FF:EE:00:00:{index:02X}"
        base = peripheral(server, serial)
        states[serial] = SimulatedGattClient.register(address, replace(base, rssi_dbm=-55 - index))
    try:
        yield states
    finally:
        SimulatedGattClient.unregister_all()
        SimulatedScanner.log = None


def succeeded(world: BleWorld, job_id: str, serial: str) -> None:
    """The job succeeded and the device runs 1.1.0 after exactly one swap."""
    result = world.probe.results[job_id]
    assert (result.outcome, result.reason) == (JobOutcome.SUCCEEDED, ReasonCode.OK), result.detail
    device = world.devices.device(serial)
    assert device.running_version == "1.1.0"
    assert [b.outcome for b in device.boots].count(BootOutcome.SWAPPED) == 1


async def test_update_over_simulated_ble(broker: MosquittoBroker, tmp_path: Path) -> None:
    """A device found by BLE scanning is updated end to end, frames spanning ATT writes it reassembles."""
    async with ble_world(broker, tmp_path, ["B1", "B2"]) as world:
        await world.probe.wait_for(lambda: {"B1", "B2"} <= set(world.probe.reports))
        report = world.probe.reports["B1"]
        assert report.transport is Transport.BLE and report.address == world.peripherals["B1"].address
        assert report.rssi_dbm == -55
        await world.update("B1", "job-ble")
    succeeded(world, "job-ble", "B1")
    state = world.peripherals["B1"]
    assert state.largest_frame_bytes > WRITE_BYTES
    assert state.pairings == 0


async def test_rotating_private_address_stays_one_device(broker: MosquittoBroker, tmp_path: Path) -> None:
    """A device back from its swap at a new private address stays one device; the job follows it."""
    async with ble_world(broker, tmp_path, ["B1"], peripheral=on_radio(private_address=True)) as world:
        await world.update("B1", "job-rpa")
        state = world.peripherals["B1"]
        await world.probe.wait_for(lambda: world.probe.reports["B1"].address == state.address)
        inventory = world.service.inventory
        assert len(state.addresses) >= 2
        assert inventory.addresses_of("B1") == [state.address]
        assert list(inventory.devices) == ["B1"]
    succeeded(world, "job-rpa", "B1")


async def test_gatt_database_change_after_swap_is_rediscovered(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """A swap that moves the SMP characteristic (stale BlueZ cache) is rediscovered, not a failed job."""
    async with ble_world(broker, tmp_path, ["B1"], peripheral=on_radio()) as world:
        await world.update("B1", "job-gatt")
    succeeded(world, "job-gatt", "B1")
    state = world.peripherals["B1"]
    assert len(state.databases) == 2
    assert state.stale_writes >= 1
    assert isinstance(world.service.ble, BleDiscovery)
    assert world.service.ble.counters.rediscoveries >= 1


async def test_scan_is_duty_cycled_and_passive(broker: MosquittoBroker, tmp_path: Path) -> None:
    """Scans last `scan_window_s` every `scan_interval_s`, passively through or-patterns, and find devices."""
    window_s, interval_s = 0.3, 0.6
    SimulatedScanner.log = log = ScanLog()
    ble = BleConfig(scan_window_s=window_s, scan_interval_s=interval_s, passive_scan=True)
    async with ble_world(broker, tmp_path, ["B1"], ble=ble) as world:
        await world.probe.wait_for(lambda: "B1" in world.probe.reports)
        async with asyncio.timeout(WAIT_S):
            while sum(r.stopped_at_s is not None for r in log.records) < 3:
                await log.changed.wait()
    records = log.records
    assert all(r.mode == "passive" and r.or_patterns == or_patterns("") for r in records)
    tolerance_s = 0.01
    finished = [r for r in records if r.stopped_at_s is not None]
    for record in finished:
        assert (
            record.stopped_at_s is not None
            and record.stopped_at_s - record.started_at_s >= window_s - tolerance_s
        )
    for earlier, later in zip(finished, records[1:], strict=False):
        assert earlier.stopped_at_s is not None
        assert later.started_at_s - earlier.stopped_at_s >= interval_s - window_s - tolerance_s


async def test_pairs_only_after_access_denied(broker: MosquittoBroker, tmp_path: Path) -> None:
    """`pair_when_access_denied` pairs after the first rc 11 only; a device that never denies is unpaired."""

    def peripheral(server: FleetServer, serial: str) -> Peripheral:
        denied = frozenset({0, 1, 128}) if serial == "B1" else frozenset()
        return replace(plain(server, serial), access_denied_groups=denied)

    ble = BleConfig(pair_when_access_denied=True)
    async with ble_world(broker, tmp_path, ["B1", "B2"], ble=ble, peripheral=peripheral) as world:
        await world.probe.wait_for(lambda: {"B1", "B2"} <= set(world.probe.reports))
        assert world.probe.reports["B1"].memfault is MemfaultAccess.OK
        assert world.probe.reports["B2"].memfault is MemfaultAccess.OK
        await world.update("B1", "job-pair")
    succeeded(world, "job-pair", "B1")
    denying, open_device = world.peripherals["B1"], world.peripherals["B2"]
    assert denying.events[0] == "denied"
    assert denying.pairings == 1
    assert open_device.pairings == 0 and open_device.access_denied == 0


async def test_access_denied_without_pairing_is_reported(broker: MosquittoBroker, tmp_path: Path) -> None:
    """Without `pair_when_access_denied`, rc 11 from group 128 is reported as access denied, unpaired."""

    def peripheral(server: FleetServer, serial: str) -> Peripheral:
        return replace(plain(server, serial), access_denied_groups=frozenset({128}))

    async with ble_world(broker, tmp_path, ["B1"], peripheral=peripheral) as world:
        serial = fallback_serial(Transport.BLE, world.peripherals["B1"].address)
        await world.probe.wait_for(lambda: serial in world.probe.reports)
        report = world.probe.reports[serial]
    assert report.memfault is MemfaultAccess.ACCESS_DENIED
    assert world.peripherals["B1"].pairings == 0


async def test_reconnects_on_advertisement_after_reset(broker: MosquittoBroker, tmp_path: Path) -> None:
    """After a reset the agent connects on the device's advertisement (scanning on demand), not mid-boot."""
    slow_boot = replace(FAST_FIRMWARE, boot_time_s=1.0)
    ble = BleConfig(scan_window_s=0.5, scan_interval_s=60.0)
    async with ble_world(
        broker, tmp_path, ["B1"], ble=ble, peripheral=on_radio(), firmware=slow_boot
    ) as world:
        await world.update("B1", "job-adv")
    succeeded(world, "job-adv", "B1")
    state = world.peripherals["B1"]
    assert state.failed_connects == 0
    assert state.connect_attempts == state.connects


async def test_frames_fit_one_write_without_reassembly(broker: MosquittoBroker, tmp_path: Path) -> None:
    """With `reassembly = "never"` every frame fits one ATT write and a non-reassembling device updates."""

    def peripheral(server: FleetServer, serial: str) -> Peripheral:
        return replace(plain(server, serial), reassembly=False)

    ble = BleConfig(reassembly="never")
    async with ble_world(broker, tmp_path, ["B1"], ble=ble, peripheral=peripheral) as world:
        await world.update("B1", "job-mtu")
    succeeded(world, "job-mtu", "B1")
    state = world.peripherals["B1"]
    assert state.incomplete_writes == 0
    assert 0 < state.largest_frame_bytes <= WRITE_BYTES


async def test_link_drop_mid_upload_resumes_from_device_offset(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """A link drop at half the upload resumes from the device's offset, never from zero."""
    half = len(firmware_image("1.1.0", RELEASE_PAYLOAD_BYTES)) // 2
    peripheral = on_radio(drop_link_at_upload_offset=half)
    async with ble_world(broker, tmp_path, ["B1"], peripheral=peripheral) as world:
        assert len(world.release.image) // 2 == half
        await world.update("B1", "job-drop")
    succeeded(world, "job-drop", "B1")
    state = world.peripherals["B1"]
    assert state.link_drops >= 1  # the fault, then the reboots
    acked_before = max(offset for drops, offset in state.upload_reply_offsets if drops == 0)
    assert acked_before >= half // 2
    after = [offset for drops, offset in state.upload_reply_offsets if drops == 1]
    assert after[0] >= acked_before
    resumed = [w for w in state.upload_writes if w.after_drops == 1 and not w.first]
    assert resumed and min(w.offset for w in resumed) >= acked_before
