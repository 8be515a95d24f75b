"""BLE discovery: one bleak scanner per adapter, feeding SMP devices into the inventory.

Devices are recognised by the SMP service UUID in their advertisement, or by a configured name
prefix for firmware that does not advertise it. The `BLEDevice` the scanner found is kept and used
to connect (no second scan per connection), and each adapter caps its concurrent links.
"""

from __future__ import annotations

import asyncio
from typing import Final

import structlog
from bleak import BleakScanner
from bleak.backends.client import BaseBleakClient
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.exc import BleakError

from agent.device_link import TransportLink
from agent.discovery import Inventory
from agent.session import SessionCounters
from agent.settings import BleConfig
from agent.transport.ble import SMP_SERVICE_UUID, AdapterLimits, BleTransport
from schemas import Transport

log = structlog.get_logger("mcufleet.agent.ble")

RESTART_DELAY_S: Final = 5.0


class BleDiscovery:
    """Scans every configured adapter and registers SMP devices with the inventory."""

    def __init__(
        self,
        settings: BleConfig,
        inventory: Inventory,
        *,
        smp_timeout_s: float,
        smp_counters: SessionCounters | None = None,
        scanner_backend: type[BaseBleakScanner] | None = None,
        client_backend: type[BaseBleakClient] | None = None,
    ) -> None:
        """`scanner_backend` and `client_backend` replace BlueZ (the simulated GATT world in tests)."""
        self.settings = settings
        self._inventory = inventory
        self._smp_timeout_s = smp_timeout_s
        self._smp_counters = smp_counters
        self._scanner_backend = scanner_backend
        self._client_backend = client_backend
        self._limits = {
            adapter: AdapterLimits(settings.max_links_per_adapter) for adapter in settings.adapters
        }
        self.advertisements_seen = 0

    def _wanted(self, device: BLEDevice, advertisement: AdvertisementData) -> bool:
        uuids = {uuid.lower() for uuid in advertisement.service_uuids}
        if SMP_SERVICE_UUID in uuids:
            return True
        prefix = self.settings.name_prefix
        name = advertisement.local_name or device.name or ""
        return bool(prefix) and name.startswith(prefix)

    def _on_advertisement(self, adapter: str, device: BLEDevice, advertisement: AdvertisementData) -> None:
        self.advertisements_seen += 1
        if not self._wanted(device, advertisement):
            return
        limits = self._limits[adapter]
        link = TransportLink(
            device.address,
            lambda: BleTransport(
                device,
                pair=self.settings.pair_when_access_denied,
                backend=self._client_backend,
                adapter=limits,
            ),
            timeout_s=self._smp_timeout_s,
            counters=self._smp_counters,
            handshake_timeout_s=self._smp_timeout_s,
        )
        self._inventory.add_endpoint(link, Transport.BLE, advertisement.rssi)

    async def run(self) -> None:
        """Scan on every adapter until cancelled; a failing adapter is retried, never fatal."""
        await asyncio.gather(*(self._scan(adapter) for adapter in self.settings.adapters))

    async def _scan(self, adapter: str) -> None:
        # With a name-prefix fallback the scan cannot filter on the UUID in the controller.
        uuids = None if self.settings.name_prefix else [SMP_SERVICE_UUID]
        while True:
            try:
                scanner = BleakScanner(
                    lambda device, adv: self._on_advertisement(adapter, device, adv),
                    uuids,
                    bluez={"adapter": adapter},
                    backend=self._scanner_backend,
                )
                async with scanner:
                    await asyncio.Event().wait()
            except (BleakError, OSError) as error:
                log.warning("ble scanner failed", adapter=adapter, error=str(error))
                await asyncio.sleep(RESTART_DELAY_S)
