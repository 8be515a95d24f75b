"""A tiny pure world for rollout-core tests: candidates, a flow view and a loop that plays results."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from controller.rollout_engine.effects import Dispatch, Effect
from controller.rollout_engine.machine import RolloutMachine
from controller.rollout_engine.model import Candidate, FlowView, GatewayLink
from controller.rollout_engine.planner import plan_rollout
from schemas import JobOutcome, ReasonCode, RolloutSpec, RolloutStatus

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def candidates(
    count: int, *, gateways: int = 3, hardware: tuple[str, ...] = ("hw-a", "hw-b")
) -> list[Candidate]:
    """`count` devices on 1.0.0 offered 1.1.0, each heard by two neighbouring gateways."""
    return [
        Candidate(
            serial=f"S{i:05d}",
            hardware_version=hardware[i % len(hardware)],
            software_type="app",
            current_version="1.0.0",
            links=(
                GatewayLink(f"gw-{i % gateways}", -50 - i % 7, site=f"site-{i % gateways % 2}"),
                GatewayLink(f"gw-{(i + 1) % gateways}", -70, site=f"site-{(i + 1) % gateways % 2}"),
            ),
            offered_version="1.1.0",
        )
        for i in range(count)
    ]


Outcome = tuple[JobOutcome, ReasonCode, bool]
SUCCESS: Outcome = (JobOutcome.SUCCEEDED, ReasonCode.OK, False)


@dataclass
class World:
    """Drives one machine: ticks, tracks in-flight jobs per gateway, answers each dispatch."""

    machine: RolloutMachine
    devices: dict[str, Candidate]
    answer: Callable[[Dispatch], Outcome | None] = lambda dispatch: SUCCESS
    now: datetime = T0
    offline: set[str] = field(default_factory=set)
    dispatched: list[Dispatch] = field(default_factory=list)
    effects: list[Effect] = field(default_factory=list)
    open_jobs: dict[str, Dispatch] = field(default_factory=dict)
    max_in_flight_seen: int = 0
    max_per_gateway_seen: int = 0
    max_per_site_seen: int = 0

    def flow(self) -> FlowView:
        per_gateway: dict[str, int] = {}
        per_site: dict[str, int] = {}
        for job in self.open_jobs.values():
            per_gateway[job.gateway_id] = per_gateway.get(job.gateway_id, 0) + 1
            site = self.site_of(job.gateway_id)
            per_site[site] = per_site.get(site, 0) + 1
        return FlowView(in_flight_by_gateway=per_gateway, in_flight_by_site=per_site, links=self._links)

    def site_of(self, gateway_id: str) -> str:
        """The site of a gateway, as the devices' links name it."""
        return next(
            (link.site for c in self.devices.values() for link in c.links if link.gateway_id == gateway_id),
            "",
        )

    def _links(self, serial: str) -> tuple[GatewayLink, ...]:
        return tuple(
            GatewayLink(link.gateway_id, link.rssi_dbm, link.site, link.gateway_id not in self.offline)
            for link in self.devices[serial].links
        )

    def step(self, advance_s: float = 1.0) -> None:
        """One tick, then answer what was dispatched (results arrive before the next tick)."""
        effects = self.machine.tick(self.now, self.flow())
        self.effects += effects
        for effect in effects:
            if isinstance(effect, Dispatch):
                self.dispatched.append(effect)
                self.open_jobs[effect.job_id] = effect
        self.max_in_flight_seen = max(self.max_in_flight_seen, len(self.open_jobs))
        flow = self.flow()
        self.max_per_gateway_seen = max([self.max_per_gateway_seen, *flow.in_flight_by_gateway.values()])
        self.max_per_site_seen = max([self.max_per_site_seen, *flow.in_flight_by_site.values()])
        for job_id, dispatch in list(self.open_jobs.items()):
            answer = self.answer(dispatch)
            if answer is None:
                continue
            del self.open_jobs[job_id]
            self.effects += self.machine.on_result(job_id, *answer, self.now)
        self.now += timedelta(seconds=advance_s)

    def run(self, max_steps: int = 10_000, advance_s: float = 1.0) -> None:
        """Step until the rollout is no longer running."""
        for _ in range(max_steps):
            if self.machine.status not in (RolloutStatus.RUNNING,):
                return
            self.step(advance_s)


def started_world(spec: RolloutSpec, devices: list[Candidate], **kwargs: object) -> World:
    """Plan, adopt and start a rollout over `devices`."""
    machine = RolloutMachine.create("r1", spec, T0)
    plan = plan_rollout(
        "r1", "p1", spec, devices, T0, image_size_bytes=100_000, throughput_bytes_per_s=10_000, reboot_s=5
    )
    machine.set_plan(plan)
    machine.start("p1", T0)
    return World(machine, {c.serial: c for c in devices}, **kwargs)  # type: ignore[arg-type]
