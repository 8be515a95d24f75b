"""BLE pieces without a radio or a broker: frame sizing, scan patterns, settings, presence, identity."""

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime

import msgspec
import pytest
from bleak.assigned_numbers import AdvertisementDataType
from bleak.backends.device import BLEDevice

from agent.ble_discovery import BleLink, ScanDemand, or_patterns
from agent.device_probe import KnownDevice
from agent.errors import DeviceUnreachable
from agent.inventory import Inventory
from agent.link.device_link import DeviceLink, udp_link
from agent.link.session import SmpSession
from agent.link.transport.ble import (
    DEFAULT_FRAME_BYTES,
    SMP_SERVICE_UUID,
    BleTransport,
    Reassembly,
    frame_limit_bytes,
)
from agent.settings import BleConfig, DiscoveryConfig
from schemas import Reachability, Transport
from simulator.server import FleetServer
from tests.integration.world import fleet_of


@pytest.mark.parametrize(
    ("mode", "buf_size", "expected"),
    [
        (Reassembly.PARAMS, 2048, 2048),
        (Reassembly.PARAMS, None, 182),
        (Reassembly.NEVER, 2048, 182),
        (Reassembly.NEVER, 128, 128),
        (Reassembly.NEVER, None, 182),
        (Reassembly.ALWAYS, 1024, 1024),
        (Reassembly.ALWAYS, None, DEFAULT_FRAME_BYTES),
    ],
)
def test_frames_span_writes_only_when_the_device_reassembles(
    mode: Reassembly, buf_size: int | None, expected: int
) -> None:
    """A frame exceeds one 182-byte write only in a mode where the device reassembles it."""
    assert frame_limit_bytes(mode, buf_size, 182) == expected


def test_passive_scan_patterns_match_the_smp_uuid_and_the_name_prefix() -> None:
    """The or-patterns carry the SMP UUID little-endian in both 128-bit UUID lists, and the name prefix."""
    patterns = or_patterns("mcu-")
    uuid_le = uuid.UUID(SMP_SERVICE_UUID).bytes[::-1]
    assert (0, AdvertisementDataType.COMPLETE_LIST_SERVICE_UUID128, uuid_le) in patterns
    assert (0, AdvertisementDataType.INCOMPLETE_LIST_SERVICE_UUID128, uuid_le) in patterns
    assert (0, AdvertisementDataType.COMPLETE_LOCAL_NAME, b"mcu-") in patterns
    assert len(or_patterns("")) == 2


def test_scan_interval_shorter_than_the_window_is_refused() -> None:
    """A config whose scans would overlap is an error naming the keys, not a silent continuous scan."""
    with pytest.raises(msgspec.ValidationError, match="scan_interval_s"):
        msgspec.convert({"scan_window_s": 10, "scan_interval_s": 5}, BleConfig)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"reassembly": "sometimes"}, BleConfig)


def _link(address: str, demand: ScanDemand) -> BleLink:
    return BleLink(
        BLEDevice(address, None, None),
        BleTransport,
        demand,
        timeout_s=1.0,
        handshake_timeout_s=1.0,
    )


async def test_a_link_that_went_away_waits_for_an_advertisement_and_asks_for_scanning() -> None:
    """After `went_away` the link waits (scanning wanted) until the device is heard again."""
    demand = ScanDemand()
    link = _link("AA:00:00:00:00:01", demand)
    await link.wait_advertised(0.0)
    link.went_away()
    waiter = asyncio.create_task(link.wait_advertised(30.0))
    await demand.wanted.wait()
    link.heard(BLEDevice("AA:00:00:00:00:01", None, None))
    await waiter
    assert demand.idle.is_set()
    link.went_away()
    with pytest.raises(DeviceUnreachable):
        await link.wait_advertised(0.01)


async def test_a_followed_link_connects_at_the_new_address() -> None:
    """A link retired for a rotated address wakes its waiters and hands them the new address."""
    demand = ScanDemand()
    old, new = _link("AA:00:00:00:00:01", demand), _link("5A:00:00:00:00:02", demand)
    old.went_away()
    waiter = asyncio.create_task(old.wait_advertised(30.0))
    await demand.wanted.wait()
    old.follow(new)
    await waiter
    assert (old.address, old.device.address) == ("5A:00:00:00:00:02", "5A:00:00:00:00:02")
    new.follow(old)  # a cycle would hang every connect: refused
    assert not new.superseded


class _RelabelledLink:
    """A simulated device over UDP, presented at a made-up BLE address (a rotating private address)."""

    def __init__(self, address: str, host: str, port: int) -> None:
        self.address = address
        self._inner = udp_link(host, port, timeout_s=1.0)
        self.successor: DeviceLink | None = None

    async def connect(self, handshake_timeout_s: float | None = None) -> SmpSession:
        return await self._inner.connect(handshake_timeout_s)

    def follow(self, successor: DeviceLink) -> None:
        self.successor = successor


async def test_a_rotated_address_is_the_same_device_and_never_reported_lost() -> None:
    """A serial found at a new BLE address retires the old endpoint: its silence never means lost."""
    clock_s = [0.0]
    changes: list[KnownDevice] = []
    changed = asyncio.Event()

    def on_change(device: KnownDevice) -> None:
        changes.append(device)
        changed.set()

    async def wait_for_report(address: str, count: int = 1) -> None:
        async with asyncio.timeout(10):
            while sum(c.snapshot.address == address for c in changes) < count:
                changed.clear()
                await changed.wait()

    inventory = Inventory(
        DiscoveryConfig(refresh_interval_s=100.0, lost_after_s=10.0, retry_interval_s=1.0),
        on_change=on_change,
        now=lambda: datetime(2026, 1, 1, tzinfo=UTC),
        monotonic=lambda: clock_s[0],
    )
    async with FleetServer(fleet_of(["R1"]), base_host="127.0.0.1", port_per_device=True) as server:
        host, port = server.endpoints["R1"]
        old, new = (
            _RelabelledLink("7A:00:00:00:00:01", host, port),
            _RelabelledLink("5B:00:00:00:00:02", host, port),
        )
        task = asyncio.create_task(inventory.run())
        try:
            inventory.add_endpoint(old, Transport.BLE)
            await wait_for_report(old.address)
            clock_s[0] = 8.0
            inventory.add_endpoint(new, Transport.BLE)
            await wait_for_report(new.address)
            clock_s[0] = 15.0  # the old address has been silent past lost_after_s
            changes.clear()
            inventory.refresh("R1")
            await wait_for_report(new.address)
            # A second pass starts only after the first one's loss check: wait for it too.
            inventory.refresh("R1")
            await wait_for_report(new.address, 2)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert all(c.reachability is Reachability.PRESENT for c in changes)
    assert inventory.devices["R1"].reachability is Reachability.PRESENT
    assert inventory.addresses_of("R1") == [new.address]
    assert old.successor is new
