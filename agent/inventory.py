"""The gateway's inventory: probes every reachable device on a schedule and says what changed.

Endpoints come from discovery (UDP devices listed in the config; BLE advertisements). Each is
probed (group 128 info and key, image state, MCUmgr parameters) when due, under the device's lock so
a probe never interleaves with an OTA job. A device unheard for `lost_after_s` is reported lost.

A device is its serial, not its address: when a BLE probe finds a serial already known at another
BLE address (a resolvable private address rotated), the old endpoint is retired and its link made
to follow the new one, so the device stays one device and a job holding the old link goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

import structlog

from agent.device_probe import KnownDevice, probe
from agent.errors import AgentError
from agent.link.device_link import DeviceLink, TransportLink
from agent.settings import DiscoveryConfig
from schemas import Reachability, Transport

log = structlog.get_logger("mcufleet.agent.inventory")


@runtime_checkable
class FollowingLink(Protocol):
    """A link that can hand its connections to another link of the same device (BLE)."""

    def follow(self, successor: DeviceLink) -> None:
        """Connect through `successor` from now on."""
        ...


@dataclass
class Endpoint:
    """A place a device can be reached, and what the inventory knows about it."""

    link: DeviceLink
    transport: Transport
    rssi_dbm: int | None = None
    serial: str | None = None
    next_probe_at_s: float = 0.0
    last_heard_s: float | None = None
    failures: int = 0
    identity: str | None = None
    """The id to report when the device cannot say who it is (configured serial devices)."""


@dataclass
class InventoryStats:
    """Probe activity, read by the metrics collector."""

    probes: int = 0
    probe_failures: int = 0
    reports: int = 0
    by_transport: dict[str, int] = field(default_factory=dict)


class Inventory:
    """Known devices of one gateway, kept fresh by `run()`."""

    def __init__(
        self,
        settings: DiscoveryConfig,
        *,
        on_change: Callable[[KnownDevice], None],
        now: Callable[[], datetime],
        monotonic: Callable[[], float],
    ) -> None:
        """`on_change` receives every new, changed, refreshed or lost device (it publishes reports)."""
        self.settings = settings
        self._on_change = on_change
        self._now = now
        self._monotonic = monotonic
        self._endpoints: dict[str, Endpoint] = {}
        self._devices: dict[str, KnownDevice] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._wakeup = asyncio.Event()
        self._changed = asyncio.Condition()
        self.stats = InventoryStats()
        self.warm = False
        """True once every endpoint known at start was probed once (until then, unknown means "not yet")."""

    # --- what the rest of the agent asks ---------------------------------------------------

    @property
    def devices(self) -> dict[str, KnownDevice]:
        """Known devices by serial (present and lost)."""
        return self._devices

    def link_for(self, serial: str) -> DeviceLink | None:
        """The link to a present device, or None when this gateway cannot reach it."""
        device = self._devices.get(serial)
        if device is None or device.reachability is not Reachability.PRESENT:
            return None
        endpoint = self._endpoints.get(device.snapshot.address)
        return endpoint.link if endpoint else None

    async def wait_for_link(self, serial: str, timeout_s: float) -> DeviceLink | None:
        """The device's link, waiting up to `timeout_s` for discovery to find it (after a restart)."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self.link_for(serial) is not None), timeout_s
                )
        return self.link_for(serial)

    @contextlib.asynccontextmanager
    async def device_lock(self, serial: str) -> AsyncIterator[None]:
        """Hold the device: probes wait while a job talks to it."""
        lock = self._locks.setdefault(serial, asyncio.Lock())
        async with lock:
            yield

    def add_endpoint(
        self,
        link: DeviceLink,
        transport: Transport,
        rssi_dbm: int | None = None,
        *,
        identity: str | None = None,
    ) -> None:
        """Start tracking an endpoint (idempotent); it is probed at once if new.

        `identity` is the id reported for a device without group 128 (see `SerialDevice`); by
        default the link's own, when it carries one.
        """
        if identity is None and isinstance(link, TransportLink):
            identity = link.identity
        known = self._endpoints.get(link.address)
        if known is not None:
            known.rssi_dbm = rssi_dbm if rssi_dbm is not None else known.rssi_dbm
            return
        self._endpoints[link.address] = Endpoint(link, transport, rssi_dbm, identity=identity)
        self._wakeup.set()

    def addresses_of(self, serial: str) -> list[str]:
        """Every endpoint address this inventory tracks for the device `serial`."""
        return [address for address, e in self._endpoints.items() if e.serial == serial]

    def refresh(self, serial: str) -> None:
        """Probe a device soon (after a job changed its images)."""
        device = self._devices.get(serial)
        endpoint = self._endpoints.get(device.snapshot.address) if device else None
        if endpoint is not None:
            endpoint.next_probe_at_s = 0.0
            self._wakeup.set()

    # --- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        """Probe due endpoints and mark silent devices lost, forever."""
        limit = asyncio.Semaphore(self.settings.probe_concurrency)

        async def probe_with_limit(endpoint: Endpoint) -> None:
            async with limit:
                await self.probe_endpoint(endpoint)

        while True:
            now_s = self._monotonic()
            due = [e for e in self._endpoints.values() if e.next_probe_at_s <= now_s]
            if due:
                await asyncio.gather(*(probe_with_limit(e) for e in due))
            self.warm = True
            self._mark_lost(self._monotonic())
            self._wakeup.clear()
            next_at = min((e.next_probe_at_s for e in self._endpoints.values()), default=now_s + 60)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), max(0.05, next_at - self._monotonic()))

    async def probe_endpoint(self, endpoint: Endpoint) -> KnownDevice | None:
        """Probe one endpoint now; returns the device, or None when it did not answer."""
        self.stats.probes += 1
        lock = self._locks.setdefault(endpoint.serial, asyncio.Lock()) if endpoint.serial else None
        try:
            async with lock or contextlib.nullcontext():
                session = await endpoint.link.connect()
                try:
                    snapshot = await probe(
                        session, endpoint.transport, endpoint.link.address, identity=endpoint.identity
                    )
                finally:
                    await session.close()
        except (AgentError, OSError) as error:
            self.stats.probe_failures += 1
            endpoint.failures += 1
            endpoint.next_probe_at_s = self._monotonic() + self.settings.retry_interval_s
            log.info(
                "probe failed", address=endpoint.link.address, error=str(error), failures=endpoint.failures
            )
            return None
        endpoint.failures = 0
        endpoint.serial = snapshot.serial
        self._retire_old_addresses(endpoint)
        endpoint.last_heard_s = self._monotonic()
        endpoint.next_probe_at_s = endpoint.last_heard_s + self.settings.refresh_interval_s
        device = KnownDevice(snapshot, self._now(), endpoint.rssi_dbm)
        self._devices[snapshot.serial] = device
        self._count_transports()
        self._on_change(device)
        async with self._changed:
            self._changed.notify_all()
        return device

    def _retire_old_addresses(self, endpoint: Endpoint) -> None:
        """The device moved to this BLE address: forget the others, their links follow this one."""
        if endpoint.transport is not Transport.BLE:
            return
        for address, other in list(self._endpoints.items()):
            if other is endpoint or other.serial != endpoint.serial or other.transport is not Transport.BLE:
                continue
            del self._endpoints[address]
            if isinstance(other.link, FollowingLink):
                other.link.follow(endpoint.link)
            log.info(
                "device moved", serial=endpoint.serial, old_address=address, address=endpoint.link.address
            )

    def _mark_lost(self, now_s: float) -> None:
        for endpoint in self._endpoints.values():
            if endpoint.serial is None or endpoint.last_heard_s is None:
                continue
            device = self._devices.get(endpoint.serial)
            silent_s = now_s - endpoint.last_heard_s
            if (
                device
                and device.reachability is Reachability.PRESENT
                and silent_s > self.settings.lost_after_s
            ):
                lost = device.mark_lost()
                self._devices[endpoint.serial] = lost
                log.info("device lost", serial=endpoint.serial, silent_s=round(silent_s))
                self._count_transports()
                self._on_change(lost)

    def _count_transports(self) -> None:
        counts: dict[str, int] = {}
        for device in self._devices.values():
            if device.reachability is Reachability.PRESENT:
                counts[device.snapshot.transport] = counts.get(device.snapshot.transport, 0) + 1
        self.stats.by_transport = counts
