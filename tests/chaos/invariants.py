"""What must hold after any scenario, however the components were broken on the way.

1. Every job is terminal: no device of the rollout is pending, waiting or in flight.
2. Every device is confirmed on the target version, or the store records a failure with a reason.
3. No device is flashed twice for one job: at most one test boot into the target per device,
   exactly one for a device that succeeded.
4. No command runs after its deadline: every boot into the target happened inside the window
   (issued_at, deadline) of a job command sent for that device.
5. The controller's counts agree three ways: the retained state, the store and `/metrics`.
"""

from __future__ import annotations

import sqlite3

import httpx
import msgspec
from prometheus_client.parser import text_string_to_metric_families

from controller.rollout_engine.machine import RolloutMachine
from controller.store.opening import open_store
from schemas import DeviceJobState, OtaCommand, RolloutState, StateCounts
from simulator.device import BootOutcome
from tests.chaos.world import ROLLOUT, TARGET, ChaosWorld

UNFINISHED = {DeviceJobState.PENDING, DeviceJobState.WAITING, DeviceJobState.IN_FLIGHT}
FLASHING_BOOTS = {BootOutcome.SWAPPED, BootOutcome.BAD_BUILD_REVERTED}
"""Boots that mean an image was test-booted: the device was flashed."""


def _store_view(world: ChaosWorld) -> tuple[RolloutMachine, list[OtaCommand]]:
    store = open_store(world.store_url)
    try:
        record = next(r for r in store.load_rollouts() if r.rollout_id == ROLLOUT)
    finally:
        store.db.close()
    # Every command the agent ever accepted, from its own journal (what it could have run).
    journal = sqlite3.connect(world.agent_journal)
    try:
        payloads = [bytes(row[0]) for row in journal.execute("SELECT command FROM job").fetchall()]
    finally:
        journal.close()
    commands = [msgspec.json.decode(payload, type=OtaCommand) for payload in payloads]
    machine = RolloutMachine.from_parts(record.snapshot, record.plan, list(record.devices))
    return machine, commands


def _metric_counts(world: ChaosWorld) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{world.metrics_port}/metrics", timeout=10).text
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "mcufleet_controller_rollout_devices":
            for sample in family.samples:
                if sample.labels.get("rollout") == ROLLOUT:
                    counts[sample.labels["state"]] = sample.value
    return counts


def check_invariants(world: ChaosWorld, state: RolloutState) -> None:
    """Assert every invariant of the module docstring."""
    machine, commands = _store_view(world)
    # 1. terminal
    records = {serial: machine.device(serial) for serial in world.serials}
    for serial, record in records.items():
        assert record is not None, f"{serial} is not in the rollout"
        assert record.state not in UNFINISHED, f"{serial} is still {record.state}"
    # 2. confirmed on the target, or failed with a reason
    for serial, record in records.items():
        assert record is not None
        device = world.devices.device(serial)
        running = next(slot for slot in device.image_states() if slot.active)
        if record.state is DeviceJobState.SUCCEEDED:
            assert running.version == TARGET and running.confirmed, (serial, running)
        else:
            assert record.reason, f"{serial} ended {record.state} without a reason"
            assert running.confirmed, (f"{serial} left unconfirmed", record, device.boots)
    # 3. flashed at most once; exactly once when it succeeded
    for serial, record in records.items():
        assert record is not None
        flashes = [boot for boot in world.devices.device(serial).boots if boot.outcome in FLASHING_BOOTS]
        assert len(flashes) <= 1, f"{serial} was flashed {len(flashes)} times: {flashes}"
        if record.state is DeviceJobState.SUCCEEDED:
            assert len(flashes) == 1, f"{serial} succeeded without exactly one test boot"
    # 4. every flash inside a job's window
    for serial in world.serials:
        windows = [
            (c.issued_at.timestamp(), c.deadline.timestamp()) for c in commands if c.device_serial == serial
        ]
        for boot in world.devices.device(serial).boots:
            if boot.outcome in FLASHING_BOOTS:
                at_s = boot.at_s + world.wall_minus_loop_s
                assert any(start - 1.0 <= at_s <= end for start, end in windows), (serial, at_s, windows)
    # 5. the retained state, the store and the metrics agree
    stored = machine.counts()
    assert state.counts == stored, (state.counts, stored)
    published = {field: float(getattr(stored, field)) for field in StateCounts.__struct_fields__}
    scraped = _metric_counts(world)
    assert {k: v for k, v in scraped.items() if v} == {k: v for k, v in published.items() if v}, (
        scraped,
        stored,
    )
    assert sum(int(published[f]) for f in StateCounts.__struct_fields__) == len(world.serials)
