"""An SMP-over-UDP proxy between an agent and one simulated device, for tests of a bad radio path.

Subclasses decide what happens to each datagram (`to_device`, `to_agent`: return the bytes to pass
on, changed or not, or None to lose them); the proxy remembers the agent's address for replies.
"""

from __future__ import annotations

import asyncio
from typing import Final, cast

IMAGE_GROUP: Final = 1
UPLOAD_COMMAND: Final = 1


def is_image_upload(frame: bytes) -> bool:
    """Whether an SMP frame (request or reply) is of the image group's upload command."""
    return len(frame) >= 8 and frame[4:6] == IMAGE_GROUP.to_bytes(2, "big") and frame[7] == UPLOAD_COMMAND


class SmpUdpProxy(asyncio.DatagramProtocol):
    """Forwards datagrams between the agent and `device` unchanged, unless a subclass says otherwise."""

    def __init__(self, device: tuple[str, int]) -> None:
        self.device = device
        self._transport: asyncio.DatagramTransport | None = None
        self._agent: tuple[str, int] | None = None

    def to_device(self, frame: bytes) -> bytes | None:
        """What of an agent's datagram reaches the device (None: lost)."""
        return frame

    def to_agent(self, frame: bytes) -> bytes | None:
        """What of a device's datagram reaches the agent (None: lost)."""
        return frame

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast("asyncio.DatagramTransport", transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self._transport is not None
        if addr != self.device:
            self._agent = addr
            forward, destination = self.to_device(data), self.device
        elif self._agent is not None:
            forward, destination = self.to_agent(data), self._agent
        else:
            return
        if forward is not None:
            self._transport.sendto(forward, destination)


async def serve(proxy: SmpUdpProxy) -> tuple[asyncio.DatagramTransport, tuple[str, int]]:
    """Bind `proxy` on a free loopback port: its transport (close it) and the address agents use."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: proxy, local_addr=("127.0.0.1", 0))
    host, port = transport.get_extra_info("sockname")[:2]
    return transport, (host, port)
