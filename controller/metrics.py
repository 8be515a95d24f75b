"""The controller's Prometheus metrics, read at scrape time from the objects that keep the counts.

Label sets are bounded: statuses, outcomes, reasons and verdicts only. No device serial and no
gateway id is ever a label here (a fleet of 100,000 devices would explode the series count); per
gateway views come from each agent's own metrics.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, get_args

import msgspec
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from schemas import GateVerdict, JobOutcome, OperatorRequest, ReasonCode, ReplyStatus, RolloutStatus

if TYPE_CHECKING:
    from controller.service import ControllerService

LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

Family = GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily


OPERATOR_OPS = tuple(str(member.__struct_config__.tag) for member in get_args(OperatorRequest))
"""Every operator request kind, as counted by op."""
MEMFAULT_STATUSES = ("200", "204", "400", "403", "429", "500", "502", "503", "malformed", "transport_error")
"""Statuses the Memfault client counts from 0 (others appear as they happen)."""


class ControllerCollector(Collector):
    """Yields the controller's metric families (names prefixed `mcufleet_controller_`)."""

    def __init__(self, service: ControllerService) -> None:
        self._service = service

    def collect(self) -> Iterator[Family]:
        """Read the current counts."""
        service = self._service
        yield GaugeMetricFamily(
            "mcufleet_controller_leader",
            "1 while this replica holds the scheduler lease",
            value=int(service.is_leader),
        )
        yield from self._registry()
        yield from self._ingest()
        yield from self._memfault()
        yield from self._rollouts()

    def _registry(self) -> Iterator[Family]:
        fleet = self._service.coordinator.fleet_view
        gateways = GaugeMetricFamily(
            "mcufleet_controller_gateways", "Known gateways by state", labels=["state"]
        )
        gateways.add_metric(["online"], fleet.gateways_online)
        gateways.add_metric(["offline"], fleet.gateways_offline)
        yield gateways
        yield GaugeMetricFamily("mcufleet_controller_devices", "Devices in the registry", value=fleet.devices)
        versions = GaugeMetricFamily(
            "mcufleet_controller_devices_by_version",
            "Devices by software type and running version (bounded by the releases in use)",
            labels=["software_type", "version"],
        )
        for (software_type, version), count in sorted(fleet.devices_by_version.items()):
            versions.add_metric([software_type, version], count)
        yield versions

    def _ingest(self) -> Iterator[Family]:
        stats = self._service.ingest.stats
        yield CounterMetricFamily(
            "mcufleet_controller_reports_received", "Device reports received", value=stats.reports_received
        )
        yield CounterMetricFamily(
            "mcufleet_controller_reports_applied",
            "Device reports written to the store",
            value=stats.reports_applied,
        )
        yield CounterMetricFamily(
            "mcufleet_controller_report_gaps",
            "Gaps seen in gateways' report sequences",
            value=stats.gaps_detected,
        )
        yield CounterMetricFamily(
            "mcufleet_controller_rebirths_requested",
            "Rebirths asked of gateways",
            value=stats.rebirths_requested,
        )

    def _memfault(self) -> Iterator[Family]:
        stats = self._service.coordinator.memfault.stats
        requests = CounterMetricFamily(
            "mcufleet_controller_memfault_requests", "Memfault API requests by HTTP status", labels=["status"]
        )
        statuses = dict.fromkeys(MEMFAULT_STATUSES, 0)
        for status, count in sorted({**statuses, **stats.requests_by_status}.items()):
            requests.add_metric([status], count)
        yield requests
        yield CounterMetricFamily(
            "mcufleet_controller_memfault_cache_hits", "Release cache hits", value=stats.cache_hits
        )
        yield CounterMetricFamily(
            "mcufleet_controller_memfault_cache_misses", "Release cache misses", value=stats.cache_misses
        )
        latency = self._service.coordinator.memfault_latency
        latency.absorb(stats.latencies_s)
        stats.latencies_s.clear()
        yield HistogramMetricFamily(
            "mcufleet_controller_memfault_latency_seconds",
            "Memfault API latency",
            buckets=latency.buckets(),
            sum_value=latency.sum_s,
        )

    def _rollouts(self) -> Iterator[Family]:
        coordinator = self._service.coordinator
        by_status = coordinator.rollouts_by_status()
        rollouts = GaugeMetricFamily("mcufleet_controller_rollouts", "Rollouts by status", labels=["status"])
        for status in RolloutStatus:
            rollouts.add_metric([status.value], by_status.get(status, 0))
        yield rollouts
        jobs = CounterMetricFamily(
            "mcufleet_controller_jobs", "Jobs finished, by outcome and reason", labels=["outcome", "reason"]
        )
        # Every known label set from 0, so increase() and rate() see the first event too.
        job_counts = {(o.value, r.value): 0 for o in JobOutcome for r in ReasonCode}
        for (outcome, reason), count in sorted({**job_counts, **coordinator.stats.jobs}.items()):
            jobs.add_metric([outcome, reason], count)
        yield jobs
        gates = CounterMetricFamily(
            "mcufleet_controller_gate_decisions", "Gate decisions that changed a rollout", labels=["verdict"]
        )
        verdicts = {verdict.value: 0 for verdict in GateVerdict}
        for verdict, count in sorted({**verdicts, **coordinator.stats.gate_decisions}.items()):
            gates.add_metric([verdict], count)
        yield gates
        yield CounterMetricFamily(
            "mcufleet_controller_commands_dispatched",
            "OTA commands dispatched",
            value=coordinator.stats.dispatched,
        )
        yield GaugeMetricFamily(
            "mcufleet_controller_jobs_in_flight",
            "Jobs dispatched and not finished",
            value=coordinator.in_flight(),
        )
        requests = CounterMetricFamily(
            "mcufleet_controller_operator_requests",
            "Operator requests by op and status",
            labels=["op", "status"],
        )
        known = {(op, status.value): 0 for op in OPERATOR_OPS for status in ReplyStatus}
        for (op, answer), count in sorted({**known, **coordinator.stats.operator_requests}.items()):
            requests.add_metric([op, answer], count)
        yield requests
        yield CounterMetricFamily(
            "mcufleet_controller_operator_reply_topics_refused",
            "Operator requests refused unread: their response topic was outside the operator reply subtree",
            value=coordinator.stats.reply_topics_refused,
        )
        per_rollout = GaugeMetricFamily(
            "mcufleet_controller_rollout_devices",
            "Devices of each unfinished or recent rollout by job state (bounded by the rollouts kept)",
            labels=["rollout", "state"],
        )
        current_wave = GaugeMetricFamily(
            "mcufleet_controller_rollout_current_wave", "The wave each rollout is in", labels=["rollout"]
        )
        for rollout_id, machine in sorted(coordinator.machines.items()):
            if machine.plan is None:
                continue
            for state, count in msgspec.structs.asdict(machine.counts()).items():
                per_rollout.add_metric([rollout_id, state], count)
            current_wave.add_metric([rollout_id], machine.state_wave())
        yield per_rollout
        yield current_wave
        dispatch = coordinator.dispatch_latency
        yield HistogramMetricFamily(
            "mcufleet_controller_dispatch_latency_seconds",
            "From a device becoming due to its command being acknowledged by the broker",
            buckets=dispatch.buckets(),
            sum_value=dispatch.sum_s,
        )


class LatencyHistogram:
    """A cumulative histogram kept by the code that measures, exposed by the collector."""

    def __init__(self, bounds_s: tuple[float, ...] = LATENCY_BUCKETS_S) -> None:
        self._bounds_s = bounds_s
        self._counts = [0] * (len(bounds_s) + 1)
        self.sum_s = 0.0

    def observe(self, value_s: float) -> None:
        """Count one measurement."""
        self.sum_s += value_s
        for index, bound in enumerate(self._bounds_s):
            if value_s <= bound:
                self._counts[index] += 1
                return
        self._counts[-1] += 1

    def absorb(self, values_s: list[float]) -> None:
        """Count several measurements."""
        for value in values_s:
            self.observe(value)

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative (upper bound, count) pairs, ending with +Inf."""
        cumulative = 0
        result = []
        for bound, count in zip([*map(str, self._bounds_s), "+Inf"], self._counts, strict=True):
            cumulative += count
            result.append((bound, float(cumulative)))
        return result
