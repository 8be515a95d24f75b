"""The scheduler's read model of the registry: links for routing, fleet gauges, rollout candidates.

Routing needs every device's links at tick time; reading them from the store every second would
make the tick cost grow with the fleet, so links are cached and refreshed at `refresh_s`. Candidates
for a plan come with what Memfault offers each device, asked with the device's own project key.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from controller.errors import MemfaultUnavailable
from controller.memfault import MemfaultClient
from controller.releases import DeviceQuery, DeviceRefused, ReleaseOffer, UpToDate
from controller.rollout_engine.model import Candidate, GatewayLink
from controller.store.executor import StoreExecutor
from controller.store.fleet_store import FleetStore, GatewayRecord


@dataclass
class FleetGauges:
    """Fleet-wide numbers for the metrics collector."""

    gateways_online: int = 0
    gateways_offline: int = 0
    devices: int = 0
    devices_by_version: dict[tuple[str, str], int] = field(default_factory=dict)


class RegistryView:
    """Cached registry facts for the scheduler."""

    def __init__(self, store: FleetStore, executor: StoreExecutor, memfault: MemfaultClient) -> None:
        self._store = store
        self._executor = executor
        self._memfault = memfault
        self._links: dict[str, tuple[GatewayLink, ...]] = {}
        self.gateways: dict[str, GatewayRecord] = {}
        self.gauges = FleetGauges()
        self._refreshed_at = float("-inf")
        self.artifact_sizes: dict[str, int] = {}
        """Artifact size per offered version, learned while gathering candidates (for estimates)."""

    def links(self, serial: str) -> tuple[GatewayLink, ...]:
        """The device's links as of the last refresh, with each gateway's current liveness."""
        return tuple(
            GatewayLink(
                link.gateway_id,
                link.rssi_dbm,
                self.gateways[link.gateway_id].site if link.gateway_id in self.gateways else "",
                link.online and link.gateway_id in self.gateways and self.gateways[link.gateway_id].online,
            )
            for link in self._links.get(serial, ())
        )

    async def refresh_gateways(self) -> dict[str, GatewayRecord]:
        """Re-read gateways (cheap: one row each); returns the previous view for diffing."""
        previous = self.gateways
        records = await self._executor.call(self._store.gateways)
        self.gateways = {record.gateway_id: record for record in records}
        self.gauges.gateways_online = sum(1 for r in records if r.online)
        self.gauges.gateways_offline = len(records) - self.gauges.gateways_online
        return previous

    async def refresh_links(self, now_s: float, refresh_s: float) -> None:
        """Re-read links and version counts when the cache is older than `refresh_s`."""
        if now_s - self._refreshed_at < refresh_s:
            return
        self._refreshed_at = now_s
        rows = await self._executor.call(self._store.links)
        links: dict[str, list[GatewayLink]] = {}
        for serial, gateway_id, rssi, reachable in rows:
            links.setdefault(serial, []).append(GatewayLink(gateway_id, rssi, "", reachable))
        self._links = {serial: tuple(items) for serial, items in links.items()}
        versions = await self._executor.call(self._store.versions)
        self.gauges.devices_by_version = versions
        self.gauges.devices = sum(versions.values())

    async def candidates(self, software_type: str, concurrency: int = 16) -> list[Candidate]:
        """Every device of `software_type` with Memfault's offer for it.

        Raises:
            MemfaultUnavailable: Memfault is down; planning waits for it.
        """
        await self.refresh_gateways()
        await self.refresh_links(float("inf"), 0.0)
        devices = await self._executor.call(self._store.devices_of_type, software_type)
        keys = await self._executor.call(self._store.project_keys)
        gate = asyncio.Semaphore(concurrency)

        async def one(serial: str, hardware: str, current: str) -> Candidate:
            key = keys.get(serial, "")
            offered, refusal = None, "no project key known"
            if key:
                async with gate:
                    answer = await self._memfault.latest_release(
                        DeviceQuery(serial, hardware, software_type, current, key)
                    )
                match answer:
                    case ReleaseOffer():
                        offered, refusal = answer.version, ""
                        self.artifact_sizes[answer.version] = answer.artifact.size_bytes
                    case UpToDate():
                        refusal = f"up to date ({answer.reason})"
                    case DeviceRefused():
                        refusal = f"memfault refused: HTTP {answer.status} {answer.reason}"
            return Candidate(serial, hardware, software_type, current, self.links(serial), offered, refusal)

        return list(await asyncio.gather(*(one(*device) for device in devices)))

    async def resolve(self, serial: str) -> Resolution:
        """A fresh offer for one device right before dispatch (artifact URLs expire)."""
        facts = await self._executor.call(self._store.device_facts, serial)
        key = await self._executor.call(self._store.project_key, serial)
        if facts is None or key is None:
            return Resolution(None, "device or project key unknown", transient=False)
        hardware, software_type, current = facts
        try:
            answer = await self._memfault.latest_release(
                DeviceQuery(serial, hardware, software_type, current, key), fresh=True
            )
        except MemfaultUnavailable as error:
            return Resolution(None, f"memfault unavailable: {error}", transient=True)
        if isinstance(answer, ReleaseOffer):
            return Resolution(answer, "", transient=False, current_version=current)
        return Resolution(
            None, f"memfault no longer offers an update: {answer}", transient=False, current_version=current
        )


@dataclass(frozen=True, slots=True)
class Resolution:
    """What dispatching a device needs from Memfault, or why it cannot have it now."""

    offer: ReleaseOffer | None
    reason: str
    transient: bool
    """True when Memfault is unavailable: the device waits, no attempt is consumed."""
    current_version: str = ""
