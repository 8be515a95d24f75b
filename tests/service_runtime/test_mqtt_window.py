"""The session's send window: many QoS 1 messages in flight at once, each delivered and settled once."""

from __future__ import annotations

import asyncio
import functools

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from schemas import OtaCommand, TopicKind, channels
from service_runtime.mqtt import Outbound, Subscription
from tests.harness.broker import MosquittoBroker
from tests.schemas.examples import GATEWAY, example
from tests.service_runtime.test_mqtt_session import (
    COMMAND_TOPIC,
    TREE,
    WAIT_S,
    Recorder,
    make_session,
    running,
)

pytestmark = pytest.mark.integration

MESSAGES = 300


def numbered_command(number: int) -> bytes:
    """The example OTA command with job id `job-<number>`."""
    command = example(TopicKind.GATEWAY_COMMAND)
    assert isinstance(command, OtaCommand)
    return channels.encode(msgspec.structs.replace(command, job_id=f"job-{number}"))


async def test_qos1_messages_are_sent_many_at_a_time_and_each_arrives_once_in_order(
    broker: MosquittoBroker,
) -> None:
    """A burst leaves with many PUBACKs outstanding at once; every message arrives once, in order."""
    agent_recorder, controller_recorder = Recorder(), Recorder()
    subscriptions = (Subscription(TREE.filter(TopicKind.GATEWAY_COMMAND, gateway_id=GATEWAY)),)
    acknowledged: list[int] = []
    in_flight_at_ack: list[int] = []
    agent = make_session(broker, "gw-1", agent_recorder, subscriptions=subscriptions)
    async with running(agent), running(make_session(broker, "ctl", controller_recorder)) as controller:
        for number in range(MESSAGES):

            def settle(number: int = number) -> None:
                acknowledged.append(number)
                in_flight_at_ack.append(controller.in_flight)

            controller.publish(Outbound(COMMAND_TOPIC, numbered_command(number), on_acknowledged=settle))
        assert await controller.flush(WAIT_S)
        received = [await asyncio.wait_for(agent_recorder.inbound.get(), WAIT_S) for _ in range(MESSAGES)]
        assert controller.outbox_size == 0
    job_ids = [message.message.job_id for message in received if isinstance(message.message, OtaCommand)]
    assert job_ids == [f"job-{number}" for number in range(MESSAGES)]
    assert sorted(acknowledged) == list(range(MESSAGES))
    # A stop-and-wait sender would never have a second message out when an acknowledgement lands.
    assert max(in_flight_at_ack) > 1, in_flight_at_ack[:10]


async def test_a_broker_restart_with_messages_in_flight_loses_none_and_settles_each_once(
    broker: MosquittoBroker,
) -> None:
    """Messages sent but not acknowledged when the broker stops are sent again; each settles exactly once."""
    agent_recorder, controller_recorder = Recorder(), Recorder()
    subscriptions = (Subscription(TREE.filter(TopicKind.GATEWAY_COMMAND, gateway_id=GATEWAY)),)
    async with running(make_session(broker, "gw-1", agent_recorder, subscriptions=subscriptions)):
        pass  # the broker now holds gw-1's persistent session: what it is sent waits for it
    acknowledged: list[int] = []
    in_flight_at_restart: list[int] = []
    registry = CollectorRegistry()
    async with running(make_session(broker, "ctl", controller_recorder, registry=registry)) as controller:

        def settle(number: int) -> None:
            acknowledged.append(number)
            if len(acknowledged) == MESSAGES // 4:
                in_flight_at_restart.append(controller.in_flight)
                # Blocking the loop on purpose: no acknowledgement can be read until the broker is gone.
                broker.restart()

        for number in range(MESSAGES):
            controller.publish(
                Outbound(
                    COMMAND_TOPIC, numbered_command(number), on_acknowledged=functools.partial(settle, number)
                )
            )
        assert await controller.flush(WAIT_S * 2), (controller.outbox_size, controller.in_flight)
    async with running(make_session(broker, "gw-1", agent_recorder, subscriptions=subscriptions)):
        wanted = {f"job-{number}" for number in range(MESSAGES)}
        received: set[str] = set()
        async with asyncio.timeout(WAIT_S):
            while not wanted <= received:
                message = await agent_recorder.inbound.get()
                if isinstance(message.message, OtaCommand):
                    received.add(message.message.job_id)
    assert in_flight_at_restart[0] > 0
    assert registry.get_sample_value("mcufleet_mqtt_connects_total") == 2
    assert sorted(acknowledged) == list(range(MESSAGES))
