"""A burst of reports with holes (what a broker dropping past its queue limit leaves) heals by rebirth."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from schemas import DeviceReport, DeviceSerial, GatewayId, RebirthRequest, TopicKind, Transport, channels
from service_runtime.mqtt import Inbound, MqttSession, MqttSettings, Outbound, Subscription
from service_runtime.mqtt_metrics import MqttMetrics
from tests.harness.broker import MosquittoBroker
from tests.integration.world import TREE, WAIT_S, running_controller, wait_until

pytestmark = pytest.mark.integration
DEVICES = 3000


class FakeGateway:
    """Publishes reports for many devices; answers a rebirth by publishing them all again."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.seq = 0
        self.rebirths = asyncio.Event()
        self.session = MqttSession(
            MqttSettings(broker.host, broker.port, "gw-burst", outbox_limit=50_000),
            tree=TREE,
            subscriptions=[Subscription(TREE.topic(TopicKind.GATEWAY_COMMAND, gateway_id="gw-burst"))],
            handler=self.on_command,
            metrics=MqttMetrics(CollectorRegistry()),
        )

    async def on_command(self, message: Inbound) -> None:
        if isinstance(message.message, RebirthRequest):
            self.rebirths.set()
            self.publish_all(skip_every=0)

    def publish_all(self, skip_every: int) -> None:
        for index in range(DEVICES):
            self.seq += 1
            if skip_every and self.seq % skip_every == 0:
                continue  # lost in the burst
            report = DeviceReport(
                gateway_id=GatewayId("gw-burst"),
                epoch=1,
                seq=self.seq,
                device_serial=DeviceSerial(f"B{index:05d}"),
                hardware_version="hw",
                software_type="app",
                current_version="1.0.0",
                transport=Transport.BLE,
                address=f"AA:{index:05d}",
                seen_at=datetime.now(UTC),
            )
            topic = TREE.topic(
                TopicKind.DEVICE_REPORT, gateway_id="gw-burst", device_serial=report.device_serial
            )
            self.session.publish(Outbound(topic, channels.encode(report), qos=1, retain=True))


async def test_the_registry_converges_after_a_burst_with_gaps(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """Missing sequence numbers trigger a rebirth request; the gateway's republish fills every hole."""
    async with running_controller(
        broker, "http://127.0.0.1:9", f"sqlite:///{tmp_path / 'c.sqlite3'}"
    ) as controller:
        gateway = FakeGateway(broker)
        task = asyncio.create_task(gateway.session.run())
        try:
            await asyncio.wait_for(gateway.session.connected.wait(), WAIT_S)
            gateway.publish_all(skip_every=10)
            await asyncio.wait_for(gateway.rebirths.wait(), WAIT_S)

            async def converged() -> bool:
                return len(await controller.executor.call(controller.store.devices)) == DEVICES

            await wait_until(converged, timeout_s=60)
        finally:
            await gateway.session.stop()
            await task
    stats = controller.ingest.stats
    assert stats.gaps_detected >= 1 and stats.rebirths_requested >= 1
