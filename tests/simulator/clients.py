"""SMP clients for integration tests: smpclient over a UDP port of our choosing, group 128 models, raw UDP.

The group 128 models are written again in `smpmgr_plugin/memfault_group.py` on purpose: that file
runs inside smpmgr's own virtual environment (with typer and rich, which ours lacks) and must
import nothing from this tree.
"""

import asyncio
from enum import IntEnum
from typing import Any

import smp.error as smperr
import smp.message as smpmsg
from smpclient import SMPClient
from smpclient.transport.udp import SMPUDPTransport


class PortUDPTransport(SMPUDPTransport):
    """smpclient's UDP transport, connecting to a given port instead of always 1337."""

    def __init__(self, port: int, mtu: int = 1500) -> None:
        super().__init__(mtu)
        self._port = port

    async def connect(self, address: str, timeout_s: float, port: int = 1337) -> None:
        await super().connect(address, timeout_s, self._port)


def smp_client(endpoint: tuple[str, int], timeout_s: float = 2.0) -> SMPClient:
    """An SMPClient for a simulated device's `(host, port)`."""
    host, port = endpoint
    return SMPClient(PortUDPTransport(port), host, timeout_s=timeout_s)


class MemfaultRC(IntEnum):
    """Memfault group 128 return codes."""

    OK = 0
    UNKNOWN = 1
    NO_PROJECT_KEY = 2


class MemfaultErrorV1(smperr.ErrorV1):
    """A plain `rc` error from group 128."""

    _GROUP_ID = 128


class MemfaultErrorV2(smperr.ErrorV2[MemfaultRC]):
    """A group 128 `err` error."""

    _GROUP_ID = 128


class DeviceInfoReadResponse(smpmsg.ReadResponse):
    """Group 128 command 0 reply."""

    _GROUP_ID = 128
    _COMMAND_ID = 0

    device_serial: str
    hardware_version: str
    software_type: str
    current_version: str


class DeviceInfoRead(smpmsg.ReadRequest):
    """Group 128 command 0: device info."""

    _GROUP_ID = 128
    _COMMAND_ID = 0
    _Response = DeviceInfoReadResponse
    _ErrorV1 = MemfaultErrorV1
    _ErrorV2 = MemfaultErrorV2


class ProjectKeyReadResponse(smpmsg.ReadResponse):
    """Group 128 command 1 reply."""

    _GROUP_ID = 128
    _COMMAND_ID = 1

    project_key: str


class ProjectKeyRead(smpmsg.ReadRequest):
    """Group 128 command 1: project key."""

    _GROUP_ID = 128
    _COMMAND_ID = 1
    _Response = ProjectKeyReadResponse
    _ErrorV1 = MemfaultErrorV1
    _ErrorV2 = MemfaultErrorV2


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.received.put_nowait(data)


class RawUdpClient:
    """A connected UDP socket that sends raw frames and awaits raw replies."""

    def __init__(self, transport: asyncio.DatagramTransport, protocol: _Datagrams) -> None:
        self._transport = transport
        self._protocol = protocol

    @classmethod
    async def connect(cls, endpoint: tuple[str, int]) -> "RawUdpClient":
        """Open a socket connected to `endpoint`."""
        transport, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
            _Datagrams, remote_addr=endpoint
        )
        return cls(transport, protocol)

    def send(self, frame: bytes) -> None:
        """Send one datagram."""
        self._transport.sendto(frame)

    async def receive(self, timeout_s: float = 2.0) -> bytes:
        """The next datagram (TimeoutError if none comes)."""
        async with asyncio.timeout(timeout_s):
            return await self._protocol.received.get()

    async def exchange(self, frame: bytes, timeout_s: float = 2.0) -> bytes:
        """Send a frame and return the next datagram."""
        self.send(frame)
        return await self.receive(timeout_s)

    def pending(self) -> int:
        """Datagrams received and not yet read."""
        return self._protocol.received.qsize()

    def close(self) -> None:
        """Close the socket."""
        self._transport.close()
