"""BLE discovery: bleak scanners per adapter, duty-cycled, feeding SMP devices into the inventory.

Devices are recognised by the SMP service UUID in their advertisement, or by a configured name
prefix for firmware that does not advertise it. Each address gets a `BleLink`, which keeps the
latest `BLEDevice` (no second scan per connection) and whether the device has advertised since it
last went away; the inventory identifies devices by their serial, and when a device's private
address rotates it moves the device to the new link and makes the old one follow it.

Scanning runs for `scan_window_s` out of every `scan_interval_s` (continuously when the window
fills the interval), actively or passively, and also whenever a link waits for its device to
advertise again (after a reset or a dropped link). The duty cycle is the application's: bleak has
no scan interval or window arguments (the controller's own LE scan timing is BlueZ's main.conf,
`[LE] ScanIntervalDiscovery`/`ScanWindowDiscovery`, `...AdvMonitoring` for passive scans), so
the scanner is started and stopped. Passive scanning on BlueZ needs bleak's
`or_patterns` (BlueZ's advertisement monitor; BlueZ >= 5.56 with `--experimental`, Linux >= 5.10):
the SMP service UUID as the first 128-bit UUID of the advertisement, and the name prefix when one
is configured. Passive scans hear no scan responses, so a name or UUID carried only there is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Iterator
from typing import Final

import structlog
from bleak import BleakScanner
from bleak.args.bluez import BlueZScannerArgs, OrPattern
from bleak.assigned_numbers import AdvertisementDataType
from bleak.backends.client import BaseBleakClient
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.exc import BleakError

from agent.errors import DeviceUnreachable
from agent.inventory import Inventory
from agent.link.device_link import DeviceLink, TransportLink
from agent.link.session import SessionCounters, SmpSession
from agent.link.transport.base import SmpTransport
from agent.link.transport.ble import SMP_SERVICE_UUID, AdapterLimits, BleCounters, BleTransport, Reassembly
from agent.settings import BleConfig
from schemas import Transport

log = structlog.get_logger("mcufleet.agent.ble")

RESTART_DELAY_S: Final = 5.0
RETIRED_ADDRESSES_KEPT: Final = 1024


class ScanDemand:
    """Links waiting for an advertisement: while any waits, the scanners keep scanning."""

    def __init__(self) -> None:
        """Nobody waits yet."""
        self._waiting = 0
        self.wanted = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()

    @contextlib.contextmanager
    def scanning(self) -> Iterator[None]:
        """Keep the scanners on for the duration of the block."""
        self._waiting += 1
        self.wanted.set()
        self.idle.clear()
        try:
            yield
        finally:
            self._waiting -= 1
            if self._waiting == 0:
                self.wanted.clear()
                self.idle.set()


class BleLink:
    """One BLE device as discovery knows it: a DeviceLink and the `Presence` its transports use."""

    def __init__(
        self,
        device: BLEDevice,
        transport_for: Callable[[BleLink], SmpTransport],
        demand: ScanDemand,
        *,
        timeout_s: float,
        handshake_timeout_s: float,
        counters: SessionCounters | None = None,
    ) -> None:
        """A link to `device`, just heard advertising."""
        self.address = device.address
        """The device's address (a link that follows another takes its successor's)."""
        self._device = device
        self._advertised = True
        self._changed = asyncio.Event()
        self._successor: BleLink | None = None
        self._demand = demand
        self._link = TransportLink(
            device.address,
            lambda: transport_for(self),
            timeout_s=timeout_s,
            handshake_timeout_s=handshake_timeout_s,
            counters=counters,
        )

    def _current(self) -> BleLink:
        link = self
        while link._successor is not None:
            link = link._successor
        return link

    @property
    def device(self) -> BLEDevice:
        """The device to connect to."""
        return self._current()._device

    @property
    def superseded(self) -> bool:
        """Whether this address was retired in favour of another one of the same device."""
        return self._successor is not None

    def heard(self, device: BLEDevice) -> None:
        """An advertisement from this address."""
        self._device = device
        self._advertised = True
        self._notify()

    def went_away(self) -> None:
        """The device reset, dropped the link or did not answer: wait for it to advertise again."""
        self._current()._advertised = False

    def follow(self, successor: DeviceLink) -> None:
        """The device now advertises at `successor`'s address: connect there from now on."""
        if isinstance(successor, BleLink) and successor._current() is not self:
            self._successor = successor
            self.address = successor.address
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_advertised(self, timeout_s: float) -> None:
        """Return once the device has advertised since it last went away.

        Raises:
            DeviceUnreachable: not heard within `timeout_s`.
        """
        if self._current()._advertised:
            return
        with self._demand.scanning():
            try:
                async with asyncio.timeout(timeout_s):
                    while not (link := self._current())._advertised:
                        await link._changed.wait()
            except TimeoutError:
                raise DeviceUnreachable(f"{self.address} has not advertised for {timeout_s} s") from None

    async def connect(self, handshake_timeout_s: float | None = None) -> SmpSession:
        """Open a session once the device advertises and complete the handshake.

        Raises:
            DeviceUnreachable: the device does not advertise or does not answer.
        """
        current = self._current()
        try:
            return await current._link.connect(handshake_timeout_s)
        except DeviceUnreachable:
            current.went_away()
            raise


class _TransportFactory:
    """Builds a BleTransport for a link with the discovery's settings and the adapter's limits."""

    def __init__(
        self,
        settings: BleConfig,
        limits: AdapterLimits,
        counters: BleCounters,
        backend: type[BaseBleakClient] | None,
    ) -> None:
        self._settings = settings
        self._limits = limits
        self._counters = counters
        self._backend = backend

    def __call__(self, link: BleLink) -> BleTransport:
        return BleTransport(
            link,
            connect_timeout_s=self._settings.connect_timeout_s,
            pair_when_access_denied=self._settings.pair_when_access_denied,
            reassembly=Reassembly(self._settings.reassembly),
            backend=self._backend,
            adapter=self._limits,
            counters=self._counters,
        )


def or_patterns(name_prefix: str) -> list[OrPattern]:
    """BlueZ advertisement-monitor patterns for SMP devices (passive scanning needs them)."""
    uuid_le = uuid.UUID(SMP_SERVICE_UUID).bytes[::-1]  # AD data carries 128-bit UUIDs little-endian
    patterns = [
        OrPattern(0, AdvertisementDataType.COMPLETE_LIST_SERVICE_UUID128, uuid_le),
        OrPattern(0, AdvertisementDataType.INCOMPLETE_LIST_SERVICE_UUID128, uuid_le),
    ]
    if name_prefix:
        prefix = name_prefix.encode()
        patterns.append(OrPattern(0, AdvertisementDataType.COMPLETE_LOCAL_NAME, prefix))
        patterns.append(OrPattern(0, AdvertisementDataType.SHORTENED_LOCAL_NAME, prefix))
    return patterns


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
        self.counters = BleCounters()
        self._demand = ScanDemand()
        self._factories = {
            adapter: _TransportFactory(
                settings, AdapterLimits(settings.max_links_per_adapter), self.counters, client_backend
            )
            for adapter in settings.adapters
        }
        self._links: dict[str, BleLink] = {}
        self._retired: dict[str, bool] = {}
        self.advertisements_seen = 0
        self.returned_addresses = 0
        """Advertisements from an address whose device had moved to another (duplicate serials?)."""
        self.scans_completed = 0

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
        link = self._links.get(device.address)
        if link is None or link.superseded:
            self._prune_retired()
            if self._retired.pop(device.address, False):
                # Rotated-away private addresses do not come back: two devices may share a serial.
                self.returned_addresses += 1
                log.warning("an address retired for its serial advertises again", address=device.address)
            link = BleLink(
                device,
                self._factories[adapter],
                self._demand,
                timeout_s=self._smp_timeout_s,
                handshake_timeout_s=self._smp_timeout_s,
                counters=self._smp_counters,
            )
            self._links[device.address] = link
        else:
            link.heard(device)
        self._inventory.add_endpoint(link, Transport.BLE, advertisement.rssi)

    def _prune_retired(self) -> None:
        """Drop links of addresses the device rotated away from (they would pile up forever)."""
        for address in [a for a, known in self._links.items() if known.superseded]:
            del self._links[address]
            self._retired[address] = True
        while len(self._retired) > RETIRED_ADDRESSES_KEPT:
            del self._retired[next(iter(self._retired))]

    async def run(self) -> None:
        """Scan on every adapter until cancelled; a failing adapter is retried, never fatal."""
        await asyncio.gather(*(self._scan(adapter) for adapter in self.settings.adapters))

    def _scanner(self, adapter: str) -> BleakScanner:
        passive = self.settings.passive_scan
        bluez: BlueZScannerArgs = {"adapter": adapter}
        if passive:
            bluez["or_patterns"] = list(or_patterns(self.settings.name_prefix))
        # With a name-prefix fallback (or passive) the scan cannot filter on the UUID in the controller.
        uuids = None if self.settings.name_prefix or passive else [SMP_SERVICE_UUID]
        return BleakScanner(
            lambda device, adv: self._on_advertisement(adapter, device, adv),
            uuids,
            "passive" if passive else "active",
            bluez=bluez,
            backend=self._scanner_backend,
        )

    async def _scan(self, adapter: str) -> None:
        window_s, interval_s = self.settings.scan_window_s, self.settings.scan_interval_s
        while True:
            try:
                async with self._scanner(adapter):
                    if interval_s <= window_s:
                        await asyncio.Event().wait()
                    await asyncio.sleep(window_s)
                    await self._demand.idle.wait()
                self.scans_completed += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._demand.wanted.wait(), interval_s - window_s)
            except (BleakError, OSError) as error:
                log.warning("ble scanner failed", adapter=adapter, error=str(error))
                await asyncio.sleep(RESTART_DELAY_S)
