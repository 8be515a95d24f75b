"""A 100k-device plan crosses the shipped broker limit page by page and the operator CLI reassembles it."""

from __future__ import annotations

from pathlib import Path

import aiomqtt
import pytest

from controller.operator_cli import read_plan
from schemas import TopicKind, channels, paginate_plan
from tests.harness.broker import MosquittoBroker
from tests.integration.world import TREE, operator_client
from tests.schemas.test_plan_pages import fleet_plan

pytestmark = pytest.mark.integration


async def test_a_100k_device_plan_is_retained_under_the_shipped_size_limit_and_read_back_whole(
    tmp_path: Path,
) -> None:
    """With mosquitto's 256 KB message_size_limit, every page is accepted and a late reader gets the plan."""
    broker = MosquittoBroker(tmp_path / "broker", extra_config="message_size_limit 262144\n")
    broker.start()
    try:
        plan = fleet_plan(100_000, 3, 1000)
        summary, pages = paginate_plan(plan)
        async with aiomqtt.Client(broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5) as publisher:
            for page in pages:
                topic = TREE.topic(
                    TopicKind.ROLLOUT_PLAN_PAGE, rollout_id=plan.rollout_id, page=str(page.page)
                )
                await publisher.publish(topic, channels.encode(page), qos=1, retain=True)
            topic = TREE.topic(TopicKind.ROLLOUT_PLAN, rollout_id=plan.rollout_id)
            await publisher.publish(topic, channels.encode(summary), qos=1, retain=True)
        async with operator_client(broker) as client:
            read = await read_plan(client, TREE, plan.rollout_id, 30.0)
    finally:
        broker.crash()
    assert read == plan
