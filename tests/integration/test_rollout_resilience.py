"""Rollouts survive what breaks in the field: a gateway dying, the controller killed, bad operator input."""

from __future__ import annotations

import asyncio
import base64
import uuid
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.settings import MqttConfig as AgentMqtt
from controller.operator_auth import sign_request
from controller.operator_cli import send_request
from controller.settings import (
    ControllerSettings,
    MemfaultConfig,
    MetricsConfig,
    MqttConfig,
    SchedulerConfig,
    StoreConfig,
)
from controller.store.opening import open_store
from schemas import (
    CreateRollout,
    FlowSpec,
    OperatorReply,
    PauseRollout,
    PhaseDeadlines,
    ReplyStatus,
    RequestId,
    RetrySpec,
    RolloutId,
    RolloutSpec,
    RolloutStatus,
    TopicKind,
    WaveSpec,
    channels,
)
from simulator.cloud import CloudEmulator
from simulator.device import BootOutcome, LinkProfile
from simulator.fleet import DeviceSpec, Fleet
from simulator.server import FleetServer
from tests.harness.broker import MosquittoBroker
from tests.harness.upload_trace import UploadTrace, assert_resumed
from tests.integration.world import (
    FAST_FIRMWARE,
    HARDWARE,
    PROJECT_KEY,
    TREE,
    ProcessUnderTest,
    agent_settings,
    controller_probe,
    create_and_start,
    latest,
    operator_client,
    publish_release,
    registry_has,
    running_agent,
    running_controller,
    settings_document,
    wait_until,
)

pytestmark = pytest.mark.integration
MEDIUM_LINK = LinkProfile(
    name="medium", latency_s=0.001, bandwidth_bytes_per_s=120_000, buf_size_bytes=1024, buf_count=4
)


def slow_fleet(serials: list[str]) -> Fleet:
    return Fleet(
        tuple(
            DeviceSpec(
                s,
                firmware=FAST_FIRMWARE,
                link=MEDIUM_LINK,
                project_key=PROJECT_KEY,
                hardware_version=HARDWARE,
            )
            for s in serials
        )
    )


def single_wave(**overrides: object) -> RolloutSpec:
    fields: dict[str, object] = {
        "software_type": "app",
        "target_version": "1.1.0",
        "waves": [WaveSpec(percent=100)],
        "flow": FlowSpec(max_in_flight=8, max_in_flight_per_gateway=2),
        "retry": RetrySpec(max_attempts=3, backoff_s=1),
        "deadlines": PhaseDeadlines(no_progress_s=20, job_total_s=120),
    }
    return RolloutSpec(**{**fields, **overrides})  # type: ignore[arg-type]


def assert_everyone_updated_once(devices: FleetServer, serials: list[str]) -> None:
    for serial in serials:
        device = devices.device(serial)
        running = next(s for s in device.image_states() if s.active)
        assert running.version == "1.1.0" and running.confirmed, serial
        assert [b.outcome for b in device.boots].count(BootOutcome.SWAPPED) == 1, serial


async def test_a_gateway_killed_mid_rollout_has_its_devices_rerouted(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """gw-0 dies with jobs in flight; its will reaches the controller; gw-1 finishes those devices."""
    serials = [f"DEV-{i}" for i in range(6)]
    async with (
        CloudEmulator() as cloud,
        FleetServer(slow_fleet(serials), base_host="127.0.0.1", port_per_device=True) as devices,
        running_controller(broker, cloud.base_url, f"sqlite:///{tmp_path / 'c.sqlite3'}") as controller,
        controller_probe(broker) as probe,
        operator_client(broker) as client,
    ):
        release = publish_release(cloud, "1.1.0", payload_size_bytes=120_000)
        trace = UploadTrace(devices, serials)
        endpoints = list(devices.endpoints.values())
        doomed_settings = agent_settings("gw-0", broker, tmp_path / "gw-0", endpoints)
        doomed_document = settings_document(doomed_settings)
        doomed_document["mqtt"] = settings_document(
            AgentMqtt(host=broker.host, port=broker.port, keepalive_s=5)
        )
        doomed = ProcessUnderTest("agent", doomed_document, tmp_path / "gw-0-process")
        await doomed.start()
        async with running_agent(agent_settings("gw-1", broker, tmp_path / "gw-1", endpoints)):
            await wait_until(lambda: registry_has(controller, 6, links_per_device=2), timeout_s=60)
            await create_and_start(client, "r-route", single_wave())
            await probe.wait_for(
                lambda: any(p.gateway_id == "gw-0" and p.bytes_done > 0 for p in probe.progress)
            )
            await doomed.kill()
            cut_at: dict[str, int] = {}
            for serial in serials:
                session = devices.device(serial).upload_session
                if session is not None and 0 < session.offset < len(release.image):
                    cut_at[serial] = session.offset
                    trace.mark(serial)
            state = await latest(
                client, TopicKind.ROLLOUT_STATE, "r-route", lambda s: s.status is RolloutStatus.COMPLETED
            )
        assert release.version == "1.1.0"
    assert state.counts.succeeded == 6, state
    by_gateway = {r.gateway_id for r in probe.results.values() if r.outcome == "succeeded"}
    assert "gw-1" in by_gateway
    assert_everyone_updated_once(devices, serials)
    # Uploads gw-0 left half done were resumed by gw-1 from the device's offset, not from zero.
    assert cut_at, "gw-0 was killed with no upload half done"
    slack = MEDIUM_LINK.buf_count * MEDIUM_LINK.buf_size_bytes
    for serial, offset in cut_at.items():
        assert_resumed(trace.since_mark(serial), offset, slack)


async def test_controller_sigkill_mid_rollout_completes_after_restart(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """The store resumes the rollout where it was: every device updated, none flashed twice."""
    serials = [f"DEV-{i}" for i in range(8)]
    async with (
        CloudEmulator() as cloud,
        FleetServer(slow_fleet(serials), base_host="127.0.0.1", port_per_device=True) as devices,
        controller_probe(broker) as probe,
        operator_client(broker) as client,
    ):
        publish_release(cloud, "1.1.0", payload_size_bytes=120_000)
        settings = ControllerSettings(
            controller_id="controller-1",
            mqtt=MqttConfig(host=broker.host, port=broker.port, username=""),
            store=StoreConfig(url=f"sqlite:///{tmp_path / 'c.sqlite3'}"),
            memfault=MemfaultConfig(base_url=cloud.base_url, requests_per_s=1000.0),
            metrics=MetricsConfig(enabled=False),
            scheduler=SchedulerConfig(tick_interval_s=0.2, lease_ttl_s=3.0),
        )
        controller = ProcessUnderTest("controller", settings_document(settings), tmp_path / "controller")
        await controller.start()
        try:
            async with running_agent(
                agent_settings("gw-0", broker, tmp_path / "gw-0", list(devices.endpoints.values()))
            ):
                store = open_store(settings.store.url)

                async def registry_ready() -> bool:
                    return len(store.devices()) == 8 and len(store.project_keys()) == 8

                await wait_until(registry_ready)
                store.db.close()
                await create_and_start(
                    client, "r-kill", single_wave(flow=FlowSpec(max_in_flight=2, max_in_flight_per_gateway=2))
                )
                await probe.wait_for(
                    lambda: sum(r.outcome == "succeeded" for r in probe.results.values()) >= 2, timeout_s=60
                )
                await controller.kill()
                await controller.start()
                state = await latest(
                    client, TopicKind.ROLLOUT_STATE, "r-kill", lambda s: s.status is RolloutStatus.COMPLETED
                )
        finally:
            await controller.stop()
    assert state.counts.succeeded == 8, (state, controller.log()[-2000:])
    assert_everyone_updated_once(devices, serials)


async def test_malformed_and_unauthorised_operator_requests_are_rejected(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """Garbage gets an invalid_payload reply, an unknown rollout an unknown_rollout one; nothing changes."""
    async with (
        CloudEmulator() as cloud,
        running_controller(broker, cloud.base_url, f"sqlite:///{tmp_path / 'c.sqlite3'}") as controller,
        operator_client(broker) as client,
    ):
        reply_topic = TREE.topic(TopicKind.OPERATOR_REPLY, operator_id="alice", request_id="garbage-1")
        await client.subscribe(reply_topic, qos=1)
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.ResponseTopic = reply_topic
        properties.CorrelationData = b"corr-1"
        await client.publish(
            TREE.topic(TopicKind.OPERATOR_REQUEST),
            b'{"op": "start", "request_id": 5}',
            qos=1,
            properties=properties,
        )
        async with asyncio.timeout(15):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                reply = channels.decode_as(TopicKind.OPERATOR_REPLY, message.payload, OperatorReply)
                break
        assert reply.status is ReplyStatus.REJECTED and reply.reason == "invalid_payload"
        unknown = await send_request(
            client, TREE, PauseRollout(request_id=RequestId("p-1"), rollout_id=RolloutId("nope")), 15
        )
        assert unknown is not None and unknown.reason == "unknown_rollout"
        rollouts = await controller.executor.call(controller.store.load_rollouts)
    assert rollouts == []


async def test_signed_requests_are_required_when_keys_are_configured(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """With operator keys configured, an unsigned create is refused and no rollout appears."""
    key = Ed25519PrivateKey.generate()
    public = base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
    store_url = f"sqlite:///{tmp_path / 'c.sqlite3'}"
    async with (
        CloudEmulator() as cloud,
        running_controller(broker, cloud.base_url, store_url, operator_keys={"ops-1": public}) as controller,
        operator_client(broker) as client,
    ):
        request = CreateRollout(
            request_id=RequestId(f"c-{uuid.uuid4().hex[:6]}"), rollout_id=RolloutId("r-x"), spec=single_wave()
        )
        reply = await send_request(client, TREE, request, 15)
        assert (
            reply is not None
            and reply.status is ReplyStatus.REJECTED
            and reply.reason == "signature_required"
        )
        fresh = msgspec.structs.replace(request, request_id=RequestId("c-signed"))
        signed = await send_request(client, TREE, sign_request(fresh, "ops-1", key, datetime.now(UTC)), 15)
        assert signed is not None and signed.status is ReplyStatus.ACCEPTED, signed
        rollouts = await controller.executor.call(controller.store.load_rollouts)
    assert [r.rollout_id for r in rollouts] == ["r-x"]
