"""SMP over a serial line (UART, USB CDC ACM, or a `socket://host:port` serial server such as ser2net).

The framing is Zephyr's "SMP over console": each frame travels as base64 of
`[length][frame][CRC16]`, cut into lines that start with 0x06 0x09 (first) or 0x04 0x14
(continuation) and end in a newline. Encoding and decoding are the `smp` library's (`smp.packet`);
this module only splits the byte stream into lines and drops the console's log text between them.

The device decodes lines into one reassembly buffer of `buf_size` bytes that also holds the length
and the CRC, so a frame is at most `buf_size - 4` bytes; a longer one is dropped without an answer.
"""

from __future__ import annotations

import asyncio
import binascii
import struct
import urllib.parse
from collections.abc import Generator
from dataclasses import dataclass
from typing import Final

import serial
import serial_asyncio_fast
import structlog
from smp import exceptions as smp_exceptions
from smp import packet as smp_packet

from agent.errors import DeviceUnreachable, LinkClosed, SmpLocalError
from agent.link.transport.base import CloseHandler, FrameHandler

SERIAL_FRAMING_BYTES: Final = smp_packet.FRAME_LENGTH_STRUCT.size + smp_packet.CRC16_STRUCT.size
"""The length and CRC16 that share the device's reassembly buffer with the frame."""
DEFAULT_LINE_LENGTH: Final = 128
"""Zephyr's `CONFIG_UART_MCUMGR_RX_BUF_SIZE` default: the longest line the device accepts."""
DEFAULT_BUF_SIZE: Final = 128
"""Assumed until the MCUmgr parameters are read: fits the handshake and any device."""
DEFAULT_BAUDRATE: Final = 115_200
MAX_LINE_BYTES: Final = 4096
"""A longer run without a newline is console noise (or a hostile peer), not an SMP line."""
log = structlog.get_logger("mcufleet.agent.serial")
_START: Final = smp_packet.START_DELIMITER
_CONTINUE: Final = smp_packet.CONTINUE_DELIMITER
_DECODE_ERRORS: Final = (
    smp_exceptions.SMPBadStartDelimiter,
    smp_exceptions.SMPBadContinueDelimiter,
    smp_exceptions.SMPBadCRC,
    binascii.Error,
    struct.error,
    ValueError,
)


@dataclass
class ConsoleCounters:
    """What the line decoder saw besides frames (read by tests and metrics)."""

    frames: int = 0
    console_lines: int = 0
    """Lines that are not SMP (the device's log output on a shared console)."""
    bad_frames: int = 0
    """Frames dropped for a bad delimiter, bad base64, a bad length or a bad CRC."""


class ConsoleFrameDecoder:
    """Turns the bytes of an SMP console into complete frames; pure (no I/O, no clock)."""

    def __init__(self) -> None:
        self.counters = ConsoleCounters()
        self._pending = bytearray()
        self._frame: Generator[None, bytes, bytes] | None = None

    def reset(self) -> None:
        """Forget a half-received line and frame (after a timeout or a reconnect)."""
        self._pending.clear()
        self._frame = None

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the frames they completed, in order."""
        self._pending.extend(data)
        frames: list[bytes] = []
        while True:
            end = self._pending.find(smp_packet.END_DELIMITER)
            if end < 0:
                if len(self._pending) > MAX_LINE_BYTES:
                    self._pending.clear()
                    self._frame = None
                    self.counters.console_lines += 1
                return frames
            line = bytes(self._pending[: end + 1])
            del self._pending[: end + 1]
            frame = self._line(line)
            if frame is not None:
                frames.append(frame)

    def _line(self, line: bytes) -> bytes | None:
        # Log text may precede a delimiter on the same line (no newline between them).
        starts = [i for i in (line.find(_START), line.find(_CONTINUE)) if i >= 0]
        if not starts:
            self.counters.console_lines += 1
            return None
        line = line[min(starts) :]
        if line.startswith(_START):
            if self._frame is not None:
                self.counters.bad_frames += 1
            self._frame = smp_packet.decode()
            next(self._frame)
        elif self._frame is None:
            self.counters.bad_frames += 1
            return None
        try:
            self._frame.send(line)
        except StopIteration as done:
            self._frame = None
            self.counters.frames += 1
            return bytes(done.value)
        except _DECODE_ERRORS:
            self._frame = None
            self.counters.bad_frames += 1
        return None


def encode_lines(frame: bytes, line_length: int = DEFAULT_LINE_LENGTH) -> bytes:
    """One frame as the console lines the device expects, ready to write."""
    return b"".join(smp_packet.encode(frame, line_length=line_length))


def port_name(url: str) -> str:
    """A short, stable name for a serial URL: `ttyACM0`, `usb-...-if00`, `127.0.0.1:4000`."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme and parsed.netloc:
        return parsed.netloc
    return url.rstrip("/").rsplit("/", 1)[-1] or url


class _Lines(asyncio.Protocol):
    def __init__(
        self, url: str, decoder: ConsoleFrameDecoder, on_frame: FrameHandler, on_close: CloseHandler
    ) -> None:
        self._url = url
        self._decoder = decoder
        self._on_frame = on_frame
        self._on_close = on_close
        self.detached = False
        """Set when we close the link ourselves: its close is not a drop."""

    def data_received(self, data: bytes) -> None:
        if self.detached:
            return
        bad_before = self._decoder.counters.bad_frames
        for frame in self._decoder.feed(data):
            self._on_frame(frame)
        if self._decoder.counters.bad_frames > bad_before:
            # A corrupted or cut frame: its request times out and is retried by the session's caller.
            log.warning(
                "malformed SMP serial frame dropped", url=self._url, total=self._decoder.counters.bad_frames
            )

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.detached:
            self.detached = True
            self._on_close(exc or LinkClosed("the serial peer closed the connection"))


class SerialTransport:
    """A serial line to one device's SMP server: a local port or a `socket://` serial server."""

    def __init__(
        self,
        url: str,
        *,
        baudrate: int = DEFAULT_BAUDRATE,
        line_length: int = DEFAULT_LINE_LENGTH,
        buf_size_bytes: int | None = None,
        open_timeout_s: float = 5.0,
    ) -> None:
        """Prepare a link to `url` (`/dev/ttyACM0`, `socket://host:port`, any pyserial URL).

        `buf_size_bytes` fixes the device's buffer size for firmware that does not report it;
        otherwise the frame limit follows the MCUmgr parameters read in the handshake.
        """
        self.url = url
        self._baudrate = baudrate
        self._line_length = line_length
        self._open_timeout_s = open_timeout_s
        self._fixed_buf_size = buf_size_bytes
        self._frame_limit = (buf_size_bytes or DEFAULT_BUF_SIZE) - SERIAL_FRAMING_BYTES
        self.decoder = ConsoleFrameDecoder()
        self._transport: asyncio.Transport | None = None
        self._protocol: _Lines | None = None

    @property
    def max_frame_bytes(self) -> int:
        """The largest frame the device's buffer holds with the serial framing."""
        return self._frame_limit

    def set_frame_limit(self, buf_size_bytes: int) -> None:
        """Cap frames at `buf_size - 4` (a configured buffer size wins over the reported one)."""
        self._frame_limit = max(1, (self._fixed_buf_size or buf_size_bytes) - SERIAL_FRAMING_BYTES)

    async def open(self, on_frame: FrameHandler, on_close: CloseHandler) -> None:
        """Open the port or connect to the serial server.

        Raises:
            DeviceUnreachable: the port cannot be opened or the server refuses the connection.
        """
        self.decoder.reset()
        protocol = _Lines(self.url, self.decoder, on_frame, on_close)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._open_timeout_s):
                transport, _ = await serial_asyncio_fast.create_serial_connection(
                    loop, lambda: protocol, self.url, baudrate=self._baudrate
                )
        except (OSError, serial.SerialException, ValueError, TimeoutError) as error:
            raise DeviceUnreachable(f"cannot open serial {self.url}: {error}") from error
        self._transport, self._protocol = transport, protocol

    async def send(self, frame: bytes) -> None:
        """Write one frame as console lines.

        Raises:
            SmpLocalError: the frame does not fit the device's buffer.
            LinkClosed: the link is down.
        """
        if len(frame) > self._frame_limit:
            raise SmpLocalError(f"frame of {len(frame)} bytes exceeds the {self._frame_limit}-byte limit")
        transport = self._transport
        if transport is None or transport.is_closing() or self._protocol is None or self._protocol.detached:
            raise LinkClosed(f"serial link {self.url} is closed")
        transport.write(encode_lines(frame, self._line_length))

    async def reset(self) -> None:
        """Drop a half-received reply so a late one is never joined to the next."""
        self.decoder.reset()

    async def close(self) -> None:
        """Close the link without reporting it as a drop; idempotent."""
        transport, protocol = self._transport, self._protocol
        self._transport = self._protocol = None
        if protocol is not None:
            protocol.detached = True
        if transport is not None:
            transport.close()
