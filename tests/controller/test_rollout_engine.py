"""The pure rollout core: planner, gates and the state machine, driven without any I/O."""

from __future__ import annotations

from datetime import timedelta

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.errors import RolloutError
from controller.rollout_engine.effects import Cancel, Dispatch, GateDecided
from controller.rollout_engine.gates import wilson_lower_bound
from controller.rollout_engine.machine import RolloutMachine
from controller.rollout_engine.model import Candidate, GatewayLink
from controller.rollout_engine.planner import plan_rollout
from schemas import (
    DeviceJobState,
    DeviceSerial,
    FlowSpec,
    GateSpec,
    GateVerdict,
    JobOutcome,
    MaintenanceWindow,
    PenaltySpec,
    PhaseDeadlines,
    ReasonCode,
    RetrySpec,
    RolloutSpec,
    RolloutStatus,
    Selector,
    WaveSpec,
)
from tests.controller.rollout_world import SUCCESS, T0, candidates, started_world

THREE_WAVES = [WaveSpec(percent=10, soak_s=5), WaveSpec(percent=50, soak_s=5), WaveSpec(percent=100)]


def spec(**overrides: object) -> RolloutSpec:
    base: dict[str, object] = {"software_type": "app", "target_version": "1.1.0", "waves": THREE_WAVES}
    return RolloutSpec(**{**base, **overrides})  # type: ignore[arg-type]


def _plan(rollout_spec: RolloutSpec, devices: list[Candidate]):  # type: ignore[no-untyped-def]
    return plan_rollout(
        "r1",
        "p1",
        rollout_spec,
        devices,
        T0,
        image_size_bytes=100_000,
        throughput_bytes_per_s=10_000,
        reboot_s=5,
    )


# --- planner -------------------------------------------------------------------------------------


def test_plan_waves_cover_every_eligible_device_once() -> None:
    """Cumulative percentages become waves of 10/40/50 devices, each device in exactly one."""
    plan = _plan(spec(), candidates(100))
    sizes = [len(w.devices) for w in plan.waves]
    serials = [d.device_serial for w in plan.waves for d in w.devices]
    assert sizes == [10, 40, 50] and len(set(serials)) == 100 and plan.estimated_duration_s > 0


def test_plan_is_deterministic_and_differs_between_rollouts() -> None:
    """The same inputs give the same plan; another rollout id shuffles differently."""
    devices = candidates(50)
    first = _plan(spec(), devices)
    assert first == _plan(spec(), devices)
    other = plan_rollout(
        "r2", "p1", spec(), devices, T0, image_size_bytes=1, throughput_bytes_per_s=1, reboot_s=1
    )
    assert [d.device_serial for d in first.waves[0].devices] != [
        d.device_serial for d in other.waves[0].devices
    ]


def test_canary_covers_every_hardware_version_and_gateway() -> None:
    """The first wave holds a device of each hardware version and each gateway present."""
    devices = candidates(200, gateways=5, hardware=("a", "b", "c", "d"))
    canary = _plan(spec(waves=[WaveSpec(count=8), WaveSpec(percent=100)]), devices).waves[0].devices
    assert {d.hardware_version for d in canary} == {"a", "b", "c", "d"}
    assert {d.gateway_id for d in canary} == {f"gw-{i}" for i in range(5)}


def test_exclusions_carry_reasons() -> None:
    """Devices Memfault does not offer the target, already on it, or unheard are excluded with why."""
    base = candidates(4)
    devices = [
        base[0],
        Candidate("UP", "hw-a", "app", "1.1.0", base[1].links, None, "latest"),
        Candidate("OTHER", "hw-a", "app", "1.0.0", base[2].links, "1.2.0"),
        Candidate("DARK", "hw-a", "app", "1.0.0", (GatewayLink("gw-0", -50, online=False),), "1.1.0"),
        Candidate("DOWN", "hw-a", "app", "2.0.0", base[3].links, "1.1.0"),
        Candidate("ELSE", "hw-a", "bootloader", "1.0.0", base[3].links, "1.1.0"),
    ]
    plan = _plan(spec(waves=[WaveSpec(percent=100)]), devices)
    reasons = {e.device_serial: e.reason for e in plan.excluded}
    assert [d.device_serial for d in plan.waves[0].devices] == [base[0].serial]
    assert reasons["UP"] == "already on the target version"
    assert "memfault offers 1.2.0" in reasons["OTHER"]
    assert reasons["DARK"] == "no online gateway hears it"
    assert "downgrade" in reasons["DOWN"]
    assert "ELSE" not in reasons  # another software type is simply not a candidate


def test_versions_follow_the_shared_order_in_the_plan() -> None:
    """`v1.1.0` is the target 1.1.0; rc.10 above rc.9 is a downgrade; an unorderable version is excluded."""
    base = candidates(4)
    devices = [
        Candidate("SPELLED", "hw-a", "app", "v1.1.0", base[0].links, None, "latest"),
        Candidate("RC10", "hw-a", "app", "1.2.0-rc.10", base[1].links, "1.2.0-rc.9"),
        Candidate("RC8", "hw-a", "app", "1.2.0-rc.8", base[2].links, "1.2.0-rc.9"),
        Candidate("ODD", "hw-a", "app", "nightly", base[3].links, "1.2.0-rc.9"),
    ]
    plan = _plan(spec(target_version="1.2.0-rc.9", waves=[WaveSpec(percent=100)]), devices)
    reasons = {e.device_serial: e.reason for e in plan.excluded}
    assert [d.device_serial for d in plan.waves[0].devices] == ["RC8"]
    assert "downgrade from 1.2.0-rc.10" in reasons["RC10"]
    assert "cannot be ordered" in reasons["ODD"]
    same = _plan(spec(waves=[WaveSpec(percent=100)]), devices[:1])
    assert [e.reason for e in same.excluded] == ["already on the target version"]


@pytest.mark.parametrize("target", ["latest", "1.2.3.4.5", "v"])
def test_a_rollout_whose_target_cannot_be_ordered_is_refused(target: str) -> None:
    """The spec refuses the target at decode, with the reason (so no comparison later can fail)."""
    payload = msgspec.json.encode({"software_type": "app", "target_version": target})
    with pytest.raises(msgspec.ValidationError, match="target_version"):
        msgspec.json.decode(payload, type=RolloutSpec)


def test_selector_limits_devices() -> None:
    """Hardware versions, gateways and deny lists narrow the plan."""
    devices = candidates(30)
    selector = Selector(hardware_versions=["hw-a"], serial_deny=[DeviceSerial(devices[0].serial)])
    plan = _plan(spec(selector=selector, waves=[WaveSpec(percent=100)]), devices)
    chosen = {d.device_serial for d in plan.waves[0].devices}
    assert devices[0].serial not in chosen and all(
        d.hardware_version == "hw-a" for d in plan.waves[0].devices
    )
    assert len(chosen) == 14


def test_planning_100k_devices_is_complete() -> None:
    """A plan over 100,000 candidates places every device (timing is a benchmark, not a test)."""
    plan = _plan(spec(), candidates(100_000, gateways=1000))
    assert sum(len(w.devices) for w in plan.waves) == 100_000


# --- gates ---------------------------------------------------------------------------------------


def test_wilson_lower_bound_known_values() -> None:
    """Matches values computed by hand from the Wilson formula at 90 % confidence (z = 1.645)."""
    assert wilson_lower_bound(0, 10, 0.9) == 0.0
    assert wilson_lower_bound(3, 3, 0.9) == pytest.approx(0.5258, abs=1e-3)
    assert wilson_lower_bound(1, 3, 0.9) == pytest.approx(0.0783, abs=1e-3)


# --- machine ---------------------------------------------------------------------------------------


def test_three_waves_complete_with_soak_between() -> None:
    """Every device succeeds; waves are promoted after their soak; the rollout completes."""
    world = started_world(spec(), candidates(30))
    world.run()
    assert world.machine.status is RolloutStatus.COMPLETED
    assert world.machine.counts().succeeded == 30
    promotions = [e.decision for e in world.effects if isinstance(e, GateDecided)]
    assert [d.verdict for d in promotions] == [GateVerdict.PROMOTE] * 3
    assert (promotions[1].at - promotions[0].at) >= timedelta(seconds=5)


def test_a_bad_build_trips_the_failure_gate_and_pauses() -> None:
    """Reverted results in the canary pause the rollout before the next wave starts."""
    world = started_world(
        spec(), candidates(60), answer=lambda d: (JobOutcome.REVERTED, ReasonCode.REVERTED, False)
    )
    world.run()
    machine = world.machine
    assert machine.status is RolloutStatus.PAUSED and "failure gate" in machine.state(world.now).paused_reason
    assert machine.state(world.now).current_wave == 0
    assert len(world.dispatched) <= 6  # only the canary


def test_abort_gate_cancels_in_flight_jobs() -> None:
    """With on_failure=abort, a tripped gate aborts and cancels the jobs still running."""
    failing = iter([True, True, True])

    def answer(dispatch: Dispatch) -> tuple[JobOutcome, ReasonCode, bool] | None:
        return (JobOutcome.REVERTED, ReasonCode.REVERTED, False) if next(failing, False) else None

    rollout = spec(gates=GateSpec(on_failure="abort"), waves=[WaveSpec(percent=100)])  # type: ignore[arg-type]
    world = started_world(rollout, candidates(20), answer=answer)
    world.step()
    world.step()
    assert world.machine.status is RolloutStatus.ABORTED
    assert any(isinstance(e, Cancel) for e in world.effects)
    assert world.machine.counts().in_flight == 0


def test_retryable_failures_retry_with_backoff_until_the_budget() -> None:
    """A device failing retryably is tried max_attempts times, spaced by the backoff, then failed."""
    rollout = spec(
        waves=[WaveSpec(percent=100)],
        retry=RetrySpec(max_attempts=3, backoff_s=10, backoff_factor=2),
        penalty=PenaltySpec(device_failures=10),  # the penalty box out of the way: the budget ends it
    )
    world = started_world(
        rollout, candidates(1), answer=lambda d: (JobOutcome.FAILED, ReasonCode.UPLOAD_FAILED, True)
    )
    world.run(max_steps=200)
    record = world.machine.device("S00000")
    assert record is not None and record.state is DeviceJobState.FAILED and record.attempts == 3
    times = [d for d in world.dispatched]
    assert len(times) == 3


def test_gateway_busy_gives_the_attempt_back() -> None:
    """Load shedding does not consume attempts; the device eventually succeeds."""
    busy = {"count": 0}

    def answer(dispatch: Dispatch) -> tuple[JobOutcome, ReasonCode, bool]:
        busy["count"] += 1
        if busy["count"] <= 5:
            return (JobOutcome.FAILED, ReasonCode.GATEWAY_BUSY, True)
        return SUCCESS

    rollout = spec(waves=[WaveSpec(percent=100)], retry=RetrySpec(max_attempts=1))
    world = started_world(rollout, candidates(1), answer=answer)
    world.run(max_steps=200)
    record = world.machine.device("S00000")
    assert record is not None and record.state is DeviceJobState.SUCCEEDED and record.attempts == 1


def test_jobs_of_a_dead_gateway_are_rerouted() -> None:
    """When a gateway dies mid-job, its devices go through the other gateway that hears them."""
    world = started_world(
        spec(waves=[WaveSpec(percent=100)]), candidates(6, gateways=2), answer=lambda d: None
    )
    world.step()
    victims = [d for d in world.dispatched if d.gateway_id == "gw-0"]
    assert victims
    world.offline.add("gw-0")
    effects = world.machine.on_gateway_offline("gw-0", world.now)
    assert {e.job_id for e in effects if isinstance(e, Cancel)} == {d.job_id for d in victims}
    for victim in victims:
        world.open_jobs.pop(victim.job_id)
    world.answer = lambda d: SUCCESS
    world.run()
    rerouted = [
        d for d in world.dispatched if d.serial in {v.serial for v in victims} and d.gateway_id == "gw-1"
    ]
    assert len(rerouted) == len(victims) and world.machine.counts().succeeded == 6


def test_a_gateway_restarting_does_not_end_the_wave_without_its_devices() -> None:
    """Devices whose only gateway is briefly offline wait for it; the wave completes with them."""
    rollout = spec(waves=[WaveSpec(percent=100)], deadlines=PhaseDeadlines(unreachable_s=60))
    world = started_world(rollout, candidates(4, gateways=1))
    world.offline.add("gw-0")
    for _ in range(20):
        world.step()
    assert world.machine.status is RolloutStatus.RUNNING and not world.dispatched
    assert world.machine.counts().waiting + world.machine.counts().pending == 4
    world.offline.clear()
    world.machine.on_gateway_online("gw-0", world.now)
    world.run()
    assert world.machine.counts().succeeded == 4


def test_devices_nobody_hears_become_unreachable_after_the_grace() -> None:
    """Past `unreachable_s` without any online gateway, a device is unreachable and the wave ends."""
    rollout = spec(waves=[WaveSpec(percent=100)], deadlines=PhaseDeadlines(unreachable_s=30))
    world = started_world(rollout, candidates(3, gateways=1))
    world.offline.add("gw-0")
    world.run(max_steps=100)
    # No device decided anything: the gate holds on the short sample (docs/gates.md, row 5).
    assert world.machine.status is RolloutStatus.PAUSED
    assert world.machine.state(world.now).paused_reason.startswith("gate: short sample: 0 decided")
    assert world.machine.counts().unreachable == 3
    assert world.now - T0 >= timedelta(seconds=30)


def test_jobs_without_progress_time_out_and_are_retried() -> None:
    """A job silent past no_progress_s is canceled and retried; it ends TIMED_OUT after the budget."""
    rollout = spec(
        waves=[WaveSpec(percent=100)],
        deadlines=PhaseDeadlines(no_progress_s=30, job_total_s=600),
        retry=RetrySpec(max_attempts=2, backoff_s=1),
    )
    world = started_world(rollout, candidates(1), answer=lambda d: None)
    world.run(max_steps=200, advance_s=5)
    record = world.machine.device("S00000")
    assert record is not None and record.state is DeviceJobState.TIMED_OUT and len(world.dispatched) == 2


def test_caps_hold_per_gateway_and_globally() -> None:
    """Never more in flight than max_in_flight, nor per gateway than its radio cap."""
    flow = FlowSpec(max_in_flight=5, max_in_flight_per_gateway=2)
    world = started_world(spec(waves=[WaveSpec(percent=100)], flow=flow), candidates(40, gateways=4))
    world.answer = lambda d: SUCCESS if len(world.dispatched) % 3 == 0 else None
    for _ in range(50):
        world.step()
    assert world.max_in_flight_seen <= 5 and world.max_per_gateway_seen <= 2


def test_start_rate_and_ramp_limit_starts() -> None:
    """starts_per_minute=6 starts one job every ten seconds; the ramp starts at one in flight."""
    flow = FlowSpec(max_in_flight=50, starts_per_minute=6)
    world = started_world(
        spec(waves=[WaveSpec(percent=100)], flow=flow), candidates(20), answer=lambda d: None
    )
    for _ in range(60):
        world.step()
    assert 6 <= len(world.dispatched) <= 8
    ramp = FlowSpec(max_in_flight=16, ramp_initial_in_flight=1)
    ramped = started_world(spec(waves=[WaveSpec(percent=100)], flow=ramp), candidates(40))
    ramped.step()
    assert len(ramped.dispatched) == 1
    ramped.step()
    assert len(ramped.dispatched) == 3


def test_maintenance_window_gates_starts() -> None:
    """Outside the window nothing starts; inside, starts are spread across it."""
    window = MaintenanceWindow(cron="0 13 * * *", duration_s=3600, timezone="UTC")
    world = started_world(spec(waves=[WaveSpec(percent=100)], windows=[window]), candidates(60))
    for _ in range(60):
        world.step(advance_s=60)
    assert world.dispatched == []  # 12:00-12:59: closed
    for _ in range(10):
        world.step(advance_s=60)  # into the window (13:00-13:09)
    assert 0 < len(world.dispatched) < 60


def test_operator_transitions_are_checked() -> None:
    """Start needs the current plan id; pause, resume, cancel and retry obey the state."""
    machine = RolloutMachine.create("r1", spec(waves=[WaveSpec(percent=100)]), T0)
    with pytest.raises(RolloutError):
        machine.start("p1", T0)
    machine.set_plan(_plan(spec(waves=[WaveSpec(percent=100)]), candidates(3)))
    with pytest.raises(RolloutError, match="not the current plan 'p1'"):
        machine.start("stale", T0)
    # A start that names no plan approves nothing (the CLI shows the plan and sends its id).
    with pytest.raises(RolloutError, match=r"must name the plan it approves .*'p1'"):
        machine.start("", T0)
    assert machine.status is RolloutStatus.PLANNED
    machine.start("p1", T0)
    machine.pause("look")
    with pytest.raises(RolloutError):
        machine.pause("again")
    machine.resume(T0)
    machine.cancel_device("S00000")
    assert machine.device("S00000").state is DeviceJobState.CANCELED  # type: ignore[union-attr]
    with pytest.raises(RolloutError):
        machine.cancel_device("S00000")


def test_retry_failed_gives_a_fresh_budget_and_reopens() -> None:
    """Failed devices come back with zero attempts and the rollout runs again."""
    rollout = spec(
        waves=[WaveSpec(percent=100)],
        retry=RetrySpec(max_attempts=1),
        gates=GateSpec(failure_threshold=0.99, success_threshold=0.0),
    )
    world = started_world(
        rollout, candidates(2), answer=lambda d: (JobOutcome.FAILED, ReasonCode.UPLOAD_FAILED, True)
    )
    world.run()
    assert world.machine.status is RolloutStatus.COMPLETED and world.machine.counts().failed == 2
    world.machine.retry_failed([], world.now)
    world.answer = lambda d: SUCCESS
    world.run()
    assert world.machine.counts().succeeded == 2


def test_stale_and_duplicate_results_are_ignored() -> None:
    """A result for an old job id or a repeated one changes nothing."""
    world = started_world(spec(waves=[WaveSpec(percent=100)]), candidates(1), answer=lambda d: None)
    world.step()
    job = world.dispatched[0].job_id
    assert world.machine.on_result("unknown", JobOutcome.SUCCEEDED, ReasonCode.OK, False, world.now) == []
    world.machine.on_result(job, JobOutcome.SUCCEEDED, ReasonCode.OK, False, world.now)
    world.machine.on_result(job, JobOutcome.FAILED, ReasonCode.UPLOAD_FAILED, True, world.now)
    assert world.machine.counts().succeeded == 1 and world.machine.counts().failed == 0


def test_snapshot_round_trip_mid_rollout_behaves_identically() -> None:
    """A machine restored from its snapshot continues exactly like the original."""
    world = started_world(spec(), candidates(40), answer=lambda d: SUCCESS if int(d.serial[1:]) % 2 else None)
    for _ in range(3):
        world.step()
    restored = RolloutMachine.from_snapshot(world.machine.to_snapshot())
    assert restored.state(world.now) == world.machine.state(world.now)
    flow = world.flow()
    assert restored.tick(world.now, flow) == world.machine.tick(world.now, flow)


@settings(max_examples=40, deadline=None)
@given(
    outcomes=st.lists(
        st.sampled_from(["ok", "fail", "busy", "none", "revert", "unreachable"]), min_size=1, max_size=40
    ),
    max_in_flight=st.integers(1, 8),
    per_gateway=st.integers(1, 3),
    devices=st.integers(1, 25),
)
def test_invariants_hold_under_any_result_sequence(
    outcomes: list[str], max_in_flight: int, per_gateway: int, devices: int
) -> None:
    """Caps hold, no device has two jobs, attempts stay in budget, job ids are unique, all ends terminal."""
    table = {
        "ok": SUCCESS,
        "fail": (JobOutcome.FAILED, ReasonCode.UPLOAD_FAILED, True),
        "busy": (JobOutcome.FAILED, ReasonCode.GATEWAY_BUSY, True),
        "revert": (JobOutcome.REVERTED, ReasonCode.REVERTED, False),
        "unreachable": (JobOutcome.FAILED, ReasonCode.DEVICE_UNREACHABLE, True),
    }
    sequence = iter(outcomes)

    def answer(dispatch: Dispatch) -> tuple[JobOutcome, ReasonCode, bool] | None:
        choice = next(sequence, "ok")
        return None if choice == "none" else table[choice]

    rollout = spec(
        waves=[WaveSpec(percent=50), WaveSpec(percent=100)],
        flow=FlowSpec(max_in_flight=max_in_flight, max_in_flight_per_gateway=per_gateway),
        gates=GateSpec(failure_threshold=0.99, success_threshold=0.0),
        retry=RetrySpec(max_attempts=3, backoff_s=2),
    )
    world = started_world(rollout, candidates(devices))
    world.answer = answer
    world.run(max_steps=3000, advance_s=2)
    for _ in rollout.waves:
        # A wave left with no decided outcome (every device unreachable) holds: the operator resumes.
        if world.machine.status is RolloutStatus.PAUSED:
            world.machine.resume(world.now)
            world.run(max_steps=3000, advance_s=2)
    assert world.max_in_flight_seen <= max_in_flight and world.max_per_gateway_seen <= per_gateway
    assert len({d.job_id for d in world.dispatched}) == len(world.dispatched)
    for serial in world.devices:
        record = world.machine.device(serial)
        assert record is not None and record.attempts <= 3
        assert record.state not in (DeviceJobState.PENDING, DeviceJobState.WAITING, DeviceJobState.IN_FLIGHT)
    assert world.machine.status is RolloutStatus.COMPLETED
