"""The lease is renewed on its own clock and connection: a slow step or store call keeps leadership.

The leader's Memfault answers each request more slowly than the lease's TTL, so planning and every
dispatch check take longer than the lease lasts; a standby shares the store, ready to take over the
moment the lease lapses. Fake gateways count every OTA command per job id.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from controller.factory import build_controller
from controller.service import ControllerService
from controller.settings import (
    ControllerSettings,
    MemfaultConfig,
    MetricsConfig,
    MqttConfig,
    SchedulerConfig,
    StoreConfig,
)
from schemas import FlowSpec, RolloutState, RolloutStatus, TopicKind
from simulator.cloud import CloudEmulator
from tests.harness.broker import MosquittoBroker
from tests.integration.fake_gateway import FakeGateway, fake_gateway
from tests.integration.test_rollout_resilience import single_wave
from tests.integration.world import (
    HARDWARE,
    PROJECT_KEY,
    TREE,
    create_and_start,
    latest,
    operator_client,
    publish_release,
    registry_has,
    wait_until,
)

pytestmark = pytest.mark.integration

LEASE_TTL_S = 1.0
MEMFAULT_DELAY_S = 1.5 * LEASE_TTL_S
DEVICES = 4


class SlowTransport(httpx.AsyncBaseTransport):
    """Loopback HTTP to the emulator, each answer held back for longer than the lease lasts."""

    def __init__(self, delay_s: float) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self._delay_s = delay_s
        self.requests = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        await asyncio.sleep(self._delay_s)  # the slow server being emulated, not a test wait
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@contextlib.asynccontextmanager
async def controller(
    broker: MosquittoBroker,
    cloud_url: str,
    store_url: str,
    controller_id: str,
    transport: httpx.AsyncBaseTransport,
) -> AsyncIterator[ControllerService]:
    """A controller in this process whose Memfault client goes through `transport`."""
    settings = ControllerSettings(
        controller_id=controller_id,
        mqtt=MqttConfig(host=broker.host, port=broker.port, username=""),
        store=StoreConfig(url=store_url),
        memfault=MemfaultConfig(base_url=cloud_url, requests_per_s=1000.0),
        metrics=MetricsConfig(enabled=False),
        scheduler=SchedulerConfig(tick_interval_s=0.2, lease_ttl_s=LEASE_TTL_S),
    )
    async with build_controller(settings, memfault_transport=transport) as service:
        task = asyncio.create_task(service.run())
        try:
            await asyncio.wait_for(service.session.connected.wait(), 15)
            yield service
        finally:
            await service.stop()
            await asyncio.wait_for(task, 15)


async def test_a_step_slower_than_the_lease_keeps_leadership_and_sends_no_command_twice(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """Memfault slower than the lease TTL: one term throughout, the standby never leads, 0 duplicates."""
    store_url = f"sqlite:///{tmp_path / 'c.sqlite3'}"
    serials = [f"DEV-{i}" for i in range(DEVICES)]
    slow = SlowTransport(MEMFAULT_DELAY_S)
    gateway = FakeGateway("gw-1", serials, HARDWARE, PROJECT_KEY, TREE)
    async with CloudEmulator() as cloud:
        publish_release(cloud, "1.1.0")
        async with (
            controller(broker, cloud.base_url, store_url, "controller-1", slow) as leader,
            fake_gateway(broker, gateway),
            operator_client(broker) as client,
        ):
            await wait_until(lambda: asyncio.sleep(0, leader.is_leader))
            first_epoch = leader.lease_epoch
            async with controller(
                broker, cloud.base_url, store_url, "controller-2", httpx.AsyncHTTPTransport()
            ) as standby:
                await wait_until(lambda: registry_has(leader, DEVICES))
                spec = single_wave(flow=FlowSpec(max_in_flight=DEVICES, max_in_flight_per_gateway=DEVICES))
                await create_and_start(client, "r-slow", spec)
                state = await latest(
                    client,
                    TopicKind.ROLLOUT_STATE,
                    "r-slow",
                    lambda s: isinstance(s, RolloutState) and s.status is RolloutStatus.COMPLETED,
                    timeout_s=60,
                )
                standby_led = standby.is_leader
            final_epoch = leader.lease_epoch
    assert state.counts.succeeded == DEVICES
    # Every dispatch asked the slow Memfault: each of those steps outlasted the lease.
    assert slow.requests >= DEVICES
    assert first_epoch is not None and final_epoch == first_epoch, (first_epoch, final_epoch)
    assert not standby_led
    assert gateway.epochs == {first_epoch}, gateway.epochs
    assert len(gateway.commands) == DEVICES
    assert gateway.duplicates == 0, gateway.commands
    assert set(gateway.rollout_ids) == {"r-slow"}


async def test_a_store_call_slower_than_the_lease_keeps_leadership(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """The store thread busy for three lease TTLs (a fleet-wide read at 100k takes seconds): one term."""
    store_url = f"sqlite:///{tmp_path / 'c.sqlite3'}"
    async with (
        CloudEmulator() as cloud,
        controller(broker, cloud.base_url, store_url, "controller-1", httpx.AsyncHTTPTransport()) as leader,
    ):
        await wait_until(lambda: asyncio.sleep(0, leader.is_leader))
        first_epoch = leader.lease_epoch
        async with controller(
            broker, cloud.base_url, store_url, "controller-2", httpx.AsyncHTTPTransport()
        ) as standby:
            # A store call that outlasts the lease (the slow query being emulated, not a wait).
            await leader.executor.call(time.sleep, 3 * LEASE_TTL_S)
            assert leader.lease_epoch == first_epoch
            assert not standby.is_leader
