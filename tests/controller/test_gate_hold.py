"""`held_by_gate`, which the per-rollout gate alert reads: set by the gate only, cleared by operators."""

from __future__ import annotations

from controller.rollout_engine.effects import Dispatch
from controller.rollout_engine.machine import RolloutMachine
from schemas import GateSpec, GateVerdict, JobOutcome, ReasonCode, RolloutSpec, RolloutStatus, WaveSpec
from tests.controller.rollout_world import candidates, started_world


def reverted(_dispatch: Dispatch) -> tuple[JobOutcome, ReasonCode, bool]:
    """Every device reverts the build."""
    return JobOutcome.REVERTED, ReasonCode.REVERTED, False


def hold(machine: RolloutMachine) -> tuple[RolloutStatus, GateVerdict | None]:
    """The rollout's status and gate hold, read afresh (not narrowed from an earlier read)."""
    return machine.status, machine.held_by_gate


def spec(gates: GateSpec | None = None) -> RolloutSpec:
    """Two waves of a bad build."""
    return RolloutSpec(
        software_type="app",
        target_version="1.1.0",
        waves=[WaveSpec(percent=20), WaveSpec(percent=100)],
        gates=gates or GateSpec(),
    )


def test_a_gate_pause_holds_until_an_operator_resumes_and_an_operator_pause_never_holds() -> None:
    """Paused by its gate: held (pause); resumed: not held; paused again by an operator: not held."""
    world = started_world(spec(), candidates(20), answer=reverted)
    machine = world.machine
    assert hold(machine) == (RolloutStatus.RUNNING, None)
    world.run()
    assert hold(machine) == (RolloutStatus.PAUSED, GateVerdict.PAUSE)
    machine.resume(world.now)
    assert hold(machine) == (RolloutStatus.RUNNING, None)
    machine.pause("maintenance")
    assert hold(machine) == (RolloutStatus.PAUSED, None)


def test_a_gate_abort_holds_and_an_operator_abort_does_not() -> None:
    """Aborted by its gate: held (abort); aborted by an operator after a gate pause: not held."""
    world = started_world(spec(GateSpec(on_failure="abort")), candidates(20), answer=reverted)  # type: ignore[arg-type]
    world.run()
    assert hold(world.machine) == (RolloutStatus.ABORTED, GateVerdict.ABORT)
    paused = started_world(spec(), candidates(20), answer=reverted)
    paused.run()
    paused.machine.abort("giving up", paused.now)
    assert hold(paused.machine) == (RolloutStatus.ABORTED, None)
