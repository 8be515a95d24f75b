"""Rollouts as operators define them and as the controller publishes them: spec, plan, state, audit."""

import enum
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, TypeVar

import msgspec

from schemas.ids import (
    DeviceSerialField,
    GatewayId,
    GatewayIdField,
    RequestIdField,
    RolloutIdField,
    ShortText,
    Version,
)
from schemas.versions import InvalidVersion, version_key

T = TypeVar("T")
_ENCODER = msgspec.json.Encoder()

Percent = Annotated[float, msgspec.Meta(gt=0, le=100)]
Ratio = Annotated[float, msgspec.Meta(ge=0, le=1)]
Seconds = Annotated[float, msgspec.Meta(ge=0, le=30 * 24 * 3600)]
Count = Annotated[int, msgspec.Meta(ge=0, le=10_000_000)]
NameList = Annotated[list[ShortText], msgspec.Meta(max_length=10_000)]


class Selector(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which devices a rollout may touch; empty lists mean "any"."""

    hardware_versions: NameList = msgspec.field(default_factory=list)
    current_versions: NameList = msgspec.field(default_factory=list)
    gateways: list[GatewayIdField] = msgspec.field(default_factory=list)
    sites: NameList = msgspec.field(default_factory=list)
    serial_allow: list[DeviceSerialField] = msgspec.field(default_factory=list)
    serial_deny: list[DeviceSerialField] = msgspec.field(default_factory=list)


class WaveSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One wave: a cumulative share of the eligible devices, then a soak before the next wave."""

    percent: Percent | None = None
    """Cumulative share of eligible devices covered once this wave is done."""
    count: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] | None = None
    """Devices added by this wave (instead of `percent`)."""
    soak_s: Seconds = 0.0


class GateAction(enum.StrEnum):
    """What a tripped failure gate does."""

    PAUSE = "pause"
    ABORT = "abort"


class GateSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """When a wave may be promoted and when a rollout must stop."""

    success_threshold: Ratio = 0.95
    """Share of outcomes decided at the device that must succeed before promotion (docs/gates.md)."""
    min_sample: Count = 1
    """Decided outcomes below which a wave never promotes: it holds for an operator's resume."""
    failure_threshold: Ratio = 0.2
    """Failure rate whose lower confidence bound trips the gate."""
    failure_min_sample: Count = 3
    confidence: Annotated[float, msgspec.Meta(gt=0.5, lt=1)] = 0.9
    on_failure: GateAction = GateAction.PAUSE


class RetrySpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Per-device retries of retryable failures."""

    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=20)] = 3
    backoff_s: Seconds = 30.0
    backoff_factor: Annotated[float, msgspec.Meta(ge=1, le=10)] = 2.0


class PenaltySpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The penalty box: devices that keep failing are parked, gateways that keep failing cool down.

    Load shedding (gateway_busy) and Memfault outages never count against a device or a gateway.
    """

    device_failures: Annotated[int, msgspec.Meta(ge=1, le=100)] = 2
    """Failed attempts within `device_window_s` that park a device until an operator retries it."""
    device_window_s: Seconds = 3600.0
    gateway_failures: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 5
    """Devices with a transport failure through a gateway (unreachable, upload failed, timed out)
    within `gateway_window_s` that stop new jobs to it for a cooling period; its devices go to
    other gateways that hear them. Devices, not failures: one dark device must not cool them all."""
    gateway_window_s: Seconds = 600.0
    gateway_cooldown_s: Seconds = 300.0
    """The first cooling period; each further one in a row doubles, up to `gateway_cooldown_max_s`."""
    gateway_cooldown_max_s: Seconds = 3600.0


class FlowSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How fast jobs start."""

    max_in_flight: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 50
    max_in_flight_per_gateway: Annotated[int, msgspec.Meta(ge=1, le=64)] = 2
    max_in_flight_per_site: Annotated[int, msgspec.Meta(ge=1, le=100_000)] | None = None
    starts_per_minute: Annotated[float, msgspec.Meta(gt=0, le=1_000_000)] | None = None
    ramp_initial_in_flight: Annotated[int, msgspec.Meta(ge=1)] | None = None
    """When set, the in-flight cap starts here and doubles after each success until the cap."""


class WindowEnd(enum.StrEnum):
    """What happens to a job still running when its maintenance window closes."""

    FINISH = "finish"
    """It runs to its end (the window bounds starts only)."""
    CANCEL = "cancel"
    """It is canceled unless it already asked for its test boot (the agent finishes those); the
    device starts again in the next window, its attempt given back."""


class MaintenanceWindow(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A recurring window in which jobs may start (five-field Vixie cron in the given time zone)."""

    cron: Annotated[str, msgspec.Meta(min_length=9, max_length=128)]
    duration_s: Annotated[float, msgspec.Meta(gt=0, le=7 * 24 * 3600)]
    timezone: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] = "UTC"
    at_end: WindowEnd = WindowEnd.FINISH


class PhaseDeadlines(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A job without progress for longer than its phase allows is TIMED_OUT."""

    job_total_s: Seconds = 3600.0
    no_progress_s: Seconds = 300.0
    unreachable_s: Seconds = 600.0
    """How long a device that no online gateway hears is waited for before it counts as unreachable
    (a gateway restarting or a short site outage must not end a wave without its devices)."""


class RolloutSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What an operator asks for: bring the selected devices of one software type to one release."""

    software_type: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    target_version: Version
    selector: Selector = msgspec.field(default_factory=Selector)
    waves: Annotated[list[WaveSpec], msgspec.Meta(min_length=1, max_length=20)] = msgspec.field(
        default_factory=lambda: [WaveSpec(percent=100.0)]
    )
    gates: GateSpec = msgspec.field(default_factory=GateSpec)
    retry: RetrySpec = msgspec.field(default_factory=RetrySpec)
    penalty: PenaltySpec = msgspec.field(default_factory=PenaltySpec)
    flow: FlowSpec = msgspec.field(default_factory=FlowSpec)
    windows: Annotated[list[MaintenanceWindow], msgspec.Meta(max_length=16)] = msgspec.field(
        default_factory=list
    )
    deadlines: PhaseDeadlines = msgspec.field(default_factory=PhaseDeadlines)
    allow_downgrade: bool = False

    def __post_init__(self) -> None:
        """A target that cannot be ordered is refused here: every later comparison may rely on it."""
        try:
            version_key(self.target_version)
        except InvalidVersion as error:
            raise ValueError(f"target_version: {error}") from None


class RolloutStatus(enum.StrEnum):
    """Lifecycle of a rollout."""

    CREATED = "created"
    PLANNED = "planned"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    ABORTED = "aborted"


class DeviceJobState(enum.StrEnum):
    """Where one device stands in a rollout."""

    PENDING = "pending"
    WAITING = "waiting"
    """Waiting for a radio slot, a window or a backoff: consumes no attempt."""
    IN_FLIGHT = "in_flight"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    TIMED_OUT = "timed_out"
    REVERTED = "reverted"
    CANCELED = "canceled"
    UNREACHABLE = "unreachable"
    PARKED = "parked"
    """In the penalty box: failed `penalty.device_failures` times lately; out until `retry_failed`."""


class PlannedDevice(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """One device in a plan: serial, the gateway chosen for it, hardware version."""

    device_serial: DeviceSerialField
    gateway_id: GatewayIdField
    hardware_version: ShortText


class PlannedWave(msgspec.Struct, frozen=True, kw_only=True):
    """One wave of a plan."""

    index: int
    devices: list[PlannedDevice]
    soak_s: float = 0.0
    expected_start: datetime | None = None
    """When the wave's first job is expected to start (None: no maintenance window ever opens)."""
    expected_end: datetime | None = None
    """When its last job is expected to end, before its soak (windows, start rate, ramp, retries)."""


class ExcludedDevice(msgspec.Struct, frozen=True, kw_only=True):
    """A device the selector matched but the plan leaves out, with the reason."""

    device_serial: DeviceSerialField
    reason: ShortText


class RolloutPlan(msgspec.Struct, frozen=True, kw_only=True):
    """The preview (dry run) of a rollout, whole: published as a `RolloutPlanSummary` and its pages."""

    rollout_id: RolloutIdField
    plan_id: ShortText
    created_at: datetime
    software_type: ShortText
    target_version: ShortText
    waves: list[PlannedWave]
    excluded: list[ExcludedDevice] = msgspec.field(default_factory=list)
    image_size_bytes: int = 0
    estimated_duration_s: float = 0.0
    memfault_devices: int = 0
    """Devices of the software type the plan asked Memfault about."""
    memfault_answered: int = 0
    """Of those, how many had an answer for their current version when the plan was made."""
    memfault_oldest_answer_age_s: float = 0.0
    """Age of the oldest of those answers (Memfault's artifact links last 6 hours)."""


PLAN_PAGE_BUDGET_BYTES = 128 * 1024
"""Device lists are cut into pages of at most this many encoded bytes (the shipped broker's
`message_size_limit` is 256 KB), so a retained plan fits the broker at any fleet size."""
MAX_GATEWAYS_IN_PLAN_WAVE = 32
"""A wave's summary names at most this many gateways (those with the most devices)."""
MAX_EXCLUDED_IN_SUMMARY = 50
"""The summary carries this many exclusions as a sample; all of them are on the pages."""


class PlanGatewayShare(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """How many devices of a wave one gateway was chosen for."""

    gateway_id: GatewayIdField
    devices: Annotated[int, msgspec.Meta(ge=0)]


class PlannedWaveSummary(msgspec.Struct, frozen=True, kw_only=True):
    """One wave of a plan, without its devices (they are on pages `first_page` ... + `pages` - 1)."""

    index: int
    size: Annotated[int, msgspec.Meta(ge=0)]
    soak_s: float = 0.0
    gateways: Annotated[list[PlanGatewayShare], msgspec.Meta(max_length=MAX_GATEWAYS_IN_PLAN_WAVE)] = (
        msgspec.field(default_factory=list)
    )
    """The gateways with the most devices in this wave."""
    gateway_count: Annotated[int, msgspec.Meta(ge=0)] = 0
    first_page: Annotated[int, msgspec.Meta(ge=0)] = 0
    pages: Annotated[int, msgspec.Meta(ge=0)] = 0
    expected_start: datetime | None = None
    expected_end: datetime | None = None


class RolloutPlanSummary(msgspec.Struct, frozen=True, kw_only=True):
    """The retained plan topic: everything but the device lists, which are on the plan's pages.

    Starting names `plan_id`. A reader wanting every device reads pages 0 .. `pages` - 1 of
    `rollout/<rollout>/plan/<page>` and keeps only pages whose `plan_id` matches.
    """

    rollout_id: RolloutIdField
    plan_id: ShortText
    created_at: datetime
    software_type: ShortText
    target_version: ShortText
    waves: Annotated[list[PlannedWaveSummary], msgspec.Meta(max_length=20)]
    devices: Annotated[int, msgspec.Meta(ge=0)] = 0
    excluded_count: Annotated[int, msgspec.Meta(ge=0)] = 0
    excluded_sample: Annotated[list[ExcludedDevice], msgspec.Meta(max_length=MAX_EXCLUDED_IN_SUMMARY)] = (
        msgspec.field(default_factory=list)
    )
    excluded_first_page: Annotated[int, msgspec.Meta(ge=0)] = 0
    excluded_pages: Annotated[int, msgspec.Meta(ge=0)] = 0
    pages: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Pages in all (device pages of every wave, then exclusion pages)."""
    image_size_bytes: int = 0
    estimated_duration_s: float = 0.0
    memfault_devices: int = 0
    """Devices of the software type the plan asked Memfault about."""
    memfault_answered: int = 0
    """Of those, how many had an answer for their current version when the plan was made."""
    memfault_oldest_answer_age_s: float = 0.0
    """Age of the oldest of those answers (Memfault's artifact links last 6 hours)."""


class RolloutPlanPage(msgspec.Struct, frozen=True, kw_only=True):
    """One retained page of a plan: devices of one wave, or (`wave` None) excluded devices."""

    rollout_id: RolloutIdField
    plan_id: ShortText
    page: Annotated[int, msgspec.Meta(ge=0)]
    wave: int | None = None
    devices: Annotated[list[PlannedDevice], msgspec.Meta(max_length=100_000)] = msgspec.field(
        default_factory=list
    )
    excluded: Annotated[list[ExcludedDevice], msgspec.Meta(max_length=100_000)] = msgspec.field(
        default_factory=list
    )


def _pages_of(items: list[T], budget_bytes: int) -> list[list[T]]:
    """Cut `items` into runs whose JSON encodings add up to at most `budget_bytes` (at least one each)."""
    pages: list[list[T]] = []
    page: list[T] = []
    used = 0
    for item in items:
        size = len(_ENCODER.encode(item)) + 1
        if page and used + size > budget_bytes:
            pages.append(page)
            page, used = [], 0
        page.append(item)
        used += size
    if page:
        pages.append(page)
    return pages


def paginate_plan(
    plan: RolloutPlan, budget_bytes: int = PLAN_PAGE_BUDGET_BYTES
) -> tuple[RolloutPlanSummary, list[RolloutPlanPage]]:
    """The summary and pages a plan is published as (pages numbered from 0, wave by wave)."""
    pages: list[RolloutPlanPage] = []
    waves = []
    for wave in plan.waves:
        first = len(pages)
        for devices in _pages_of(list(wave.devices), budget_bytes):
            pages.append(
                RolloutPlanPage(
                    rollout_id=plan.rollout_id,
                    plan_id=plan.plan_id,
                    page=len(pages),
                    wave=wave.index,
                    devices=devices,
                )
            )
        per_gateway: dict[str, int] = {}
        for device in wave.devices:
            per_gateway[device.gateway_id] = per_gateway.get(device.gateway_id, 0) + 1
        busiest = sorted(per_gateway.items(), key=lambda item: (-item[1], item[0]))[
            :MAX_GATEWAYS_IN_PLAN_WAVE
        ]
        waves.append(
            PlannedWaveSummary(
                index=wave.index,
                size=len(wave.devices),
                soak_s=wave.soak_s,
                gateways=[PlanGatewayShare(gateway_id=GatewayId(g), devices=n) for g, n in busiest],
                gateway_count=len(per_gateway),
                first_page=first,
                pages=len(pages) - first,
                expected_start=wave.expected_start,
                expected_end=wave.expected_end,
            )
        )
    excluded_first = len(pages)
    for excluded in _pages_of(list(plan.excluded), budget_bytes):
        pages.append(
            RolloutPlanPage(
                rollout_id=plan.rollout_id, plan_id=plan.plan_id, page=len(pages), excluded=excluded
            )
        )
    summary = RolloutPlanSummary(
        rollout_id=plan.rollout_id,
        plan_id=plan.plan_id,
        created_at=plan.created_at,
        software_type=plan.software_type,
        target_version=plan.target_version,
        waves=waves,
        devices=sum(wave.size for wave in waves),
        excluded_count=len(plan.excluded),
        excluded_sample=list(plan.excluded[:MAX_EXCLUDED_IN_SUMMARY]),
        excluded_first_page=excluded_first,
        excluded_pages=len(pages) - excluded_first,
        pages=len(pages),
        image_size_bytes=plan.image_size_bytes,
        estimated_duration_s=plan.estimated_duration_s,
        memfault_devices=plan.memfault_devices,
        memfault_answered=plan.memfault_answered,
        memfault_oldest_answer_age_s=plan.memfault_oldest_answer_age_s,
    )
    return summary, pages


def assemble_plan(summary: RolloutPlanSummary, pages: Mapping[int, RolloutPlanPage]) -> RolloutPlan | None:
    """The whole plan from its summary and pages (None while a page of this plan is missing)."""
    wanted = [pages.get(number) for number in range(summary.pages)]
    if any(page is None or page.plan_id != summary.plan_id for page in wanted):
        return None
    found = [page for page in wanted if page is not None]
    waves = [
        PlannedWave(
            index=wave.index,
            soak_s=wave.soak_s,
            expected_start=wave.expected_start,
            expected_end=wave.expected_end,
            devices=[
                device
                for page in found[wave.first_page : wave.first_page + wave.pages]
                for device in page.devices
            ],
        )
        for wave in summary.waves
    ]
    excluded = [
        device
        for page in found[summary.excluded_first_page : summary.excluded_first_page + summary.excluded_pages]
        for device in page.excluded
    ]
    return RolloutPlan(
        rollout_id=summary.rollout_id,
        plan_id=summary.plan_id,
        created_at=summary.created_at,
        software_type=summary.software_type,
        target_version=summary.target_version,
        waves=waves,
        excluded=excluded,
        image_size_bytes=summary.image_size_bytes,
        estimated_duration_s=summary.estimated_duration_s,
        memfault_devices=summary.memfault_devices,
        memfault_answered=summary.memfault_answered,
        memfault_oldest_answer_age_s=summary.memfault_oldest_answer_age_s,
    )


class StateCounts(msgspec.Struct, frozen=True, kw_only=True):
    """Devices per job state."""

    pending: int = 0
    waiting: int = 0
    in_flight: int = 0
    succeeded: int = 0
    failed: int = 0
    rejected: int = 0
    timed_out: int = 0
    reverted: int = 0
    canceled: int = 0
    unreachable: int = 0
    parked: int = 0


class GateVerdict(enum.StrEnum):
    """A gate's decision."""

    WAIT = "wait"
    PROMOTE = "promote"
    PAUSE = "pause"
    ABORT = "abort"


class GateDecision(msgspec.Struct, frozen=True, kw_only=True):
    """A gate evaluation that changed something, with the numbers to check it by hand (docs/gates.md)."""

    at: datetime
    wave: int
    verdict: GateVerdict
    reason: ShortText = ""
    attempted: int = 0
    """Jobs of the wave that ended with a result: `decided` plus `not_counted`."""
    succeeded: int = 0
    failed: int = 0
    """Failures decided at the device (failed upload, failed boot, verify, timeout after progress)."""
    decided: int = 0
    """The denominator: `succeeded` plus `failed`."""
    not_counted: int = 0
    """Jobs that ended before reaching the device (rejected, expired, unheard): never counted."""
    remaining: int = 0
    """Devices of the wave whose job had not ended."""
    failure_rate: float = 0.0
    failure_lower_bound: float = 0.0
    short_sample: bool = False
    """Fewer than `min_sample` decided: held for an operator (or promoted on one's resume)."""


class WaveState(msgspec.Struct, frozen=True, kw_only=True):
    """Counts of one wave, and the gate's evidence so far."""

    index: int
    size: int
    counts: StateCounts
    decided: int = 0
    """Outcomes decided at the device (the gate's denominator)."""
    decided_failed: int = 0
    not_counted: int = 0
    """Ended before reaching the device: shown apart, never for or against the release."""


MAX_GATEWAYS_IN_STATE = 256
"""The state lists at most this many gateways (the busiest first), so it stays one small message."""


class GatewayProgress(msgspec.Struct, frozen=True, kw_only=True):
    """One gateway's share of a rollout."""

    gateway_id: GatewayIdField
    in_flight: Annotated[int, msgspec.Meta(ge=0)] = 0
    succeeded: Annotated[int, msgspec.Meta(ge=0)] = 0
    failed: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Attempts through this gateway that ended without success (a device may retry elsewhere)."""
    cooled_until: datetime | None = None
    """While set and in the future, the gateway gets no new jobs (the penalty box)."""


class RolloutState(msgspec.Struct, frozen=True, kw_only=True):
    """The controller's retained view of a rollout, republished on every change."""

    rollout_id: RolloutIdField
    status: RolloutStatus
    software_type: ShortText
    target_version: ShortText
    plan_id: ShortText = ""
    current_wave: int = 0
    waves: list[WaveState] = msgspec.field(default_factory=list)
    counts: StateCounts = msgspec.field(default_factory=StateCounts)
    gate_decisions: list[GateDecision] = msgspec.field(default_factory=list)
    paused_reason: ShortText = ""
    gateways: Annotated[list[GatewayProgress], msgspec.Meta(max_length=MAX_GATEWAYS_IN_STATE)] = (
        msgspec.field(default_factory=list)
    )
    updated_at: datetime
    memfault_answered_ratio: float = 1.0
    """Fleet devices with a Memfault answer for their current version (the standing correlation)."""
    memfault_oldest_answer_age_s: float = 0.0
    """Age of the oldest of those answers (they are refreshed well before links expire at 6 h)."""


class AuditEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One line of the append-only audit log: an operator command or a rollout transition."""

    at: datetime
    actor: ShortText
    action: ShortText
    rollout_id: RolloutIdField | None = None
    request_id: RequestIdField | None = None
    detail: ShortText = ""
