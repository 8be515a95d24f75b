"""The MQTT session against a real mosquitto: persistence across restarts, rejection, presence epochs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import msgspec
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import CollectorRegistry

from schemas import (
    ControllerId,
    ControllerPresence,
    GatewayPresence,
    OfflineCause,
    OtaCommand,
    PayloadError,
    TopicKind,
    TopicTree,
    channels,
    supersedes,
)
from service_runtime.epoch import EpochCounter
from service_runtime.mqtt import Inbound, MqttSession, MqttSettings, Outbound, Rejected, Subscription
from service_runtime.mqtt_metrics import MqttMetrics
from tests.harness.broker import MosquittoBroker
from tests.schemas.examples import GATEWAY, example

pytestmark = pytest.mark.integration

TREE = TopicTree()
COMMAND_TOPIC = TREE.topic(TopicKind.GATEWAY_COMMAND, gateway_id=GATEWAY)
PRESENCE_TOPIC = TREE.topic(TopicKind.GATEWAY_PRESENCE, gateway_id=GATEWAY)
WAIT_S = 15.0


@dataclass
class GatewayPresencePayloads:
    """Presence payloads of gateway `gw-1`, as the agent makes them."""

    topic: str = PRESENCE_TOPIC

    def birth(self, epoch: int) -> bytes:
        return channels.encode(GatewayPresence(gateway_id=GATEWAY, epoch=epoch, online=True))

    def will(self, epoch: int) -> bytes:
        return channels.encode(
            GatewayPresence(gateway_id=GATEWAY, epoch=epoch, online=False, cause=OfflineCause.WILL)
        )

    def goodbye(self, epoch: int) -> bytes:
        return channels.encode(
            GatewayPresence(gateway_id=GATEWAY, epoch=epoch, online=False, cause=OfflineCause.SHUTDOWN)
        )


@dataclass
class Recorder:
    """Collects what a session hands to its handlers."""

    inbound: asyncio.Queue[Inbound] = field(default_factory=asyncio.Queue)
    rejected: asyncio.Queue[Rejected] = field(default_factory=asyncio.Queue)

    async def on_inbound(self, message: Inbound) -> None:
        await self.inbound.put(message)

    async def on_rejected(self, message: Rejected) -> None:
        await self.rejected.put(message)


@contextlib.asynccontextmanager
async def running(session: MqttSession) -> AsyncIterator[MqttSession]:
    """Run `session` until the block ends, then stop it cleanly."""
    task = asyncio.create_task(session.run())
    try:
        await asyncio.wait_for(session.connected.wait(), WAIT_S)
        yield session
    finally:
        await session.stop()
        await asyncio.wait_for(task, WAIT_S)


def make_session(
    broker: MosquittoBroker,
    client_id: str,
    recorder: Recorder,
    *,
    subscriptions: tuple[Subscription, ...] = (),
    presence: GatewayPresencePayloads | None = None,
    epochs: EpochCounter | None = None,
    clock_ms: Callable[[], int] = lambda: 1,
    registry: CollectorRegistry | None = None,
) -> MqttSession:
    settings = MqttSettings(broker.host, broker.port, client_id, backoff_initial_s=0.05, backoff_max_s=0.2)
    return MqttSession(
        settings,
        tree=TREE,
        subscriptions=subscriptions,
        handler=recorder.on_inbound,
        on_rejected=recorder.on_rejected,
        metrics=MqttMetrics(registry or CollectorRegistry()),
        presence=presence,
        epochs=epochs,
        clock_ms=clock_ms,
    )


def command_bytes() -> bytes:
    return channels.encode(example(TopicKind.GATEWAY_COMMAND))


async def test_qos1_command_sent_while_offline_arrives_after_broker_restart(broker: MosquittoBroker) -> None:
    """A command queued for an offline agent survives a broker SIGTERM restart and is delivered."""
    agent_recorder, controller_recorder = Recorder(), Recorder()
    subscriptions = (Subscription(TREE.filter(TopicKind.GATEWAY_COMMAND, gateway_id=GATEWAY)),)
    async with running(make_session(broker, "gw-1", agent_recorder, subscriptions=subscriptions)):
        pass  # the broker now holds gw-1's persistent session and its subscription
    async with running(make_session(broker, "controller-1", controller_recorder)) as controller:
        controller.publish(Outbound(COMMAND_TOPIC, command_bytes()))
        assert await controller.flush(WAIT_S)
    await asyncio.to_thread(broker.restart)
    async with running(make_session(broker, "gw-1", agent_recorder, subscriptions=subscriptions)):
        delivered = await asyncio.wait_for(agent_recorder.inbound.get(), WAIT_S)
    assert isinstance(delivered.message, OtaCommand)
    assert delivered.message == example(TopicKind.GATEWAY_COMMAND)


async def test_malformed_payload_is_rejected_and_the_next_good_one_is_processed(
    broker: MosquittoBroker,
) -> None:
    """Garbage and contract violations are counted and handed to on_rejected; later messages flow."""
    agent_recorder, controller_recorder = Recorder(), Recorder()
    registry = CollectorRegistry()
    subscriptions = (Subscription(TREE.filter(TopicKind.GATEWAY_COMMAND, gateway_id=GATEWAY)),)
    agent = make_session(broker, "gw-1", agent_recorder, subscriptions=subscriptions, registry=registry)
    command = msgspec.json.decode(command_bytes())
    async with running(agent), running(make_session(broker, "ctl", controller_recorder)) as controller:
        controller.publish(Outbound(COMMAND_TOPIC, b"\xff{not json"))
        controller.publish(Outbound(COMMAND_TOPIC, msgspec.json.encode({**command, "surprise": 1})))
        controller.publish(Outbound(COMMAND_TOPIC, command_bytes()))
        first = await asyncio.wait_for(agent_recorder.rejected.get(), WAIT_S)
        second = await asyncio.wait_for(agent_recorder.rejected.get(), WAIT_S)
        good = await asyncio.wait_for(agent_recorder.inbound.get(), WAIT_S)
    assert isinstance(first.error, PayloadError) and isinstance(second.error, PayloadError)
    assert first.error.field == "$" and "JSON" in str(first.error)
    assert second.error.field == "$.surprise"
    assert isinstance(good.message, OtaCommand)
    assert registry.get_sample_value("mcufleet_mqtt_messages_rejected_total", {"reason": "payload"}) == 2
    assert (
        registry.get_sample_value("mcufleet_mqtt_messages_received_total", {"kind": "gateway_command"}) == 1
    )


def connect_stale_session(broker: MosquittoBroker, epoch: int) -> mqtt.Client:
    """Connect gw-1 with a will of `epoch` and then never service the connection again.

    This is a gateway that lost power: the broker still holds its connection and will.
    """
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="gw-1", protocol=mqtt.MQTTv5)
    client.will_set(PRESENCE_TOPIC, GatewayPresencePayloads().will(epoch), qos=1, retain=True)
    client.connect(broker.host, broker.port, keepalive=60)
    while not client.is_connected():
        client.loop(timeout=0.1)
    return client


async def test_a_stale_will_does_not_mark_a_newer_session_offline(broker: MosquittoBroker) -> None:
    """A will from an older epoch, published after a newer birth, loses to the birth everywhere."""
    observer = Recorder()
    presence_filter = (Subscription(TREE.filter(TopicKind.GATEWAY_PRESENCE)),)
    epochs = EpochCounter()
    stale_epoch = epochs.advance(1)
    stale = await asyncio.to_thread(connect_stale_session, broker, stale_epoch)
    new = make_session(broker, "gw-1", Recorder(), presence=GatewayPresencePayloads(), epochs=epochs)
    try:
        watcher = make_session(broker, "watcher", observer, subscriptions=presence_filter)
        # The new session takes over the client id: the broker drops the stale connection and
        # publishes its will, which may land after the new session's birth.
        async with running(watcher), running(new):
            assert new.epoch > stale_epoch
            seen: list[GatewayPresence] = []
            while not (
                seen
                and seen[-1].epoch == new.epoch
                and seen[-1].online
                and stale_epoch in {p.epoch for p in seen}
            ):
                item = await asyncio.wait_for(observer.inbound.get(), WAIT_S)
                assert isinstance(item.message, GatewayPresence)
                seen.append(item.message)
            known_epoch: int | None = None
            known_online: bool | None = None
            for presence in seen:
                if supersedes(known_epoch, known_online, presence):
                    known_epoch, known_online = presence.epoch, presence.online
            assert (known_epoch, known_online) == (new.epoch, True)
            # A will that lands late (through a bridge, say) overwrites the retained birth; the
            # session's guard sees it on its own presence topic and republishes the birth.
            late_will = GatewayPresencePayloads().will(stale_epoch)
            watcher.publish(Outbound(PRESENCE_TOPIC, late_will, retain=True))
            while True:
                item = await asyncio.wait_for(observer.inbound.get(), WAIT_S)
                assert isinstance(item.message, GatewayPresence)
                if item.message.online:
                    break
            assert item.message.epoch == new.epoch
            # A late subscriber sees only the retained message: it must be the newer birth.
            late = Recorder()
            async with running(make_session(broker, "late", late, subscriptions=presence_filter)):
                retained = await asyncio.wait_for(late.inbound.get(), WAIT_S)
            assert isinstance(retained.message, GatewayPresence)
            assert (retained.message.epoch, retained.message.online) == (new.epoch, True)
    finally:
        stale.socket().close()  # type: ignore[union-attr]


@dataclass
class LeadershipDuringConnect:
    """A controller's presence that wins the lease while its first birth is being published."""

    topic: str = TREE.topic(TopicKind.CONTROLLER_PRESENCE, controller_id="ctl-a")
    leader: bool = False

    def _presence(self, epoch: int, online: bool, cause: OfflineCause) -> bytes:
        return channels.encode(
            ControllerPresence(
                controller_id=ControllerId("ctl-a"),
                epoch=epoch,
                online=online,
                cause=cause,
                leader=online and self.leader,
            )
        )

    def birth(self, epoch: int) -> bytes:
        payload = self._presence(epoch, True, OfflineCause.NONE)
        # The lease is won now: `refresh_birth` is called before the session counts as connected.
        self.leader = True
        return payload

    def will(self, epoch: int) -> bytes:
        return self._presence(epoch, False, OfflineCause.WILL)

    def goodbye(self, epoch: int) -> bytes:
        return self._presence(epoch, False, OfflineCause.SHUTDOWN)


async def test_a_birth_that_changed_while_it_was_published_is_published_again(
    broker: MosquittoBroker,
) -> None:
    """Leadership won during the connect reaches the retained presence (no lost update)."""
    presence = LeadershipDuringConnect()
    session = make_session(broker, "ctl-a", Recorder(), presence=presence)  # type: ignore[arg-type]
    session.refresh_birth()  # not connected yet: a no-op, as when the lease task wins first
    async with running(session):
        late = Recorder()
        subscriptions = (Subscription(TREE.filter(TopicKind.CONTROLLER_PRESENCE)),)
        async with running(make_session(broker, "late", late, subscriptions=subscriptions)):
            while True:
                retained = await asyncio.wait_for(late.inbound.get(), WAIT_S)
                assert isinstance(retained.message, ControllerPresence)
                if retained.message.leader:
                    break
        assert retained.message.epoch == session.epoch
