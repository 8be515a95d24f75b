"""Rollouts under fire: the broker, the controller, the agent, the links and Memfault fail mid-rollout.

Each scenario starts a rollout of six devices, breaks one thing while it runs, lets the rollout
finish and checks every invariant of `invariants.py`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from schemas import RolloutState, RolloutStatus
from simulator.device import FaultPlan
from tests.chaos.invariants import check_invariants
from tests.chaos.world import KEEPALIVE_S, ChaosWorld, chaos_world
from tests.harness.broker import MosquittoBroker

pytestmark = [pytest.mark.integration, pytest.mark.chaos]
Disruption = Callable[[ChaosWorld], Awaitable[None]]


async def survives(
    broker: MosquittoBroker, tmp_path: Path, disrupt: Disruption, faults: dict[str, FaultPlan] | None = None
) -> RolloutState:
    """Start the rollout, run `disrupt`, and check the invariants once it completed."""
    async with chaos_world(broker, tmp_path, faults=faults) as world:
        await world.start_rollout()
        await disrupt(world)
        state = await world.finish()
        assert state.status is RolloutStatus.COMPLETED
        check_invariants(world, state)
    return state


async def test_broker_killed_and_restarted_mid_rollout(broker: MosquittoBroker, tmp_path: Path) -> None:
    """SIGKILL mosquitto while uploads run, start it again: sessions resume, the rollout completes."""

    async def disrupt(world: ChaosWorld) -> None:
        await world.uploading()
        broker.crash()
        await asyncio.sleep(1.0)
        broker.start()

    await survives(broker, tmp_path, disrupt)


async def test_broker_frozen_past_the_keepalive(broker: MosquittoBroker, tmp_path: Path) -> None:
    """SIGSTOP mosquitto longer than the keepalive (a half-open link), then SIGCONT."""

    async def disrupt(world: ChaosWorld) -> None:
        await world.uploading()
        broker.pause()
        await asyncio.sleep(KEEPALIVE_S * 1.5 + 1)
        broker.resume()

    await survives(broker, tmp_path, disrupt)


async def test_controller_killed_mid_rollout(broker: MosquittoBroker, tmp_path: Path) -> None:
    """SIGKILL the controller while jobs are in flight and start it again."""

    async def disrupt(world: ChaosWorld) -> None:
        await world.uploading()
        await world.controller.kill()
        await world.controller.start()

    await survives(broker, tmp_path, disrupt)


async def test_agent_killed_mid_upload(broker: MosquittoBroker, tmp_path: Path) -> None:
    """SIGKILL the agent mid-upload and start it again: its journal resumes the jobs."""

    async def disrupt(world: ChaosWorld) -> None:
        await world.uploading(0.4)
        await world.agent.kill()
        await world.agent.start()

    await survives(broker, tmp_path, disrupt)


async def test_links_drop_and_devices_reboot_mid_upload(broker: MosquittoBroker, tmp_path: Path) -> None:
    """Devices go silent, reboot and lose replies mid-upload: retries and resumes get them through."""
    faults = {
        "DEV-0": FaultPlan(silent_at_upload_offset=40_000, silent_duration_s=3.0),
        "DEV-1": FaultPlan(reboot_at_upload_offset=50_000),
        "DEV-2": FaultPlan(drop_responses=frozenset({4, 9, 30})),
        "DEV-3": FaultPlan(first_chunk_erase_delay_s=1.5),
    }

    async def nothing_more(world: ChaosWorld) -> None:
        """The devices' own faults are the disruption."""

    await survives(broker, tmp_path, nothing_more, faults)


async def test_memfault_unavailable_during_the_rollout(broker: MosquittoBroker, tmp_path: Path) -> None:
    """Memfault answers 503 to most requests for a while: devices wait without losing attempts."""

    async def disrupt(world: ChaosWorld) -> None:
        world.cloud.faults.configure(error_rate=0.8)
        await asyncio.sleep(4.0)
        world.cloud.faults.reset()

    state = await survives(broker, tmp_path, disrupt)
    assert state.counts.succeeded == 6
