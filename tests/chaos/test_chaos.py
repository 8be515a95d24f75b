"""Rollouts under fire: the broker, the controller, the agent, the links and Memfault fail mid-rollout.

Each scenario starts a rollout of six devices, breaks one thing while uploads are running, lets
the rollout finish and checks every invariant of `invariants.py`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from schemas import RolloutStatus
from simulator.device import FaultPlan
from tests.chaos.invariants import check_invariants
from tests.chaos.world import KEEPALIVE_S, chaos_world
from tests.harness.broker import MosquittoBroker

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


async def test_broker_killed_and_restarted_mid_rollout(broker: MosquittoBroker, tmp_path: Path) -> None:
    """SIGKILL mosquitto while uploads run, start it again: sessions resume, the rollout completes."""
    async with chaos_world(broker, tmp_path) as world:
        await world.start_rollout()
        await world.uploading()
        broker.crash()
        await asyncio.sleep(1.0)
        broker.start()
        state = await world.finish()
        assert state.status is RolloutStatus.COMPLETED
        check_invariants(world, state)


async def test_broker_frozen_past_the_keepalive(broker: MosquittoBroker, tmp_path: Path) -> None:
    """SIGSTOP mosquitto longer than the keepalive (a half-open link), then SIGCONT."""
    async with chaos_world(broker, tmp_path) as world:
        await world.start_rollout()
        await world.uploading()
        broker.pause()
        await asyncio.sleep(KEEPALIVE_S * 1.5 + 1)
        broker.resume()
        state = await world.finish()
        assert state.status is RolloutStatus.COMPLETED
        check_invariants(world, state)


async def test_controller_killed_mid_rollout(broker: MosquittoBroker, tmp_path: Path) -> None:
    """SIGKILL the controller while jobs are in flight and start it again."""
    async with chaos_world(broker, tmp_path) as world:
        await world.start_rollout()
        await world.uploading()
        await world.controller.kill()
        await world.controller.start()
        state = await world.finish()
        assert state.status is RolloutStatus.COMPLETED
        check_invariants(world, state)


async def test_agent_killed_mid_upload(broker: MosquittoBroker, tmp_path: Path) -> None:
    """SIGKILL the agent mid-upload and start it again: its journal resumes the jobs."""
    async with chaos_world(broker, tmp_path) as world:
        await world.start_rollout()
        await world.uploading(0.4)
        await world.agent.kill()
        await world.agent.start()
        state = await world.finish()
        assert state.status is RolloutStatus.COMPLETED
        check_invariants(world, state)


async def test_links_drop_and_devices_reboot_mid_upload(broker: MosquittoBroker, tmp_path: Path) -> None:
    """Devices go silent, reboot and lose replies mid-upload: retries and resumes get them through."""
    faults = {
        "DEV-0": FaultPlan(silent_at_upload_offset=40_000, silent_duration_s=3.0),
        "DEV-1": FaultPlan(reboot_at_upload_offset=50_000),
        "DEV-2": FaultPlan(drop_responses=frozenset({4, 9, 30})),
        "DEV-3": FaultPlan(first_chunk_erase_delay_s=1.5),
    }
    async with chaos_world(broker, tmp_path, faults=faults) as world:
        await world.start_rollout()
        state = await world.finish()
        assert state.status is RolloutStatus.COMPLETED
        check_invariants(world, state)


async def test_memfault_unavailable_during_the_rollout(broker: MosquittoBroker, tmp_path: Path) -> None:
    """Memfault answers 503 to most requests for a while: devices wait without losing attempts."""
    async with chaos_world(broker, tmp_path) as world:
        await world.start_rollout()
        world.cloud.faults.configure(error_rate=0.8)
        await asyncio.sleep(4.0)
        world.cloud.faults.reset()
        state = await world.finish()
        assert state.status is RolloutStatus.COMPLETED
        assert state.counts.succeeded == len(world.serials)
        check_invariants(world, state)
