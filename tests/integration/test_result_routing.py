"""Job events go to their rollout: by the rollout id they echo, or by job id from agents that echo none."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from schemas import FlowSpec, GatewayId, PhaseDeadlines, RolloutState, RolloutStatus, Selector, TopicKind
from simulator.cloud import CloudEmulator
from tests.harness.broker import MosquittoBroker
from tests.integration.fake_gateway import FakeGateway, fake_gateway
from tests.integration.test_rollout_resilience import single_wave
from tests.integration.world import (
    HARDWARE,
    PROJECT_KEY,
    TREE,
    create_and_start,
    latest,
    operator_client,
    publish_release,
    registry_has,
    running_controller,
    wait_until,
)

pytestmark = pytest.mark.integration


def completed(state: object) -> bool:
    return isinstance(state, RolloutState) and state.status is RolloutStatus.COMPLETED


async def test_two_rollouts_complete_with_results_from_new_and_old_agents(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """One rollout per gateway: echoed rollout ids route directly, and an old agent's results still count."""
    new = FakeGateway("gw-new", ["NEW-0", "NEW-1", "NEW-2"], HARDWARE, PROJECT_KEY, TREE)
    old = FakeGateway(
        "gw-old", ["OLD-0", "OLD-1", "OLD-2"], HARDWARE, PROJECT_KEY, TREE, echo_rollout_id=False
    )
    async with CloudEmulator() as cloud:
        publish_release(cloud, "1.1.0")
        async with (
            running_controller(broker, cloud.base_url, f"sqlite:///{tmp_path / 'c.sqlite3'}") as controller,
            fake_gateway(broker, new),
            fake_gateway(broker, old),
            operator_client(broker) as client,
        ):
            await wait_until(lambda: registry_has(controller, 6))
            flow = FlowSpec(max_in_flight=3, max_in_flight_per_gateway=3)
            for rollout_id, gateway in (("r-new", new), ("r-old", old)):
                selector = Selector(gateways=[GatewayId(gateway.gateway_id)])
                await create_and_start(client, rollout_id, single_wave(flow=flow, selector=selector))
            states = await asyncio.gather(
                latest(client, TopicKind.ROLLOUT_STATE, "r-new", completed, timeout_s=30),
                latest(client, TopicKind.ROLLOUT_STATE, "r-old", completed, timeout_s=30),
            )
            refused = dict(controller.coordinator.stats.refused)
    assert [state.counts.succeeded for state in states] == [3, 3]
    assert set(new.rollout_ids) == {"r-new"} and set(old.rollout_ids) == {"r-old"}
    assert new.duplicates == old.duplicates == 0
    assert refused == {}


async def test_progress_keeps_a_long_job_alive_without_passing_through_the_store(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """Jobs that work three no-progress deadlines long, reporting progress, succeed and none times out.

    Progress reaches the leader's machines from memory (it is never written to the inbox): were it
    dropped, every job would be TIMED_OUT at its first no-progress deadline.
    """
    slow = FakeGateway("gw-slow", ["SLOW-0", "SLOW-1"], HARDWARE, PROJECT_KEY, TREE, working_s=4.5)
    async with CloudEmulator() as cloud:
        publish_release(cloud, "1.1.0")
        async with (
            running_controller(broker, cloud.base_url, f"sqlite:///{tmp_path / 'c.sqlite3'}") as controller,
            fake_gateway(broker, slow),
            operator_client(broker) as client,
        ):
            await wait_until(lambda: registry_has(controller, 2))
            spec = single_wave(
                flow=FlowSpec(max_in_flight=2, max_in_flight_per_gateway=2),
                deadlines=PhaseDeadlines(no_progress_s=1.5, job_total_s=120),
            )
            await create_and_start(client, "r-slow", spec)
            state = await latest(client, TopicKind.ROLLOUT_STATE, "r-slow", completed, timeout_s=30)
            stored = await controller.executor.call(controller.store.inbox)
    assert (state.counts.succeeded, state.counts.timed_out) == (2, 0), state.counts
    assert slow.duplicates == 0
    assert all(item.kind != TopicKind.JOB_PROGRESS.value for item in stored)
