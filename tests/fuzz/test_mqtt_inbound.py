"""Garbage on every topic the agent and the controller read: counted, answered, and nothing lost.

A running agent (one simulated device) and a running controller get hypothesis-drawn payloads
that the contract refuses on each of their inbound topics. Afterwards: every one was counted as
rejected; every malformed operator request got a REJECTED reply on its response topic; the
registry still holds the real device; and both processes still do their work (a real command
updates the device, a real operator request is accepted).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client import CollectorRegistry

from controller.operator_cli import send_request
from schemas import (
    CreateRollout,
    DeviceCredential,
    GatewayPresence,
    JobOutcome,
    JobProgress,
    JobResult,
    OperatorReply,
    ReasonCode,
    ReplyStatus,
    RequestId,
    RolloutId,
    RolloutSpec,
    TopicKind,
    channels,
)
from schemas.jobs import JobPhase
from simulator.cloud import CloudEmulator
from tests.fuzz.payloads import refused
from tests.harness.broker import MosquittoBroker
from tests.integration.world import (
    TREE,
    agent_settings,
    controller_probe,
    operator_client,
    ota_command,
    publish_release,
    registry_has,
    running_agent,
    running_controller,
    simulated_devices,
    wait_until,
)

pytestmark = pytest.mark.integration
PER_TOPIC = 40
NOW = datetime(2026, 11, 25, tzinfo=UTC)


def rejected(registry: CollectorRegistry) -> float:
    """Messages the process refused before any handler saw them."""
    return sum(
        registry.get_sample_value("mcufleet_mqtt_messages_rejected_total", {"reason": reason}) or 0.0
        for reason in ("topic", "payload")
    )


def samples(release_command: bytes) -> dict[TopicKind, tuple[str, bytes]]:
    """A valid payload, and the topic it goes to, for every inbound kind."""
    gateway = "gw-fuzz"
    return {
        TopicKind.GATEWAY_COMMAND: (
            TREE.topic(TopicKind.GATEWAY_COMMAND, gateway_id="gw-0"),
            release_command,
        ),
        TopicKind.GATEWAY_PRESENCE: (
            TREE.topic(TopicKind.GATEWAY_PRESENCE, gateway_id=gateway),
            channels.encode(GatewayPresence(gateway_id=gateway, epoch=7, online=True)),  # type: ignore[arg-type]
        ),
        TopicKind.DEVICE_REPORT: (
            TREE.topic(TopicKind.DEVICE_REPORT, gateway_id=gateway, device_serial="FZ-1"),
            b'{"gateway_id":"gw-fuzz","epoch":1,"seq":1,"device_serial":"FZ-1","transport":"udp",'
            b'"address":"127.0.0.1:9","seen_at":"2026-11-25T00:00:00Z"}',
        ),
        TopicKind.DEVICE_CREDENTIAL: (
            TREE.topic(TopicKind.DEVICE_CREDENTIAL, gateway_id=gateway, device_serial="FZ-1"),
            channels.encode(
                DeviceCredential(
                    gateway_id=gateway,  # type: ignore[arg-type]
                    device_serial="FZ-1",  # type: ignore[arg-type]
                    project_key="k",
                    fingerprint="f",
                )
            ),
        ),
        TopicKind.JOB_PROGRESS: (
            TREE.topic(TopicKind.JOB_PROGRESS, gateway_id=gateway, job_id="j-1"),
            channels.encode(
                JobProgress(
                    gateway_id=gateway,  # type: ignore[arg-type]
                    job_id="j-1",  # type: ignore[arg-type]
                    device_serial="FZ-1",  # type: ignore[arg-type]
                    phase=JobPhase.UPLOADING,
                    at=NOW,
                )
            ),
        ),
        TopicKind.JOB_RESULT: (
            TREE.topic(TopicKind.JOB_RESULT, gateway_id=gateway, job_id="j-1"),
            channels.encode(
                JobResult(
                    gateway_id=gateway,  # type: ignore[arg-type]
                    job_id="j-1",  # type: ignore[arg-type]
                    device_serial="FZ-1",  # type: ignore[arg-type]
                    outcome=JobOutcome.SUCCEEDED,
                    reason=ReasonCode.OK,
                    retryable=False,
                    finished_at=NOW,
                )
            ),
        ),
        TopicKind.OPERATOR_REQUEST: (
            TREE.topic(TopicKind.OPERATOR_REQUEST),
            channels.encode(
                CreateRollout(
                    request_id=RequestId("fz"),
                    rollout_id=RolloutId("r-fz"),
                    spec=RolloutSpec(software_type="app", target_version="9.9.9"),
                )
            ),
        ),
    }


async def publish_all(client: aiomqtt.Client, topic: str, payloads: list[bytes], *, reply: bool) -> None:
    """Publish every payload (operator requests with a response topic and correlation data)."""
    for index, payload in enumerate(payloads):
        properties = None
        if reply:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.ResponseTopic = TREE.topic(
                TopicKind.OPERATOR_REPLY, operator_id="fuzzer", request_id=f"fuzz-{index}"
            )
            properties.CorrelationData = f"fuzz-{index}".encode()
        await client.publish(topic, payload, qos=1, properties=properties)


async def collect_replies(
    broker: MosquittoBroker, replies: dict[bytes, OperatorReply], subscribed: asyncio.Event
) -> None:
    """Record every operator reply by its correlation data (until cancelled); `subscribed` once listening."""
    async with operator_client(broker) as listener:
        await listener.subscribe(TREE.filter(TopicKind.OPERATOR_REPLY), qos=1)
        subscribed.set()
        async for message in listener.messages:
            correlation = getattr(message.properties, "CorrelationData", b"")
            if isinstance(message.payload, bytes) and correlation:
                replies[correlation] = channels.decode_as(
                    TopicKind.OPERATOR_REPLY, message.payload, OperatorReply
                )


async def _true(value: bool) -> bool:
    return value


async def test_hostile_payloads_on_every_inbound_topic(broker: MosquittoBroker, tmp_path: Path) -> None:
    """Each refused payload is counted once; operators get a REJECTED reply; both processes live on."""
    controller_registry, agent_registry = CollectorRegistry(), CollectorRegistry()
    async with (
        CloudEmulator() as cloud,
        simulated_devices(["DEV-0"]) as devices,
        running_controller(
            broker, cloud.base_url, f"sqlite:///{tmp_path / 'c.sqlite3'}", registry=controller_registry
        ) as controller,
        running_agent(
            agent_settings("gw-0", broker, tmp_path / "gw-0", list(devices.endpoints.values())),
            registry=agent_registry,
        ),
        controller_probe(broker) as probe,
        operator_client(broker) as client,
    ):
        release = publish_release(cloud, "1.1.0")
        await wait_until(lambda: registry_has(controller, 1))
        before_controller, before_agent = rejected(controller_registry), rejected(agent_registry)
        replies: dict[bytes, OperatorReply] = {}
        subscribed = asyncio.Event()
        listener = asyncio.create_task(collect_replies(broker, replies, subscribed))
        await asyncio.wait_for(subscribed.wait(), 15)  # before any request goes out
        sent: dict[TopicKind, int] = {}
        for kind, (topic, valid) in samples(channels.encode(ota_command("j-x", "DEV-0", release))).items():
            payloads = refused(kind, valid, PER_TOPIC)
            sent[kind] = len(payloads)
            await publish_all(client, topic, payloads, reply=kind is TopicKind.OPERATOR_REQUEST)
        # One more that never reaches a decoder: the controller's presence filter matches the topic,
        # but its gateway id is not a valid id.
        await client.publish(TREE.prefix + "/gw/gw$0/presence", b"{}", qos=1)

        to_agent = sent[TopicKind.GATEWAY_COMMAND]
        to_controller = sum(sent.values()) - to_agent + 1

        async def counted() -> bool:
            return (
                rejected(agent_registry) - before_agent >= to_agent
                and rejected(controller_registry) - before_controller >= to_controller
            )

        await wait_until(counted)

        # Every malformed operator request was answered, on its own response topic.
        expected = {f"fuzz-{i}".encode() for i in range(sent[TopicKind.OPERATOR_REQUEST])}
        await wait_until(lambda: _true(set(replies) >= expected))
        assert all(reply.status is ReplyStatus.REJECTED for reply in replies.values())
        assert {reply.reason for reply in replies.values()} == {"invalid_payload"}

        # Both still work: the real device is still registered and gets updated by a real command.
        assert await registry_has(controller, 1)
        probe.send("gw-0", ota_command("job-after-fuzz", "DEV-0", release))
        await probe.wait_for(lambda: "job-after-fuzz" in probe.results, timeout_s=60)
        assert probe.results["job-after-fuzz"].outcome is JobOutcome.SUCCEEDED
        reply = await send_request(
            client,
            TREE,
            CreateRollout(
                request_id=RequestId("after-fuzz"),
                rollout_id=RolloutId("r-after"),
                spec=RolloutSpec(software_type="app", target_version="1.1.0"),
            ),
            15,
        )
        assert reply is not None and reply.status is ReplyStatus.ACCEPTED, reply
        # Both services handled later messages on the same connections since: nothing beyond the
        # refused payloads was counted afterwards either.
        assert rejected(agent_registry) - before_agent == to_agent
        assert rejected(controller_registry) - before_controller == to_controller
        listener.cancel()
