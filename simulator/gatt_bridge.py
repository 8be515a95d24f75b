"""A simulated BLE world for bleak: peripherals whose SMP characteristic bridges to simulated devices.

bleak's `backend=` argument is its supported extension point: pass `SimulatedGattClient` and
`SimulatedScanner` and a `BleakClient`/`BleakScanner` talks to peripherals registered here instead
of a radio. Each peripheral forwards complete SMP frames to a simulated device over UDP, as the
fleet server serves it, and models what a Zephyr peripheral behind BlueZ does:

- ATT: writes of at most MTU-3 bytes; with `reassembly` (CONFIG_MCUMGR_TRANSPORT_BT_REASSEMBLY)
  a frame may span writes, without it every write must carry one whole frame (others are dropped).
  Replies come back as notifications of at most MTU-3 bytes.
- Advertising: a peripheral advertises while it is on air and not connected (Zephyr restarts
  advertising on disconnect); between a reset reply and the reboot, and while the device boots, it
  is off air, and a connect attempt then fails (BlueZ would block for the whole connect timeout).
- Privacy: with `private_address`, every boot brings a new resolvable private address.
- The device's reboot drops the link (the supervision timeout, without the wait).
- The GATT database follows the running image (`DeviceRadio.database_id`): a new image moves the
  SMP characteristic's handle. BlueZ's attribute cache hands a client the database it cached for
  the address at connect; the Service Changed indication that follows removes those objects, so
  a write to a stale characteristic fails (D-Bus UnknownObject) and its notifications never come.
- Access: groups in `access_denied_groups` answer rc 11 (MGMT_ERR_EACCESSDENIED) until the link is
  encrypted; `pair()` encrypts it and bonds (later connections are encrypted at once).
- Faults: `drop(address)` ends the live connection as if the device went out of range, and
  `drop_link_at_upload_offset` does so once an upload chunk reaches that offset.

Every peripheral's `PeripheralState` records what happened to it (connects, writes, pairings,
upload offsets) for tests to assert on.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Protocol

from bleak.args.bluez import OrPatternLike
from bleak.assigned_numbers import AdvertisementDataType
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, AdvertisementDataCallback, BaseBleakScanner
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakDeviceNotFoundError, BleakError

from simulator.device import DevicePhase
from simulator.device.cbor import RequestMap
from simulator.device.codec import HEADER_SIZE_BYTES, Header, rc_payload, reply_frame
from simulator.device.codes import Group, ImageCommand, Op
from simulator.errors import CborDecodeError
from simulator.server import FleetServer

SMP_SERVICE_UUID: Final = "8d53dc1d-1db7-4cd3-868b-8a527460aa84"
SMP_CHARACTERISTIC_UUID: Final = "da2e7828-fbce-4e01-ae9e-261174997c48"
ATT_HEADER_BYTES: Final = 3
MGMT_ERR_EACCESSDENIED: Final = 11
OS_RESET_COMMAND: Final = 5
SMP_FIRST_HANDLE: Final = 16
HANDLES_PER_DATABASE: Final = 16
"""Each new GATT database inserts attributes before the SMP service, moving its handles by this."""
_WAIT_SLICE_S: Final = 3600.0


class DeviceRadio(Protocol):
    """What the radio side sees of the device behind a peripheral."""

    def on_air(self) -> bool:
        """Whether the device runs (advertises, accepts connections)."""
        ...

    def boot_count(self) -> int:
        """How many times the device has rebooted."""
        ...

    def database_id(self) -> str:
        """The running firmware's GATT database (a new image may bring a new one)."""
        ...

    async def wait_off_air(self) -> None:
        """Return once the device stops running (a reboot)."""
        ...


class SimDeviceRadio:
    """The radio view of a device served by a `FleetServer`: off air while it reboots or boots."""

    def __init__(self, server: FleetServer, serial: str) -> None:
        """Watch the device `serial` of `server`."""
        self._server = server
        self._device = server.device(serial)

    def on_air(self) -> bool:
        """Whether the device is running."""
        return self._device.phase is DevicePhase.RUNNING

    def boot_count(self) -> int:
        """Reboots so far."""
        return len(self._device.boots)

    def database_id(self) -> str:
        """One GATT database per running image version."""
        return self._device.running_version or ""

    async def wait_off_air(self) -> None:
        """Return once the device stops running."""
        while True:
            with contextlib.suppress(TimeoutError):
                await self._server.wait_until(lambda: not self.on_air(), timeout_s=_WAIT_SLICE_S)
                return


@dataclass(frozen=True, slots=True)
class Peripheral:
    """A simulated BLE peripheral: where its SMP frames go and how its firmware behaves."""

    host: str
    port: int
    mtu: int = 247
    rssi_dbm: int = -60
    name: str = "Zephyr"
    advertises_smp_uuid: bool = True
    reassembly: bool = True
    """CONFIG_MCUMGR_TRANSPORT_BT_REASSEMBLY: frames may span ATT writes."""
    access_denied_groups: frozenset[int] = frozenset()
    """Groups answered with rc 11 until the link is encrypted (an access-check callback)."""
    radio: DeviceRadio | None = None
    """The device behind it (reboots, GATT database); None: always on air, one database."""
    private_address: bool = False
    """A new resolvable private address at every boot (CONFIG_BT_PRIVACY)."""
    drop_link_at_upload_offset: int | None = None
    """Once, the link drops right after an upload chunk at or past this offset is forwarded."""


@dataclass(frozen=True, slots=True)
class UploadWrite:
    """An upload request the peripheral forwarded to the device."""

    offset: int
    data_bytes: int
    first: bool
    after_drops: int
    """Link drops before this request (0: on the first link)."""


@dataclass
class PeripheralState:
    """One registered peripheral and what has happened to it so far."""

    peripheral: Peripheral
    address: str
    index: int
    connect_attempts: int = 0
    failed_connects: int = 0
    """Connects refused because the peripheral was off air or already connected."""
    connects: int = 0
    pairings: int = 0
    access_denied: int = 0
    events: list[str] = field(default_factory=list)
    """"denied" for each rc 11 answered, "paired" for each pairing, in order."""
    incomplete_writes: int = 0
    """Writes dropped because they did not carry one whole frame (no reassembly)."""
    stale_writes: int = 0
    """Writes to a characteristic of a GATT database the device no longer has."""
    largest_frame_bytes: int = 0
    largest_write_bytes: int = 0
    link_drops: int = 0
    upload_writes: list[UploadWrite] = field(default_factory=list)
    upload_reply_offsets: list[tuple[int, int]] = field(default_factory=list)
    """`(after_drops, off)` of every upload reply the device sent."""
    addresses: list[str] = field(default_factory=list)
    """Every address it used, oldest first."""
    bonded: bool = False
    resetting: bool = False
    boots_seen: int = 0
    client: SimulatedGattClient | None = None
    databases: list[str] = field(default_factory=list)
    _drop_fired: bool = False

    def handle_for(self, database_id: str) -> int:
        """The SMP characteristic's handle in the database `database_id`."""
        if database_id not in self.databases:
            self.databases.append(database_id)
        return SMP_FIRST_HANDLE + HANDLES_PER_DATABASE * self.databases.index(database_id) + 1

    @property
    def on_air(self) -> bool:
        """Whether the device runs and is not rebooting after a reset reply."""
        radio = self.peripheral.radio
        return not self.resetting and (radio is None or radio.on_air())

    @property
    def advertising(self) -> bool:
        """Whether a scanner hears it (on air and not connected)."""
        return self.on_air and self.client is None


class SimulatedGattClient(BaseBleakClient):
    """A bleak client backend whose peripherals are simulated SMP devices."""

    _states: ClassVar[dict[str, PeripheralState]] = {}
    _bluez_cache: ClassVar[dict[str, tuple[str, BleakGATTServiceCollection]]] = {}
    _registered: ClassVar[int] = 0

    @classmethod
    def register(cls, address: str, peripheral: Peripheral) -> PeripheralState:
        """Make `address` connectable; it reaches the device at `peripheral`."""
        state = PeripheralState(peripheral, address.upper(), cls._registered, addresses=[address.upper()])
        cls._registered += 1
        if peripheral.radio is not None:
            state.boots_seen = peripheral.radio.boot_count()
        cls._states[state.address] = state
        return state

    @classmethod
    def unregister_all(cls) -> None:
        """Forget every peripheral, bond and cached database (between tests)."""
        for state in list(cls._states.values()):
            if state.client is not None:
                state.client._close()
        cls._states.clear()
        cls._bluez_cache.clear()

    @classmethod
    def states(cls) -> list[PeripheralState]:
        """Every registered peripheral."""
        cls._refresh_all()
        return list(cls._states.values())

    @classmethod
    def drop(cls, address: str) -> None:
        """Simulate the peripheral going out of range: the live connection ends with a disconnect."""
        state = cls._lookup(address)
        if state is not None and state.client is not None:
            state.client._lose_link()

    @classmethod
    def _lookup(cls, address: str) -> PeripheralState | None:
        cls._refresh_all()
        return cls._states.get(address.upper())

    @classmethod
    def _refresh_all(cls) -> None:
        for state in list(cls._states.values()):
            radio = state.peripheral.radio
            if radio is None:
                continue
            boots = radio.boot_count()
            if boots == state.boots_seen:
                continue
            state.boots_seen = boots
            state.resetting = False
            if state.peripheral.private_address:
                del cls._states[state.address]
                state.address = _private_address(state.index, boots)
                state.addresses.append(state.address)
                cls._states[state.address] = state

    def __init__(self, address_or_ble_device: BLEDevice | str, **kwargs: Any) -> None:
        super().__init__(
            address_or_ble_device,
            disconnected_callback=kwargs.get("disconnected_callback"),
            timeout=kwargs.get("timeout", 10.0),
        )
        self._transport: asyncio.DatagramTransport | None = None
        self._notify: NotifyCallback | None = None
        self._notify_handle: int | None = None
        self._assembling = bytearray()
        self._state: PeripheralState | None = None
        self._live_handle = 0
        self._encrypted = False
        self._watcher: asyncio.Task[None] | None = None
        self._reset_sequences: set[int] = set()
        self._drops_at_connect = 0

    @property
    def mtu_size(self) -> int:
        """The negotiated ATT MTU."""
        return self._state.peripheral.mtu if self._state else 23

    @property
    def is_connected(self) -> bool:
        """Whether the simulated link is up."""
        return self._transport is not None

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        """Connect to the registered peripheral and resolve its services (BlueZ's cache first)."""
        state = self._lookup(self.address)
        if state is not None:
            state.connect_attempts += 1
        if state is None or not state.advertising:
            if state is not None:
                state.failed_connects += 1
            raise BleakDeviceNotFoundError(self.address, f"Device with address {self.address} was not found")
        peripheral = state.peripheral
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self._reply_received), remote_addr=(peripheral.host, peripheral.port)
        )
        self._transport, self._state = transport, state
        state.client = self
        state.connects += 1
        self._drops_at_connect = state.link_drops
        self._encrypted = state.bonded
        database_id = peripheral.radio.database_id() if peripheral.radio else ""
        self._live_handle = state.handle_for(database_id)
        fresh = _smp_services(self._live_handle, lambda: peripheral.mtu - ATT_HEADER_BYTES)
        cached = self._bluez_cache.get(state.address)
        self.services = cached[1] if cached is not None else fresh
        # The Service Changed indication that follows a stale cache makes BlueZ rediscover.
        self._bluez_cache[state.address] = (database_id, fresh)
        if peripheral.radio is not None:
            self._watcher = asyncio.create_task(self._watch(peripheral.radio), name="simulated-supervision")
        if pair:
            await self.pair()

    async def _watch(self, radio: DeviceRadio) -> None:
        await radio.wait_off_air()
        self._lose_link()

    async def disconnect(self) -> None:
        """Close the link (no disconnect callback: the caller asked for it)."""
        self._close()

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        """Pairing always succeeds: the link is encrypted and the bond kept."""
        if self._state is None:
            raise BleakError("Not connected")
        self._encrypted = True
        self._state.bonded = True
        self._state.pairings += 1
        self._state.events.append("paired")

    async def unpair(self) -> None:
        """Forget the bond."""
        if self._state is not None:
            self._state.bonded = False

    async def read_gatt_char(self, characteristic: BleakGATTCharacteristic, **kwargs: Any) -> bytearray:
        """The SMP characteristic reads as empty, like Zephyr's."""
        return bytearray()

    async def read_gatt_descriptor(self, descriptor: BleakGATTDescriptor, **kwargs: Any) -> bytearray:
        """No descriptors carry data here."""
        return bytearray()

    async def write_gatt_char(
        self, characteristic: BleakGATTCharacteristic, data: Any, response: bool
    ) -> None:
        """Take one ATT write: whole frames go to the device, partial ones wait for the rest."""
        state = self._state
        if self._transport is None or state is None:
            raise BleakError("Not connected")
        if characteristic.handle != self._live_handle:
            state.stale_writes += 1
            raise BleakError(
                f"[org.freedesktop.DBus.Error.UnknownObject] characteristic {characteristic.handle:#06x}"
                " was removed (Service Changed)"
            )
        if len(data) > self.mtu_size - ATT_HEADER_BYTES:
            raise BleakError(f"write of {len(data)} bytes exceeds the MTU")
        state.largest_write_bytes = max(state.largest_write_bytes, len(data))
        if not state.peripheral.reassembly:
            self._assembling.clear()
            if len(data) < HEADER_SIZE_BYTES or HEADER_SIZE_BYTES + Header.parse(data).length != len(data):
                state.incomplete_writes += 1
                return
        self._assembling += bytes(data)
        while len(self._assembling) >= HEADER_SIZE_BYTES:
            total = HEADER_SIZE_BYTES + Header.parse(bytes(self._assembling)).length
            if len(self._assembling) < total:
                return
            frame = bytes(self._assembling[:total])
            del self._assembling[:total]
            self._frame_received(state, frame)

    def _frame_received(self, state: PeripheralState, frame: bytes) -> None:
        header = Header.parse(frame)
        state.largest_frame_bytes = max(state.largest_frame_bytes, len(frame))
        if header.group in state.peripheral.access_denied_groups and not self._encrypted:
            state.access_denied += 1
            state.events.append("denied")
            answer = reply_frame(header, rc_payload(MGMT_ERR_EACCESSDENIED))
            asyncio.get_running_loop().call_soon(self._reply_received, answer)
            return
        if (header.group, header.command_id, header.op) == (Group.OS, OS_RESET_COMMAND, Op.WRITE):
            self._reset_sequences.add(header.sequence)
        drop_now = self._note_upload(state, header, frame)
        if self._transport is not None:
            self._transport.sendto(frame)
        if drop_now:
            asyncio.get_running_loop().call_soon(self._lose_link)

    def _note_upload(self, state: PeripheralState, header: Header, frame: bytes) -> bool:
        if (header.group, header.command_id, header.op) != (Group.IMAGE, ImageCommand.UPLOAD, Op.WRITE):
            return False
        try:
            fields = RequestMap.decode(frame[HEADER_SIZE_BYTES:])
            offset, data = fields.uint("off") or 0, fields.bstr("data") or b""
            first = "len" in fields
        except CborDecodeError:
            return False
        state.upload_writes.append(UploadWrite(offset, len(data), first, state.link_drops))
        limit = state.peripheral.drop_link_at_upload_offset
        if limit is not None and not state._drop_fired and offset >= limit:
            state._drop_fired = True
            return True
        return False

    async def write_gatt_descriptor(self, descriptor: BleakGATTDescriptor, data: Any) -> None:
        """Descriptor writes are accepted and ignored."""

    async def start_notify(
        self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback, **kwargs: Any
    ) -> None:
        """Replies from the device arrive as notifications of this characteristic from now on."""
        self._notify = callback
        self._notify_handle = characteristic.handle

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        """Stop delivering replies."""
        self._notify = None

    def _reply_received(self, frame: bytes) -> None:
        state = self._state
        if state is None or self._transport is None:
            return
        self._note_reply(state, frame)
        notify = self._notify
        if notify is None or self._notify_handle != self._live_handle:
            return
        step = self.mtu_size - ATT_HEADER_BYTES
        for start in range(0, len(frame), step):
            notify(bytearray(frame[start : start + step]))

    def _note_reply(self, state: PeripheralState, frame: bytes) -> None:
        if len(frame) < HEADER_SIZE_BYTES:
            return
        header = Header.parse(frame)
        if header.group == Group.OS and header.sequence in self._reset_sequences:
            self._reset_sequences.discard(header.sequence)
            if state.peripheral.radio is not None:
                state.resetting = True
        if (header.group, header.command_id) == (Group.IMAGE, ImageCommand.UPLOAD):
            with contextlib.suppress(CborDecodeError):
                offset = RequestMap.decode(frame[HEADER_SIZE_BYTES:]).uint("off")
                if offset is not None:
                    state.upload_reply_offsets.append((state.link_drops, offset))

    def _lose_link(self) -> None:
        if self._transport is None:
            return
        if self._state is not None:
            self._state.link_drops += 1
        self._close()
        if self._disconnected_callback is not None:
            self._disconnected_callback()

    def _close(self) -> None:
        state, self._state = self._state, None
        if state is not None and state.client is self:
            state.client = None
        watcher, self._watcher = self._watcher, None
        if watcher is not None and watcher is not asyncio.current_task():
            watcher.cancel()
        transport, self._transport = self._transport, None
        self._assembling.clear()
        if transport is not None:
            with contextlib.suppress(Exception):
                transport.close()


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes], None]) -> None:
        self._on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._on_datagram(data)


@dataclass
class ScanRecord:
    """One start-to-stop of a simulated scanner."""

    mode: str
    service_uuids: list[str] | None
    or_patterns: list[OrPatternLike] | None
    started_at_s: float
    stopped_at_s: float | None = None


class ScanLog:
    """What every simulated scanner did; create one inside the test's event loop."""

    def __init__(self) -> None:
        """An empty log."""
        self.records: list[ScanRecord] = []
        self.changed = asyncio.Event()

    def note(self) -> None:
        """Wake whoever waits on the log."""
        self.changed.set()
        self.changed = asyncio.Event()


class SimulatedScanner(BaseBleakScanner):
    """A bleak scanner backend that hears every advertising peripheral, actively or passively.

    Passive scanning follows bleak's BlueZ backend: it needs `or_patterns` (matched against each
    advertisement's data) and hears no scan responses.
    """

    interval_s: ClassVar[float] = 0.5
    log: ClassVar[ScanLog | None] = None

    def __init__(
        self,
        detection_callback: AdvertisementDataCallback | None,
        service_uuids: list[str] | None,
        scanning_mode: str = "active",
        *args: Any,
        bluez: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(detection_callback, service_uuids)
        self._mode = scanning_mode
        self._or_patterns: list[OrPatternLike] | None = (bluez or {}).get("or_patterns")
        if scanning_mode == "passive" and not self._or_patterns:
            raise BleakError("passive scanning mode requires bluez or_patterns")
        self._task: asyncio.Task[None] | None = None
        self._record: ScanRecord | None = None

    async def start(self) -> None:
        """Start hearing advertisements."""
        self.seen_devices = {}
        loop = asyncio.get_running_loop()
        if self.log is not None:
            self._record = ScanRecord(self._mode, self._service_uuids, self._or_patterns, loop.time())
            self.log.records.append(self._record)
            self.log.note()
        self._task = asyncio.create_task(self._advertise(), name="simulated-advertising")

    async def stop(self) -> None:
        """Stop hearing advertisements."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._record is not None and self.log is not None:
            self._record.stopped_at_s = asyncio.get_running_loop().time()
            self.log.note()

    async def _advertise(self) -> None:
        while True:
            for state in SimulatedGattClient.states():
                if state.advertising:
                    self._hear(state)
            await asyncio.sleep(self.interval_s)

    def _hear(self, state: PeripheralState) -> None:
        peripheral = state.peripheral
        uuids = [SMP_SERVICE_UUID] if peripheral.advertises_smp_uuid else []
        passive = self._mode == "passive"
        if passive and not any(_matches(pattern, peripheral) for pattern in self._or_patterns or ()):
            return
        if not passive and not self.is_allowed_uuid(uuids):
            return
        advertisement = AdvertisementData(
            local_name=peripheral.name,
            manufacturer_data={},
            service_data={},
            service_uuids=uuids,
            tx_power=None,
            rssi=peripheral.rssi_dbm,
            platform_data=(),
        )
        device = self.create_or_update_device(
            state.address, state.address, peripheral.name, None, advertisement
        )
        self.call_detection_callbacks(device, advertisement)


def _advertising_data(peripheral: Peripheral) -> dict[int, bytes]:
    """The AD structures of the peripheral's advertisement, by type (the name is advertised too)."""
    data = {int(AdvertisementDataType.COMPLETE_LOCAL_NAME): peripheral.name.encode()}
    if peripheral.advertises_smp_uuid:
        uuids = uuid.UUID(SMP_SERVICE_UUID).bytes[::-1]  # little-endian in AD data
        data[int(AdvertisementDataType.COMPLETE_LIST_SERVICE_UUID128)] = uuids
    return data


def _matches(pattern: OrPatternLike, peripheral: Peripheral) -> bool:
    start, ad_type, content = pattern
    value = _advertising_data(peripheral).get(int(ad_type))
    return value is not None and value[start : start + len(content)] == bytes(content)


def _private_address(index: int, boots: int) -> str:
    # The two top bits 01 mark a resolvable private address.
    return f"7{index % 16:X}:A1:00:{index // 16 % 256:02X}:{boots // 256 % 256:02X}:{boots % 256:02X}"


def _smp_services(handle: int, write_size: Callable[[], int]) -> BleakGATTServiceCollection:
    services = BleakGATTServiceCollection()
    service = BleakGATTService(None, handle - 1, SMP_SERVICE_UUID)
    characteristic = BleakGATTCharacteristic(
        None, handle, SMP_CHARACTERISTIC_UUID, ["write-without-response", "notify"], write_size, service
    )
    services.add_service(service)
    services.add_characteristic(characteristic)
    return services
