"""High availability: two controllers on one PostgreSQL; one schedules, the other takes over.

The leader is paused (SIGSTOP) mid-rollout: the standby takes the lease within its TTL and finishes
the rollout; when the former leader wakes up its writes are fenced by the lease epoch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import psycopg
import pytest

from controller.settings import (
    ControllerSettings,
    MemfaultConfig,
    MetricsConfig,
    MqttConfig,
    SchedulerConfig,
    StoreConfig,
)
from controller.store.opening import open_store
from schemas import ControllerPresence, FlowSpec, RolloutStatus, TopicKind, channels
from simulator.cloud import CloudEmulator
from simulator.server import FleetServer
from tests.harness.broker import MosquittoBroker
from tests.harness.postgres import throwaway_database
from tests.integration.test_rollout_resilience import assert_everyone_updated_once, single_wave, slow_fleet
from tests.integration.world import (
    TREE,
    ProcessUnderTest,
    agent_settings,
    controller_probe,
    create_and_start,
    latest,
    operator_client,
    publish_release,
    running_agent,
    settings_document,
    wait_until,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def shared_database() -> Iterator[str]:
    """A fresh PostgreSQL database both controllers use."""
    with throwaway_database() as dsn:
        yield dsn


def lease_holder(dsn: str) -> str:
    """Who holds the scheduler lease, read straight from PostgreSQL."""
    with psycopg.connect(dsn) as connection:
        row = connection.execute("SELECT holder FROM lease WHERE name = 'scheduler'").fetchone()
    return str(row[0]) if row else ""


async def leader(client: aiomqtt.Client, timeout_s: float = 30.0, not_: str = "") -> str:
    """The controller id whose retained presence says it leads (other than `not_`)."""
    topic = TREE.filter(TopicKind.CONTROLLER_PRESENCE)
    await client.subscribe(topic, qos=1)
    try:
        async with asyncio.timeout(timeout_s):
            async for message in client.messages:
                if (
                    not message.topic.matches(topic)
                    or not isinstance(message.payload, bytes)
                    or not message.payload
                ):
                    continue
                presence = channels.decode_as(
                    TopicKind.CONTROLLER_PRESENCE, message.payload, ControllerPresence
                )
                if presence.online and presence.leader and presence.controller_id != not_:
                    return presence.controller_id
    finally:
        await client.unsubscribe(topic)
    raise AssertionError("unreachable")


async def test_standby_takes_over_and_the_paused_leader_is_fenced(
    broker: MosquittoBroker, tmp_path: Path, shared_database: str
) -> None:
    """SIGSTOP the leader mid-rollout: the standby finishes it; nothing is flashed twice."""
    serials = [f"DEV-{i}" for i in range(6)]
    async with (
        CloudEmulator() as cloud,
        FleetServer(slow_fleet(serials), base_host="127.0.0.1", port_per_device=True) as devices,
        controller_probe(broker) as probe,
        operator_client(broker) as client,
    ):
        publish_release(cloud, "1.1.0", payload_size_bytes=120_000)
        controllers = {}
        for name in ("ctl-a", "ctl-b"):
            settings = ControllerSettings(
                controller_id=name,
                mqtt=MqttConfig(host=broker.host, port=broker.port, username=""),
                store=StoreConfig(url=shared_database),
                memfault=MemfaultConfig(base_url=cloud.base_url, requests_per_s=1000.0),
                metrics=MetricsConfig(enabled=False),
                scheduler=SchedulerConfig(tick_interval_s=0.2, lease_ttl_s=2.0),
            )
            controllers[name] = ProcessUnderTest("controller", settings_document(settings), tmp_path / name)
        await controllers["ctl-a"].start()
        assert await leader(client) == "ctl-a"
        await controllers["ctl-b"].start()
        try:
            async with running_agent(
                agent_settings("gw-0", broker, tmp_path / "gw-0", list(devices.endpoints.values()))
            ):
                await probe.wait_for(lambda: len(probe.reports) == 6)

                def registry_ready() -> bool:
                    store = open_store(shared_database)
                    try:
                        return len(store.devices()) == 6 and len(store.project_keys()) == 6
                    finally:
                        store.db.close()

                # Reports and credentials reach whichever replica the shared subscription picks.
                await wait_until(lambda: asyncio.to_thread(registry_ready), timeout_s=30)
                spec = single_wave(flow=FlowSpec(max_in_flight=2, max_in_flight_per_gateway=2))
                await create_and_start(client, "r-ha", spec)
                await probe.wait_for(
                    lambda: sum(r.outcome == "succeeded" for r in probe.results.values()) >= 2, timeout_s=60
                )
                controllers["ctl-a"].pause()

                async def standby_leads() -> bool:
                    return await asyncio.to_thread(lease_holder, shared_database) == "ctl-b"

                await wait_until(standby_leads, timeout_s=30)
                controllers["ctl-a"].resume()
                state = await latest(
                    client, TopicKind.ROLLOUT_STATE, "r-ha", lambda s: s.status is RolloutStatus.COMPLETED
                )
        finally:
            for process in controllers.values():
                await process.stop()
    assert state.counts.succeeded == 6, (
        state,
        controllers["ctl-a"].log()[-1500:],
        controllers["ctl-b"].log()[-1500:],
    )
    assert_everyone_updated_once(devices, serials)
    assert (
        "lost the lease" in controllers["ctl-a"].log()
        or "no longer the scheduler" in controllers["ctl-a"].log()
    )
