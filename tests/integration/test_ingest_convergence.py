"""Ingest over the real broker: late keys converge, rebirths are rationed, queued messages survive absence."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg
import pytest
from prometheus_client import CollectorRegistry
from psycopg import conninfo

from controller.gateway_trust import key_fingerprint
from controller.memfault import MemfaultClient, MemfaultSettings
from controller.service import ControllerService
from controller.settings import ControllerSettings, IngestConfig, MetricsConfig, MqttConfig, StoreConfig
from controller.store.opening import open_store
from schemas import (
    DeviceCredential,
    DeviceReport,
    DeviceSerial,
    GatewayId,
    RebirthRequest,
    TopicKind,
    Transport,
    channels,
)
from service_runtime.mqtt import Inbound, MqttSession, MqttSettings, Outbound, Subscription
from service_runtime.mqtt_metrics import MqttMetrics
from tests.harness.broker import MosquittoBroker
from tests.integration.world import TREE, WAIT_S, wait_until

pytestmark = pytest.mark.integration
PROJECT_KEY = "project-key-ingest"


@contextlib.asynccontextmanager
async def ingesting_controller(
    broker: MosquittoBroker, store_url: str, ingest: IngestConfig, controller_id: str = "ctl-ingest"
) -> AsyncIterator[ControllerService]:
    """A controller with these ingest settings, its report stream subscribed (Memfault never called)."""
    settings = ControllerSettings(
        controller_id=controller_id,
        mqtt=MqttConfig(host=broker.host, port=broker.port, username=""),
        store=StoreConfig(url=store_url),
        metrics=MetricsConfig(enabled=False),
        ingest=ingest,
    )
    store = open_store(store_url)
    async with httpx.AsyncClient() as http:
        service = ControllerService(
            settings,
            store=store,
            memfault=MemfaultClient(MemfaultSettings(base_url="http://127.0.0.1:9"), http),
            registry=CollectorRegistry(),
        )
        task = asyncio.create_task(service.run())
        try:
            await asyncio.wait_for(service.session.connected.wait(), WAIT_S)
            yield service
        finally:
            await service.stop()
            await asyncio.wait_for(task, WAIT_S)
            store.db.close()


class Gateway:
    """Publishes reports (naming a project key) and credentials for its devices; counts rebirths."""

    def __init__(self, broker: MosquittoBroker, gateway_id: str, devices: int, *, answer: bool) -> None:
        self.gateway_id = gateway_id
        self.serials = [f"{gateway_id.upper()}-{index:04d}" for index in range(devices)]
        self.seq = 0
        self.rebirths = 0
        self.rebirth_seen = asyncio.Event()
        self._answer = answer
        self.session = MqttSession(
            MqttSettings(broker.host, broker.port, gateway_id, outbox_limit=100_000),
            tree=TREE,
            subscriptions=[Subscription(TREE.topic(TopicKind.GATEWAY_COMMAND, gateway_id=gateway_id))],
            handler=self._on_command,
            metrics=MqttMetrics(CollectorRegistry()),
        )

    async def _on_command(self, message: Inbound) -> None:
        if isinstance(message.message, RebirthRequest):
            self.rebirths += 1
            self.rebirth_seen.set()
            if self._answer:
                self.publish_reports()
                self.publish_credentials()

    def publish_reports(self, *, skip_every: int = 0, retain: bool = True) -> None:
        for serial in self.serials:
            self.seq += 1
            if skip_every and self.seq % skip_every == 0:
                continue  # lost in the burst: a gap in the sequence
            report = DeviceReport(
                gateway_id=GatewayId(self.gateway_id),
                epoch=1,
                seq=self.seq,
                device_serial=DeviceSerial(serial),
                hardware_version="hw",
                software_type="app",
                current_version="1.0.0",
                project_key_fingerprint=key_fingerprint(PROJECT_KEY),
                transport=Transport.BLE,
                address=f"AA:{serial}",
                seen_at=datetime.now(UTC),
            )
            topic = TREE.topic(TopicKind.DEVICE_REPORT, gateway_id=self.gateway_id, device_serial=serial)
            self.session.publish(Outbound(topic, channels.encode(report), qos=1, retain=retain))

    def publish_credentials(self) -> None:
        for serial in self.serials:
            credential = DeviceCredential(
                gateway_id=GatewayId(self.gateway_id),
                device_serial=DeviceSerial(serial),
                project_key=PROJECT_KEY,
                fingerprint=key_fingerprint(PROJECT_KEY),
            )
            topic = TREE.topic(TopicKind.DEVICE_CREDENTIAL, gateway_id=self.gateway_id, device_serial=serial)
            self.session.publish(Outbound(topic, channels.encode(credential), qos=1))


@contextlib.asynccontextmanager
async def online(gateways: list[Gateway]) -> AsyncIterator[None]:
    """Every gateway connected for the duration."""
    tasks = [asyncio.create_task(gateway.session.run()) for gateway in gateways]
    try:
        for gateway in gateways:
            await asyncio.wait_for(gateway.session.connected.wait(), WAIT_S)
        yield
    finally:
        for gateway in gateways:
            await gateway.session.stop()
        await asyncio.gather(*tasks)


async def stored(controller: ControllerService) -> tuple[int, int]:
    """(devices, project keys) in the controller's store."""
    devices = await controller.executor.call(controller.store.devices)
    keys = await controller.executor.call(controller.store.project_keys)
    return len(devices), len(keys)


async def test_credentials_arriving_after_their_reports_converge_without_a_rebirth(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """A burst of reports whose keys come later: every key is stored and no gateway is asked to rebirth."""
    gateways = [Gateway(broker, f"gw-late-{n}", 400, answer=True) for n in range(3)]
    ingest = IngestConfig(key_wait_s=60.0)
    async with (
        ingesting_controller(broker, f"sqlite:///{tmp_path / 'c.sqlite3'}", ingest) as controller,
        online(gateways),
    ):
        for gateway in gateways:
            gateway.publish_reports()

        async def reports_in() -> bool:
            return (await stored(controller))[0] == 1200

        await wait_until(reports_in)
        assert controller.ingest.stats.keys_awaited == 1200
        for gateway in gateways:
            gateway.publish_credentials()

        async def keys_in() -> bool:
            return (await stored(controller))[1] == 1200

        await wait_until(keys_in)
        stats = controller.ingest.stats
        assert controller.ingest.awaiting_keys == 0
        assert stats.keys_missing == 0
        assert stats.rebirths_requested == 0
        assert controller.session.outbox_size == 0
    assert [gateway.rebirths for gateway in gateways] == [0, 0, 0]


async def test_credentials_queued_behind_a_backlog_longer_than_the_wait_cost_no_rebirth(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """Reports drained one per batch, their credentials still queued past `key_wait_s`: nobody is asked."""
    gateway = Gateway(broker, "gw-backlog", 150, answer=True)
    # One message per transaction: the 150 credentials wait behind 150 reports for longer than 0.2 s.
    ingest = IngestConfig(key_wait_s=0.2, max_batch=1, linger_s=0.0)
    async with (
        ingesting_controller(broker, f"sqlite:///{tmp_path / 'c.sqlite3'}", ingest) as controller,
        online([gateway]),
    ):
        # The store thread busy (a slow query, emulated) while everything arrives: a backlog.
        busy = asyncio.create_task(controller.executor.call(time.sleep, 1.0))
        gateway.publish_reports()
        gateway.publish_credentials()
        await busy

        async def keys_in() -> bool:
            return (await stored(controller)) == (150, 150)

        await wait_until(keys_in)
        stats = controller.ingest.stats
        assert stats.keys_awaited > 0, "no report waited: the test made no backlog"
        assert stats.keys_missing == 0
        assert stats.rebirths_requested == 0
    assert gateway.rebirths == 0


async def test_a_key_that_never_arrives_costs_its_gateway_one_rebirth(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """Reports without credentials wait, then each gateway is asked once; its answer brings every key."""
    gateways = [Gateway(broker, f"gw-nokey-{n}", 200, answer=True) for n in range(2)]
    ingest = IngestConfig(key_wait_s=0.3)
    async with (
        ingesting_controller(broker, f"sqlite:///{tmp_path / 'c.sqlite3'}", ingest) as controller,
        online(gateways),
    ):
        for gateway in gateways:
            gateway.publish_reports()

        async def keys_in() -> bool:
            return (await stored(controller)) == (400, 400)

        await wait_until(keys_in)
        stats = controller.ingest.stats
        assert stats.keys_missing == 400
        assert stats.rebirths_requested == 2
    assert [gateway.rebirths for gateway in gateways] == [1, 1]


async def test_rebirth_requests_are_rate_limited_per_gateway_and_fleet_wide(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """Gaps in every burst of four gateways: a fleet burst of two sends two rebirths, one per gateway."""
    gateways = [Gateway(broker, f"gw-gaps-{n}", 100, answer=False) for n in range(4)]
    ingest = IngestConfig(
        key_wait_s=600.0,
        rebirth_gateway_interval_s=3600.0,
        rebirth_fleet_per_s=1e-6,
        rebirth_fleet_burst=2,
    )
    async with (
        ingesting_controller(broker, f"sqlite:///{tmp_path / 'c.sqlite3'}", ingest) as controller,
        online(gateways),
    ):
        for _ in range(3):
            for gateway in gateways:
                gateway.publish_reports(skip_every=7)
        stats = controller.ingest.stats

        async def every_burst_read() -> bool:
            return all(stats.sequence.get((g.gateway_id, 1)) == 300 for g in gateways)

        await wait_until(every_burst_read)
        assert stats.gaps_detected >= 4 * 3 * 10
        assert stats.rebirths_requested == 2
        assert stats.rebirths_held > 0
        assert await controller.session.flush(WAIT_S)

        async def delivered() -> bool:
            return sum(gateway.rebirths for gateway in gateways) >= 2

        await wait_until(delivered)
    assert sorted(gateway.rebirths for gateway in gateways) == [0, 0, 1, 1]


async def test_messages_published_while_the_controller_was_away_reach_it(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """Reports and credentials sent while the controller is stopped (and the broker restarts) arrive."""
    url = f"sqlite:///{tmp_path / 'c.sqlite3'}"
    ingest = IngestConfig(key_wait_s=600.0)
    async with ingesting_controller(broker, url, ingest):
        pass  # the broker now knows both sessions and their subscriptions
    gateway = Gateway(broker, "gw-away", 300, answer=False)
    async with online([gateway]):
        # Not retained: only the controller's sessions can hold these for it.
        gateway.publish_reports(retain=False)
        gateway.publish_credentials()
        assert await gateway.session.flush(WAIT_S)
    broker.restart()
    async with ingesting_controller(broker, url, ingest) as controller:

        async def everything_in() -> bool:
            return (await stored(controller)) == (300, 300)

        await wait_until(everything_in)
        assert controller.ingest.stats.rebirths_requested == 0
    assert gateway.rebirths == 0


async def test_a_batch_the_store_refuses_is_written_again_and_the_writer_goes_on(
    broker: MosquittoBroker, postgres_dsn: str
) -> None:
    """A report batch PostgreSQL refuses (a lock wait timing out here) is kept and written again.

    The refusal used to end the writer: that replica then stored none of its share of the stream
    (every other report under a shared subscription) and logged nothing.
    """
    schema = f"t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    url = conninfo.make_conninfo(postgres_dsn, options=f"-c search_path={schema} -c lock_timeout=200")
    gateway = Gateway(broker, "gw-refused", 50, answer=False)

    def latest() -> dict[str, int]:
        first = gateway.seq - len(gateway.serials) + 1
        return {serial: first + index for index, serial in enumerate(gateway.serials)}

    try:
        async with (
            ingesting_controller(broker, url, IngestConfig(key_wait_s=600.0)) as controller,
            online([gateway]),
        ):

            async def links() -> dict[str, int]:
                rows = await controller.executor.call(
                    controller.store.db.fetchall, "SELECT serial, seq FROM device_link"
                )
                return {str(serial): int(seq) for serial, seq in rows}

            async def all_latest() -> bool:
                return await links() == latest()

            gateway.publish_reports()
            await wait_until(all_latest)
            with psycopg.connect(url) as holder:
                holder.execute(
                    "SELECT 1 FROM device_link WHERE serial = %s FOR UPDATE", (gateway.serials[0],)
                )
                gateway.publish_reports()

                async def refused() -> bool:
                    return controller.ingest.stats.store_errors >= 2

                await wait_until(refused)  # refused, kept, and refused again while the row is held
                assert await links() != latest()
                holder.rollback()
            await wait_until(all_latest)
            gateway.publish_reports()  # the writer goes on with what comes next
            await wait_until(all_latest)
            assert controller.metrics_readings().ingest_store_errors == controller.ingest.stats.store_errors
            assert controller.ingest.stats.rebirths_requested == 0
    finally:
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")
