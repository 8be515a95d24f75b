"""How the agent reaches one device: build a transport, open a session, prove it answers."""

import re
from collections.abc import Callable
from typing import Protocol

from agent.link.session import SessionCounters, SmpSession
from agent.link.transport.base import SmpTransport
from agent.link.transport.serial import SerialTransport, port_name
from agent.link.transport.udp import UdpTransport
from agent.settings import SerialDevice

_NOT_IN_IDS = re.compile(r"[^A-Za-z0-9._:@-]")


class DeviceLink(Protocol):
    """Opens sessions to one device (a fresh one after every drop or reboot)."""

    address: str

    async def connect(self, handshake_timeout_s: float | None = None) -> SmpSession:
        """Open a session and complete the handshake (a shorter timeout polls a rebooting device).

        Raises:
            DeviceUnreachable: the device does not answer.
        """
        ...


class TransportLink:
    """A DeviceLink over any transport factory (UDP here; BLE supplies its own factory)."""

    def __init__(
        self,
        address: str,
        make_transport: Callable[[], SmpTransport],
        *,
        timeout_s: float,
        handshake_timeout_s: float,
        counters: SessionCounters | None = None,
        identity: str | None = None,
    ) -> None:
        """Reach `address` through transports made by `make_transport`; sessions count into `counters`.

        `identity` is the id to report for a device that cannot say who it is (no group 128).
        """
        self.address = address
        self.identity = identity
        self._counters = counters
        self._make_transport = make_transport
        self._timeout_s = timeout_s
        self._handshake_timeout_s = handshake_timeout_s

    async def connect(self, handshake_timeout_s: float | None = None) -> SmpSession:
        """Open a session and read the MCUmgr parameters (a connect counts only after a round trip)."""
        session = SmpSession(self._make_transport(), timeout_s=self._timeout_s, counters=self._counters)
        await session.open()
        try:
            await session.handshake(handshake_timeout_s or self._handshake_timeout_s)
        except BaseException:
            await session.close()
            raise
        return session


def udp_link(
    host: str,
    port: int,
    *,
    timeout_s: float = 2.5,
    handshake_timeout_s: float = 2.0,
    counters: SessionCounters | None = None,
) -> TransportLink:
    """A link to an SMP-over-UDP device at `host:port`."""
    return TransportLink(
        f"{host}:{port}",
        lambda: UdpTransport(host, port),
        timeout_s=timeout_s,
        handshake_timeout_s=handshake_timeout_s,
        counters=counters,
    )


def serial_link(
    url: str,
    *,
    baudrate: int = 115_200,
    line_length: int = 128,
    buf_size_bytes: int | None = None,
    timeout_s: float = 2.5,
    handshake_timeout_s: float = 2.0,
    counters: SessionCounters | None = None,
    identity: str | None = None,
) -> TransportLink:
    """A link to an SMP-over-serial device at `url` (a port path or a `socket://` URL)."""
    return TransportLink(
        url,
        lambda: SerialTransport(
            url, baudrate=baudrate, line_length=line_length, buf_size_bytes=buf_size_bytes
        ),
        timeout_s=timeout_s,
        handshake_timeout_s=handshake_timeout_s,
        counters=counters,
        identity=identity,
    )


def serial_identity(device: SerialDevice) -> str:
    """The id a configured serial device is reported under when it has no group 128."""
    return device.serial or f"serial:{_NOT_IN_IDS.sub('-', port_name(device.url))}"[:128]


def configured_serial_link(
    device: SerialDevice, *, timeout_s: float = 2.5, counters: SessionCounters | None = None
) -> TransportLink:
    """The link for a `[[serial_devices]]` entry, carrying the id it is reported under without group 128."""
    return serial_link(
        device.url,
        baudrate=device.baudrate,
        line_length=device.line_length,
        buf_size_bytes=device.buf_size,
        timeout_s=timeout_s,
        counters=counters,
        identity=serial_identity(device),
    )
