"""The one way to build a controller: settings in, a wired `ControllerService` out.

The CLI, the demo, the tests and the benchmarks all build through `build_controller`, so the
path from `[memfault]` settings to the Memfault client is the tested path. Only what a caller
must replace is injectable: the store (a test sharing a database), the registry (a test reading
metrics), the Memfault HTTP transport (a mock), the clocks.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable

import httpx
from prometheus_client import CollectorRegistry

from controller.memfault import MemfaultClient, MemfaultSettings
from controller.service import ControllerService
from controller.settings import ControllerSettings, MemfaultConfig
from controller.store.fleet_store import FleetStore
from controller.store.opening import open_store
from service_runtime.systemd import SystemdNotifier


def memfault_settings(config: MemfaultConfig) -> MemfaultSettings:
    """The Memfault client's limits from the `[memfault]` config section."""
    return MemfaultSettings(
        base_url=config.base_url,
        cache_ttl_s=config.cache_ttl_s,
        max_concurrency=config.max_concurrency,
        requests_per_s=config.requests_per_s,
        timeout_s=config.timeout_s,
    )


@contextlib.asynccontextmanager
async def build_controller(
    settings: ControllerSettings,
    *,
    registry: CollectorRegistry | None = None,
    store: FleetStore | None = None,
    memfault_transport: httpx.AsyncBaseTransport | None = None,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
    notifier: SystemdNotifier | None = None,
) -> AsyncIterator[ControllerService]:
    """A controller built from `settings`, constructed but not run; its adapters close on exit.

    `store` defaults to the one `settings.store.url` names (opened, migrated, and closed when the
    block ends; a store passed in stays the caller's to close). `clock` is the monotonic clock of
    the service and of its Memfault client.

    Raises:
        ConfigError: the store URL has an unknown scheme.
        StoreError: the store cannot be opened or migrated.
        ControllerError: the controller id is not a valid id.
    """
    owned_store = store is None
    opened = open_store(settings.store.url) if store is None else store
    # The lease's own connection (an in-memory SQLite database cannot be opened twice; an injected
    # store is shared with its caller as it is).
    lease_store: FleetStore | None = None
    limits = httpx.Limits(max_connections=settings.memfault.max_concurrency * 2)
    try:
        if owned_store and settings.store.url != "sqlite://:memory:":
            lease_store = open_store(settings.store.url)
        async with httpx.AsyncClient(
            limits=limits, follow_redirects=False, transport=memfault_transport
        ) as http:
            yield ControllerService(
                settings,
                store=opened,
                memfault=MemfaultClient(
                    memfault_settings(settings.memfault), http, clock=clock, transport=memfault_transport
                ),
                registry=registry if registry is not None else CollectorRegistry(),
                notifier=notifier,
                wall_clock=wall_clock,
                monotonic=clock,
                lease_store=lease_store,
            )
    finally:
        if owned_store:
            opened.db.close()
        if lease_store is not None:
            lease_store.db.close()
