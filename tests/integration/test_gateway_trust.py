"""Gateways speak only for themselves, over the real broker with a real controller.

A foreign gateway's job result does not count (refused, counted, audited); project keys outside the
allow-list are refused; a known device's change of project key waits for an operator; an agent's
fence epoch survives its restart. The gateways here are plain MQTT clients publishing exactly what
the contract allows a gateway to publish on its own topics, so a test decides what each one says.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt
import msgspec
import pytest

from controller.gateway_trust import key_fingerprint
from controller.operator_cli import send_request
from controller.service import ControllerService
from schemas import (
    AcceptKeyChange,
    AuditEvent,
    DeviceCredential,
    DeviceJobState,
    DeviceReport,
    DeviceSerial,
    GatewayId,
    GatewayPresence,
    JobId,
    JobOutcome,
    JobResult,
    OperatorReply,
    OtaCommand,
    ReasonCode,
    RebirthRequest,
    ReplyStatus,
    RequestId,
    RolloutSpec,
    TopicKind,
    Transport,
    WaveSpec,
    channels,
)
from service_runtime.mqtt import MqttSession
from simulator.cloud import CloudEmulator
from tests.harness.broker import MosquittoBroker
from tests.integration.world import (
    HARDWARE,
    PROJECT_KEY,
    TREE,
    WAIT_S,
    Release,
    agent_settings,
    controller_probe,
    create_and_start,
    operator_client,
    ota_command,
    publish_release,
    running_agent,
    running_controller,
    wait_until,
)

pytestmark = pytest.mark.integration

OTHER_KEY = "project-key-2"


class FakeGateway:
    """An MQTT client that publishes on one gateway's topics what a test tells it to."""

    def __init__(self, client: aiomqtt.Client, gateway_id: str) -> None:
        self.client = client
        self.gateway_id = gateway_id
        self.commands: asyncio.Queue[OtaCommand] = asyncio.Queue()
        self.devices: dict[str, str] = {}
        """Serial -> project key this gateway claims for it (republished on a rebirth request)."""
        self._seq = 0

    async def birth(self) -> None:
        presence = GatewayPresence(
            gateway_id=GatewayId(self.gateway_id), epoch=1, online=True, started_at=datetime.now(UTC)
        )
        topic = TREE.topic(TopicKind.GATEWAY_PRESENCE, gateway_id=self.gateway_id)
        await self.client.publish(topic, channels.encode(presence), qos=1, retain=True)

    async def hear(
        self, serial: str, project_key: str, *, claim: str | None = None, version: str = "1.0.0"
    ) -> None:
        """Report a device on `version` (naming `claim` as the gateway) and send its credential."""
        self.devices[serial] = project_key
        self._seq += 1
        report = DeviceReport(
            gateway_id=GatewayId(claim or self.gateway_id),
            epoch=1,
            seq=self._seq,
            device_serial=DeviceSerial(serial),
            hardware_version=HARDWARE,
            software_type="app",
            current_version=version,
            project_key_fingerprint=key_fingerprint(project_key),
            transport=Transport.UDP,
            address="127.0.0.1:9",
            seen_at=datetime.now(UTC),
        )
        topic = TREE.topic(TopicKind.DEVICE_REPORT, gateway_id=self.gateway_id, device_serial=serial)
        await self.client.publish(topic, channels.encode(report), qos=1, retain=True)
        await self.credential(serial, project_key)

    async def credential(self, serial: str, project_key: str, fingerprint: str | None = None) -> None:
        credential = DeviceCredential(
            gateway_id=GatewayId(self.gateway_id),
            device_serial=DeviceSerial(serial),
            project_key=project_key,
            fingerprint=key_fingerprint(project_key) if fingerprint is None else fingerprint,
        )
        topic = TREE.topic(TopicKind.DEVICE_CREDENTIAL, gateway_id=self.gateway_id, device_serial=serial)
        await self.client.publish(topic, channels.encode(credential), qos=1)

    async def result(
        self, job_id: str, serial: str, outcome: JobOutcome, *, claim: str | None = None
    ) -> None:
        """Publish a result for `job_id` on this gateway's topic (naming `claim` as the gateway)."""
        result = JobResult(
            gateway_id=GatewayId(claim or self.gateway_id),
            job_id=JobId(job_id),
            device_serial=DeviceSerial(serial),
            outcome=outcome,
            reason=ReasonCode.OK if outcome is JobOutcome.SUCCEEDED else ReasonCode.UPLOAD_FAILED,
            retryable=False,
            running_version="1.1.0" if outcome is JobOutcome.SUCCEEDED else "1.0.0",
            finished_at=datetime.now(UTC),
        )
        topic = TREE.topic(TopicKind.JOB_RESULT, gateway_id=self.gateway_id, job_id=job_id)
        await self.client.publish(topic, channels.encode(result), qos=1)

    async def listen(self) -> None:
        """Collect OTA commands; answer rebirth requests by reporting every device again."""
        await self.client.subscribe(TREE.topic(TopicKind.GATEWAY_COMMAND, gateway_id=self.gateway_id), qos=1)
        async for message in self.client.messages:
            assert isinstance(message.payload, bytes)
            command = channels.decode(TopicKind.GATEWAY_COMMAND, message.payload, message.topic.value)
            if isinstance(command, OtaCommand):
                self.commands.put_nowait(command)
            elif isinstance(command, RebirthRequest):
                for serial, key in list(self.devices.items()):
                    await self.hear(serial, key)


@contextlib.asynccontextmanager
async def fake_gateway(broker: MosquittoBroker, gateway_id: str) -> AsyncIterator[FakeGateway]:
    async with aiomqtt.Client(
        broker.host, broker.port, identifier=gateway_id, protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        gateway = FakeGateway(client, gateway_id)
        task = asyncio.create_task(gateway.listen())
        await gateway.birth()
        try:
            yield gateway
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@contextlib.asynccontextmanager
async def controller_heard_by_one_gateway(
    broker: MosquittoBroker, tmp_path: Path
) -> AsyncIterator[tuple[CloudEmulator, ControllerService, FakeGateway]]:
    """The cloud emulator, a controller on its own SQLite store, and fake gateway `gw-a`."""
    async with (
        CloudEmulator() as cloud,
        running_controller(broker, cloud.base_url, f"sqlite:///{tmp_path / 'c.sqlite3'}") as controller,
        fake_gateway(broker, "gw-a") as gateway,
    ):
        yield cloud, controller, gateway


async def audit(controller: ControllerService) -> list[AuditEvent]:
    """The controller's audit log, decoded."""
    lines = await controller.executor.call(controller.store.audit_events)
    return [msgspec.json.decode(line, type=AuditEvent) for line in lines]


async def audited(controller: ControllerService, action: str, detail_part: str = "") -> bool:
    """Whether an audit line with this action (and detail fragment) exists."""
    return any(e.action == action and detail_part in e.detail for e in await audit(controller))


async def ask(client: aiomqtt.Client, request: AcceptKeyChange) -> OperatorReply:
    """Publish an operator request the way the CLI does and wait for its reply."""
    reply = await send_request(client, TREE, request, WAIT_S)
    assert reply is not None, f"no reply to {request.request_id}"
    return reply


def refused(controller: ControllerService, kind: str, reason: str) -> int:
    """The refusal counter for (kind, reason) across ingest and coordinator."""
    key = (kind, reason)
    return controller.ingest.stats.refused.get(key, 0) + controller.coordinator.stats.refused.get(key, 0)


async def counted(controller: ControllerService, kind: str, reason: str, expected: int) -> bool:
    """Whether the refusal counter reached `expected` (the credential path runs on the store thread)."""
    return refused(controller, kind, reason) >= expected


async def test_a_foreign_gateways_result_does_not_count_and_is_audited(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """A result from a gateway the job was not dispatched to changes nothing; the right one counts."""
    async with (
        CloudEmulator() as cloud,
        running_controller(broker, cloud.base_url, f"sqlite:///{tmp_path / 'c.sqlite3'}") as controller,
        fake_gateway(broker, "gw-a") as gateway_a,
        fake_gateway(broker, "gw-b") as gateway_b,
        operator_client(broker) as client,
    ):
        publish_release(cloud, "1.1.0")
        await gateway_a.hear("T1", PROJECT_KEY)

        async def registered() -> bool:
            return await controller.executor.call(controller.store.project_key, "T1") == PROJECT_KEY

        await wait_until(registered)
        spec = RolloutSpec(software_type="app", target_version="1.1.0", waves=[WaveSpec(percent=100)])
        await create_and_start(client, "r-trust", spec)
        command = await asyncio.wait_for(gateway_a.commands.get(), WAIT_S)
        machine = controller.coordinator.machines["r-trust"]

        # gw-b on its own topic, naming itself: the job is not its own.
        await gateway_b.result(command.job_id, "T1", JobOutcome.SUCCEEDED)
        # gw-b on its own topic, pretending to be gw-a in the payload.
        await gateway_b.result(command.job_id, "T1", JobOutcome.SUCCEEDED, claim="gw-a")
        await wait_until(lambda: audited(controller, "refused:job_result:foreign_job", command.job_id))
        await wait_until(lambda: audited(controller, "refused:job_result:topic_mismatch", command.job_id))
        assert refused(controller, "job_result", "foreign_job") == 1
        assert refused(controller, "job_result", "topic_mismatch") == 1
        device = machine.device("T1")
        assert device is not None and device.state is DeviceJobState.IN_FLIGHT
        assert controller.coordinator.stats.jobs == {}
        actors = {e.actor for e in await audit(controller) if e.action.startswith("refused:")}
        assert actors == {"gateway:gw-b"}

        await gateway_a.result(command.job_id, "T1", JobOutcome.SUCCEEDED)

        async def succeeded() -> bool:
            record = machine.device("T1")
            return record is not None and record.state is DeviceJobState.SUCCEEDED

        await wait_until(succeeded)
        assert controller.coordinator.stats.jobs == {("succeeded", "ok"): 1}


async def test_a_report_naming_another_gateway_is_not_stored_and_is_counted(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """The topic's gateway is the sender: a report claiming another gateway is refused, not stored."""
    async with controller_heard_by_one_gateway(broker, tmp_path) as (_, controller, gateway):
        await gateway.hear("LIAR-1", PROJECT_KEY, claim="gw-b")
        await gateway.hear("HONEST-1", PROJECT_KEY)

        async def honest_stored() -> bool:
            return await controller.executor.call(controller.store.project_key, "HONEST-1") == PROJECT_KEY

        await wait_until(honest_stored)
        await wait_until(lambda: counted(controller, "device_report", "topic_mismatch", 1))
        devices = await controller.executor.call(controller.store.devices)
        assert {device.serial for device in devices} == {"HONEST-1"}


async def test_project_keys_outside_the_allow_list_are_refused(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """A credential for a project not on the allow-list (or with a wrong fingerprint) is never saved."""
    async with (
        CloudEmulator() as cloud,
        running_controller(
            broker,
            cloud.base_url,
            f"sqlite:///{tmp_path / 'c.sqlite3'}",
            allowed_project_keys=(PROJECT_KEY,),
        ) as controller,
        fake_gateway(broker, "gw-a") as gateway,
    ):
        await gateway.credential("F1", "foreign-project")
        await gateway.credential("F2", PROJECT_KEY, fingerprint="0" * 16)
        await wait_until(lambda: audited(controller, "refused:device_credential:project_not_allowed", "F1"))
        await wait_until(lambda: audited(controller, "refused:device_credential:bad_fingerprint", "F2"))
        await gateway.credential("F3", PROJECT_KEY)

        async def saved() -> bool:
            return await controller.executor.call(controller.store.project_key, "F3") == PROJECT_KEY

        await wait_until(saved)
        keys = await controller.executor.call(controller.store.project_keys)
        assert keys == {"F3": PROJECT_KEY}
        assert refused(controller, "device_credential", "project_not_allowed") == 1
        assert refused(controller, "device_credential", "bad_fingerprint") == 1
        lines = await controller.executor.call(controller.store.audit_events)
        assert not any(b"foreign-project" in line for line in lines), "the key itself is never audited"


async def test_a_project_key_change_waits_for_an_operator(broker: MosquittoBroker, tmp_path: Path) -> None:
    """Another key for a known device is refused and pending until accept_key_change names it."""
    async with (
        CloudEmulator() as cloud,
        running_controller(
            broker,
            cloud.base_url,
            f"sqlite:///{tmp_path / 'c.sqlite3'}",
            allowed_project_keys=(PROJECT_KEY, OTHER_KEY),
        ) as controller,
        fake_gateway(broker, "gw-a") as gateway_a,
        fake_gateway(broker, "gw-b") as gateway_b,
        operator_client(broker) as client,
    ):
        store, executor = controller.store, controller.executor
        await gateway_a.credential("K1", PROJECT_KEY)

        async def key_is(expected: str) -> bool:
            return await executor.call(store.project_key, "K1") == expected

        await wait_until(lambda: key_is(PROJECT_KEY))
        new_fingerprint = key_fingerprint(OTHER_KEY)
        await gateway_b.credential("K1", OTHER_KEY)
        await gateway_b.credential("K1", OTHER_KEY)  # republished: counted again, audited once
        await wait_until(
            lambda: audited(controller, "refused:device_credential:project_key_changed", new_fingerprint)
        )
        await wait_until(lambda: counted(controller, "device_credential", "project_key_changed", 2))
        assert await key_is(PROJECT_KEY)
        pending = await executor.call(store.pending_key_change, "K1")
        assert pending is not None and (pending.fingerprint, pending.gateway_id) == (new_fingerprint, "gw-b")
        changes = [e for e in await audit(controller) if e.action.endswith("project_key_changed")]
        assert len(changes) == 1 and changes[0].actor == "gateway:gw-b"

        wrong = await ask(
            client,
            AcceptKeyChange(
                request_id=RequestId(f"k-{uuid.uuid4().hex[:6]}"),
                device_serial=DeviceSerial("K1"),
                fingerprint=key_fingerprint("yet-another-key"),
            ),
        )
        assert wrong.status is ReplyStatus.REJECTED and wrong.reason == "no_pending_key_change"
        assert await key_is(PROJECT_KEY)

        right = await ask(
            client,
            AcceptKeyChange(
                request_id=RequestId(f"k-{uuid.uuid4().hex[:6]}"),
                device_serial=DeviceSerial("K1"),
                fingerprint=new_fingerprint,
            ),
        )
        assert right.status is ReplyStatus.ACCEPTED, right
        assert await key_is(OTHER_KEY)
        assert await executor.call(store.pending_key_change, "K1") is None
        actions = [e.action for e in await audit(controller)]
        assert "request:accept_key_change:accepted" in actions


async def test_the_agents_fence_epoch_survives_a_restart(broker: MosquittoBroker, tmp_path: Path) -> None:
    """After a restart the agent still ignores commands of a controller epoch below the highest obeyed."""
    settings = agent_settings("gw-fence", broker, tmp_path / "agent", [])
    # Never downloaded: the commands have expired, so the agent answers at once.
    release = Release("1.1.0", b"\0" * 32, "http://127.0.0.1:9/never")
    async with controller_probe(broker) as probe:
        async with running_agent(settings) as agent:
            probe.send("gw-fence", _expired(ota_command("job-7", "D1", release), 7))
            await probe.wait_for(lambda: "job-7" in probe.results)
            assert isinstance(agent.session, MqttSession)
            first_epoch = agent.session.epoch
        assert probe.results["job-7"].reason is ReasonCode.EXPIRED
        async with running_agent(settings) as agent:
            assert agent.fence.highest == 7
            assert isinstance(agent.session, MqttSession)
            assert agent.session.epoch > first_epoch
            # Same topic, QoS 1: the broker delivers in order, so job-new's answer comes after job-old's.
            probe.send("gw-fence", _expired(ota_command("job-old", "D1", release), 5))
            probe.send("gw-fence", _expired(ota_command("job-new", "D1", release), 7))
            await probe.wait_for(lambda: "job-new" in probe.results)
            assert "job-old" not in probe.results
            assert agent.fenced_commands == 1


def _expired(command: OtaCommand, controller_epoch: int) -> OtaCommand:
    """The command with a deadline in the past (answered at once) from a given controller epoch."""
    return msgspec.structs.replace(command, deadline=command.issued_at, controller_epoch=controller_epoch)
