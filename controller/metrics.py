"""The controller's Prometheus metrics: a collector over a frozen snapshot, and the latency histograms.

The ingest path, the coordinator and the Memfault client already count what they do; a scrape reads
those counts through a function returning a `ControllerReadings`, so the collector never walks the
service and a scrape changes nothing. Latencies are `prometheus_client` histograms observed where
they are measured (fixed buckets: nothing grows, whether or not anything is ever scraped); the
service registers them next to the collector.

Label sets are bounded: statuses, outcomes, reasons and verdicts only. No device serial and no
gateway id is ever a label here (a fleet of 100,000 devices would explode the series count); per
gateway views come from each agent's own metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import get_args

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from controller.gateway_trust import REFUSAL_LABELS
from schemas import GateVerdict, JobOutcome, OperatorRequest, ReasonCode, ReplyStatus, RolloutStatus

LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

Family = GaugeMetricFamily | CounterMetricFamily


OPERATOR_OPS = tuple(str(member.__struct_config__.tag) for member in get_args(OperatorRequest))
"""Every operator request kind, as counted by op."""
MEMFAULT_STATUSES = ("200", "204", "400", "403", "429", "500", "502", "503", "malformed", "transport_error")
"""Statuses the Memfault client counts from 0 (others appear as they happen)."""


def memfault_latency_histogram() -> Histogram:
    """The Memfault API latency histogram, unregistered: its client observes, the service registers."""
    return Histogram(
        "mcufleet_controller_memfault_latency_seconds",
        "Memfault API latency",
        buckets=LATENCY_BUCKETS_S,
        registry=None,
    )


def dispatch_latency_histogram() -> Histogram:
    """The dispatch latency histogram, unregistered: the coordinator observes, the service registers."""
    return Histogram(
        "mcufleet_controller_dispatch_latency_seconds",
        "From a device becoming due to its command being acknowledged by the broker",
        buckets=LATENCY_BUCKETS_S,
        registry=None,
    )


@dataclass(frozen=True, slots=True)
class RolloutReading:
    """One rollout with a plan: devices per job state, and the wave it is in."""

    devices_by_state: Mapping[str, int]
    current_wave: int
    held_by_gate: GateVerdict | None = None
    """The failure gate's verdict (pause or abort) while it holds the rollout."""


@dataclass(frozen=True, slots=True)
class ControllerReadings:
    """The controller's counts at one instant, as the collector exposes them."""

    leader: bool = False
    gateways_online: int = 0
    gateways_offline: int = 0
    devices: int = 0
    devices_by_version: Mapping[tuple[str, str], int] = field(default_factory=dict)
    """(software type, version) -> devices."""
    reports_received: int = 0
    reports_applied: int = 0
    report_gaps: int = 0
    rebirths_requested: int = 0
    ingest_store_errors: int = 0
    """Report batches the store refused (each written again after a pause)."""
    memfault_requests_by_status: Mapping[str, int] = field(default_factory=dict)
    memfault_cache_hits: int = 0
    memfault_cache_misses: int = 0
    memfault_unanswered_by_reason: Mapping[str, int] = field(default_factory=dict)
    """Reason (`http_404`, `http_500`, `malformed`...) -> devices Memfault gave no usable answer."""
    memfault_outage: bool = False
    memfault_answered_fraction: float = 1.0
    """Devices with a Memfault answer for their current facts, over devices seen."""
    memfault_oldest_answer_age_s: float = 0.0
    memfault_excluded_at_dispatch: int = 0
    rollouts_by_status: Mapping[RolloutStatus, int] = field(default_factory=dict)
    jobs: Mapping[tuple[str, str], int] = field(default_factory=dict)
    """(outcome, reason) -> jobs finished."""
    gate_decisions: Mapping[str, int] = field(default_factory=dict)
    operator_requests: Mapping[tuple[str, str], int] = field(default_factory=dict)
    """(op, reply status) -> requests."""
    commands_dispatched: int = 0
    jobs_in_flight: int = 0
    rollouts: Mapping[str, RolloutReading] = field(default_factory=dict)
    """Rollout id -> its reading, for rollouts with a plan."""
    operator_reply_topics_refused: int = 0
    """Operator requests refused unread: their response topic was outside the operator reply subtree."""
    job_progress_dropped: int = 0
    """Job progress dropped unread: too many jobs' progress already waited for the next step."""
    unreadable_rollouts: int = 0
    """Stored rollouts the leader could not decode at its last load (left in the store, not run)."""
    gateway_messages_refused: Mapping[tuple[str, str], int] = field(default_factory=dict)
    """(kind, reason) -> gateway messages not believed (foreign results, refused project keys)."""


class ControllerCollector(Collector):
    """Yields the controller's metric families (names prefixed `mcufleet_controller_`) from `read()`."""

    def __init__(self, read: Callable[[], ControllerReadings]) -> None:
        self._read = read

    def collect(self) -> Iterator[Family]:
        """Expose one snapshot of the counts."""
        readings = self._read()
        yield GaugeMetricFamily(
            "mcufleet_controller_leader",
            "1 while this replica holds the scheduler lease",
            value=int(readings.leader),
        )
        yield from _registry(readings)
        yield from _ingest(readings)
        yield from _memfault(readings)
        yield from _rollouts(readings)
        yield _refusals(readings)


def _refusals(readings: ControllerReadings) -> CounterMetricFamily:
    refused = CounterMetricFamily(
        "mcufleet_controller_gateway_messages_refused",
        "Gateway messages not believed (foreign job results, refused project keys), by kind and reason",
        labels=["kind", "reason"],
    )
    counts = dict.fromkeys(REFUSAL_LABELS, 0) | dict(readings.gateway_messages_refused)
    for (kind, reason), count in sorted(counts.items()):
        refused.add_metric([kind, reason], count)
    return refused


def _registry(readings: ControllerReadings) -> Iterator[Family]:
    gateways = GaugeMetricFamily("mcufleet_controller_gateways", "Known gateways by state", labels=["state"])
    gateways.add_metric(["online"], readings.gateways_online)
    gateways.add_metric(["offline"], readings.gateways_offline)
    yield gateways
    yield GaugeMetricFamily("mcufleet_controller_devices", "Devices in the registry", value=readings.devices)
    versions = GaugeMetricFamily(
        "mcufleet_controller_devices_by_version",
        "Devices by software type and running version (bounded by the releases in use)",
        labels=["software_type", "version"],
    )
    for (software_type, version), count in sorted(readings.devices_by_version.items()):
        versions.add_metric([software_type, version], count)
    yield versions


def _ingest(readings: ControllerReadings) -> Iterator[Family]:
    yield CounterMetricFamily(
        "mcufleet_controller_reports_received", "Device reports received", value=readings.reports_received
    )
    yield CounterMetricFamily(
        "mcufleet_controller_reports_applied",
        "Device reports written to the store",
        value=readings.reports_applied,
    )
    yield CounterMetricFamily(
        "mcufleet_controller_report_gaps",
        "Gaps seen in gateways' report sequences",
        value=readings.report_gaps,
    )
    yield CounterMetricFamily(
        "mcufleet_controller_rebirths_requested",
        "Rebirths asked of gateways",
        value=readings.rebirths_requested,
    )
    yield CounterMetricFamily(
        "mcufleet_controller_ingest_store_errors",
        "Report batches the store refused (each kept and written again)",
        value=readings.ingest_store_errors,
    )


def _memfault(readings: ControllerReadings) -> Iterator[Family]:
    requests = CounterMetricFamily(
        "mcufleet_controller_memfault_requests", "Memfault API requests by HTTP status", labels=["status"]
    )
    statuses = dict.fromkeys(MEMFAULT_STATUSES, 0)
    for status, count in sorted({**statuses, **readings.memfault_requests_by_status}.items()):
        requests.add_metric([status], count)
    yield requests
    yield CounterMetricFamily(
        "mcufleet_controller_memfault_cache_hits", "Release cache hits", value=readings.memfault_cache_hits
    )
    yield CounterMetricFamily(
        "mcufleet_controller_memfault_cache_misses",
        "Release cache misses",
        value=readings.memfault_cache_misses,
    )
    unanswered = CounterMetricFamily(
        "mcufleet_controller_memfault_unanswered",
        "Devices Memfault gave no usable answer (they are excluded), by reason",
        labels=["reason"],
    )
    for reason, count in sorted(readings.memfault_unanswered_by_reason.items()):
        unanswered.add_metric([reason], count)
    yield unanswered
    yield CounterMetricFamily(
        "mcufleet_controller_memfault_excluded_at_dispatch",
        "Devices left out at dispatch: Memfault gave nothing usable for the target",
        value=readings.memfault_excluded_at_dispatch,
    )
    yield GaugeMetricFamily(
        "mcufleet_controller_memfault_outage",
        "1 while Memfault is unavailable (dispatch waits)",
        value=int(readings.memfault_outage),
    )
    yield GaugeMetricFamily(
        "mcufleet_controller_memfault_answered_ratio",
        "Devices with a Memfault answer for their current version, over devices seen",
        value=readings.memfault_answered_fraction,
    )
    yield GaugeMetricFamily(
        "mcufleet_controller_memfault_oldest_answer_age_seconds",
        "Age of the oldest standing Memfault answer",
        value=readings.memfault_oldest_answer_age_s,
    )


def _rollouts(readings: ControllerReadings) -> Iterator[Family]:
    rollouts = GaugeMetricFamily("mcufleet_controller_rollouts", "Rollouts by status", labels=["status"])
    for status in RolloutStatus:
        rollouts.add_metric([status.value], readings.rollouts_by_status.get(status, 0))
    yield rollouts
    jobs = CounterMetricFamily(
        "mcufleet_controller_jobs", "Jobs finished, by outcome and reason", labels=["outcome", "reason"]
    )
    # Every known label set from 0, so increase() and rate() see the first event too.
    job_counts = {(o.value, r.value): 0 for o in JobOutcome for r in ReasonCode}
    for (outcome, reason), count in sorted({**job_counts, **readings.jobs}.items()):
        jobs.add_metric([outcome, reason], count)
    yield jobs
    gates = CounterMetricFamily(
        "mcufleet_controller_gate_decisions", "Gate decisions that changed a rollout", labels=["verdict"]
    )
    verdicts = {verdict.value: 0 for verdict in GateVerdict}
    for verdict, count in sorted({**verdicts, **readings.gate_decisions}.items()):
        gates.add_metric([verdict], count)
    yield gates
    yield CounterMetricFamily(
        "mcufleet_controller_commands_dispatched",
        "OTA commands dispatched",
        value=readings.commands_dispatched,
    )
    yield GaugeMetricFamily(
        "mcufleet_controller_jobs_in_flight",
        "Jobs dispatched and not finished",
        value=readings.jobs_in_flight,
    )
    requests = CounterMetricFamily(
        "mcufleet_controller_operator_requests", "Operator requests by op and status", labels=["op", "status"]
    )
    known = {(op, status.value): 0 for op in OPERATOR_OPS for status in ReplyStatus}
    for (op, answer), count in sorted({**known, **readings.operator_requests}.items()):
        requests.add_metric([op, answer], count)
    yield requests
    yield CounterMetricFamily(
        "mcufleet_controller_operator_reply_topics_refused",
        "Operator requests refused unread: their response topic was outside the operator reply subtree",
        value=readings.operator_reply_topics_refused,
    )
    yield CounterMetricFamily(
        "mcufleet_controller_job_progress_dropped",
        "Job progress dropped unread: too many jobs' progress already waited for the next step",
        value=readings.job_progress_dropped,
    )
    yield GaugeMetricFamily(
        "mcufleet_controller_rollouts_unreadable",
        "Stored rollouts the leader could not decode at its last load (left in the store, not run)",
        value=readings.unreadable_rollouts,
    )
    per_rollout = GaugeMetricFamily(
        "mcufleet_controller_rollout_devices",
        "Devices of each unfinished or recent rollout by job state (bounded by the rollouts kept)",
        labels=["rollout", "state"],
    )
    current_wave = GaugeMetricFamily(
        "mcufleet_controller_rollout_current_wave", "The wave each rollout is in", labels=["rollout"]
    )
    held = GaugeMetricFamily(
        "mcufleet_controller_rollout_held_by_gate",
        "1 while the rollout's failure gate holds it (verdict pause or abort), for alerts by rollout",
        labels=["rollout", "verdict"],
    )
    for rollout_id, rollout in sorted(readings.rollouts.items()):
        for state, count in rollout.devices_by_state.items():
            per_rollout.add_metric([rollout_id, state], count)
        current_wave.add_metric([rollout_id], rollout.current_wave)
        for verdict in (GateVerdict.PAUSE, GateVerdict.ABORT):
            held.add_metric([rollout_id, verdict.value], int(rollout.held_by_gate is verdict))
    yield per_rollout
    yield current_wave
    yield held
