"""The penalty box: parked devices, cooled gateways, load shedding never counted, the ramp backing off."""

from __future__ import annotations

from datetime import timedelta

from controller.rollout_engine.effects import Audit, Dispatch
from controller.rollout_engine.model import Candidate, GatewayLink
from schemas import (
    DeviceJobState,
    FlowSpec,
    GateSpec,
    JobOutcome,
    PenaltySpec,
    ReasonCode,
    RetrySpec,
    RolloutSpec,
    RolloutStatus,
    WaveSpec,
)
from tests.controller.rollout_world import SUCCESS, World, candidates, started_world

UPLOAD_FAILED = (JobOutcome.FAILED, ReasonCode.UPLOAD_FAILED, True)
BUSY = (JobOutcome.FAILED, ReasonCode.GATEWAY_BUSY, True)
LENIENT_GATES = GateSpec(success_threshold=0.0, failure_threshold=0.99)


def one_wave(**overrides: object) -> RolloutSpec:
    """One wave over every device, gates that never stop it, quick retries."""
    base: dict[str, object] = {
        "software_type": "app",
        "target_version": "1.1.0",
        "waves": [WaveSpec(percent=100)],
        "gates": LENIENT_GATES,
        "retry": RetrySpec(max_attempts=5, backoff_s=1, backoff_factor=1),
    }
    return RolloutSpec(**{**base, **overrides})  # type: ignore[arg-type]


def audits(world: World, kind: str) -> list[Audit]:
    """The audit effects of one kind so far."""
    return [e for e in world.effects if isinstance(e, Audit) and e.action == kind]


def test_a_device_that_fails_twice_is_parked_and_released_by_retry() -> None:
    """Two failed attempts within the window park it with its reason; `retry_failed` brings it back."""
    failing = {"S00000"}

    def answer(dispatch: Dispatch) -> tuple[JobOutcome, ReasonCode, bool]:
        return UPLOAD_FAILED if dispatch.serial in failing else SUCCESS

    world = started_world(one_wave(), candidates(3), answer=answer)
    world.run(max_steps=200)
    record = world.machine.device("S00000")
    assert record is not None and record.state is DeviceJobState.PARKED
    assert record.reason.startswith("parked: 2 failures within 60 min (last: upload_failed)")
    assert [d.serial for d in world.dispatched].count("S00000") == 2  # not the 5 attempts allowed
    assert world.machine.counts().parked == 1 and audits(world, "parked")
    failing.clear()
    world.machine.retry_failed(["S00000"], world.now)
    world.run(max_steps=200)
    assert world.machine.device("S00000").state is DeviceJobState.SUCCEEDED  # type: ignore[union-attr]


def test_failures_spread_wider_than_the_window_do_not_park() -> None:
    """The count is of recent failures: spaced beyond `device_window_s`, the budget ends it instead."""
    rollout = one_wave(
        retry=RetrySpec(max_attempts=3, backoff_s=120, backoff_factor=1),
        penalty=PenaltySpec(device_failures=2, device_window_s=60),
    )
    world = started_world(rollout, candidates(1), answer=lambda _: UPLOAD_FAILED)
    world.run(max_steps=2000)
    record = world.machine.device("S00000")
    assert record is not None and record.state is DeviceJobState.FAILED and record.attempts == 3


def test_a_gateway_that_keeps_failing_is_cooled_and_its_devices_move() -> None:
    """Five transport failures through gw-0 cool it; its devices go to gw-1, which also hears them."""

    def answer(dispatch: Dispatch) -> tuple[JobOutcome, ReasonCode, bool]:
        return UPLOAD_FAILED if dispatch.gateway_id == "gw-0" else SUCCESS

    devices = [
        Candidate(
            f"S{i}", "hw-a", "app", "1.0.0", (GatewayLink("gw-0", -40), GatewayLink("gw-1", -90)), "1.1.0"
        )
        for i in range(12)
    ]
    rollout = one_wave(
        flow=FlowSpec(max_in_flight=5, max_in_flight_per_gateway=5),
        penalty=PenaltySpec(device_failures=5, gateway_failures=5, gateway_cooldown_s=600),
    )
    world = started_world(rollout, devices, answer=answer)
    world.step()  # five jobs to the strong gateway, all fail: it is cooled
    cooled = audits(world, "gateway_cooled")
    assert len(cooled) == 1 and cooled[0].detail.startswith(
        "gw-0: transport failures of 5 devices; no new jobs for 600 s"
    )
    world.run(max_steps=300)
    assert world.machine.status is RolloutStatus.COMPLETED
    after_cooling = [d for d in world.dispatched[5:]]
    assert after_cooling and all(d.gateway_id == "gw-1" for d in after_cooling)
    state = world.machine.state(world.now)
    gw0 = next(g for g in state.gateways if g.gateway_id == "gw-0")
    assert gw0.cooled_until is not None and gw0.cooled_until > world.now


def test_a_cooled_gateway_that_alone_hears_its_devices_gets_them_after_the_cooling_with_backoff() -> None:
    """Devices only gw-0 hears wait out the cooling; a second cooling lasts twice as long."""
    state = {"fail": True}

    def answer(_: Dispatch) -> tuple[JobOutcome, ReasonCode, bool]:
        return UPLOAD_FAILED if state["fail"] else SUCCESS

    devices = candidates(4, gateways=1)
    rollout = one_wave(
        flow=FlowSpec(max_in_flight=2, max_in_flight_per_gateway=2),
        retry=RetrySpec(max_attempts=20, backoff_s=1, backoff_factor=1),
        penalty=PenaltySpec(device_failures=3, gateway_failures=2, gateway_cooldown_s=100),
    )
    world = started_world(rollout, devices, answer=answer)
    world.step()
    assert len(audits(world, "gateway_cooled")) == 1
    before = len(world.dispatched)
    for _ in range(90):
        world.step()
    assert len(world.dispatched) == before  # nothing started while cooled
    for _ in range(400):
        world.step()
        if len(audits(world, "gateway_cooled")) == 2:
            break
    assert len(world.dispatched) > before
    second = audits(world, "gateway_cooled")
    assert len(second) == 2 and "no new jobs for 200 s" in second[1].detail
    state["fail"] = False
    world.now += timedelta(seconds=200)
    world.run(max_steps=500)
    world.machine.retry_failed([], world.now)  # the devices parked on the way
    world.run(max_steps=500)
    assert world.machine.counts().succeeded == 4


def test_one_dark_device_does_not_cool_the_gateways_that_try_it() -> None:
    """A device nobody reaches fails through gw-0 again and again: it is parked, gw-0 stays open."""
    unreachable = (JobOutcome.FAILED, ReasonCode.DEVICE_UNREACHABLE, True)
    world = started_world(
        one_wave(penalty=PenaltySpec(device_failures=4, gateway_failures=2)),
        candidates(3, gateways=1),
        answer=lambda d: unreachable if d.serial == "S00000" else SUCCESS,
    )
    world.run(max_steps=300)
    assert not audits(world, "gateway_cooled")
    assert world.machine.device("S00000").state is DeviceJobState.PARKED  # type: ignore[union-attr]
    assert world.machine.counts().succeeded == 2


def test_load_shedding_never_counts_against_a_gateway_or_a_device() -> None:
    """GATEWAY_BUSY many times over: no failure on the gateway, no cooling, no parking, no attempt."""
    answers = iter([BUSY] * 30)
    world = started_world(
        one_wave(penalty=PenaltySpec(gateway_failures=1, device_failures=1)),
        candidates(2, gateways=1),
        answer=lambda _: next(answers, SUCCESS),
    )
    world.run(max_steps=500)
    assert world.machine.status is RolloutStatus.COMPLETED and world.machine.counts().succeeded == 2
    assert not audits(world, "gateway_cooled") and not audits(world, "parked")
    assert world.machine.gateway_record()["gw-0"][1] == 0


def test_a_memfault_outage_never_counts_against_a_device() -> None:
    """A job not sent (Memfault down) waits: no attempt used, nothing parked, no gateway blamed."""
    world = started_world(one_wave(penalty=PenaltySpec(device_failures=1, gateway_failures=1)), candidates(1))
    dispatch = next(e for e in world.machine.tick(world.now, world.flow()) if isinstance(e, Dispatch))
    for _ in range(5):
        world.machine.on_not_sent(dispatch.job_id, world.now, 1.0, "dispatch paused: memfault unavailable")
        world.now += timedelta(seconds=2)
        dispatch = next(e for e in world.machine.tick(world.now, world.flow()) if isinstance(e, Dispatch))
    record = world.machine.device("S00000")
    assert record is not None and record.attempts == 1 and record.failures_at == []
    assert world.machine.gateway_record().get("gw-0", (0, 0))[1] == 0


def test_the_ramp_halves_on_failures_and_grows_on_successes() -> None:
    """After a burst of failures fewer jobs run at once; successes bring the budget back to the cap."""
    results = iter([UPLOAD_FAILED] * 8)
    rollout = one_wave(
        flow=FlowSpec(max_in_flight=8, max_in_flight_per_gateway=8),
        penalty=PenaltySpec(device_failures=10, gateway_failures=1000),
    )
    devices = candidates(40, gateways=1)
    world = started_world(rollout, devices, answer=lambda _: next(results, None))
    world.step()
    assert len(world.dispatched) == 8  # full budget, then all eight fail
    world.now += timedelta(seconds=5)
    starts = [e for e in world.machine.tick(world.now, world.flow()) if isinstance(e, Dispatch)]
    assert len(starts) == 1  # 8 halved eight times, floored at one
    for start in starts:
        world.effects += world.machine.on_result(start.job_id, *SUCCESS, world.now)
    world.answer = lambda _: SUCCESS
    world.run(max_steps=200)
    assert world.machine.status is RolloutStatus.COMPLETED and world.max_in_flight_seen == 8


def test_the_per_site_cap_holds_with_two_gateways_on_one_site() -> None:
    """Two gateways on site A share its cap of 3; the gateway on site B is capped on its own."""
    links = {
        "gw-a1": GatewayLink("gw-a1", -50, site="A"),
        "gw-a2": GatewayLink("gw-a2", -50, site="A"),
        "gw-b": GatewayLink("gw-b", -50, site="B"),
    }
    order = ["gw-a1", "gw-a2", "gw-b"]
    devices = [
        Candidate(f"S{i:02d}", "hw-a", "app", "1.0.0", (links[order[i % 3]],), "1.1.0") for i in range(30)
    ]
    rollout = one_wave(flow=FlowSpec(max_in_flight=50, max_in_flight_per_gateway=4, max_in_flight_per_site=3))
    world = started_world(rollout, devices)
    world.answer = lambda d: SUCCESS if len(world.dispatched) % 4 == 0 else None
    per_site_peak: dict[str, int] = {}
    for _ in range(200):
        world.step()
        for site, count in world.flow().in_flight_by_site.items():
            per_site_peak[site] = max(per_site_peak.get(site, 0), count)
        if world.machine.status is not RolloutStatus.RUNNING:
            break
    assert per_site_peak == {"A": 3, "B": 3}
    assert world.max_per_site_seen == 3
