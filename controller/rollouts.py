"""The rollout coordinator (leader only): joins the pure rollout machines to the store, Memfault and MQTT.

One `step()` applies the job progress noted in memory since the last step (`note_progress`: it
is liveness only and never stored), drains the store's inbox (operator requests and job results),
reacts to gateway births and deaths, ticks every running rollout, resolves the artifacts of the
jobs it starts (the devices' facts read in one query per batch of dispatches), and saves every
machine, command, audit line, handled inbox item and reply in one transaction. Only then are
state, plans, audit lines and replies published; commands leave through the store's outbox, so a
crash anywhere re-sends, and the agent's job-id check makes that harmless.

A job result or progress counts only from the gateway the job was dispatched to (the topic it came
on, see `gateway_trust`); any other is refused, counted and audited (once per gateway and job).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, NamedTuple, assert_never

import msgspec
import structlog

from controller.correlation_view import CorrelationSettings, CorrelationView, Freshness, store_scan
from controller.errors import MemfaultUnavailable, RolloutError
from controller.gateway_trust import RefusalReason, RefusedKind, job_event_refusal
from controller.memfault import MemfaultClient
from controller.metrics import dispatch_latency_histogram
from controller.operator_auth import OperatorKeys, request_op
from controller.registry_view import FleetGauges, RegistryView
from controller.rollout_engine.effects import Audit, Cancel, Dispatch, Effect, GateDecided
from controller.rollout_engine.machine import RolloutMachine
from controller.rollout_engine.model import Candidate, FlowView
from controller.rollout_engine.planner import plan_rollout
from controller.settings import SchedulerConfig
from controller.store.executor import StoreExecutor
from controller.store.fleet_store import FleetStore, GatewayRecord, InboxItem, PendingCommand, RolloutRecord
from schemas import (
    AbortRollout,
    AcceptKeyChange,
    Artifact,
    AuditEvent,
    CancelDevice,
    CancelJob,
    ContractError,
    CreateRollout,
    DeviceSerial,
    JobId,
    JobOutcome,
    JobProgress,
    JobResult,
    OperatorReply,
    OperatorRequest,
    OtaCommand,
    PauseRollout,
    PreviewRollout,
    ReasonCode,
    ReplyStatus,
    ResumeRollout,
    RetryFailed,
    RolloutId,
    RolloutPlan,
    RolloutState,
    RolloutStatus,
    StartRollout,
    TopicError,
    TopicKind,
    TopicTree,
    channels,
    paginate_plan,
)
from schemas.versions import is_version, same_version, version_key
from service_runtime.mqtt import Outbound

log = structlog.get_logger("mcufleet.controller.rollouts")

MAX_REMEMBERED_INBOX = 100_000
"""Decoded inbox messages kept in memory for the leader (beyond this, stored bytes are decoded)."""
MAX_PENDING_PROGRESS = 100_000
"""Jobs whose progress waits for the next step at most (memory bound under a flood)."""


FRESHNESS_REFRESH_S: Final = 10.0
"""How often the fleet-wide freshness shown in rollout states is recomputed."""


@dataclass
class CoordinatorStats:
    """What the coordinator did, read by the metrics collector."""

    jobs: dict[tuple[str, str], int] = field(default_factory=dict)
    gate_decisions: dict[str, int] = field(default_factory=dict)
    operator_requests: dict[tuple[str, str], int] = field(default_factory=dict)
    dispatched: int = 0
    memfault_excluded: int = 0
    """Devices left out at dispatch because Memfault gave nothing usable for the target."""
    refused: dict[tuple[str, str], int] = field(default_factory=dict)
    """Job events refused by (kind, reason), see `gateway_trust.REFUSAL_LABELS`."""
    reply_topics_refused: int = 0
    """Operator requests whose response topic was outside the operator reply subtree."""
    progress_dropped: int = 0
    """Job progress dropped because `MAX_PENDING_PROGRESS` jobs' progress already waited."""
    unreadable_rollouts: int = 0
    """Stored rollouts the last load could not decode (left in the store, not run)."""


class _Refusal(NamedTuple):
    reason: str
    detail: str
    topic: str
    correlation: bytes


@dataclass
class _Step:
    """What one step produced, saved together and then published."""

    changed: set[str] = field(default_factory=set)
    plans: set[str] = field(default_factory=set)
    commands: list[tuple[str, bytes]] = field(default_factory=list)
    audit: list[AuditEvent] = field(default_factory=list)
    handled: list[int] = field(default_factory=list)
    replies: list[tuple[str, bytes, str, bytes]] = field(default_factory=list)
    """(request id, reply, response topic, correlation data)."""
    accepted_key_changes: list[tuple[str, str]] = field(default_factory=list)
    """(device serial, fingerprint) of project key changes an operator accepted."""
    refusals: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    """(topic, reply, correlation data): requests refused unread, their ids not used up."""


class RolloutCoordinator:
    """Runs every rollout on the leader."""

    def __init__(
        self,
        store: FleetStore,
        executor: StoreExecutor,
        memfault: MemfaultClient,
        *,
        tree: TopicTree,
        settings: SchedulerConfig,
        operator_keys: OperatorKeys,
        publish: Callable[[Outbound], object],
        correlation: CorrelationSettings | None = None,
    ) -> None:
        self._store = store
        self._executor = executor
        self.memfault = memfault
        self._tree = tree
        self._settings = settings
        self._keys = operator_keys
        self._publish = publish
        self.correlation = CorrelationView(memfault, correlation, scan=store_scan(store, executor))
        """Standing Memfault answers per device, kept on a thread and loop of their own."""
        self.registry = RegistryView(store, executor, self.correlation)
        self.machines: dict[str, RolloutMachine] = {}
        self.stats = CoordinatorStats()
        self.dispatch_latency = dispatch_latency_histogram()
        self._planning: dict[str, asyncio.Task[None]] = {}
        self._plans_ready: dict[str, tuple[str, Exception | None]] = {}
        self._candidates: dict[str, list[Candidate]] = {}
        self._decoded: dict[int, object] = {}
        self._plan_pages: dict[str, int] = {}
        """Pages last published per rollout's plan (extra ones of an earlier plan are cleared)."""
        self._freshness: dict[str, Freshness] = {}
        self._lease_epoch = 0
        self._refusals_audited: set[tuple[str, str, str]] = set()
        self._memfault_paused: dict[str, str] = {}
        """Rollouts whose dispatch waits for Memfault, with the reason shown in their state."""
        self._freshness_cache: tuple[float, Freshness | None] = (0.0, None)
        self._progress: dict[tuple[str, str], JobProgress] = {}
        """The latest progress per (sender, job) since the last step (see `note_progress`)."""
        self._ran_hop: dict[str, str] = {}
        """Devices that just installed a must-pass-through hop, with its version (until reported)."""

    # --- views for metrics -------------------------------------------------------------------

    @property
    def fleet_view(self) -> FleetGauges:
        """Fleet gauges as of the last step."""
        return self.registry.gauges

    def rollouts_by_status(self) -> dict[RolloutStatus, int]:
        """How many rollouts are in each status."""
        counts: dict[RolloutStatus, int] = {}
        for machine in self.machines.values():
            counts[machine.status] = counts.get(machine.status, 0) + 1
        return counts

    def in_flight(self) -> int:
        """Jobs in flight across rollouts."""
        return sum(len(machine.in_flight()) for machine in self.machines.values())

    # --- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the correlation view's thread."""
        self.correlation.close()

    async def load(self) -> None:
        """(Re)load every rollout from the store: called when this replica becomes the leader."""
        self.correlation.start()
        records = await self._executor.call(self._store.load_rollouts)
        # Messages remembered in an earlier term may have been handled by another leader since.
        self._decoded.clear()
        self.machines = {}
        self.stats.unreadable_rollouts = 0
        for record in records:
            try:
                machine = RolloutMachine.from_parts(record.snapshot, record.plan, list(record.devices))
            except (msgspec.DecodeError, msgspec.ValidationError):
                # A row this version cannot read (written by another version, or its spec broke a
                # rule added since, such as an unorderable target): left in the store untouched.
                self.stats.unreadable_rollouts += 1
                log.exception("rollout unreadable; left in the store, not run", rollout=record.rollout_id)
                continue
            self.machines[record.rollout_id] = machine
        await self.registry.refresh_gateways()
        log.info("rollouts loaded", count=len(self.machines))

    def note_progress(self, progress: JobProgress, sender: str) -> None:
        """Job progress, applied at the next step from memory (it is never stored).

        Progress is liveness only: a lost one costs nothing the next one does not repair, so the
        latest per job is kept and nothing is written. `sender` is the topic's gateway.
        """
        key = (sender, progress.job_id)
        if key not in self._progress and len(self._progress) >= MAX_PENDING_PROGRESS:
            self.stats.progress_dropped += 1
            return
        self._progress[key] = progress

    def remember_decoded(self, items: Iterable[tuple[int, object]]) -> None:
        """Keep messages this replica decoded under their inbox row ids (handled without decoding again)."""
        for row_id, message in items:
            if len(self._decoded) >= MAX_REMEMBERED_INBOX:
                return
            self._decoded[row_id] = message

    async def step(self, lease_epoch: int, now_s: float) -> list[PendingCommand]:
        """One scheduler step (see the module docstring); returns the commands it saved."""
        self._lease_epoch = lease_epoch
        now = datetime.fromtimestamp(now_s, UTC)
        step = _Step()
        self.registry.forget_prefetched()
        progress, self._progress = self._progress, {}
        for (sender, _), message in progress.items():
            self._on_progress(message, sender, now, step)
        for item in await self._executor.call(self._store.inbox):
            step.handled.append(item.row_id)
            try:
                await self._handle(item, now, step)
            except ContractError as error:
                log.warning("unreadable inbox item", kind=item.kind, error=str(error))
        self._adopt_plans(now, step)
        previous = await self.registry.refresh_gateways()
        await self.registry.refresh_links(now_s, 10.0)
        self._gateway_changes(previous, now, step)
        self._resume_dispatch(now, step)
        flow = self._flow()
        for machine in self.machines.values():
            effects = machine.tick(now, flow)
            if effects:
                await self._carry_out(machine, effects, now, step)
            elif machine.has_changes:
                # A backoff released or a device still unheard: no effect, but its row changed.
                step.changed.add(machine.rollout_id)
        return await self._save_and_publish(step, now, now_s)

    # --- inbox -------------------------------------------------------------------------------

    async def _handle(self, item: InboxItem, now: datetime, step: _Step) -> None:
        message = self._decoded.pop(item.row_id, None)
        if message is None:
            # Received by another replica (or before a restart): its stored bytes, validated again.
            message = channels.decode(TopicKind(item.kind), item.payload)
        if isinstance(message, JobResult):
            if self._refused(RefusedKind.JOB_RESULT, item.sender, message, now, step):
                return
            machine = self._machine_of(message.rollout_id, message.job_id)
            if machine is not None and self._is_hop(machine, message):
                # A must-pass-through hop is done: the device goes again for the next one.
                self._ran_hop[message.device_serial] = message.running_version
                effects = machine.on_hop_done(message.job_id, now, message.running_version)
                await self._carry_out(machine, effects, now, step)
            elif machine is not None:
                effects = machine.on_result(
                    message.job_id, message.outcome, message.reason, message.retryable, now
                )
                await self._carry_out(machine, effects, now, step)
            key = (message.outcome.value, message.reason.value)
            self.stats.jobs[key] = self.stats.jobs.get(key, 0) + 1
        elif isinstance(message, JobProgress):
            # Stored by a controller that predates in-memory progress (an upgrade's inbox).
            self._on_progress(message, item.sender, now, step)
        elif isinstance(message, OperatorRequest):
            await self._operator(message, item.reply_topic, item.correlation, now, step)
        else:
            log.warning("unexpected inbox item", kind=item.kind, type=type(message).__name__)

    def _on_progress(self, message: JobProgress, sender: str, now: datetime, step: _Step) -> None:
        if self._refused(RefusedKind.JOB_PROGRESS, sender, message, now, step):
            return
        machine = self._machine_of(message.rollout_id, message.job_id)
        if machine is not None:
            machine.on_progress(message.job_id, now)
            step.changed.add(machine.rollout_id)

    def _machine_of(self, rollout_id: str | None, job_id: str) -> RolloutMachine | None:
        """The rollout a job event belongs to: the one it names, else (old agents) the job's owner."""
        named = self.machines.get(rollout_id) if rollout_id is not None else None
        if named is not None and named.job_gateway(job_id) is not None:
            return named
        # An old agent (no rollout id), or a stale job of the named rollout: whoever owns the job id.
        return next((m for m in self.machines.values() if m.job_gateway(job_id) is not None), named)

    @staticmethod
    def _is_hop(machine: RolloutMachine, result: JobResult) -> bool:
        """A success that leaves the device below the target: a must-pass-through hop."""
        return (
            result.outcome is JobOutcome.SUCCEEDED
            and bool(result.running_version)
            and machine.job_gateway(result.job_id) is not None
            and is_version(result.running_version)
            and version_key(result.running_version) < version_key(machine.spec.target_version)
        )

    def _refused(
        self, kind: RefusedKind, sender: str, event: JobResult | JobProgress, now: datetime, step: _Step
    ) -> bool:
        """Whether a job event is refused (then it is counted, and audited once per gateway and job)."""
        claimed, job_id = event.gateway_id, event.job_id
        # Rows queued before the inbox recorded senders carry "": the payload's id is all there is.
        sender = sender or claimed
        owner = self._machine_of(event.rollout_id, job_id)
        dispatched_to = owner.job_gateway(job_id) if owner is not None else None
        reason = job_event_refusal(sender, claimed, dispatched_to)
        if reason is None:
            return False
        key = (kind.value, reason.value)
        self.stats.refused[key] = self.stats.refused.get(key, 0) + 1
        marker = (sender, job_id, reason.value)
        if marker not in self._refusals_audited:
            # Bounded by the jobs the rollouts know (a foreign_job needs a real job id) plus mismatches.
            if len(self._refusals_audited) >= 100_000:
                self._refusals_audited.clear()
            self._refusals_audited.add(marker)
            log.warning("job event refused", kind=kind.value, gateway=sender, job=job_id, reason=reason.value)
            detail = f"{kind.value} for job {job_id} naming gateway {claimed}"
            if reason is RefusalReason.FOREIGN_JOB:
                detail += f"; the job was dispatched to {dispatched_to}"
            step.audit.append(
                AuditEvent(
                    at=now,
                    actor=f"gateway:{sender}"[:256],
                    action=f"refused:{kind.value}:{reason.value}",
                    detail=detail[:256],
                )
            )
        return True

    async def _operator(
        self, request: OperatorRequest, reply_topic: str, correlation: bytes, now: datetime, step: _Step
    ) -> None:
        op = request_op(request)
        auth = self._keys.verify(request, now)
        actor = auth.operator or "unverified"

        def refuse(reason: str, detail: str, topic: str = reply_topic) -> None:
            self._refuse(request, op, actor, _Refusal(reason, detail, topic, correlation), now, step)

        if not self._is_operator_reply_topic(reply_topic):
            # Never publish where the request says: that could be a gateway's command topic (a
            # confused deputy). The refusal goes to the default reply topic; the request is not read.
            self.stats.reply_topics_refused += 1
            default_topic = self._tree.topic(TopicKind.OPERATOR_DEFAULT_REPLY, request_id=request.request_id)
            refuse(
                "reply_topic_refused",
                f"response topic {reply_topic[:120]!r} is not under {self._tree.prefix}/ops/reply/<you>/",
                default_topic,
            )
            return
        if auth.refusal:
            refuse(auth.refusal, auth.detail)
            return
        previous = await self._executor.call(self._store.reply_for, request.request_id)
        if previous is not None:
            # The same request id again: answer as the first time, never act twice.
            self._publish(Outbound(reply_topic, previous, qos=1, correlation_data=correlation))
            return
        if replay := self._keys.remember(request, now):
            refuse(replay, "this signature was used before")
            return
        status, reason, message = ReplyStatus.ACCEPTED, "", ""
        try:
            message = await self._apply(request, now, step)
        except RolloutError as error:
            status, reason, message = ReplyStatus.REJECTED, error.reason, str(error)
        reply = self._answer_and_audit(
            request, op, actor, (status, reason, message, reason or message), now, step
        )
        step.replies.append((request.request_id, reply, reply_topic, correlation))

    def _is_operator_reply_topic(self, topic: str) -> bool:
        try:
            return self._tree.parse(topic).kind is TopicKind.OPERATOR_REPLY
        except TopicError:
            return False

    def _refuse(  # noqa: PLR0917 (what the reply and the audit line say)
        self, request: OperatorRequest, op: str, actor: str, refusal: _Refusal, now: datetime, step: _Step
    ) -> None:
        """Refuse without acting: published and audited, but not kept as the request id's answer."""
        reason, detail, topic, correlation = refusal
        answer = (ReplyStatus.REJECTED, reason, detail, f"{reason}: {detail}")
        reply = self._answer_and_audit(request, op, actor, answer, now, step)
        step.refusals.append((topic, reply, correlation))

    def _answer_and_audit(  # noqa: PLR0917 (what the reply and the audit line say)
        self,
        request: OperatorRequest,
        op: str,
        actor: str,
        answer: tuple[ReplyStatus, str, str, str],
        now: datetime,
        step: _Step,
    ) -> bytes:
        """The encoded reply to `request`; the answer is audited and counted by op and status.

        `answer` is (status, reason, message for the reply, detail for the audit line).
        """
        status, reason, message, detail = answer
        reply = OperatorReply(
            request_id=request.request_id,
            op=op,
            status=status,
            reason=reason,
            message=message[:256],
            rollout_id=_rollout_of(request) or "",
        )
        step.audit.append(
            AuditEvent(
                at=now,
                actor=actor[:256],
                action=f"request:{op}:{status}",
                rollout_id=_rollout_of(request),
                request_id=request.request_id,
                detail=detail[:256],
            )
        )
        key = (op, status.value)
        self.stats.operator_requests[key] = self.stats.operator_requests.get(key, 0) + 1
        return channels.encode(reply)

    async def _apply(self, request: OperatorRequest, now: datetime, step: _Step) -> str:
        if isinstance(request, AcceptKeyChange):
            return await self._accept_key_change(request, step)
        rollout_id = request.rollout_id
        if isinstance(request, CreateRollout):
            if rollout_id in self.machines:
                raise RolloutError(f"rollout {rollout_id} exists", reason="rollout_exists")
            self.machines[rollout_id] = RolloutMachine.create(rollout_id, request.spec, now)
            step.changed.add(rollout_id)
            self._start_planning(rollout_id)
            return "created; the plan follows on the plan topic"
        machine = self.machines.get(rollout_id)
        if machine is None:
            raise RolloutError(f"no rollout {rollout_id}", reason="unknown_rollout")
        effects: list[Effect]
        match request:
            case PreviewRollout():
                self._start_planning(rollout_id)
                return "planning; the plan follows on the plan topic"
            case StartRollout():
                effects = machine.start(request.plan_id, now)
            case PauseRollout():
                effects = machine.pause(request.reason)
            case ResumeRollout():
                effects = machine.resume(now)
            case AbortRollout():
                effects = machine.abort(request.reason or "aborted by an operator", now)
            case CancelDevice():
                effects = machine.cancel_device(request.device_serial)
            case RetryFailed():
                effects = machine.retry_failed(list(request.device_serials), now)
            case _:
                assert_never(request)
        await self._carry_out(machine, effects, now, step)
        step.changed.add(rollout_id)
        return ""

    async def _accept_key_change(self, request: AcceptKeyChange, step: _Step) -> str:
        """An operator accepts a device's pending project key (saved with this step's transaction)."""
        pending = await self._executor.call(self._store.pending_key_change, request.device_serial)
        if pending is None or pending.fingerprint != request.fingerprint:
            waiting = f"; waiting: {pending.fingerprint}" if pending is not None else ""
            raise RolloutError(
                f"no pending project key {request.fingerprint} for {request.device_serial}{waiting}",
                reason="no_pending_key_change",
            )
        step.accepted_key_changes.append((request.device_serial, request.fingerprint))
        return f"device {request.device_serial} now uses project key {request.fingerprint}"

    # --- planning (in the background: it asks Memfault about every candidate) ------------------

    def _start_planning(self, rollout_id: str) -> None:
        running = self._planning.get(rollout_id)
        if running is not None and not running.done():
            return
        self._planning[rollout_id] = asyncio.create_task(self._plan(rollout_id), name=f"plan-{rollout_id}")

    async def _plan(self, rollout_id: str) -> None:
        machine = self.machines[rollout_id]
        try:
            candidates, freshness = await self.registry.candidates(
                machine.spec.software_type, machine.spec.target_version
            )
        except MemfaultUnavailable as error:
            self._plans_ready[rollout_id] = ("", error)
            return
        self._candidates[rollout_id] = candidates
        self._freshness[rollout_id] = freshness
        self._plans_ready[rollout_id] = (uuid.uuid4().hex[:12], None)

    def _adopt_plans(self, now: datetime, step: _Step) -> None:
        for rollout_id, (plan_id, error) in list(self._plans_ready.items()):
            del self._plans_ready[rollout_id]
            machine = self.machines.get(rollout_id)
            if machine is None:
                continue
            if error is not None:
                step.audit.append(
                    AuditEvent(
                        at=now,
                        actor="controller",
                        action="plan_failed",
                        rollout_id=RolloutId(rollout_id),
                        detail=str(error)[:256],
                    )
                )
                continue
            candidates = self._candidates.pop(rollout_id, [])
            size = self.registry.artifact_sizes.get(machine.spec.target_version, 0)
            plan = plan_rollout(
                rollout_id,
                plan_id,
                machine.spec,
                candidates,
                now,
                image_size_bytes=size,
                throughput_bytes_per_s=self._settings.throughput_bytes_per_s,
                reboot_s=self._settings.reboot_s,
                gateway_success=self._flow().success_rate_by_gateway,
            )
            if (freshness := self._freshness.pop(rollout_id, None)) is not None:
                plan = msgspec.structs.replace(
                    plan,
                    memfault_answered=freshness.answered,
                    memfault_devices=freshness.devices,
                    memfault_oldest_answer_age_s=round(freshness.oldest_age_s, 1),
                )
            try:
                effects = machine.set_plan(plan)
            except RolloutError as refusal:
                log.info("plan not adopted", rollout=rollout_id, reason=str(refusal))
                continue
            self._audit(machine, effects, now, step)
            step.changed.add(rollout_id)
            step.plans.add(rollout_id)

    # --- effects -----------------------------------------------------------------------------

    async def _carry_out(
        self, machine: RolloutMachine, effects: list[Effect], now: datetime, step: _Step
    ) -> None:
        step.changed.add(machine.rollout_id)
        await self.registry.prefetch([effect.serial for effect in effects if isinstance(effect, Dispatch)])
        for effect in effects:
            match effect:
                case Dispatch():
                    await self._dispatch(machine, effect, now, step)
                case Cancel():
                    command = CancelJob(
                        job_id=JobId(effect.job_id),
                        reason=effect.reason[:256],
                        controller_epoch=self._lease_epoch,
                    )
                    topic = self._tree.topic(TopicKind.GATEWAY_COMMAND, gateway_id=effect.gateway_id)
                    step.commands.append((topic, channels.encode(command)))
                case GateDecided():
                    verdict = effect.decision.verdict.value
                    self.stats.gate_decisions[verdict] = self.stats.gate_decisions.get(verdict, 0) + 1
                    step.audit.append(
                        AuditEvent(
                            at=now,
                            actor="controller",
                            action=f"gate:{verdict}",
                            rollout_id=RolloutId(machine.rollout_id),
                            detail=effect.decision.reason,
                        )
                    )
                case Audit():
                    self._audit(machine, [effect], now, step)
                case _:
                    assert_never(effect)

    def _audit(self, machine: RolloutMachine, effects: list[Effect], now: datetime, step: _Step) -> None:
        for effect in effects:
            if isinstance(effect, Audit):
                step.audit.append(
                    AuditEvent(
                        at=now,
                        actor="controller",
                        action=effect.action,
                        rollout_id=RolloutId(machine.rollout_id),
                        detail=effect.detail[:256],
                    )
                )

    async def _dispatch(
        self, machine: RolloutMachine, dispatch: Dispatch, now: datetime, step: _Step
    ) -> None:
        started = asyncio.get_running_loop().time()
        target = machine.spec.target_version
        resolution = await self.registry.resolve(
            dispatch.serial, target, self._ran_hop.get(dispatch.serial, "")
        )
        install = resolution.install
        if resolution.hold_s > 0:
            # Nothing decided yet (a fresh answer is on its way, or Memfault is down): the device
            # waits, and nothing is counted against it, its gateway or the gates.
            if resolution.paused:
                self._pause_dispatch(machine, resolution.reason, now, step)
            more = machine.on_not_sent(dispatch.job_id, now, resolution.hold_s, resolution.reason)
            await self._carry_out(machine, more, now, step)
            return
        if install is None and same_version(resolution.current_version, target):
            # The device already runs the target (its result was lost, say, when a controller died
            # between the broker's acknowledgement and the inbox): done, nothing to flash.
            more = machine.on_result(
                dispatch.job_id, JobOutcome.SUCCEEDED, ReasonCode.ALREADY_ON_TARGET, False, now
            )
            log.info("already on target", device=dispatch.serial, version=resolution.current_version)
            await self._carry_out(machine, more, now, step)
            return
        if install is None:
            # Memfault gives this device nothing usable for the target (it offers another release,
            # answered garbage, 404...): the device leaves the rollout with why; nobody is blamed.
            log.info("dispatch excluded", device=dispatch.serial, why=resolution.reason)
            self.stats.memfault_excluded += 1
            more = machine.on_excluded(dispatch.job_id, f"memfault: {resolution.reason}")
            await self._carry_out(machine, more, now, step)
            return
        self._ran_hop.pop(dispatch.serial, None)
        ref = install.artifact
        command = OtaCommand(
            job_id=JobId(dispatch.job_id),
            rollout_id=RolloutId(machine.rollout_id),
            device_serial=DeviceSerial(dispatch.serial),
            attempt=min(dispatch.attempt, 100),
            issued_at=now,
            deadline=dispatch.deadline,
            artifact=Artifact(
                url=ref.url,
                size_bytes=ref.size_bytes,
                sha256=ref.sha256 or None,
                # md5 and sha1 travel only without sha256, so agents that predate them keep working.
                md5=None if ref.sha256 else ref.md5 or None,
                sha1=None if ref.sha256 else ref.sha1 or None,
            ),
            target_version=install.version,
            # A delta applies only from its exact From version: the agent checks the device runs it.
            expected_current_version=resolution.current_version if install.delta else None,
            allow_downgrade=machine.spec.allow_downgrade,
            controller_epoch=self._lease_epoch,
        )
        topic = self._tree.topic(TopicKind.GATEWAY_COMMAND, gateway_id=dispatch.gateway_id)
        payload = channels.encode(command)
        step.commands.append((topic, payload))
        self.stats.dispatched += 1
        self.dispatch_latency.observe(asyncio.get_running_loop().time() - started)

    def _pause_dispatch(self, machine: RolloutMachine, reason: str, now: datetime, step: _Step) -> None:
        """Note (once) that a rollout's dispatch waits for Memfault; `_resume_dispatch` ends it."""
        if machine.rollout_id in self._memfault_paused:
            return
        self._memfault_paused[machine.rollout_id] = reason[:256]
        step.changed.add(machine.rollout_id)
        step.audit.append(
            AuditEvent(
                at=now,
                actor="controller",
                action="dispatch_paused",
                rollout_id=RolloutId(machine.rollout_id),
                detail=reason[:256],
            )
        )

    def _resume_dispatch(self, now: datetime, step: _Step) -> None:
        """Memfault answers again: every rollout paused for it dispatches again by itself."""
        if not self._memfault_paused or self.correlation.outage():
            return
        for rollout_id in list(self._memfault_paused):
            del self._memfault_paused[rollout_id]
            step.changed.add(rollout_id)
            step.audit.append(
                AuditEvent(
                    at=now,
                    actor="controller",
                    action="dispatch_resumed",
                    rollout_id=RolloutId(rollout_id),
                    detail="memfault answers again",
                )
            )

    def state_of(self, machine: RolloutMachine, now: datetime) -> RolloutState:
        """A rollout's state message: how fresh Memfault's answers are, and an outage holding it."""
        state = machine.state(now)
        freshness = self._fleet_freshness(now.timestamp())
        changes: dict[str, object] = {
            "memfault_answered_ratio": round(freshness.answered_fraction, 4),
            "memfault_oldest_answer_age_s": round(freshness.oldest_age_s, 1),
        }
        reason = self._memfault_paused.get(machine.rollout_id)
        if reason and state.status is RolloutStatus.RUNNING and not state.paused_reason:
            changes["paused_reason"] = reason
        return msgspec.structs.replace(state, **changes)

    def _fleet_freshness(self, now_s: float) -> Freshness:
        """The view's freshness over the fleet, recomputed at most every `FRESHNESS_REFRESH_S`.

        It walks every device under the view's lock: at 100k devices, recomputing it every second
        took a tenth of the process during a rollout, for two informational fields of the state.
        """
        at_s, freshness = self._freshness_cache
        if freshness is None or abs(now_s - at_s) >= FRESHNESS_REFRESH_S:
            freshness = self.correlation.freshness()
            self._freshness_cache = (now_s, freshness)
        return freshness

    # --- gateways and flow ---------------------------------------------------------------------

    def _gateway_changes(self, previous: Mapping[str, GatewayRecord], now: datetime, step: _Step) -> None:
        for gateway_id, record in self.registry.gateways.items():
            before = previous.get(gateway_id)
            was_online = before is not None and before.online
            if was_online == record.online or not previous:
                continue
            for machine in self.machines.values():
                effects = (
                    machine.on_gateway_online(gateway_id, now)
                    if record.online
                    else machine.on_gateway_offline(gateway_id, now)
                )
                if effects or record.online:
                    step.changed.add(machine.rollout_id)
                for effect in effects:
                    if isinstance(effect, Cancel):
                        command = CancelJob(
                            job_id=JobId(effect.job_id),
                            reason=effect.reason,
                            controller_epoch=self._lease_epoch,
                        )
                        topic = self._tree.topic(TopicKind.GATEWAY_COMMAND, gateway_id=effect.gateway_id)
                        step.commands.append((topic, channels.encode(command)))

    def _flow(self) -> FlowView:
        per_gateway: dict[str, int] = {}
        per_site: dict[str, int] = {}
        outcomes: dict[str, list[int]] = {}
        for machine in self.machines.values():
            for gateway_id in machine.in_flight().values():
                per_gateway[gateway_id] = per_gateway.get(gateway_id, 0) + 1
                site = self.registry.gateways[gateway_id].site if gateway_id in self.registry.gateways else ""
                per_site[site] = per_site.get(site, 0) + 1
            for gateway_id, (ok, bad) in machine.gateway_record().items():
                tally = outcomes.setdefault(gateway_id, [0, 0])
                tally[0] += ok
                tally[1] += bad
        success_rate = {gateway_id: ok / (ok + bad) for gateway_id, (ok, bad) in outcomes.items() if ok + bad}
        return FlowView(
            in_flight_by_gateway=per_gateway,
            in_flight_by_site=per_site,
            success_rate_by_gateway=success_rate,
            links=self.registry.links,
        )

    # --- persistence and publication ------------------------------------------------------------

    async def _save_and_publish(self, step: _Step, now: datetime, now_s: float) -> list[PendingCommand]:
        if not (
            step.changed
            or step.commands
            or step.audit
            or step.handled
            or step.replies
            or step.refusals
            or step.accepted_key_changes
        ):
            return []
        records = []
        for rollout_id in sorted(step.changed):
            machine = self.machines.get(rollout_id)
            if machine is None:
                continue
            changes = machine.take_changes()
            records.append(
                RolloutRecord(
                    rollout_id,
                    machine.status.value,
                    changes.header,
                    changes.plan,
                    changes.devices,
                    changes.replace_devices,
                )
            )
        audit = [channels.encode(event) for event in step.audit]
        saved = await self._executor.call(
            self._store.save_transition,
            lease_epoch=self._lease_epoch,
            rollouts=records,
            commands=step.commands,
            audit=audit,
            now_s=now_s,
            handled_inbox=step.handled,
            replies=[(request_id, reply) for request_id, reply, _, _ in step.replies],
            accepted_key_changes=step.accepted_key_changes,
        )
        for record in records:
            machine = self.machines[record.rollout_id]
            topic = self._tree.topic(TopicKind.ROLLOUT_STATE, rollout_id=record.rollout_id)
            self._publish(Outbound(topic, channels.encode(self.state_of(machine, now)), qos=1, retain=True))
            if record.rollout_id in step.plans and machine.plan is not None:
                self._publish_plan(machine.plan)
        for payload in audit:
            self._publish(Outbound(self._tree.topic(TopicKind.AUDIT), payload, qos=1))
        for _, reply, topic, correlation in step.replies:
            self._publish(Outbound(topic, reply, qos=1, correlation_data=correlation))
        for topic, reply, correlation in step.refusals:
            self._publish(Outbound(topic, reply, qos=1, correlation_data=correlation))
        return saved

    def _publish_plan(self, plan: RolloutPlan) -> None:
        """The summary and its pages (pages first: a reader seeing the summary finds them retained)."""
        summary, pages = paginate_plan(plan)
        for page in pages:
            topic = self._tree.topic(
                TopicKind.ROLLOUT_PLAN_PAGE, rollout_id=plan.rollout_id, page=str(page.page)
            )
            self._publish(Outbound(topic, channels.encode(page), qos=1, retain=True))
        # Pages of a longer earlier plan would stay retained: an empty retained payload clears each.
        for number in range(len(pages), self._plan_pages.get(plan.rollout_id, 0)):
            topic = self._tree.topic(
                TopicKind.ROLLOUT_PLAN_PAGE, rollout_id=plan.rollout_id, page=str(number)
            )
            self._publish(Outbound(topic, b"", qos=1, retain=True))
        self._plan_pages[plan.rollout_id] = len(pages)
        plan_topic = self._tree.topic(TopicKind.ROLLOUT_PLAN, rollout_id=plan.rollout_id)
        self._publish(Outbound(plan_topic, channels.encode(summary), qos=1, retain=True))


def _rollout_of(request: OperatorRequest) -> RolloutId | None:
    """The rollout a request is about (None for a request about a device's key)."""
    return None if isinstance(request, AcceptKeyChange) else request.rollout_id
