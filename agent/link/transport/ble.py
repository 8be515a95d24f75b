"""SMP over BLE GATT on bleak: write-without-response requests, notification replies, reassembly.

Rules of this file:
- Connect with the `BLEDevice` the gateway's scanner found (smpclient's transport re-scans on every
  connect), taken from a `Presence` that follows the device when its private address rotates.
- After a reset request, a dropped link or a failed connect, the next connect waits for the
  device's next advertisement: the radio stays free instead of polling a device that is rebooting.
- Frames span several ATT writes (MTU - 3 bytes each) only when the device reassembles them
  (CONFIG_MCUMGR_TRANSPORT_BT_REASSEMBLY); see `Reassembly` for how the agent knows.
- A write that fails on a live connection means the GATT database changed under us (Service
  Changed after an image swap, BlueZ's cache was stale): reconnect, look the SMP characteristic up
  again, subscribe again and send the frame again, once.
- With `pair_when_access_denied`, the link is paired only when the device answers rc 11
  (MGMT_ERR_EACCESSDENIED); each request that got rc 11 before the pairing is sent again after it.
- The reassembly buffer is cleared after a timeout so a late notification is never read as the
  next reply.
"""

import asyncio
import contextlib
import enum
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, assert_never

import structlog
from bleak import BleakClient
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient
from bleak.backends.device import BLEDevice
from bleak.exc import BleakError

from agent.errors import DeviceUnreachable, LinkClosed, SmpDeviceError, SmpLocalError, SmpRemoteError
from agent.link.transport.base import CloseHandler, FrameHandler
from agent.smp.commands import OS_RESET
from agent.smp.frame import HEADER_SIZE, Group, McumgrErr, Op, decode_header, decode_reply

log = structlog.get_logger("mcufleet.agent.ble")

SMP_SERVICE_UUID: Final = "8d53dc1d-1db7-4cd3-868b-8a527460aa84"
SMP_CHARACTERISTIC_UUID: Final = "da2e7828-fbce-4e01-ae9e-261174997c48"
ATT_HEADER_BYTES: Final = 3
MIN_WRITE_BYTES: Final = 20
"""One write of the smallest ATT MTU (23)."""
DEFAULT_FRAME_BYTES: Final = 2048
"""Frame cap with `Reassembly.ALWAYS` until the MCUmgr parameters tell the device's `buf_size`."""


class Reassembly(enum.StrEnum):
    """How the agent knows whether a device reassembles a frame that spans ATT writes."""

    PARAMS = "params"
    """A device that answers the MCUmgr parameters read reassembles up to its `buf_size`; one that
    does not gets frames of one write (smpclient's rule; Zephyr's smp_svr BT overlay enables both)."""
    ALWAYS = "always"
    """Every device reassembles up to its `buf_size` (`DEFAULT_FRAME_BYTES` without parameters)."""
    NEVER = "never"
    """No device reassembles (firmware built without CONFIG_MCUMGR_TRANSPORT_BT_REASSEMBLY)."""


def frame_limit_bytes(mode: Reassembly, buf_size_bytes: int | None, write_size_bytes: int) -> int:
    """The largest frame to send: split across writes only when the device reassembles."""
    match mode:
        case Reassembly.NEVER:
            return min(write_size_bytes, buf_size_bytes or write_size_bytes)
        case Reassembly.ALWAYS:
            return buf_size_bytes or DEFAULT_FRAME_BYTES
        case Reassembly.PARAMS:
            return write_size_bytes if buf_size_bytes is None else buf_size_bytes
        case _:
            assert_never(mode)


class Presence(Protocol):
    """Where a device is and whether it has advertised since it last went away (from discovery)."""

    @property
    def device(self) -> BLEDevice | str:
        """The device to connect to (its latest address)."""
        ...

    def went_away(self) -> None:
        """The device reset, dropped the link or did not answer: wait for it to advertise again."""
        ...

    async def wait_advertised(self, timeout_s: float) -> None:
        """Return once the device has advertised since it last went away.

        Raises:
            DeviceUnreachable: not heard within `timeout_s`.
        """
        ...


class FixedPresence:
    """A device at a fixed address, assumed present (no scanner behind it)."""

    def __init__(self, device: BLEDevice | str) -> None:
        """Always connect to `device`."""
        self.device = device

    def went_away(self) -> None:
        """Nothing to wait for without a scanner."""

    async def wait_advertised(self, timeout_s: float) -> None:
        """Present by assumption."""


@dataclass
class AdapterLimits:
    """Shared by every transport on one Bluetooth adapter."""

    max_links: int
    links: asyncio.Semaphore = field(init=False)
    connecting: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self.links = asyncio.Semaphore(self.max_links)


@dataclass
class BleCounters:
    """What the BLE transports of one agent did (read by tests and metrics)."""

    connects: int = 0
    rediscoveries: int = 0
    """Reconnects after a write found the GATT database changed."""
    pairings: int = 0
    resent_after_pairing: int = 0


@dataclass
class _Denied:
    frame: bytes
    reply: bytes


class BleTransport:
    """A GATT connection to one device's SMP service."""

    def __init__(
        self,
        presence: Presence | BLEDevice | str,
        *,
        connect_timeout_s: float = 20.0,
        pair_when_access_denied: bool = False,
        reassembly: Reassembly = Reassembly.PARAMS,
        backend: type[BaseBleakClient] | None = None,
        client_factory: Callable[..., BleakClient] = BleakClient,
        adapter: AdapterLimits | None = None,
        counters: BleCounters | None = None,
    ) -> None:
        """Prepare a link to the device `presence` tracks (a bare BLEDevice or address is fixed).

        `adapter` caps this adapter's concurrent links and serialises its connection attempts
        (BlueZ handles one connect at a time per adapter badly).
        """
        self._presence: Presence = (
            FixedPresence(presence) if isinstance(presence, (BLEDevice, str)) else presence
        )
        self._adapter = adapter
        self._holds_slot = False
        self._connect_timeout_s = connect_timeout_s
        self._pair_on_denial = pair_when_access_denied
        self._reassembly = reassembly
        self._backend = backend
        self._client_factory = client_factory
        self.counters = counters or BleCounters()
        self._client: BleakClient | None = None
        self._characteristic: BleakGATTCharacteristic | None = None
        self._buffer = bytearray()
        self._buf_size: int | None = None
        self._handlers: tuple[FrameHandler, CloseHandler] | None = None
        self._closing = False
        self._paired = False
        self._unpaired_sends: dict[int, bytes] = {}
        self._denied: list[_Denied] = []
        self._pairing: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._send_lock = asyncio.Lock()

    @property
    def device(self) -> BLEDevice | str:
        """The device this transport connects to."""
        return self._presence.device

    @property
    def max_frame_bytes(self) -> int:
        """The largest SMP frame sent (split into ATT writes by `send` when the device reassembles)."""
        return frame_limit_bytes(self._reassembly, self._buf_size, self.write_size_bytes)

    def set_frame_limit(self, buf_size_bytes: int) -> None:
        """The device's `buf_size` (from the MCUmgr parameters)."""
        self._buf_size = buf_size_bytes

    @property
    def write_size_bytes(self) -> int:
        """Bytes per write-without-response (ATT MTU minus the ATT header)."""
        if self._characteristic is not None:
            return max(MIN_WRITE_BYTES, self._characteristic.max_write_without_response_size)
        if self._client is not None:
            return max(MIN_WRITE_BYTES, self._client.mtu_size - ATT_HEADER_BYTES)
        return MIN_WRITE_BYTES

    async def open(self, on_frame: FrameHandler, on_close: CloseHandler) -> None:
        """Wait for the device to be advertising, connect, find the SMP characteristic, subscribe.

        Raises:
            DeviceUnreachable: not advertising, the connection failed or there is no SMP service.
        """
        self._handlers = (on_frame, on_close)
        self._buffer.clear()
        self._closing = False
        await self._presence.wait_advertised(self._connect_timeout_s)
        if self._adapter is not None and not self._holds_slot:
            await self._adapter.links.acquire()
            self._holds_slot = True
        try:
            async with self._adapter.connecting if self._adapter else contextlib.nullcontext():
                await self._connect()
        except BaseException:
            self._presence.went_away()
            self._release_slot()
            raise

    async def _connect(self) -> None:
        kwargs: dict[str, Any] = {"timeout": self._connect_timeout_s}
        if self._backend is not None:
            kwargs["backend"] = self._backend
        client = self._client_factory(self._presence.device, self._disconnected, **kwargs)
        try:
            await client.connect()
            characteristic = client.services.get_characteristic(SMP_CHARACTERISTIC_UUID)
            if characteristic is None:
                await client.disconnect()
                raise DeviceUnreachable(f"{self._name()} has no SMP characteristic")
            await client.start_notify(characteristic, self._notified)
        except (BleakError, TimeoutError, OSError) as error:
            with contextlib.suppress(BleakError, OSError):
                await client.disconnect()
            raise DeviceUnreachable(f"cannot connect to {self._name()}: {error}") from error
        self._client, self._characteristic = client, characteristic
        self.counters.connects += 1

    def _name(self) -> str:
        device = self._presence.device
        return device.address if isinstance(device, BLEDevice) else device

    def _disconnected(self, client: BleakClient) -> None:
        # bleak also reports disconnects we asked for, possibly late: only the live client counts.
        if client is not self._client:
            return
        self._client = None
        if self._handlers is not None and not self._closing:
            self._presence.went_away()
            self._handlers[1](LinkClosed(f"{self._name()} disconnected"))

    def _notified(self, _characteristic: BleakGATTCharacteristic, data: bytearray) -> None:
        self._buffer += data
        while len(self._buffer) >= HEADER_SIZE:
            total = HEADER_SIZE + decode_header(bytes(self._buffer[:HEADER_SIZE])).length
            if len(self._buffer) < total:
                return
            frame = bytes(self._buffer[:total])
            del self._buffer[:total]
            if self._held_for_pairing(frame):
                continue
            if self._handlers is not None:
                self._handlers[0](frame)

    def _held_for_pairing(self, frame: bytes) -> bool:
        """Keep an rc 11 reply to a request sent before pairing: the request goes again once paired."""
        if not self._pair_on_denial:
            return False
        request = self._unpaired_sends.pop(decode_header(frame).sequence, None)
        if request is None or not _access_denied(frame):
            return False
        loop = asyncio.get_running_loop()
        if self._paired:
            self._spawn(loop, self._resend(request))
            return True
        self._denied.append(_Denied(request, frame))
        if self._pairing is None:
            self._pairing = self._spawn(loop, self._pair())
        return True

    def _spawn(self, loop: asyncio.AbstractEventLoop, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = loop.create_task(work, name="ble-pairing")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _pair(self) -> None:
        client = self._client
        try:
            log.info("pairing after an access-denied reply", device=self._name())
            if client is None:
                raise LinkClosed("not connected")  # noqa: TRY301 (one failure path for both causes)
            await client.pair()
        except (BleakError, TimeoutError, OSError, LinkClosed) as error:
            log.warning("pairing failed", device=self._name(), error=str(error))
            denied, self._denied = self._denied, []
            self._pair_on_denial = False  # tried once on this link; the caller sees rc 11
            for entry in denied:
                if self._handlers is not None:
                    self._handlers[0](entry.reply)
            return
        self._paired = True
        self.counters.pairings += 1
        while self._denied:
            await self._resend(self._denied.pop(0).frame)

    async def _resend(self, frame: bytes) -> None:
        self.counters.resent_after_pairing += 1
        # A request that cannot go again times out in the session like any lost request.
        with contextlib.suppress(LinkClosed, SmpLocalError):
            await self.send(frame)

    async def send(self, frame: bytes) -> None:
        """Send one frame as consecutive write-without-response packets.

        Raises:
            SmpLocalError: the frame exceeds what the device accepts in one piece.
            LinkClosed: the connection is gone.
        """
        limit = self.max_frame_bytes
        if len(frame) > limit:
            raise SmpLocalError(f"frame of {len(frame)} bytes exceeds the {limit}-byte limit")
        header = decode_header(frame) if len(frame) >= HEADER_SIZE else None
        if header is not None and self._pair_on_denial and not self._paired:
            self._unpaired_sends[header.sequence] = frame
        async with self._send_lock:
            try:
                await self._write(frame)
            except _DatabaseChanged as changed:
                log.info("GATT database changed; rediscovering", device=self._name(), error=str(changed))
                await self._rediscover()
                try:
                    await self._write(frame)
                except _DatabaseChanged as again:
                    raise LinkClosed(f"write to {self._name()} failed after rediscovery: {again}") from again
        if header is not None and (header.group, header.command, header.op) == (Group.OS, OS_RESET, Op.WRITE):
            # The device reboots: its next connection waits for its next advertisement.
            self._presence.went_away()

    async def _write(self, frame: bytes) -> None:
        client, characteristic = self._client, self._characteristic
        if client is None or characteristic is None or not client.is_connected:
            raise LinkClosed(f"{self._name()} is not connected")
        step = self.write_size_bytes
        try:
            for start in range(0, len(frame), step):
                await client.write_gatt_char(characteristic, frame[start : start + step], response=False)
        except (BleakError, OSError) as error:
            if client.is_connected and client is self._client:
                raise _DatabaseChanged(str(error)) from error
            raise LinkClosed(f"write to {self._name()} failed: {error}") from error

    async def _rediscover(self) -> None:
        """Reconnect and resolve the services again (bleak has no refresh on a live BlueZ link)."""
        client, self._client = self._client, None
        self._characteristic = None
        if client is not None:
            with contextlib.suppress(BleakError, OSError):
                await client.disconnect()
        self.counters.rediscoveries += 1
        try:
            async with self._adapter.connecting if self._adapter else contextlib.nullcontext():
                await self._connect()
        except DeviceUnreachable as error:
            self._presence.went_away()
            raise LinkClosed(f"{self._name()} did not come back after a GATT change: {error}") from error

    async def reset(self) -> None:
        """Forget half-reassembled replies (after a timeout)."""
        self._buffer.clear()
        self._unpaired_sends.clear()

    async def close(self) -> None:
        """Disconnect; idempotent, and not reported as a dropped link."""
        self._closing = True
        self._pairing = None
        for task in list(self._tasks):
            task.cancel()
        client, self._client = self._client, None
        self._characteristic = None
        self._unpaired_sends.clear()
        self._denied.clear()
        try:
            if client is not None:
                await client.disconnect()
        except (BleakError, OSError):
            return
        finally:
            self._release_slot()

    def _release_slot(self) -> None:
        if self._adapter is not None and self._holds_slot:
            self._holds_slot = False
            self._adapter.links.release()


class _DatabaseChanged(Exception):
    """A write failed while the link stayed up: the characteristic we hold is gone."""


def _access_denied(frame: bytes) -> bool:
    try:
        decode_reply(frame).raise_for_error()
    except SmpDeviceError as error:
        return error.rc == McumgrErr.EACCESSDENIED and not error.group_error
    except SmpRemoteError:
        return False
    return False
