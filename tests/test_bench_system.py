"""The system benchmark's world is the real one: the shipped broker limits, gateways that answer as agents."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import pytest

from bench.bench_system import SHIPPED_BROKER_CONF, broker_config
from bench.fake_gateways import FakeGateway, FleetCounts, serial_of
from schemas import (
    Artifact,
    DeviceCredential,
    DeviceReport,
    DeviceSerial,
    GatewayPresence,
    JobId,
    JobOutcome,
    JobProgress,
    JobResult,
    OtaCommand,
    TopicKind,
    TopicTree,
    channels,
)
from tests.harness.broker import MosquittoBroker
from tests.harness.ports import free_tcp_port

pytestmark = pytest.mark.integration
TREE = TopicTree()
LIMITS = (
    "message_size_limit",
    "max_queued_messages",
    "max_queued_bytes",
    "max_inflight_messages",
    "max_keepalive",
)


def test_the_benchmark_broker_keeps_every_shipped_limit_on_plain_tcp(tmp_path: Path) -> None:
    """The shipped conf's limits survive with their values; TLS and the ACL go; mosquitto starts with it."""
    shipped = {
        line.split()[0]: line.split()[1]
        for line in SHIPPED_BROKER_CONF.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    port = free_tcp_port()
    config = broker_config(port, tmp_path)
    options = {line.split()[0]: line.split()[1] for line in config.splitlines() if line.strip()}
    for limit in LIMITS:
        assert options[limit] == shipped[limit], limit
    assert "cafile" not in options and "acl_file" not in options
    assert f"listener {port} 127.0.0.1" in config
    broker = MosquittoBroker(tmp_path, port=port, config=config)
    broker.start()
    try:
        assert broker.running
    finally:
        broker.crash()


async def test_a_fake_gateway_publishes_its_fleet_and_answers_commands_as_an_agent(
    broker: MosquittoBroker,
) -> None:
    """Birth, reports, credentials on connect; a command gets progress and success; a repeat, that result."""
    counts = FleetCounts()
    gateway = FakeGateway(TREE, 7, 2, broker=(broker.host, broker.port), counts=counts)
    async with aiomqtt.Client(broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client:
        for kind in (
            TopicKind.GATEWAY_PRESENCE,
            TopicKind.DEVICE_REPORT,
            TopicKind.DEVICE_CREDENTIAL,
            TopicKind.JOB_PROGRESS,
            TopicKind.JOB_RESULT,
        ):
            await client.subscribe(TREE.filter(kind), qos=1)
        gateway.start()
        try:
            seen: list[object] = []

            async def until(count: int) -> None:
                async with asyncio.timeout(10):
                    async for message in client.messages:
                        assert isinstance(message.payload, bytes)
                        kind = TREE.parse(message.topic.value).kind
                        seen.append(channels.decode(kind, message.payload, message.topic.value))
                        if len(seen) >= count:
                            return

            await until(5)
            assert sum(isinstance(m, GatewayPresence) and m.online for m in seen) == 1
            assert {m.device_serial for m in seen if isinstance(m, DeviceReport)} == {
                serial_of(7, 0),
                serial_of(7, 1),
            }
            assert sum(isinstance(m, DeviceCredential) for m in seen) == 2
            now = datetime.now(UTC)
            command = OtaCommand(
                job_id=JobId("job-1"),
                device_serial=DeviceSerial(serial_of(7, 0)),
                issued_at=now,
                deadline=now + timedelta(minutes=5),
                artifact=Artifact(url="http://127.0.0.1:9/a.bin", size_bytes=1000, sha256="0" * 64),
                target_version="1.1.0",
            )
            topic = TREE.topic(TopicKind.GATEWAY_COMMAND, gateway_id=gateway.gateway_id)
            await client.publish(topic, channels.encode(command), qos=1)
            # Six progress phases, the result, the device's new report and its credential.
            await until(5 + 9)
            answer = seen[5:]
            assert sum(isinstance(m, JobProgress) for m in answer) == 6
            (result,) = [m for m in answer if isinstance(m, JobResult)]
            assert result.outcome is JobOutcome.SUCCEEDED and result.running_version == "1.1.0"
            (report,) = [m for m in answer if isinstance(m, DeviceReport)]
            assert report.current_version == "1.1.0"
            await client.publish(topic, channels.encode(command), qos=1)
            await until(5 + 9 + 1)
            assert seen[-1] == result
            assert counts.document()["commands"] == 2 and counts.document()["commanded"] == 1
        finally:
            await asyncio.to_thread(gateway.stop)
