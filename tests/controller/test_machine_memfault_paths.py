"""The rollout machine's Memfault paths: jobs not sent, devices excluded, must-pass-through hops."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.rollout_engine.effects import Dispatch
from controller.rollout_engine.machine import RolloutMachine
from controller.rollout_engine.model import FlowView
from schemas import DeviceJobState, FlowSpec, JobOutcome, ReasonCode, RolloutSpec, WaveSpec
from tests.controller.rollout_world import T0, candidates, started_world

SPEC = RolloutSpec(
    software_type="app",
    target_version="1.1.0",
    waves=[WaveSpec(percent=100)],
    flow=FlowSpec(max_in_flight=4, max_in_flight_per_gateway=4),
)


def _dispatches(machine: RolloutMachine, flow: FlowView, seconds: float) -> list[Dispatch]:
    return [e for e in machine.tick(T0 + timedelta(seconds=seconds), flow) if isinstance(e, Dispatch)]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from(["not_sent", "excluded", "hop", "ok"]), min_size=4, max_size=4))
def test_memfault_paths_never_blame_a_gateway_or_spend_an_attempt(paths: list[str]) -> None:
    """Holds and exclusions count no attempt or gateway failure; a hop comes back as a new job."""
    world = started_world(SPEC, candidates(4))
    machine, flow = world.machine, world.flow()
    jobs = _dispatches(machine, flow, 0)
    assert len(jobs) == 4
    now = T0 + timedelta(seconds=1)
    for job, path in zip(jobs, paths, strict=True):
        match path:
            case "not_sent":
                machine.on_not_sent(job.job_id, now, 1.0, "waiting for a fresh memfault answer")
            case "excluded":
                machine.on_excluded(job.job_id, "memfault: http_500")
            case "hop":
                machine.on_hop_done(job.job_id, now, "1.0.5")
            case _:
                machine.on_result(job.job_id, JobOutcome.SUCCEEDED, ReasonCode.OK, False, now)
    failures = sum(bad for _, bad in machine.gateway_record().values())
    assert failures == 0
    for job, path in zip(jobs, paths, strict=True):
        record = machine.device(job.serial)
        assert record is not None
        expected = {
            "not_sent": DeviceJobState.WAITING,
            "excluded": DeviceJobState.CANCELED,
            "hop": DeviceJobState.WAITING,
            "ok": DeviceJobState.SUCCEEDED,
        }[path]
        assert record.state is expected
        if path != "ok":
            assert record.attempts == 0
    again = _dispatches(machine, flow, 5)
    assert {d.serial for d in again} == {
        j.serial for j, p in zip(jobs, paths, strict=True) if p in ("not_sent", "hop")
    }
    assert not {d.job_id for d in again} & {j.job_id for j in jobs}
