"""Two controller processes ingest one report stream through a shared subscription into one PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt
import psycopg
import pytest
from prometheus_client import CollectorRegistry

from controller.settings import (
    ControllerSettings,
    IngestConfig,
    MemfaultConfig,
    MetricsConfig,
    MqttConfig,
    StoreConfig,
)
from schemas import (
    ControllerPresence,
    DeviceReport,
    DeviceSerial,
    GatewayId,
    GatewayPresence,
    RebirthRequest,
    TopicKind,
    Transport,
    channels,
)
from service_runtime.mqtt import Inbound, MqttSession, MqttSettings, Outbound, Subscription
from service_runtime.mqtt_metrics import MqttMetrics
from tests.harness.broker import MosquittoBroker
from tests.harness.postgres import throwaway_database
from tests.integration.world import TREE, WAIT_S, ProcessUnderTest, settings_document, wait_until

pytestmark = pytest.mark.integration
GATEWAYS = 4
DEVICES_PER_GATEWAY = 1000


@pytest.fixture
def shipped_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """Mosquitto with the shipped queue limits (the default 1,000 queued drops most of a rebirth burst)."""
    instance = MosquittoBroker(
        tmp_path / "broker", extra_config="max_queued_messages 200000\nmax_inflight_messages 100\n"
    )
    instance.start()
    yield instance
    instance.crash()


@pytest.fixture
def shared_database() -> Iterator[str]:
    """A fresh PostgreSQL database both replicas use."""
    with throwaway_database() as dsn:
        yield dsn


class _Presence:
    """A gateway's retained birth and will (what makes a restarted controller ask it for a rebirth)."""

    def __init__(self, gateway_id: str) -> None:
        self.gateway_id = gateway_id
        self.topic = TREE.topic(TopicKind.GATEWAY_PRESENCE, gateway_id=gateway_id)

    def _payload(self, epoch: int, online: bool) -> bytes:
        return channels.encode(
            GatewayPresence(gateway_id=GatewayId(self.gateway_id), epoch=epoch, online=online)
        )

    def birth(self, epoch: int) -> bytes:
        return self._payload(epoch, True)

    def will(self, epoch: int) -> bytes:
        return self._payload(epoch, False)

    def goodbye(self, epoch: int) -> bytes:
        return self._payload(epoch, False)


class BurstGateway:
    """Publishes a retained report per device; answers a rebirth by publishing them all again."""

    def __init__(self, broker: MosquittoBroker, gateway_id: str) -> None:
        self.gateway_id = gateway_id
        self.seq = 0
        self.last_seq: dict[str, int] = {}
        self.rebirths = 0
        self.session = MqttSession(
            MqttSettings(broker.host, broker.port, gateway_id, outbox_limit=100_000),
            tree=TREE,
            subscriptions=[Subscription(TREE.topic(TopicKind.GATEWAY_COMMAND, gateway_id=gateway_id))],
            handler=self._on_command,
            metrics=MqttMetrics(CollectorRegistry()),
            presence=_Presence(gateway_id),
        )

    async def _on_command(self, message: Inbound) -> None:
        if isinstance(message.message, RebirthRequest):
            self.rebirths += 1
            self.publish_all()

    def publish_all(self) -> None:
        for index in range(DEVICES_PER_GATEWAY):
            serial = f"{self.gateway_id.upper()}-{index:04d}"
            self.seq += 1
            self.last_seq[serial] = self.seq
            report = DeviceReport(
                gateway_id=GatewayId(self.gateway_id),
                epoch=self.session.epoch,
                seq=self.seq,
                device_serial=DeviceSerial(serial),
                hardware_version="hw",
                software_type="app",
                current_version="1.0.0",
                transport=Transport.BLE,
                address=f"AA:{serial}",
                seen_at=datetime.now(UTC),
            )
            topic = TREE.topic(TopicKind.DEVICE_REPORT, gateway_id=self.gateway_id, device_serial=serial)
            self.session.publish(Outbound(topic, channels.encode(report), qos=1, retain=True))


def stored_links(dsn: str) -> tuple[int, dict[str, int]]:
    """(device rows, the sequence of every stored link by serial), read straight from PostgreSQL."""
    with psycopg.connect(dsn) as connection:
        devices = connection.execute("SELECT COUNT(*) FROM device").fetchone()
        links = connection.execute("SELECT serial, seq FROM device_link").fetchall()
    return (int(devices[0]) if devices else 0), {str(serial): int(seq) for serial, seq in links}


async def replicas_online(client: aiomqtt.Client, names: set[str]) -> None:
    """Wait until every named replica's presence says online (its report stream is subscribed first)."""
    topic = TREE.filter(TopicKind.CONTROLLER_PRESENCE)
    await client.subscribe(topic, qos=1)
    online: set[str] = set()
    async with asyncio.timeout(WAIT_S):
        async for message in client.messages:
            if not isinstance(message.payload, bytes) or not message.payload:
                continue
            presence = channels.decode(TopicKind.CONTROLLER_PRESENCE, message.payload)
            if isinstance(presence, ControllerPresence) and presence.online:
                online.add(presence.controller_id)
                if names <= online:
                    break
    await client.unsubscribe(topic)


@pytest.mark.parametrize("returns", [True, False], ids=["restarted", "gone-for-good"])
async def test_a_replica_killed_mid_burst_loses_no_report(
    shipped_broker: MosquittoBroker, tmp_path: Path, shared_database: str, returns: bool
) -> None:
    """SIGKILL one of two ingesting replicas mid-burst: restarted or gone for good, no report is lost.

    Every report ends stored once at its latest sequence; gone for good, the survivor discards the
    dead replica's report session (which holds its share) and asks every gateway for a rebirth.
    """
    broker = shipped_broker
    replicas = {
        name: ProcessUnderTest(
            "controller",
            settings_document(
                ControllerSettings(
                    controller_id=name,
                    mqtt=MqttConfig(host=broker.host, port=broker.port, username=""),
                    store=StoreConfig(url=shared_database),
                    memfault=MemfaultConfig(base_url="http://127.0.0.1:9"),
                    metrics=MetricsConfig(enabled=False),
                    ingest=IngestConfig(peer_session_grace_s=1.0),
                )
            ),
            tmp_path / name,
        )
        for name in ("ctl-a", "ctl-b")
    }
    gateways = [BurstGateway(broker, f"gw-{n}") for n in range(GATEWAYS)]
    expected = GATEWAYS * DEVICES_PER_GATEWAY
    tasks: list[asyncio.Task[None]] = []
    async with aiomqtt.Client(broker.host, broker.port, identifier="replica-watch") as watch:
        try:
            for name, replica in replicas.items():
                await replica.start()
                await replicas_online(watch, {name})
            tasks = [asyncio.create_task(gateway.session.run()) for gateway in gateways]
            for gateway in gateways:
                await asyncio.wait_for(gateway.session.connected.wait(), WAIT_S)
            for gateway in gateways:
                gateway.publish_all()

            async def burst_under_way() -> bool:
                devices, _ = await asyncio.to_thread(stored_links, shared_database)
                return devices >= expected // 10

            await wait_until(burst_under_way, poll_s=0.02)
            await replicas["ctl-a"].kill()
            devices_at_kill, _ = await asyncio.to_thread(stored_links, shared_database)
            assert devices_at_kill < expected, "the burst ended before the kill: nothing was proven"
            if returns:
                await replicas["ctl-a"].start()  # as systemd would (Restart=always)
            for gateway in gateways:
                assert await gateway.session.flush(WAIT_S)

            async def every_report_stored() -> bool:
                _, links = await asyncio.to_thread(stored_links, shared_database)
                latest = {serial: seq for gateway in gateways for serial, seq in gateway.last_seq.items()}
                return links == latest

            try:
                await wait_until(every_report_stored, timeout_s=60)
            except TimeoutError:
                _, links = await asyncio.to_thread(stored_links, shared_database)
                latest = {serial: seq for gateway in gateways for serial, seq in gateway.last_seq.items()}
                stale = {
                    serial: (links.get(serial), seq)
                    for serial, seq in latest.items()
                    if links.get(serial) != seq
                }
                logs = {name: replica.log()[-3000:] for name, replica in replicas.items()}
                rebirths = {gateway.gateway_id: gateway.rebirths for gateway in gateways}
                raise AssertionError(
                    f"{len(stale)} of {expected} links not at their latest report (stored, latest), e.g. "
                    f"{dict(list(stale.items())[:5])}; rebirths {rebirths}; logs {logs}"
                ) from None
            devices, links = await asyncio.to_thread(stored_links, shared_database)
            assert devices == expected and len(links) == expected
            if not returns:
                assert "discarded a departed peer's report session" in replicas["ctl-b"].log()
        finally:
            for gateway in gateways:
                await gateway.session.stop()
            await asyncio.gather(*tasks)
            for replica in replicas.values():
                with contextlib.suppress(AssertionError):
                    await replica.stop()
