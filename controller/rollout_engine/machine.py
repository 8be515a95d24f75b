"""One rollout's state machine: events in, effects out (dispatch, cancel, audit, gate decisions).

Events are operator requests, job results and progress, gateway deaths and births, and ticks.

Rules of this file:
- No I/O and no clock: every method takes `now`; the coordinator persists `take_changes()` (the
  small header, the plan when it changed, and only the devices whose record changed) and carries
  out the returned effects after each call.
- The rollout's status changes only through the table in `transitions.py`: a method names the
  event and `_take` stores the status the table gives; a request's own check refuses it first.
- A device has at most one job in flight; a job id is used once; a result for any other job id
  than the device's current one is stale and ignored.
- Attempts count only real tries at the device: load shedding (GATEWAY_BUSY), waiting for a radio
  slot, and a gateway dying under a job give the attempt back.
- Success counts only on the agent's confirmed result; the gates count only outcomes decided at
  the device (`gates.py`, docs/gates.md).
- A failed boot (reverted, or silent after the test boot) is never sent the same build again
  automatically; a device that keeps failing is parked, a gateway whose link keeps failing devices
  is cooled (`spec.penalty`); load shedding and Memfault outages count against neither.
- A job started in a window with `at_end = cancel` is canceled at the window's end and goes again
  in the next window with its attempt given back.
- Tick cost follows jobs in flight and devices due, not fleet size: states are counted
  incrementally and ready devices wait in queues.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import msgspec

from controller.errors import RolloutError
from controller.rollout_engine.cron import open_window_start, parse_cron, zone
from controller.rollout_engine.effects import Audit, Cancel, Dispatch, Effect, GateDecided
from controller.rollout_engine.gates import (
    FAILED_BOOTS,
    Evidence,
    GateResult,
    WaveEvidence,
    evaluate_gate,
    evidence_of,
    evidence_of_timeout,
)
from controller.rollout_engine.model import FlowView, best_link
from controller.rollout_engine.records import RolloutDevice, RolloutSnapshot
from controller.rollout_engine.transitions import StatusEvent, may_take, next_status
from schemas import (
    DeviceJobState,
    GateDecision,
    GateVerdict,
    GatewayId,
    GatewayProgress,
    JobOutcome,
    MaintenanceWindow,
    ReasonCode,
    RolloutPlan,
    RolloutSpec,
    RolloutState,
    RolloutStatus,
    StateCounts,
    WaveState,
    WindowEnd,
)
from schemas.rollout import MAX_GATEWAYS_IN_STATE
from service_runtime.backoff import exponential_delay_s

ACTIVE = {DeviceJobState.PENDING, DeviceJobState.WAITING, DeviceJobState.IN_FLIGHT}
RETRYABLE_STATES = {
    DeviceJobState.FAILED,
    DeviceJobState.TIMED_OUT,
    DeviceJobState.UNREACHABLE,
    DeviceJobState.PARKED,
}
TRANSPORT_FAILURES = {ReasonCode.DEVICE_UNREACHABLE, ReasonCode.UPLOAD_FAILED}
"""Results that blame the link through a gateway (with the controller's own timeouts)."""
BUSY_RETRY_S = 5.0
GATE_REASON_PREFIX = "failure gate: "
"""How a pause or abort by the failure gate (not by an operator) starts its reason."""
SHORT_SAMPLE_PREFIX = "gate: "
"""How a hold on a short sample starts its reason (an operator's resume accepts the sample)."""
TERMINAL_EVIDENCE_OF_STATE = {
    DeviceJobState.SUCCEEDED: Evidence.SUCCESS,
    DeviceJobState.FAILED: Evidence.FAILURE,
    DeviceJobState.TIMED_OUT: Evidence.FAILURE,
    DeviceJobState.REVERTED: Evidence.FAILURE,
    DeviceJobState.REJECTED: Evidence.NOT_COUNTED,
}
"""What records saved before evidence was recorded are read as."""
NO_GATEWAY = "no online gateway hears it"
NO_GATEWAY_YET = "waiting for a gateway that hears it"
UNHEARD_RECHECK_S = 2.0
"""How often a device waiting for a gateway is looked at again."""
MAX_SKIPS_PER_TICK = 256
_DECODER = msgspec.msgpack.Decoder(RolloutSnapshot)
_PLAN_DECODER = msgspec.msgpack.Decoder(RolloutPlan)
_DEVICE_DECODER = msgspec.msgpack.Decoder(RolloutDevice)
_ENCODER = msgspec.msgpack.Encoder()


@dataclass(frozen=True, slots=True)
class RolloutChanges:
    """What changed in a machine since the last `take_changes()`: the unit the store saves.

    `header` is the snapshot without its plan and devices (small, written whenever the rollout
    changed); `plan` is set only when a new plan was adopted; `devices` holds only the records that
    changed, and `replace_devices` says the rollout's device rows must be replaced (a new plan).
    """

    header: bytes
    plan: bytes | None
    devices: list[tuple[str, bytes]]
    replace_devices: bool


def _ts(now: datetime) -> float:
    return now.timestamp()


def _cooled_until(until_s: float) -> datetime | None:
    return datetime.fromtimestamp(until_s, UTC) if until_s else None


class RolloutMachine:
    """The state of one rollout and every transition it may take."""

    def __init__(self, snapshot: RolloutSnapshot) -> None:
        self._s = snapshot
        self._counts: list[dict[DeviceJobState, int]] = []
        self._evidence: list[dict[Evidence, int]] = []
        self._ready: list[deque[str]] = []
        self._backoff: list[tuple[float, str]] = []
        self._in_flight: dict[str, RolloutDevice] = {}
        self._jobs: dict[str, str] = {}
        self._dirty: set[str] = set()
        self._plan_dirty = False
        self._rebuild_indexes()

    # --- construction and persistence --------------------------------------------------------

    @classmethod
    def create(cls, rollout_id: str, spec: RolloutSpec, now: datetime) -> RolloutMachine:
        """A new rollout without a plan yet."""
        for window in spec.windows:
            parse_cron(window.cron)
            zone(window.timezone)
        return cls(RolloutSnapshot(rollout_id=rollout_id, spec=spec, created_at=_ts(now)))

    @classmethod
    def from_snapshot(cls, data: bytes) -> RolloutMachine:
        """Restore a machine saved with `to_snapshot`."""
        return cls(_DECODER.decode(data))

    def to_snapshot(self) -> bytes:
        """Everything needed to continue exactly here after a restart (one blob: tests, diagnostics)."""
        return _ENCODER.encode(self._s)

    @classmethod
    def from_parts(
        cls, header: bytes, plan: bytes | None, devices: list[tuple[str, bytes]]
    ) -> RolloutMachine:
        """Restore a machine saved with `take_changes` (a header, its plan, its device rows).

        A header that still holds its plan and devices (a whole snapshot, as saved before device rows
        existed) is read as such; every device then counts as changed so the next save writes rows.
        """
        snapshot = _DECODER.decode(header)
        legacy = bool(snapshot.devices)
        if plan is not None:
            snapshot.plan = _PLAN_DECODER.decode(plan)
        snapshot.devices.update((serial, _DEVICE_DECODER.decode(record)) for serial, record in devices)
        if snapshot.plan is not None:
            snapshot.order = [
                planned.device_serial
                for wave in snapshot.plan.waves
                for planned in wave.devices
                if planned.device_serial in snapshot.devices
            ]
        machine = cls(snapshot)
        if legacy:
            machine._plan_dirty = True
        return machine

    @property
    def has_changes(self) -> bool:
        """Whether a device record or the plan changed since the last `take_changes()`."""
        return self._plan_dirty or bool(self._dirty)

    def take_changes(self) -> RolloutChanges:
        """The header, the plan if it changed, and every device record changed since the last call."""
        header = _ENCODER.encode(msgspec.structs.replace(self._s, plan=None, devices={}, order=[]))
        if self._plan_dirty:
            plan = _ENCODER.encode(self._s.plan) if self._s.plan is not None else None
            devices = [(serial, _ENCODER.encode(self._s.devices[serial])) for serial in self._s.order]
        else:
            plan = None
            devices = [(serial, _ENCODER.encode(self._s.devices[serial])) for serial in sorted(self._dirty)]
        replace = self._plan_dirty
        self._plan_dirty = False
        self._dirty.clear()
        return RolloutChanges(header, plan, devices, replace)

    def _rebuild_indexes(self) -> None:
        waves = len(self._s.plan.waves) if self._s.plan else 0
        self._counts = [dict.fromkeys(DeviceJobState, 0) for _ in range(waves)]
        self._evidence = [dict.fromkeys(Evidence, 0) for _ in range(waves)]
        self._ready = [deque() for _ in range(waves)]
        self._backoff = []
        self._in_flight = {}
        self._jobs = {}
        for serial in self._s.order:
            record = self._s.devices[serial]
            if record.evidence is Evidence.NONE and record.state not in ACTIVE:
                record.evidence = TERMINAL_EVIDENCE_OF_STATE.get(record.state, Evidence.NONE)
            self._counts[record.wave][record.state] += 1
            self._evidence[record.wave][record.evidence] += 1
            if record.state is DeviceJobState.PENDING:
                self._ready[record.wave].append(serial)
            elif record.state is DeviceJobState.WAITING:
                heapq.heappush(self._backoff, (record.next_attempt_at, serial))
            elif record.state is DeviceJobState.IN_FLIGHT:
                self._in_flight[serial] = record
            if record.job_id:
                self._jobs[record.job_id] = serial

    def _take(self, event: StatusEvent) -> None:
        # The one place the status changes, so every change is a row of `transitions.TRANSITIONS`.
        self._s.status = next_status(self._s.status, event)

    # --- queries -----------------------------------------------------------------------------

    @property
    def rollout_id(self) -> str:
        """The rollout's id."""
        return self._s.rollout_id

    @property
    def status(self) -> RolloutStatus:
        """Where the rollout stands."""
        return self._s.status

    @property
    def spec(self) -> RolloutSpec:
        """What the operator asked for."""
        return self._s.spec

    @property
    def plan(self) -> RolloutPlan | None:
        """The plan, once previewed."""
        return self._s.plan

    def in_flight(self) -> dict[str, str]:
        """Gateway of every device with a job in flight."""
        return {serial: record.gateway for serial, record in self._in_flight.items()}

    def job_gateway(self, job_id: str) -> str | None:
        """The gateway this rollout dispatched `job_id` to (None: not one of its current jobs)."""
        serial = self._jobs.get(job_id)
        record = self._s.devices.get(serial) if serial is not None else None
        return record.gateway if record is not None and record.job_id == job_id else None

    @property
    def held_by_gate(self) -> GateVerdict | None:
        """The failure gate's verdict (pause or abort) while it holds this rollout, else None."""
        held = self._s.status in (RolloutStatus.PAUSED, RolloutStatus.ABORTED)
        by_gate = self._s.paused_reason.startswith((GATE_REASON_PREFIX, SHORT_SAMPLE_PREFIX))
        if not held or not self._s.gate_decisions or not by_gate:
            return None
        return self._s.gate_decisions[-1].verdict

    def state_wave(self) -> int:
        """The index of the wave being rolled out."""
        return self._s.current_wave

    def gateway_record(self) -> dict[str, tuple[int, int]]:
        """(successes, failures) of this rollout's jobs per gateway, for routing."""
        gateways = set(self._s.gateway_successes) | set(self._s.gateway_failures)
        return {
            g: (self._s.gateway_successes.get(g, 0), self._s.gateway_failures.get(g, 0)) for g in gateways
        }

    def device(self, serial: str) -> RolloutDevice | None:
        """One device's record."""
        return self._s.devices.get(serial)

    def counts(self, wave: int | None = None) -> StateCounts:
        """Devices per state, of one wave or of the whole rollout."""
        waves = self._counts if wave is None else [self._counts[wave]]
        total: dict[str, int] = {}
        for per_wave in waves:
            for state, count in per_wave.items():
                total[state.value] = total.get(state.value, 0) + count
        return StateCounts(**total)

    def wave_evidence(self, wave: int) -> WaveEvidence:
        """The gate's input for one wave: decided outcomes, those not counted, devices remaining."""
        tally, counts = self._evidence[wave], self._counts[wave]
        return WaveEvidence(
            succeeded=tally[Evidence.SUCCESS],
            failed=tally[Evidence.FAILURE],
            not_counted=tally[Evidence.NOT_COUNTED],
            remaining=sum(counts[state] for state in ACTIVE),
            without_result=counts[DeviceJobState.CANCELED] + counts[DeviceJobState.UNREACHABLE],
        )

    def state(self, now: datetime) -> RolloutState:
        """The retained state message."""
        plan = self._s.plan
        waves = []
        if plan is not None:
            waves = [self._wave_state(w.index, len(w.devices)) for w in plan.waves]
        return RolloutState(
            rollout_id=self._s.rollout_id,  # type: ignore[arg-type]
            status=self._s.status,
            software_type=self._s.spec.software_type,
            target_version=self._s.spec.target_version,
            plan_id=plan.plan_id if plan else "",
            current_wave=self._s.current_wave,
            waves=waves,
            counts=self.counts() if plan else StateCounts(),
            gate_decisions=self._s.gate_decisions[-20:],
            paused_reason=self._s.paused_reason,
            gateways=self._gateway_progress(),
            updated_at=now,
        )

    def _wave_state(self, index: int, size: int) -> WaveState:
        evidence = self.wave_evidence(index)
        return WaveState(
            index=index,
            size=size,
            counts=self.counts(index),
            decided=evidence.decided,
            decided_failed=evidence.failed,
            not_counted=evidence.not_counted,
        )

    def _gateway_progress(self) -> list[GatewayProgress]:
        in_flight: dict[str, int] = {}
        for record in self._in_flight.values():
            in_flight[record.gateway] = in_flight.get(record.gateway, 0) + 1
        gateways = set(in_flight) | set(self._s.gateway_successes) | set(self._s.gateway_failures)
        gateways |= set(self._s.gateway_cooled_until)
        busiest = sorted(gateways, key=lambda g: (-in_flight.get(g, 0), g))[:MAX_GATEWAYS_IN_STATE]
        return [
            GatewayProgress(
                gateway_id=GatewayId(g),
                in_flight=in_flight.get(g, 0),
                succeeded=self._s.gateway_successes.get(g, 0),
                failed=self._s.gateway_failures.get(g, 0),
                cooled_until=_cooled_until(self._s.gateway_cooled_until.get(g, 0.0)),
            )
            for g in sorted(busiest)
        ]

    # --- operator requests -------------------------------------------------------------------

    def set_plan(self, plan: RolloutPlan) -> list[Effect]:
        """Adopt a (new) plan; only before the rollout starts."""
        if not may_take(self._s.status, StatusEvent.PLAN):
            raise RolloutError(f"rollout is {self._s.status}; it can no longer be re-planned")
        devices: dict[str, RolloutDevice] = {}
        order: list[str] = []
        for wave in plan.waves:
            for planned in wave.devices:
                devices[planned.device_serial] = RolloutDevice(
                    wave=wave.index, gateway=planned.gateway_id, hardware_version=planned.hardware_version
                )
                order.append(planned.device_serial)
        self._s.plan, self._s.devices, self._s.order = plan, devices, order
        self._take(StatusEvent.PLAN)
        self._rebuild_indexes()
        self._plan_dirty = True
        self._dirty.clear()
        size = sum(len(w.devices) for w in plan.waves)
        return [Audit("planned", f"plan {plan.plan_id}: {size} devices in {len(plan.waves)} waves")]

    def start(self, plan_id: str, now: datetime) -> list[Effect]:
        """Start, approving the plan with this id."""
        plan = self._s.plan
        if not may_take(self._s.status, StatusEvent.START) or plan is None:
            raise RolloutError(f"rollout is {self._s.status}; only a planned rollout can start")
        if not plan_id:
            raise RolloutError(
                f"a start must name the plan it approves (the current plan is {plan.plan_id!r}): "
                "preview it and start with its id"
            )
        if plan_id != plan.plan_id:
            raise RolloutError(f"plan {plan_id!r} is not the current plan {plan.plan_id!r}; preview again")
        self._take(StatusEvent.START)
        self._s.wave_started_at = _ts(now)
        self._s.ramp_cap = self._s.spec.flow.ramp_initial_in_flight or self._s.spec.flow.max_in_flight
        self._s.tokens, self._s.tokens_at = 1.0, _ts(now)
        return [Audit("started", f"plan {plan_id}")]

    def pause(self, reason: str) -> list[Effect]:
        """Stop starting jobs; jobs in flight finish."""
        if not may_take(self._s.status, StatusEvent.PAUSE):
            raise RolloutError(f"rollout is {self._s.status}; only a running rollout can pause")
        self._take(StatusEvent.PAUSE)
        self._s.paused_reason = reason or "paused by an operator"
        return [Audit("paused", self._s.paused_reason)]

    def resume(self, now: datetime) -> list[Effect]:
        """Resume a paused rollout."""
        if not may_take(self._s.status, StatusEvent.RESUME):
            raise RolloutError(f"rollout is {self._s.status}; only a paused rollout can resume")
        if self._s.paused_reason.startswith(SHORT_SAMPLE_PREFIX):
            # Resuming a hold on a short sample is the operator's acceptance of that sample.
            self._s.short_sample_accepted_wave = self._s.current_wave
        self._take(StatusEvent.RESUME)
        self._s.paused_reason = ""
        self._s.soak_until = None
        return [Audit("resumed", "")]

    def abort(self, reason: str, now: datetime) -> list[Effect]:
        """No new jobs; jobs in flight are canceled; updated devices stay updated."""
        if not may_take(self._s.status, StatusEvent.ABORT):
            raise RolloutError(f"rollout is already {self._s.status}")
        effects: list[Effect] = [
            Cancel(record.job_id, record.gateway, "rollout aborted") for record in self._in_flight.values()
        ]
        for serial in list(self._s.order):
            if self._s.devices[serial].state in ACTIVE:
                self._set_state(serial, DeviceJobState.CANCELED, "rollout aborted")
        self._take(StatusEvent.ABORT)
        self._s.paused_reason = reason
        effects.append(Audit("aborted", reason))
        return effects

    def cancel_device(self, serial: str) -> list[Effect]:
        """Take one device out of the rollout."""
        record = self._s.devices.get(serial)
        if record is None:
            raise RolloutError(f"device {serial} is not in this rollout")
        if record.state not in ACTIVE:
            raise RolloutError(f"device {serial} is already {record.state}")
        effects: list[Effect] = []
        if record.state is DeviceJobState.IN_FLIGHT:
            effects.append(Cancel(record.job_id, record.gateway, "device canceled by an operator"))
        self._set_state(serial, DeviceJobState.CANCELED, "canceled by an operator")
        effects.append(Audit("device_canceled", serial))
        return effects

    def retry_failed(self, serials: list[str], now: datetime) -> list[Effect]:
        """Give failed, timed-out and unreachable devices a fresh attempt budget."""
        chosen = serials or [s for s in self._s.order if self._s.devices[s].state in RETRYABLE_STATES]
        retried = 0
        for serial in chosen:
            record = self._s.devices.get(serial)
            if record is None or record.state not in RETRYABLE_STATES:
                continue
            record.attempts, record.tried, record.failures_at = 0, [], []
            self._set_state(serial, DeviceJobState.PENDING, "retry requested")
            retried += 1
        # Retrying reopens a completed rollout; in any other status the devices just go again.
        if retried and may_take(self._s.status, StatusEvent.REOPEN):
            self._take(StatusEvent.REOPEN)
        return [Audit("retry_failed", f"{retried} devices")]

    # --- events from gateways ----------------------------------------------------------------

    def on_progress(self, job_id: str, now: datetime) -> None:
        """A job reported progress: its no-progress deadline moves."""
        serial = self._jobs.get(job_id)
        record = self._in_flight.get(serial) if serial else None
        if serial is not None and record is not None and record.job_id == job_id:
            record.progress_at = _ts(now)
            self._dirty.add(serial)

    def on_result(
        self, job_id: str, outcome: JobOutcome, reason: ReasonCode, retryable: bool, now: datetime
    ) -> list[Effect]:
        """A job ended on the gateway."""
        serial = self._jobs.get(job_id)
        record = self._in_flight.get(serial) if serial else None
        if serial is None or record is None or record.job_id != job_id:
            return []  # stale, duplicate or unknown: results are idempotent
        if reason is ReasonCode.DUPLICATE_JOB and outcome is not JobOutcome.SUCCEEDED:
            # A repeated failure lost its original reason on the way: count it, but allow a retry.
            retryable = True
        if outcome is JobOutcome.CANCELED and record.window_canceled:
            # Canceled at its window's end before the test boot: it goes again in the next window.
            record.attempts -= 1
            self._set_state(serial, DeviceJobState.PENDING, "window closed; next window")
            return []
        evidence = evidence_of(outcome, reason)
        if outcome is JobOutcome.SUCCEEDED:
            self._set_state(serial, DeviceJobState.SUCCEEDED, reason.value, evidence)
            self._s.ramp_cap = min(self._s.spec.flow.max_in_flight, self._s.ramp_cap * 2)
            self._s.gateway_successes[record.gateway] = self._s.gateway_successes.get(record.gateway, 0) + 1
            self._s.gateway_coolings.pop(record.gateway, None)
            return []
        if reason is ReasonCode.GATEWAY_BUSY:
            # Load shedding says nothing about the device or its gateway: no attempt, no failure.
            record.attempts -= 1
            return self._wait(serial, _ts(now) + BUSY_RETRY_S, "gateway busy", avoid=record.gateway)
        self._s.gateway_failures[record.gateway] = self._s.gateway_failures.get(record.gateway, 0) + 1
        effects = self._strike(record.gateway, serial, _ts(now)) if reason in TRANSPORT_FAILURES else []
        if evidence is Evidence.FAILURE or reason in TRANSPORT_FAILURES:
            # The ramp backs off as failures rise: each halves the in-flight budget (a success doubles it).
            self._s.ramp_cap = max(1, self._s.ramp_cap // 2)
        return effects + self._after_failure(
            serial, record, outcome=outcome, reason=reason, retryable=retryable, evidence=evidence, now=now
        )

    def _after_failure(
        self,
        serial: str,
        record: RolloutDevice,
        *,
        outcome: JobOutcome,
        reason: ReasonCode,
        retryable: bool,
        evidence: Evidence,
        now: datetime,
    ) -> list[Effect]:
        if reason in FAILED_BOOTS:
            # The device ran the test image and did not come back on it: a failure of the release,
            # never sent the same build again automatically (whatever the agent says of a retry).
            state = DeviceJobState.REVERTED if reason is ReasonCode.REVERTED else DeviceJobState.FAILED
            self._set_state(serial, state, reason.value, Evidence.FAILURE)
            return []
        if reason is ReasonCode.DEVICE_UNREACHABLE and record.gateway not in record.tried:
            record.attempts -= 1  # this gateway cannot reach it: try another before counting
            return self._wait(serial, _ts(now), "unreachable through " + record.gateway, avoid=record.gateway)
        terminal = {
            JobOutcome.REJECTED: DeviceJobState.REJECTED,
            JobOutcome.REVERTED: DeviceJobState.REVERTED,
            JobOutcome.CANCELED: DeviceJobState.CANCELED,
            JobOutcome.TIMED_OUT: DeviceJobState.TIMED_OUT,
        }.get(outcome, DeviceJobState.FAILED)
        retry = self._s.spec.retry
        if (
            retryable
            and terminal in (DeviceJobState.FAILED, DeviceJobState.TIMED_OUT)
            and record.attempts < retry.max_attempts
        ):
            if self._penalized(serial, record, _ts(now), reason.value, evidence):
                return [Audit("parked", f"{serial}: {record.reason}"[:256])]
            backoff_s = exponential_delay_s(record.attempts, retry.backoff_s, retry.backoff_factor)
            return self._wait(serial, _ts(now) + backoff_s, f"{reason.value}; retry in {backoff_s:.0f} s")
        self._set_state(serial, terminal, reason.value, evidence)
        return []

    def _penalized(
        self, serial: str, record: RolloutDevice, now_s: float, why: str, evidence: Evidence
    ) -> bool:
        """Count a failed attempt; park the device once it failed `device_failures` times lately."""
        penalty = self._s.spec.penalty
        record.failures_at = [t for t in record.failures_at if now_s - t < penalty.device_window_s]
        record.failures_at.append(now_s)
        if len(record.failures_at) < penalty.device_failures:
            return False
        window_min = penalty.device_window_s / 60
        reason = f"parked: {len(record.failures_at)} failures within {window_min:.0f} min (last: {why})"
        self._set_state(serial, DeviceJobState.PARKED, reason, evidence)
        return True

    def _strike(self, gateway: str, serial: str, now_s: float) -> list[Effect]:
        """Count a transport failure; cool the gateway once `gateway_failures` devices failed through it.

        Devices, not failures: one device that nobody can reach (switched off, out of range) fails
        through every gateway that tries it and must not cool them all.
        """
        penalty = self._s.spec.penalty
        recent = self._s.gateway_strikes.get(gateway, {})
        strikes = {s: t for s, t in recent.items() if now_s - t < penalty.gateway_window_s}
        strikes[serial] = now_s
        if len(strikes) < penalty.gateway_failures:
            self._s.gateway_strikes[gateway] = strikes
            return []
        coolings = self._s.gateway_coolings.get(gateway, 0)
        cool_s = min(penalty.gateway_cooldown_max_s, penalty.gateway_cooldown_s * 2**coolings)
        self._s.gateway_cooled_until[gateway] = now_s + cool_s
        self._s.gateway_coolings[gateway] = coolings + 1
        self._s.gateway_strikes.pop(gateway, None)
        detail = f"{gateway}: transport failures of {len(strikes)} devices; no new jobs for {cool_s:.0f} s"
        return [Audit("gateway_cooled", detail)]

    def on_not_sent(self, job_id: str, now: datetime, retry_in_s: float, reason: str) -> list[Effect]:
        """The coordinator did not send a job (Memfault's answer is stale, or Memfault is down).

        The device waits `retry_in_s`; no attempt, gateway outcome or gate count changes.
        """
        serial = self._jobs.get(job_id)
        record = self._in_flight.get(serial) if serial else None
        if serial is None or record is None or record.job_id != job_id:
            return []
        record.attempts -= 1
        return self._wait(serial, _ts(now) + retry_in_s, reason)

    def on_excluded(self, job_id: str, reason: str) -> list[Effect]:
        """The coordinator will not send this job: Memfault gives the device nothing usable now.

        The device leaves the rollout as canceled with `reason` (a gate counts it neither way, and
        its gateway is not blamed).
        """
        serial = self._jobs.get(job_id)
        record = self._in_flight.get(serial) if serial else None
        if serial is None or record is None or record.job_id != job_id:
            return []
        record.attempts -= 1
        self._set_state(serial, DeviceJobState.CANCELED, reason[:256])
        return [Audit("excluded", f"{serial}: {reason}"[:256])]

    def on_hop_done(self, job_id: str, now: datetime, version: str) -> list[Effect]:
        """A job installed a must-pass-through release below the target: the device goes again.

        Its next hop is a new job (attempts start afresh); it counts as done only on the target.
        """
        serial = self._jobs.get(job_id)
        record = self._in_flight.get(serial) if serial else None
        if serial is None or record is None or record.job_id != job_id:
            return []
        self._s.gateway_successes[record.gateway] = self._s.gateway_successes.get(record.gateway, 0) + 1
        record.attempts = 0
        effects: list[Effect] = [Audit("hop", f"{serial} runs {version}; next hop")]
        return effects + self._wait(serial, _ts(now), f"on {version}: next hop")

    def on_gateway_offline(self, gateway_id: str, now: datetime) -> list[Effect]:
        """A gateway died: its jobs go to another gateway that hears the device (attempt given back)."""
        effects: list[Effect] = []
        for serial, record in list(self._in_flight.items()):
            if record.gateway != gateway_id:
                continue
            record.attempts -= 1
            # The command may still sit in the dead gateway's broker queue: cancel it there too.
            effects.append(Cancel(record.job_id, gateway_id, "rerouted: gateway offline"))
            effects += self._wait(serial, _ts(now), f"gateway {gateway_id} offline", avoid=gateway_id)
        return effects

    def on_gateway_online(self, gateway_id: str, now: datetime) -> list[Effect]:
        """A gateway came (back): devices parked as unreachable are tried again."""
        for serial in self._s.order:
            record = self._s.devices[serial]
            if record.state is DeviceJobState.UNREACHABLE and record.reason == NO_GATEWAY:
                self._set_state(serial, DeviceJobState.PENDING, f"gateway {gateway_id} online")
        return []

    # --- the tick ----------------------------------------------------------------------------

    def tick(self, now: datetime, flow: FlowView) -> list[Effect]:
        """Time out stale jobs, judge the current wave, and start jobs within every cap."""
        if self._s.status not in (RolloutStatus.RUNNING, RolloutStatus.PAUSED):
            return []
        now_s = _ts(now)
        effects = self._expire(now_s)
        self._release_backoffs(now_s)
        if self._s.status is RolloutStatus.RUNNING:
            effects += self._judge(now, now_s)
        if self._s.status is RolloutStatus.RUNNING:
            effects += self._start_jobs(now, now_s, flow)
        return effects

    def _expire(self, now_s: float) -> list[Effect]:
        deadlines = self._s.spec.deadlines
        effects: list[Effect] = []
        for serial, record in list(self._in_flight.items()):
            if record.cancel_at and now_s >= record.cancel_at and not record.window_canceled:
                # Its window closed: the agent cancels it unless the test boot was already asked for.
                record.window_canceled = True
                self._dirty.add(serial)
                effects.append(Cancel(record.job_id, record.gateway, "maintenance window closed"))
            stalled = now_s - record.progress_at > deadlines.no_progress_s
            overdue = now_s - record.dispatched_at > deadlines.job_total_s
            if stalled or overdue:
                effects.append(Cancel(record.job_id, record.gateway, "deadline passed"))
                why = "no progress" if stalled else "job deadline"
                effects += self._after_timeout(serial, record, now_s, why)
        return effects

    def _after_timeout(self, serial: str, record: RolloutDevice, now_s: float, why: str) -> list[Effect]:
        retry = self._s.spec.retry
        evidence = evidence_of_timeout(progressed=record.progress_at > record.dispatched_at)
        effects = self._strike(record.gateway, serial, now_s)
        if record.attempts < retry.max_attempts:
            if self._penalized(serial, record, now_s, f"timed out ({why})", evidence):
                return [*effects, Audit("parked", f"{serial}: {record.reason}"[:256])]
            backoff_s = exponential_delay_s(record.attempts, retry.backoff_s, retry.backoff_factor)
            return effects + self._wait(serial, now_s + backoff_s, f"timed out ({why})", avoid=record.gateway)
        self._set_state(serial, DeviceJobState.TIMED_OUT, why, evidence)
        return effects

    def _release_backoffs(self, now_s: float) -> None:
        while self._backoff and self._backoff[0][0] <= now_s:
            _, serial = heapq.heappop(self._backoff)
            record = self._s.devices[serial]
            if record.state is DeviceJobState.WAITING and record.next_attempt_at <= now_s:
                self._set_state(serial, DeviceJobState.PENDING, record.reason)

    def _judge(self, now: datetime, now_s: float) -> list[Effect]:  # noqa: PLR0911 (one return per verdict)
        plan = self._s.plan
        if plan is None:
            return []
        wave = self._s.current_wave
        gate = evaluate_gate(
            self._s.spec.gates,
            self.wave_evidence(wave),
            short_sample_accepted=self._s.short_sample_accepted_wave == wave,
        )
        verdict, reason = gate.verdict, gate.reason
        if verdict is GateVerdict.WAIT:
            return []
        if verdict is GateVerdict.PROMOTE:
            if self._s.soak_until is None:
                self._s.soak_until = now_s + plan.waves[wave].soak_s
            if now_s < self._s.soak_until:
                return []
            effects = self._decide(now, wave, gate)
            self._s.soak_until = None
            if wave + 1 >= len(plan.waves):
                self._take(StatusEvent.COMPLETE)
                return [*effects, Audit("completed", f"{self.counts().succeeded} devices updated")]
            self._s.current_wave, self._s.wave_started_at = wave + 1, now_s
            return effects
        effects = self._decide(now, wave, gate)
        prefix = SHORT_SAMPLE_PREFIX if gate.short_sample else GATE_REASON_PREFIX
        if verdict is GateVerdict.ABORT:
            return effects + self.abort(f"{prefix}{reason}", now)
        self._take(StatusEvent.PAUSE)
        self._s.paused_reason = f"{prefix}{reason}"[:256]
        return [*effects, Audit("paused", self._s.paused_reason)]

    def _decide(self, now: datetime, wave: int, gate: GateResult) -> list[Effect]:
        evidence = gate.evidence
        decision = GateDecision(
            at=now,
            wave=wave,
            verdict=gate.verdict,
            reason=gate.reason[:256],
            attempted=evidence.decided + evidence.not_counted,
            succeeded=evidence.succeeded,
            failed=evidence.failed,
            decided=evidence.decided,
            not_counted=evidence.not_counted,
            remaining=evidence.remaining,
            failure_rate=round(gate.failure_rate, 4),
            failure_lower_bound=round(gate.failure_lower_bound, 4),
            short_sample=gate.short_sample,
        )
        self._s.gate_decisions.append(decision)
        return [GateDecided(decision)]

    def _start_jobs(self, now: datetime, now_s: float, flow: FlowView) -> list[Effect]:
        spec = self._s.spec
        budget = min(spec.flow.max_in_flight, self._s.ramp_cap) - len(self._in_flight)
        window = self._open_window(now) if spec.windows else None
        budget = min(budget, self._rate_budget(now_s), self._window_budget(now, window))
        if budget <= 0:
            return []
        # Jobs started in a window that cancels at its end carry that end.
        cancel_at = window[1] if window is not None and window[0].at_end is WindowEnd.CANCEL else 0.0
        by_gateway = dict(flow.in_flight_by_gateway)
        by_site = dict(flow.in_flight_by_site)
        cooled = {g for g, until_s in self._s.gateway_cooled_until.items() if until_s > now_s}
        effects: list[Effect] = []
        skips = 0
        for wave in range(self._s.current_wave + 1):
            queue = self._ready[wave]
            kept: list[str] = []
            while queue and budget > 0 and skips < MAX_SKIPS_PER_TICK:
                serial = queue.popleft()
                record = self._s.devices[serial]
                if record.state is not DeviceJobState.PENDING:
                    continue
                links = flow.links(serial)
                choices = tuple(
                    link
                    for link in links
                    if link.gateway_id not in cooled
                    and by_gateway.get(link.gateway_id, 0) < spec.flow.max_in_flight_per_gateway
                    and (
                        spec.flow.max_in_flight_per_site is None
                        or by_site.get(link.site, 0) < spec.flow.max_in_flight_per_site
                    )
                )
                link = best_link(choices, flow, frozenset(record.tried), prefer=record.gateway)
                if link is None:
                    if not any(candidate.online for candidate in links):
                        effects += self._unheard(serial, record, now_s)
                    else:
                        kept.append(serial)  # waiting for a radio slot or a cooled gateway: no attempt
                    skips += 1
                    continue
                by_gateway[link.gateway_id] = by_gateway.get(link.gateway_id, 0) + 1
                by_site[link.site] = by_site.get(link.site, 0) + 1
                effects.append(self._dispatch(serial, record, link.gateway_id, now, now_s))
                record.cancel_at = cancel_at
                budget -= 1
            queue.extendleft(reversed(kept))
        self._s.tokens -= len(effects)
        self._s.started += len(effects)
        return effects

    def _unheard(self, serial: str, record: RolloutDevice, now_s: float) -> list[Effect]:
        """No online gateway hears the device: wait for one, up to the rollout's `unreachable_s`."""
        record.unheard_since = record.unheard_since or now_s
        grace_s = self._s.spec.deadlines.unreachable_s
        if now_s - record.unheard_since >= grace_s:
            self._set_state(serial, DeviceJobState.UNREACHABLE, NO_GATEWAY)
            return []
        recheck_at_s = min(now_s + UNHEARD_RECHECK_S, record.unheard_since + grace_s)
        return self._wait(serial, recheck_at_s, NO_GATEWAY_YET)

    def _dispatch(
        self, serial: str, record: RolloutDevice, gateway_id: str, now: datetime, now_s: float
    ) -> Dispatch:
        self._s.job_seq += 1
        digest = hashlib.sha256(f"{self._s.rollout_id}\0{serial}\0{self._s.job_seq}".encode()).hexdigest()[
            :16
        ]
        job_id = f"{self._s.rollout_id[:40]}-{digest}"
        record.attempts += 1
        record.unheard_since = 0.0
        record.job_id, record.gateway = job_id, gateway_id
        record.dispatched_at = record.progress_at = now_s
        record.window_canceled = False
        if gateway_id not in record.tried:
            record.tried.append(gateway_id)
        self._jobs[job_id] = serial
        self._set_state(serial, DeviceJobState.IN_FLIGHT, "")
        deadline = now + timedelta(seconds=self._s.spec.deadlines.job_total_s)
        return Dispatch(job_id, serial, gateway_id, record.attempts, deadline)

    def _rate_budget(self, now_s: float) -> int:
        per_minute = self._s.spec.flow.starts_per_minute
        if per_minute is None:
            return 1 << 30
        rate = per_minute / 60.0
        self._s.tokens = min(max(1.0, rate), self._s.tokens + (now_s - self._s.tokens_at) * rate)
        self._s.tokens_at = now_s
        return math.floor(self._s.tokens)

    def _open_window(self, now: datetime) -> tuple[MaintenanceWindow, float, float] | None:
        """The first window open at `now`: (window, its end, its start) in epoch seconds."""
        for window in self._s.spec.windows:
            start = open_window_start(parse_cron(window.cron), zone(window.timezone), window.duration_s, now)
            if start is not None:
                start_s = start.astimezone(UTC).timestamp()
                return window, start_s + window.duration_s, start_s
        return None

    def _window_budget(self, now: datetime, open_now: tuple[MaintenanceWindow, float, float] | None) -> int:
        if not self._s.spec.windows:
            return 1 << 30
        if open_now is not None:
            window, _, start_s = open_now
            if self._s.window_started_at != start_s:
                # A new window: spread the devices still to start evenly across it.
                self._s.window_started_at, self._s.window_base = start_s, self._s.started
                self._s.window_pending = sum(len(q) for q in self._ready) + len(self._backoff)
            elapsed = _ts(now) - start_s + 60.0
            allowed = self._s.window_base + math.ceil(
                self._s.window_pending * min(1.0, elapsed / window.duration_s)
            )
            return max(0, allowed - self._s.started)
        return 0

    # --- bookkeeping -------------------------------------------------------------------------

    def _wait(self, serial: str, at_s: float, reason: str, avoid: str = "") -> list[Effect]:
        record = self._s.devices[serial]
        record.next_attempt_at = at_s
        if avoid and avoid not in record.tried:
            record.tried.append(avoid)
        self._set_state(serial, DeviceJobState.WAITING, reason)
        heapq.heappush(self._backoff, (at_s, serial))
        return []

    def _set_state(
        self, serial: str, state: DeviceJobState, reason: str, evidence: Evidence = Evidence.NONE
    ) -> None:
        record = self._s.devices[serial]
        counts = self._counts[record.wave]
        counts[record.state] -= 1
        counts[state] += 1
        tally = self._evidence[record.wave]
        tally[record.evidence] -= 1
        tally[evidence] += 1
        record.evidence = evidence
        if record.state is DeviceJobState.IN_FLIGHT:
            self._in_flight.pop(serial, None)
        if state is DeviceJobState.IN_FLIGHT:
            self._in_flight[serial] = record
        if state is DeviceJobState.PENDING:
            # Retries go first: they were due before devices that never started.
            if record.attempts:
                self._ready[record.wave].appendleft(serial)
            else:
                self._ready[record.wave].append(serial)
        record.state, record.reason = state, reason
        self._dirty.add(serial)
