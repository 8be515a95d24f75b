"""Persistence that follows change: a step saves only the devices it changed, and restores exactly."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.rollout_engine.effects import Dispatch
from controller.rollout_engine.machine import RolloutMachine
from controller.rollout_engine.records import RolloutSnapshot
from controller.store.database import SqliteDatabase
from controller.store.fleet_store import FleetStore, RolloutRecord
from schemas import FlowSpec, JobOutcome, ReasonCode, RolloutSpec, WaveSpec
from tests.controller.rollout_world import SUCCESS, Outcome, candidates, started_world

SPEC = RolloutSpec(
    software_type="app",
    target_version="1.1.0",
    waves=[WaveSpec(percent=10, soak_s=2), WaveSpec(percent=100)],
    flow=FlowSpec(max_in_flight=5, max_in_flight_per_gateway=5),
)


def record_of(machine: RolloutMachine) -> RolloutRecord:
    """What the coordinator hands the store for one changed rollout."""
    changes = machine.take_changes()
    return RolloutRecord(
        machine.rollout_id,
        machine.status.value,
        changes.header,
        changes.plan,
        changes.devices,
        changes.replace_devices,
    )


def same(one: RolloutMachine, other: RolloutMachine) -> bool:
    """Equal state (compared as decoded snapshots: an int the test wrote equals the float read back)."""
    return msgspec.msgpack.decode(one.to_snapshot(), type=RolloutSnapshot) == msgspec.msgpack.decode(
        other.to_snapshot(), type=RolloutSnapshot
    )


def restored(store: FleetStore) -> RolloutMachine:
    (record,) = store.load_rollouts()
    return RolloutMachine.from_parts(record.snapshot, record.plan, list(record.devices))


def save(store: FleetStore, epoch: int, machine: RolloutMachine, now_s: float) -> RolloutRecord:
    record = record_of(machine)
    store.save_transition(lease_epoch=epoch, rollouts=[record], commands=[], audit=[], now_s=now_s)
    return record


def test_a_step_writes_only_the_devices_it_changed(tmp_path: Path) -> None:
    """After the plan, a step that starts 5 jobs of 1000 writes 5 device rows, not the rollout's 1000."""
    store = FleetStore(SqliteDatabase(tmp_path / "c.sqlite3"))
    store.migrate()
    epoch = store.acquire_lease("c1", 1.0, 60.0)
    assert epoch is not None
    world = started_world(SPEC, candidates(1000), answer=lambda dispatch: None)
    first = save(store, epoch, world.machine, 1.0)
    assert first.plan is not None and first.replace_devices and len(first.devices) == 1000
    world.step()
    second = save(store, epoch, world.machine, 2.0)
    assert second.plan is None and not second.replace_devices
    assert len(second.devices) == 5 == len(world.dispatched)
    assert len(second.snapshot) < len(first.plan) / 10
    assert same(restored(store), world.machine)


def test_a_machine_saved_whole_before_device_rows_existed_is_restored_and_rewritten_as_rows(
    tmp_path: Path,
) -> None:
    """A legacy whole snapshot loads as it was, and its next save writes the plan and every device row."""
    store = FleetStore(SqliteDatabase(tmp_path / "c.sqlite3"))
    store.migrate()
    epoch = store.acquire_lease("c1", 1.0, 60.0)
    assert epoch is not None
    world = started_world(SPEC, candidates(50), answer=lambda dispatch: SUCCESS)
    world.step()
    legacy = RolloutRecord("r1", world.machine.status.value, world.machine.to_snapshot())
    store.save_transition(lease_epoch=epoch, rollouts=[legacy], commands=[], audit=[], now_s=1.0)
    machine = restored(store)
    assert same(machine, world.machine)
    rewritten = save(store, epoch, machine, 2.0)
    assert rewritten.plan is not None and len(rewritten.devices) == 50
    assert same(restored(store), world.machine)


def _scripted(answers: list[str]) -> Callable[[Dispatch], Outcome | None]:
    """Answer dispatches in order: succeed, fail (retryable) or stay silent."""
    script = iter(answers)
    failure: Outcome = (JobOutcome.FAILED, ReasonCode.UPLOAD_FAILED, True)

    def answer(dispatch: Dispatch) -> Outcome | None:
        choice = next(script, "ok")
        return SUCCESS if choice == "ok" else failure if choice == "fail" else None

    return answer


@settings(max_examples=25, deadline=None)
@given(
    answers=st.lists(st.sampled_from(["ok", "fail", "silent"]), min_size=1, max_size=40),
    saves=st.lists(st.booleans(), min_size=1, max_size=40),
)
def test_restoring_from_saved_changes_always_equals_the_live_machine(
    answers: list[str], saves: list[bool]
) -> None:
    """Whatever happened and whenever it was saved, header + plan + changed rows rebuild the machine."""
    with tempfile.TemporaryDirectory() as directory:
        store = FleetStore(SqliteDatabase(Path(directory) / "c.sqlite3"))
        store.migrate()
        epoch = store.acquire_lease("c1", 1.0, 1e9)
        assert epoch is not None
        world = started_world(SPEC, candidates(30), answer=_scripted(answers))
        save(store, epoch, world.machine, 0.0)
        for index, do_save in enumerate(saves):
            world.step()
            if do_save:
                save(store, epoch, world.machine, float(index))
        save(store, epoch, world.machine, 99.0)
        machine = restored(store)
        store.db.close()
    assert same(machine, world.machine)
    flow = world.flow()
    assert machine.tick(world.now, flow) == world.machine.tick(world.now, flow)
