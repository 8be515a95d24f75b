"""A simulated BLE GATT backend for bleak that bridges the SMP characteristic to simulated devices.

bleak's `backend=` argument is its supported extension point: pass `SimulatedGattClient` and a
`BleakClient` connects to a "peripheral" registered here instead of a radio. The SMP characteristic
behaves like Zephyr's: write-without-response packets of at most MTU-3 bytes are reassembled into
SMP frames, each frame goes to the simulated device (over UDP, as the simulator serves it), and each
reply comes back as notifications of at most MTU-3 bytes. A registry maps BLE addresses to device
endpoints, and `drop(address)` simulates the peripheral going out of range.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, AdvertisementDataCallback, BaseBleakScanner
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakError

SMP_SERVICE_UUID: Final = "8d53dc1d-1db7-4cd3-868b-8a527460aa84"
SMP_CHARACTERISTIC_UUID: Final = "da2e7828-fbce-4e01-ae9e-261174997c48"
SMP_HEADER_BYTES: Final = 8
ATT_HEADER_BYTES: Final = 3


@dataclass(frozen=True, slots=True)
class Peripheral:
    """A simulated BLE peripheral: the UDP endpoint of its SMP server and its link's MTU."""

    host: str
    port: int
    mtu: int = 247
    requires_bonding: bool = False
    """When set, connecting without `pair=True` fails, as with a device that demands a bond."""
    rssi_dbm: int = -60
    name: str = "Zephyr"
    advertises_smp_uuid: bool = True


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes], None]) -> None:
        self._on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._on_datagram(data)


class SimulatedGattClient(BaseBleakClient):
    """A bleak client backend whose peripherals are simulated SMP devices."""

    peripherals: ClassVar[dict[str, Peripheral]] = {}
    _connected_clients: ClassVar[dict[str, SimulatedGattClient]] = {}

    @classmethod
    def register(cls, address: str, peripheral: Peripheral) -> None:
        """Make `address` connectable; it reaches the device at `peripheral`."""
        cls.peripherals[address.upper()] = peripheral

    @classmethod
    def unregister_all(cls) -> None:
        """Forget every peripheral (between tests)."""
        cls.peripherals.clear()

    @classmethod
    def drop(cls, address: str) -> None:
        """Simulate the peripheral going out of range: the live connection ends with a disconnect."""
        client = cls._connected_clients.get(address.upper())
        if client is not None:
            client._lose_link()

    def __init__(self, address_or_ble_device: BLEDevice | str, **kwargs: Any) -> None:
        super().__init__(
            address_or_ble_device,
            disconnected_callback=kwargs.get("disconnected_callback"),
            timeout=kwargs.get("timeout", 10.0),
        )
        self._transport: asyncio.DatagramTransport | None = None
        self._notify: NotifyCallback | None = None
        self._assembling = bytearray()
        self._peripheral: Peripheral | None = None

    @property
    def mtu_size(self) -> int:
        """The negotiated ATT MTU."""
        return self._peripheral.mtu if self._peripheral else 23

    @property
    def is_connected(self) -> bool:
        """Whether the simulated link is up."""
        return self._transport is not None

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        """Connect to the registered peripheral and expose the SMP service."""
        peripheral = self.peripherals.get(self.address.upper())
        if peripheral is None:
            raise BleakError(f"Device with address {self.address} was not found")
        if peripheral.requires_bonding and not pair:
            raise BleakError(f"{self.address}: insufficient authentication")
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self._reply_received), remote_addr=(peripheral.host, peripheral.port)
        )
        self._transport, self._peripheral = transport, peripheral
        self.services = _smp_services(lambda: self.mtu_size - ATT_HEADER_BYTES)
        self._connected_clients[self.address.upper()] = self

    async def disconnect(self) -> None:
        """Close the link (no disconnect callback: the caller asked for it)."""
        self._close()

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        """Pairing always succeeds in the simulation."""

    async def unpair(self) -> None:
        """Nothing to forget."""

    async def read_gatt_char(self, characteristic: BleakGATTCharacteristic, **kwargs: Any) -> bytearray:
        """The SMP characteristic reads as empty, like Zephyr's."""
        return bytearray()

    async def read_gatt_descriptor(self, descriptor: BleakGATTDescriptor, **kwargs: Any) -> bytearray:
        """No descriptors carry data here."""
        return bytearray()

    async def write_gatt_char(
        self, characteristic: BleakGATTCharacteristic, data: Any, response: bool
    ) -> None:
        """Reassemble SMP frames from ATT writes and forward each complete frame to the device."""
        if self._transport is None:
            raise BleakError("Not connected")
        if len(data) > self.mtu_size - ATT_HEADER_BYTES:
            raise BleakError(f"write of {len(data)} bytes exceeds the MTU")
        self._assembling += bytes(data)
        while len(self._assembling) >= SMP_HEADER_BYTES:
            length = int.from_bytes(self._assembling[2:4], "big")
            total = SMP_HEADER_BYTES + length
            if len(self._assembling) < total:
                return
            frame = bytes(self._assembling[:total])
            del self._assembling[:total]
            self._transport.sendto(frame)

    async def write_gatt_descriptor(self, descriptor: BleakGATTDescriptor, data: Any) -> None:
        """Descriptor writes are accepted and ignored."""

    async def start_notify(
        self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback, **kwargs: Any
    ) -> None:
        """Replies from the device arrive as notifications from now on."""
        self._notify = callback

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        """Stop delivering replies."""
        self._notify = None

    def _reply_received(self, frame: bytes) -> None:
        notify = self._notify
        if notify is None:
            return
        step = self.mtu_size - ATT_HEADER_BYTES
        for start in range(0, len(frame), step):
            notify(bytearray(frame[start : start + step]))

    def _lose_link(self) -> None:
        self._close()
        if self._disconnected_callback is not None:
            self._disconnected_callback()

    def _close(self) -> None:
        self._connected_clients.pop(self.address.upper(), None)
        transport, self._transport = self._transport, None
        if transport is not None:
            with contextlib.suppress(Exception):
                transport.close()


class SimulatedScanner(BaseBleakScanner):
    """A bleak scanner backend that hears every registered peripheral's advertisement."""

    interval_s: ClassVar[float] = 0.5

    def __init__(
        self,
        detection_callback: AdvertisementDataCallback | None,
        service_uuids: list[str] | None,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        super().__init__(detection_callback, service_uuids)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start advertising the registered peripherals to this scanner."""
        self.seen_devices = {}
        self._task = asyncio.create_task(self._advertise(), name="simulated-advertising")

    async def stop(self) -> None:
        """Stop hearing advertisements."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _advertise(self) -> None:
        while True:
            for address, peripheral in list(SimulatedGattClient.peripherals.items()):
                uuids = [SMP_SERVICE_UUID] if peripheral.advertises_smp_uuid else []
                if not self.is_allowed_uuid(uuids):
                    continue
                advertisement = AdvertisementData(
                    local_name=peripheral.name,
                    manufacturer_data={},
                    service_data={},
                    service_uuids=uuids,
                    tx_power=None,
                    rssi=peripheral.rssi_dbm,
                    platform_data=(),
                )
                device = self.create_or_update_device(address, address, peripheral.name, None, advertisement)
                self.call_detection_callbacks(device, advertisement)
            await asyncio.sleep(self.interval_s)


def _smp_services(write_size: Callable[[], int]) -> BleakGATTServiceCollection:
    services = BleakGATTServiceCollection()
    service = BleakGATTService(None, 10, SMP_SERVICE_UUID)
    characteristic = BleakGATTCharacteristic(
        None, 11, SMP_CHARACTERISTIC_UUID, ["write-without-response", "notify"], write_size, service
    )
    services.add_service(service)
    services.add_characteristic(characteristic)
    return services
