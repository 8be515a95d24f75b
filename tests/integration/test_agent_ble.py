"""The agent over BLE without radio hardware: bleak's `backend=` with the simulated GATT world.

Discovery hears the simulated advertisements, the transport connects with the scanner's BLEDevice,
splits frames into MTU-sized writes and reassembles notifications, and the whole OTA flow runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest

from agent.factory import BleBackends, Transports, build_agent
from agent.settings import BleConfig
from schemas import JobOutcome, ReasonCode, Transport
from simulator.cloud import CloudEmulator
from simulator.device import BootOutcome
from simulator.gatt_bridge import Peripheral, SimulatedGattClient, SimulatedScanner
from tests.harness.broker import MosquittoBroker
from tests.integration.world import (
    WAIT_S,
    agent_settings,
    controller_probe,
    ota_command,
    publish_release,
    simulated_devices,
)

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def peripherals(endpoints: dict[str, tuple[str, int]], mtu: int = 185) -> Iterator[dict[str, str]]:
    """Register one simulated peripheral per device; yields serial -> BLE address."""
    addresses = {}
    for index, (serial, (host, port)) in enumerate(sorted(endpoints.items())):
        address = f"C0:FF:EE:00:00:{index:02X}"
        SimulatedGattClient.register(address, Peripheral(host, port, mtu=mtu, rssi_dbm=-55 - index))
        addresses[serial] = address
    try:
        yield addresses
    finally:
        SimulatedGattClient.unregister_all()


async def test_update_over_simulated_ble(broker: MosquittoBroker, tmp_path: Path) -> None:
    """A device found by BLE scanning is updated end to end through the GATT transport."""
    SimulatedScanner.interval_s = 0.05
    async with (
        CloudEmulator() as cloud,
        simulated_devices(["B1", "B2"]) as devices,
        controller_probe(broker) as probe,
        httpx.AsyncClient() as http,
    ):
        release = publish_release(cloud, "1.1.0")
        settings = msgspec.structs.replace(
            agent_settings("gw-ble", broker, tmp_path / "agent", []),
            ble=BleConfig(enabled=True, adapters=("hci0",), max_links_per_adapter=2),
        )
        with peripherals(dict(devices.endpoints)) as addresses:
            service = build_agent(
                settings,
                http=http,
                transports=Transports(ble=BleBackends(scanner=SimulatedScanner, client=SimulatedGattClient)),
            )
            task = asyncio.create_task(service.run())
            try:
                await probe.wait_for(lambda: {"B1", "B2"} <= set(probe.reports))
                report = probe.reports["B1"]
                assert report.transport is Transport.BLE and report.address == addresses["B1"]
                assert report.rssi_dbm == -55
                probe.send("gw-ble", ota_command("job-ble", "B1", release))
                await probe.wait_for(lambda: "job-ble" in probe.results)
            finally:
                await service.stop()
                await asyncio.wait_for(task, WAIT_S)
    result = probe.results["job-ble"]
    assert (result.outcome, result.reason) == (JobOutcome.SUCCEEDED, ReasonCode.OK)
    device = devices.device("B1")
    assert device.running_version == "1.1.0"
    assert [b.outcome for b in device.boots].count(BootOutcome.SWAPPED) == 1
