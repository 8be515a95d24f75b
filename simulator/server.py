"""The UDP adapter: one asyncio process serving a fleet of `SimDevice`s, one socket per device.

By default device i listens on `base_host + i` port 1337 (all of 127.0.0.0/8 is loopback on Linux),
so every device looks like its own Zephyr board to clients that cannot choose a port. With
`port_per_device`, every device listens on `base_host` at a port the kernel picks.

Time is the event loop's clock (`loop.time()`): it is the `now_s` fed to the devices, and delayed
replies and device timers are scheduled with `loop.call_at`. Datagrams already queued on a device's
socket when it is read are all fed at the time of that read (they had all arrived by then), so how
far apart a device reads a burst is its link model's `read_interval_s`, never the loop's load.
"""

import asyncio
import functools
import ipaddress
import logging
import resource
import socket
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Final, Self, cast

from simulator.device import SimDevice
from simulator.errors import ServerError
from simulator.fleet import Fleet

DEFAULT_BASE_HOST: Final = "127.0.0.2"
SMP_UDP_PORT: Final = 1337
_FD_HEADROOM: Final = 64
_DATAGRAM_MAX_BYTES: Final = 65535
_QUEUED_READS_MAX: Final = 256
"""Datagrams read from one socket in one turn of the loop, so a flooding client cannot starve the rest."""

logger = logging.getLogger(__name__)


class _DeviceEndpoint(asyncio.DatagramProtocol):
    """One device's socket: feeds datagrams to the device and sends its replies when they are due."""

    def __init__(
        self,
        device: SimDevice,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        on_activity: Callable[[], None],
    ) -> None:
        self.device = device
        self._sock = sock
        self._loop = loop
        self._on_activity = on_activity
        self._transport: asyncio.DatagramTransport | None = None
        self._pending: set[asyncio.TimerHandle] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at_s: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast("asyncio.DatagramTransport", transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        # The transport reads one datagram per turn of the loop, and a loaded loop turns slowly:
        # the datagrams queued behind this one had arrived by now too, so they are read at once
        # and fed at this same `now_s`, and the device's link model alone spaces its reads.
        now_s = self._loop.time()
        self._handle(data, addr, now_s)
        for _ in range(_QUEUED_READS_MAX):
            try:
                data, addr = self._sock.recvfrom(_DATAGRAM_MAX_BYTES)
            except BlockingIOError:
                break
            except OSError:  # a queued ICMP error (see error_received); datagrams may follow it
                continue
            self._handle(data, addr, now_s)
        self._arm_timer()
        self._on_activity()

    def _handle(self, data: bytes, addr: tuple[str | Any, int], now_s: float) -> None:
        try:
            outgoing = self.device.handle(data, now_s)
        except Exception:  # a device bug must not take the other devices down with it
            logger.exception(
                "simulated device %s failed on a %d-byte datagram", self.device.identity.serial, len(data)
            )
            return
        for send_at_s, frame in outgoing:
            if send_at_s <= now_s:
                self._send(frame, addr)
            else:
                self._send_later(send_at_s, frame, addr)

    def error_received(self, exc: Exception) -> None:
        # A client that went away (ICMP port unreachable): UDP has nobody to tell.
        return

    def close(self) -> None:
        for handle in self._pending:
            handle.cancel()
        self._pending.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def _send(self, frame: bytes, addr: tuple[str | Any, int]) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(frame, addr)

    def _send_later(self, send_at_s: float, frame: bytes, addr: tuple[str | Any, int]) -> None:
        def fire() -> None:
            self._pending.discard(handle)
            self._send(frame, addr)
            self._on_activity()

        handle = self._loop.call_at(send_at_s, fire)
        self._pending.add(handle)

    def _arm_timer(self) -> None:
        due_s = self.device.next_timer_s()
        if due_s == self._timer_at_s:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at_s = due_s
        if due_s is not None:
            self._timer = self._loop.call_at(due_s, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at_s = None
        self.device.poll(self._loop.time())
        self._arm_timer()
        self._on_activity()


class FleetServer:
    """Serves simulated devices over UDP; use as an async context manager or `start`/`stop`.

    Example::

        async with FleetServer(generate_fleet(3, seed=1), port_per_device=True) as server:
            host, port = server.endpoints[serial]
            device = server.device(serial)          # the SimDevice, for assertions and faults
            await server.wait_until(lambda: device.boots, timeout_s=5)
    """

    def __init__(
        self,
        fleet: Fleet | Iterable[SimDevice],
        *,
        base_host: str = DEFAULT_BASE_HOST,
        port: int = SMP_UDP_PORT,
        port_per_device: bool = False,
    ) -> None:
        """Prepare (but do not bind) one endpoint per device.

        Args:
            fleet: a fleet description, or devices already built.
            base_host: the first device's IPv4 address; each next device gets the next address.
            port: the UDP port of every device (unless `port_per_device`).
            port_per_device: every device on `base_host`, each on a port the kernel picks.
        """
        devices = fleet.build_devices() if isinstance(fleet, Fleet) else list(fleet)
        self._devices: dict[str, SimDevice] = {}
        for device in devices:
            if device.identity.serial in self._devices:
                raise ServerError(f"serial {device.identity.serial!r} appears twice")
            self._devices[device.identity.serial] = device
        self._base_host = ipaddress.IPv4Address(base_host)
        self._port = port
        self._port_per_device = port_per_device
        self._endpoints: dict[str, tuple[str, int]] = {}
        self._protocols: list[_DeviceEndpoint] = []
        self._waiters: set[asyncio.Future[None]] = set()
        self._running = False

    @property
    def devices(self) -> Mapping[str, SimDevice]:
        """Every device by serial."""
        return self._devices

    @property
    def endpoints(self) -> Mapping[str, tuple[str, int]]:
        """Every device's `(host, port)` by serial (filled by `start`)."""
        return self._endpoints

    def device(self, serial: str) -> SimDevice:
        """The device with this serial."""
        try:
            return self._devices[serial]
        except KeyError:
            raise ServerError(f"no simulated device {serial!r}") from None

    async def start(self) -> None:
        """Bind every device's socket."""
        if self._running:
            raise ServerError("the fleet server is already running")
        loop = asyncio.get_running_loop()
        addresses = [self._address(index) for index in range(len(self._devices))]
        ensure_file_limit(len(self._devices) + _FD_HEADROOM)
        self._running = True
        try:
            for (serial, device), (host, port) in zip(self._devices.items(), addresses, strict=True):
                sock = _bound_socket(host, port)
                endpoint = _DeviceEndpoint(device, sock, loop, self._notify)
                transport, _ = await loop.create_datagram_endpoint(
                    functools.partial(_same, endpoint), sock=sock
                )
                self._protocols.append(endpoint)
                bound_host, bound_port = transport.get_extra_info("sockname")[:2]
                self._endpoints[serial] = (bound_host, bound_port)
        except OSError as error:
            await self.stop()
            raise ServerError(f"cannot bind the fleet's UDP endpoints: {error}") from error

    async def stop(self) -> None:
        """Close every socket and drop replies not yet sent."""
        for endpoint in self._protocols:
            endpoint.close()
        self._protocols.clear()
        self._endpoints.clear()
        self._running = False
        self._notify()
        await asyncio.sleep(0)  # let the transports' close callbacks run

    async def wait_until(self, predicate: Callable[[], bool], *, timeout_s: float) -> None:
        """Return once `predicate()` holds, re-checking after every datagram, reply and timer.

        Raises:
            TimeoutError: it did not hold within `timeout_s`.
        """
        async with asyncio.timeout(timeout_s):
            while not predicate():
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.add(waiter)
                try:
                    await waiter
                finally:
                    self._waiters.discard(waiter)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def _address(self, index: int) -> tuple[str, int]:
        if self._port_per_device:
            return str(self._base_host), 0
        host = self._base_host + index
        if not host.is_loopback:
            raise ServerError(f"device {index} would listen on {host}, outside 127.0.0.0/8")
        return str(host), self._port

    def _notify(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)


def _same(endpoint: _DeviceEndpoint) -> _DeviceEndpoint:
    return endpoint


def _bound_socket(host: str, port: int) -> socket.socket:
    """A non-blocking UDP socket bound to `(host, port)`; the endpoint reads it directly too."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def ensure_file_limit(open_files: int) -> None:
    """Raise the soft limit on open files to `open_files` if the hard limit allows (one socket per device)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < open_files:
        wanted = open_files if hard == resource.RLIM_INFINITY else min(open_files, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
