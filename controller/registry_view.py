"""The scheduler's read model of the registry: links for routing, fleet gauges, rollout candidates.

Routing needs every device's links at tick time; reading them from the store every second would
make the tick cost grow with the fleet, so links are cached and refreshed at `refresh_s`. Candidates
for a plan come with what the standing correlation view (`correlation_view`) holds for each
device, decided by the pure correlation core (`correlation`); nothing here waits on Memfault.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Final, assert_never

from controller.correlation import Correlation, DeviceFacts, Excluded, Exclusion, Install, correlate
from controller.correlation_view import CorrelationView, Freshness, read_facts
from controller.rollout_engine.model import Candidate, GatewayLink
from controller.store.executor import StoreExecutor
from controller.store.fleet_store import FleetStore, GatewayRecord
from schemas.versions import InvalidVersion, version_key


@dataclass
class FleetGauges:
    """Fleet-wide numbers for the metrics collector."""

    gateways_online: int = 0
    gateways_offline: int = 0
    devices: int = 0
    devices_by_version: dict[tuple[str, str], int] = field(default_factory=dict)


REASK_BEFORE_EXCLUDING: Final = frozenset(Exclusion) - {Exclusion.NO_PROJECT_KEY, Exclusion.NOT_ASKED_YET}
"""Exclusions a plan checks with a fresh answer first: every one that rests on an answer Memfault
could give differently now (a release activated, a project created, a key provisioned since)."""


class RegistryView:
    """Cached registry facts for the scheduler."""

    def __init__(self, store: FleetStore, executor: StoreExecutor, correlation: CorrelationView) -> None:
        self._store = store
        self._executor = executor
        self._correlation = correlation
        self._links: dict[str, tuple[GatewayLink, ...]] = {}
        self.gateways: dict[str, GatewayRecord] = {}
        self.gauges = FleetGauges()
        self._refreshed_at = float("-inf")
        self.artifact_sizes: dict[str, int] = {}
        """Artifact size per offered version, learned while gathering candidates (for estimates)."""
        self._prefetched: dict[str, DeviceFacts] = {}
        """Facts read for the dispatches about to be resolved (each used once)."""

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

    async def candidates(self, software_type: str, target_version: str) -> tuple[list[Candidate], Freshness]:
        """Every device of `software_type`, with what it would get towards `target_version`.

        The devices are handed to the correlation view, and this waits (beside the scheduler, at
        most `plan_wait_s` with no new answer, `plan_wait_max_s` in all) for their answers; a device
        still unanswered is excluded with why.
        """
        await self.refresh_gateways()
        await self.refresh_links(float("inf"), 0.0)
        facts = await self._executor.call(read_facts, self._store, software_type)
        view = self._correlation
        settings = view.settings
        await asyncio.to_thread(
            view.ensure, facts, settings.plan_max_age_s, settings.plan_wait_s, settings.plan_wait_max_s
        )
        results = [self._correlate(fact, target_version) for fact in facts]
        # A standing answer that keeps a device out of this rollout may predate the release the
        # operator just activated in Memfault (the view asked when the device reported): those
        # devices are asked again, once, before the plan excludes them.
        doubtful = [
            fact
            for fact, result in zip(facts, results, strict=True)
            if isinstance(result, Excluded) and result.reason in REASK_BEFORE_EXCLUDING
        ]
        if doubtful:
            await asyncio.to_thread(
                view.ensure, doubtful, 0.0, settings.plan_wait_s, settings.plan_wait_max_s
            )
            again = {fact.serial: self._correlate(fact, target_version) for fact in doubtful}
            results = [again.get(fact.serial, result) for fact, result in zip(facts, results, strict=True)]
        candidates: list[Candidate] = []
        for fact, result in zip(facts, results, strict=True):
            offered, refusal = None, ""
            match result:
                case Install():
                    offered = target_version
                    if not result.hop:
                        self.artifact_sizes[result.version] = result.artifact.size_bytes
                case Excluded():
                    refusal = result.detail
                    if result.reason is Exclusion.NOT_ASKED_YET and view.outage():
                        refusal = f"memfault unavailable: {view.outage()}"
                case _:
                    assert_never(result)
            candidates.append(
                Candidate(
                    fact.serial,
                    fact.hardware_version,
                    software_type,
                    fact.current_version,
                    self.links(fact.serial),
                    offered,
                    refusal,
                )
            )
        return candidates, view.freshness(facts)

    def _correlate(self, fact: DeviceFacts, target_version: str) -> Correlation:
        standing = self._correlation.answer(fact.serial)
        return correlate(
            fact,
            standing.answer if standing else None,
            standing.asked if standing else None,
            target_version,
        )

    async def prefetch(self, serials: Sequence[str]) -> None:
        """Read the facts of devices about to be resolved in one store call (not one each).

        The store thread also writes ingest batches: a read per dispatch queued behind them made
        each dispatch wait for a batch, and a step of a thousand dispatches wait for a thousand.
        """
        missing = [serial for serial in serials if serial not in self._prefetched]
        if not missing:
            return
        found = await self._executor.call(read_facts, self._store, serials=missing)
        self._prefetched.update((fact.serial, fact) for fact in found)

    def forget_prefetched(self) -> None:
        """Drop facts read but not used (a step starts from the store again)."""
        self._prefetched = {}

    async def resolve(self, serial: str, target_version: str, ran_hop: str = "") -> Resolution:
        """What a dispatch of `serial` sends, from the view's answer if it is fresh (never waits).

        A stale or missing answer is asked again in the background and the device waits a moment;
        an outage holds the device until Memfault answers again. `ran_hop` is the version a hop
        just installed, when the device's report has not caught up yet.
        """
        view = self._correlation
        fact = self._prefetched.pop(serial, None)
        if fact is None:
            found = await self._executor.call(read_facts, self._store, None, serial)
            if not found:
                return Resolution(None, "device unknown")
            fact = found[0]
        if ran_hop and _older(fact.current_version, ran_hop):
            fact = replace(fact, current_version=ran_hop)
        if outage := view.outage():
            return Resolution(
                None, f"dispatch paused: memfault unavailable ({outage})", hold_s=5.0, paused=True
            )
        standing = view.usable_for_dispatch(fact, view.settings.dispatch_max_age_s)
        if standing is None:
            view.refresh(fact)
            return Resolution(
                None, "waiting for a fresh memfault answer", hold_s=1.0, current_version=fact.current_version
            )
        result = correlate(fact, standing.answer, standing.asked, target_version)
        if isinstance(result, Install):
            return Resolution(result, "", current_version=fact.current_version)
        return Resolution(None, result.detail, current_version=fact.current_version)


@dataclass(frozen=True, slots=True)
class Resolution:
    """What dispatching a device sends, or why it sends nothing (now, or in this rollout)."""

    install: Install | None
    reason: str
    hold_s: float = 0.0
    """Above 0: nothing is decided yet, the device waits this long (no attempt consumed)."""
    paused: bool = False
    """The hold is a Memfault outage (the rollout's dispatch is paused)."""
    current_version: str = ""


def _older(reported: str, installed: str) -> bool:
    """Whether the device's report is older than a hop it just installed (an unorderable one is)."""
    try:
        return version_key(reported) < version_key(installed)
    except InvalidVersion:
        return True
