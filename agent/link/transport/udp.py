"""SMP over UDP: one datagram is one frame, capped at the device's buffer size and the UDP MTU.

Zephyr does not reassemble frames across datagrams and answers a split frame with ECORRUPT. It
reads at most CONFIG_MCUMGR_TRANSPORT_UDP_MTU (1500) bytes of a datagram, so a longer one is cut
and answered rc 9 even when `buf_size` is larger (measured on the native_sim_udp build): frames
stay at or under the path MTU less the IP and UDP headers.
"""

import asyncio
import socket
from collections.abc import Callable
from typing import Final

from agent.errors import DeviceUnreachable, LinkClosed, SmpLocalError
from agent.link.transport.base import CloseHandler, FrameHandler

DEFAULT_PORT: Final = 1337
IPV4_UDP_OVERHEAD_BYTES: Final = 28
DEFAULT_MTU_BYTES: Final = 1500


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, on_frame: FrameHandler, on_close: CloseHandler) -> None:
        self._on_frame = on_frame
        self._on_close = on_close
        self.detached = False
        """Set when the socket is being replaced: its late datagrams and close are not ours."""

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        if not self.detached:
            self._on_frame(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and friends: the device is not listening (yet). Replies simply do
        # not come; the session's timeout handles it, so there is nothing to do here.
        return

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.detached:
            self._on_close(exc)


class UdpTransport:
    """A connected UDP socket to one device's SMP server."""

    def __init__(
        self,
        host: str,
        port: int = DEFAULT_PORT,
        *,
        mtu_bytes: int = DEFAULT_MTU_BYTES,
        socket_factory: Callable[[], socket.socket] | None = None,
    ) -> None:
        """Prepare a link to `host:port`; frames are capped at the path MTU minus IP/UDP headers.

        `socket_factory` makes the (unconnected, non-blocking) datagram socket of every open, for
        a device reached through a socket made elsewhere, e.g. inside another network namespace.
        """
        self.host = host
        self.port = port
        self._socket_factory = socket_factory
        self._datagram_limit = mtu_bytes - IPV4_UDP_OVERHEAD_BYTES
        self._frame_limit = self._datagram_limit
        self._transport: asyncio.DatagramTransport | None = None
        self._protocol: _Datagrams | None = None
        self._handlers: tuple[FrameHandler, CloseHandler] | None = None

    @property
    def max_frame_bytes(self) -> int:
        """The largest frame sent in one datagram."""
        return self._frame_limit

    def set_frame_limit(self, buf_size_bytes: int) -> None:
        """Cap frames at the device's `buf_size` (and never above one datagram)."""
        self._frame_limit = min(self._datagram_limit, buf_size_bytes)

    async def open(self, on_frame: FrameHandler, on_close: CloseHandler) -> None:
        """Create the socket (UDP has no handshake: the session proves reachability).

        Raises:
            DeviceUnreachable: the address cannot be used (bad host, no route).
        """
        self._handlers = (on_frame, on_close)
        loop = asyncio.get_running_loop()
        try:
            if self._socket_factory is None:
                transport, protocol = await loop.create_datagram_endpoint(
                    lambda: _Datagrams(on_frame, on_close), remote_addr=(self.host, self.port)
                )
            else:
                sock = self._socket_factory()
                try:
                    sock.connect((self.host, self.port))
                except OSError:
                    sock.close()
                    raise
                transport, protocol = await loop.create_datagram_endpoint(
                    lambda: _Datagrams(on_frame, on_close), sock=sock
                )
        except OSError as error:
            raise DeviceUnreachable(f"cannot open UDP to {self.host}:{self.port}: {error}") from error
        self._transport, self._protocol = transport, protocol

    async def send(self, frame: bytes) -> None:
        """Send one frame as one datagram.

        Raises:
            SmpLocalError: the frame does not fit the device's buffer or a datagram.
            LinkClosed: the socket is closed.
        """
        if len(frame) > self._frame_limit:
            raise SmpLocalError(f"frame of {len(frame)} bytes exceeds the {self._frame_limit}-byte limit")
        if self._transport is None or self._transport.is_closing():
            raise LinkClosed(f"UDP link to {self.host}:{self.port} is closed")
        self._transport.sendto(frame)

    async def reset(self) -> None:
        """Recreate the socket so late replies to abandoned requests can never be read."""
        if self._handlers is None:
            return
        self._detach_and_close()
        await self.open(*self._handlers)

    async def close(self) -> None:
        """Close the socket without reporting it as a dropped link; idempotent."""
        self._detach_and_close()

    def _detach_and_close(self) -> None:
        transport, protocol = self._transport, self._protocol
        self._transport = self._protocol = None
        if protocol is not None:
            protocol.detached = True
        if transport is not None:
            transport.close()
