"""The scheduler's registry view on a real SQLite store: the facts a step's dispatches need, read at once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import ParamSpec, TypeVar

import httpx

from controller.correlation_view import FACTS_CHUNK, CorrelationView, read_facts
from controller.memfault import MemfaultClient, MemfaultSettings
from controller.registry_view import RegistryView
from controller.store.executor import StoreExecutor
from controller.store.fleet_store import FleetStore
from controller.store.opening import open_store
from schemas import DeviceReport, DeviceSerial, GatewayId, Transport

P = ParamSpec("P")
T = TypeVar("T")
AT = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


class CountingExecutor(StoreExecutor):
    """The store's executor, counting the calls made through it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def call(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Count, then run on the store thread."""
        self.calls += 1
        return await super().call(function, *args, **kwargs)


def _report(serial: str, seq: int) -> DeviceReport:
    return DeviceReport(
        gateway_id=GatewayId("gw-1"),
        epoch=1,
        seq=seq,
        device_serial=DeviceSerial(serial),
        hardware_version="nrf52840dk",
        software_type="app",
        current_version=f"1.0.{seq % 3}",
        transport=Transport.UDP,
        address="127.0.0.2:1337",
        seen_at=AT,
    )


def _store(tmp_path: Path, devices: int) -> FleetStore:
    store = open_store(f"sqlite:///{tmp_path / 'c.sqlite3'}")
    store.apply_reports([_report(f"S{index:05d}", index + 1) for index in range(devices)])
    return store


def test_facts_of_many_serials_match_the_facts_read_one_by_one(tmp_path: Path) -> None:
    """Serials over several chunks come back complete and equal to single reads; unknown ones are absent."""
    store = _store(tmp_path, FACTS_CHUNK * 2 + 7)
    wanted = [f"S{index:05d}" for index in range(FACTS_CHUNK * 2 + 7)] + ["UNKNOWN"]
    many = read_facts(store, serials=wanted)
    one_by_one = [fact for serial in wanted for fact in read_facts(store, serial=serial)]
    assert {fact.serial: fact for fact in many} == {fact.serial: fact for fact in one_by_one}
    assert len(many) == FACTS_CHUNK * 2 + 7
    store.db.close()


def test_a_prefetched_dispatch_resolves_without_a_store_call(tmp_path: Path) -> None:
    """After one prefetch of a step's devices, resolving each costs no store call of its own."""
    store = _store(tmp_path, 50)
    executor = CountingExecutor()
    memfault = MemfaultClient(MemfaultSettings(base_url="http://127.0.0.1:9"), httpx.AsyncClient())
    view = CorrelationView(memfault)
    registry = RegistryView(store, executor, view)
    serials = [f"S{index:05d}" for index in range(50)]

    async def dispatch_all() -> list[str]:
        await registry.prefetch(serials)
        prefetch_calls = executor.calls
        resolved = [await registry.resolve(serial, "1.1.0") for serial in serials]
        assert executor.calls == prefetch_calls == 1
        # Used once: a second resolve of the same device reads the store again.
        await registry.resolve(serials[0], "1.1.0")
        assert executor.calls == 2
        return [resolution.current_version for resolution in resolved]

    versions = asyncio.run(dispatch_all())
    assert versions == [f"1.0.{(index + 1) % 3}" for index in range(50)]
    executor.shutdown()
    store.db.close()
