"""A gateway that speaks the contract over MQTT without devices: it answers every OTA command at once.

It publishes its birth, a retained report and a credential per device (again on a rebirth request),
and answers each OTA command with progress and a success result that echoes the command's rollout
id. It counts every OTA command per job id, so a test can assert that no command arrived twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry

from controller.gateway_trust import key_fingerprint
from schemas import (
    DeviceCredential,
    DeviceReport,
    GatewayPresence,
    ImageSlot,
    JobOutcome,
    JobPhase,
    JobProgress,
    JobResult,
    OfflineCause,
    OtaCommand,
    ReasonCode,
    RebirthRequest,
    TopicKind,
    TopicTree,
    Transport,
    channels,
)
from service_runtime.mqtt import Inbound, MqttSession, MqttSettings, Outbound, Subscription
from service_runtime.mqtt_metrics import MqttMetrics
from tests.harness.broker import MosquittoBroker

WAIT_S = 15.0


@dataclass
class _Presence:
    gateway_id: str
    topic: str

    def _payload(self, epoch: int, online: bool, cause: OfflineCause) -> bytes:
        return channels.encode(
            GatewayPresence(gateway_id=self.gateway_id, epoch=epoch, online=online, cause=cause)  # type: ignore[arg-type]
        )

    def birth(self, epoch: int) -> bytes:
        return self._payload(epoch, True, OfflineCause.NONE)

    def will(self, epoch: int) -> bytes:
        return self._payload(epoch, False, OfflineCause.WILL)

    def goodbye(self, epoch: int) -> bytes:
        return self._payload(epoch, False, OfflineCause.SHUTDOWN)


@dataclass
class FakeGateway:
    """One fake gateway and what it received."""

    gateway_id: str
    serials: list[str]
    hardware_version: str
    project_key: str
    tree: TopicTree
    version: str = "1.0.0"
    echo_rollout_id: bool = True
    """False: answer like an agent older than the rollout id in results (the controller looks it up)."""
    working_s: float = 0.0
    """Above 0: a job takes this long, with progress every eighth of it, before its result."""
    session: MqttSession | None = None
    commands: dict[str, int] = field(default_factory=dict)
    """OTA commands received per job id (more than 1 is a duplicate)."""
    rollout_ids: list[str | None] = field(default_factory=list)
    """The rollout id of each OTA command, in arrival order."""
    epochs: set[int] = field(default_factory=set)
    """Controller epochs the commands carried."""
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    _seq: int = 0
    _working: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def duplicates(self) -> int:
        """Commands received again for a job id already received."""
        return sum(count - 1 for count in self.commands.values())

    def _send(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        assert self.session is not None
        self.session.publish(Outbound(topic, payload, qos=1, retain=retain))

    def publish_inventory(self) -> None:
        """Retained reports and credentials of every device (the birth is the session's)."""
        assert self.session is not None
        fingerprint = key_fingerprint(self.project_key)
        for serial in self.serials:
            self._seq += 1
            report = DeviceReport(
                gateway_id=self.gateway_id,  # type: ignore[arg-type]
                epoch=self.session.epoch,
                seq=self._seq,
                device_serial=serial,  # type: ignore[arg-type]
                hardware_version=self.hardware_version,
                software_type="app",
                current_version=self.version,
                project_key_fingerprint=fingerprint,
                transport=Transport.UDP,
                address="127.0.0.1:1",
                seen_at=datetime.now(UTC),
                images=[
                    ImageSlot(
                        slot=0, version=self.version, hash_sha256="ab" * 32, active=True, confirmed=True
                    )
                ],
            )
            route = {"gateway_id": self.gateway_id, "device_serial": serial}
            self._send(
                self.tree.topic(TopicKind.DEVICE_REPORT, **route), channels.encode(report), retain=True
            )
            credential = DeviceCredential(
                gateway_id=self.gateway_id,  # type: ignore[arg-type]
                device_serial=serial,  # type: ignore[arg-type]
                project_key=self.project_key,
                fingerprint=fingerprint,
            )
            self._send(self.tree.topic(TopicKind.DEVICE_CREDENTIAL, **route), channels.encode(credential))

    async def on_message(self, message: Inbound) -> None:
        """Answer OTA commands with a success, rebirth requests with the inventory."""
        command = message.message
        if isinstance(command, RebirthRequest):
            self.publish_inventory()
        elif isinstance(command, OtaCommand):
            first = command.job_id not in self.commands
            self.commands[command.job_id] = self.commands.get(command.job_id, 0) + 1
            self.rollout_ids.append(command.rollout_id)
            self.epochs.add(command.controller_epoch)
            self.changed.set()
            if first and self.working_s > 0:
                task = asyncio.get_running_loop().create_task(self._work(command))
                self._working.add(task)
                task.add_done_callback(self._working.discard)
            elif first:
                self._answer(command)

    async def _work(self, command: OtaCommand) -> None:
        for seq in range(1, 8):
            self._progress(command, seq)
            await asyncio.sleep(self.working_s / 8)
        self._answer(command)

    def _progress(self, command: OtaCommand, seq: int) -> None:
        route = {"gateway_id": self.gateway_id, "job_id": command.job_id}
        progress = JobProgress(
            gateway_id=self.gateway_id,  # type: ignore[arg-type]
            job_id=command.job_id,
            device_serial=command.device_serial,
            rollout_id=command.rollout_id if self.echo_rollout_id else None,
            phase=JobPhase.UPLOADING,
            seq=seq,
            at=datetime.now(UTC),
        )
        self._send(self.tree.topic(TopicKind.JOB_PROGRESS, **route), channels.encode(progress))

    def _answer(self, command: OtaCommand) -> None:
        now = datetime.now(UTC)
        route = {"gateway_id": self.gateway_id, "job_id": command.job_id}
        rollout_id = command.rollout_id if self.echo_rollout_id else None
        self._progress(command, 8)
        result = JobResult(
            gateway_id=self.gateway_id,  # type: ignore[arg-type]
            job_id=command.job_id,
            device_serial=command.device_serial,
            rollout_id=rollout_id,
            attempt=command.attempt,
            outcome=JobOutcome.SUCCEEDED,
            reason=ReasonCode.OK,
            retryable=False,
            running_version=command.target_version,
            uploads=1,
            finished_at=now,
        )
        self._send(self.tree.topic(TopicKind.JOB_RESULT, **route), channels.encode(result))


@contextlib.asynccontextmanager
async def fake_gateway(broker: MosquittoBroker, gateway: FakeGateway) -> AsyncIterator[FakeGateway]:
    """Run `gateway` on the broker until the block ends; its inventory is published once connected."""
    presence_topic = gateway.tree.topic(TopicKind.GATEWAY_PRESENCE, gateway_id=gateway.gateway_id)
    session = MqttSession(
        MqttSettings(broker.host, broker.port, gateway.gateway_id),
        tree=gateway.tree,
        subscriptions=[
            Subscription(gateway.tree.topic(TopicKind.GATEWAY_COMMAND, gateway_id=gateway.gateway_id))
        ],
        handler=gateway.on_message,
        metrics=MqttMetrics(CollectorRegistry()),
        presence=_Presence(gateway.gateway_id, presence_topic),
    )
    gateway.session = session
    task = asyncio.create_task(session.run(), name=f"fake-{gateway.gateway_id}")
    try:
        await asyncio.wait_for(session.connected.wait(), WAIT_S)
        gateway.publish_inventory()
        yield gateway
    finally:
        await session.stop()
        await asyncio.wait_for(task, WAIT_S)
