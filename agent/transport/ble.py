"""SMP over BLE GATT on bleak: write-without-response requests, notification replies, reassembly.

Connects with the `BLEDevice` the gateway's scanner already found (smpclient's transport re-scans
on every connect), pairs first when configured (devices whose access callback wants an encrypted,
bonded link answer rc 11 otherwise), caps frames at the device's `buf_size` and splits them into
ATT-sized writes, and clears the reassembly buffer after a timeout so a late notification can never
be read as the next reply.
"""

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from bleak import BleakClient
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient
from bleak.backends.device import BLEDevice
from bleak.exc import BleakError

from agent.errors import DeviceUnreachable, LinkClosed, SmpLocalError
from agent.smp.frame import HEADER_SIZE, decode_header
from agent.transport.base import CloseHandler, FrameHandler

SMP_SERVICE_UUID: Final = "8d53dc1d-1db7-4cd3-868b-8a527460aa84"
SMP_CHARACTERISTIC_UUID: Final = "da2e7828-fbce-4e01-ae9e-261174997c48"
ATT_HEADER_BYTES: Final = 3
DEFAULT_FRAME_BYTES: Final = 2048
"""Frame cap until the MCUmgr parameters tell the device's real `buf_size`."""


@dataclass
class AdapterLimits:
    """Shared by every transport on one Bluetooth adapter."""

    max_links: int
    links: asyncio.Semaphore = field(init=False)
    connecting: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self.links = asyncio.Semaphore(self.max_links)


class BleTransport:
    """A GATT connection to one device's SMP service."""

    def __init__(
        self,
        device: BLEDevice | str,
        *,
        connect_timeout_s: float = 20.0,
        pair: bool = False,
        backend: type[BaseBleakClient] | None = None,
        client_factory: Callable[..., BleakClient] = BleakClient,
        adapter: AdapterLimits | None = None,
    ) -> None:
        """Prepare a link to `device` (pass the scanner's BLEDevice to avoid a second scan).

        `adapter` caps this adapter's concurrent links and serialises its connection attempts
        (BlueZ handles one connect at a time per adapter badly).
        """
        self._adapter = adapter
        self._holds_slot = False
        self.device = device
        self._connect_timeout_s = connect_timeout_s
        self._pair = pair
        self._backend = backend
        self._client_factory = client_factory
        self._client: BleakClient | None = None
        self._characteristic: BleakGATTCharacteristic | None = None
        self._buffer = bytearray()
        self._frame_limit = DEFAULT_FRAME_BYTES
        self._handlers: tuple[FrameHandler, CloseHandler] | None = None
        self._closing = False

    @property
    def max_frame_bytes(self) -> int:
        """The largest SMP frame sent (split into ATT writes by `send`)."""
        return self._frame_limit

    def set_frame_limit(self, buf_size_bytes: int) -> None:
        """Cap frames at the device's `buf_size`."""
        self._frame_limit = buf_size_bytes

    @property
    def write_size_bytes(self) -> int:
        """Bytes per write-without-response (ATT MTU minus the ATT header)."""
        if self._characteristic is not None:
            return max(20, self._characteristic.max_write_without_response_size)
        if self._client is not None:
            return max(20, self._client.mtu_size - ATT_HEADER_BYTES)
        return 20

    async def open(self, on_frame: FrameHandler, on_close: CloseHandler) -> None:
        """Connect, pair when configured, find the SMP characteristic and subscribe to replies.

        Raises:
            DeviceUnreachable: connection failed or the device has no SMP service.
        """
        self._handlers = (on_frame, on_close)
        self._buffer.clear()
        self._closing = False
        if self._adapter is not None and not self._holds_slot:
            await self._adapter.links.acquire()
            self._holds_slot = True
        try:
            async with self._adapter.connecting if self._adapter else contextlib.nullcontext():
                await self._connect()
        except BaseException:
            self._release_slot()
            raise

    async def _connect(self) -> None:
        kwargs: dict[str, Any] = {"timeout": self._connect_timeout_s, "pair": self._pair}
        if self._backend is not None:
            kwargs["backend"] = self._backend
        client = self._client_factory(self.device, self._disconnected, **kwargs)
        try:
            await client.connect()
            characteristic = client.services.get_characteristic(SMP_CHARACTERISTIC_UUID)
            if characteristic is None:
                await client.disconnect()
                raise DeviceUnreachable(f"{self._name()} has no SMP characteristic")
            await client.start_notify(characteristic, self._notified)
        except (BleakError, TimeoutError, OSError) as error:
            raise DeviceUnreachable(f"cannot connect to {self._name()}: {error}") from error
        self._client, self._characteristic = client, characteristic

    def _name(self) -> str:
        return self.device.address if isinstance(self.device, BLEDevice) else self.device

    def _disconnected(self, _client: BleakClient) -> None:
        self._client = None
        if self._handlers is not None and not self._closing:
            self._handlers[1](LinkClosed(f"{self._name()} disconnected"))

    def _notified(self, _characteristic: BleakGATTCharacteristic, data: bytearray) -> None:
        self._buffer += data
        while len(self._buffer) >= HEADER_SIZE:
            total = HEADER_SIZE + decode_header(bytes(self._buffer[:HEADER_SIZE])).length
            if len(self._buffer) < total:
                return
            frame = bytes(self._buffer[:total])
            del self._buffer[:total]
            if self._handlers is not None:
                self._handlers[0](frame)

    async def send(self, frame: bytes) -> None:
        """Send one frame as consecutive write-without-response packets.

        Raises:
            SmpLocalError: the frame exceeds the device's buffer.
            LinkClosed: the connection is gone.
        """
        if len(frame) > self._frame_limit:
            raise SmpLocalError(f"frame of {len(frame)} bytes exceeds the {self._frame_limit}-byte limit")
        client, characteristic = self._client, self._characteristic
        if client is None or characteristic is None or not client.is_connected:
            raise LinkClosed(f"{self._name()} is not connected")
        step = self.write_size_bytes
        try:
            for start in range(0, len(frame), step):
                await client.write_gatt_char(characteristic, frame[start : start + step], response=False)
        except (BleakError, OSError) as error:
            raise LinkClosed(f"write to {self._name()} failed: {error}") from error

    async def reset(self) -> None:
        """Forget half-reassembled replies (after a timeout)."""
        self._buffer.clear()

    async def close(self) -> None:
        """Disconnect; idempotent, and not reported as a dropped link."""
        self._closing = True
        client, self._client = self._client, None
        self._characteristic = None
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
