"""The agent's Prometheus metrics: a collector that reads one frozen snapshot of the agent's counts.

The inventory, the runner and the cache already count what they do, so a scrape reads their counts
instead of keeping a second copy that could drift. The collector never sees those objects: it is
handed a function returning an `AgentReadings`, so a scrape can only read, and a test can hand it
any readings it likes. No device serial is ever a label.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from schemas import JobOutcome, Transport


@dataclass(frozen=True, slots=True)
class AgentReadings:
    """The agent's counts at one instant, as the collector exposes them."""

    devices_by_transport: Mapping[str, int] = field(default_factory=dict)
    probes: int = 0
    probe_failures: int = 0
    reports_published: int = 0
    smp_requests: int = 0
    smp_timeouts: int = 0
    smp_malformed_replies: int = 0
    smp_stray_replies: int = 0
    jobs_by_outcome: Mapping[str, int] = field(default_factory=dict)
    job_queue_depth: int = 0
    uploaded_bytes: int = 0
    results_published: int = 0
    artifact_cache_bytes: int = 0
    artifact_cache_max_bytes: int = 0
    artifact_cache_hits: int = 0
    artifact_cache_misses: int = 0
    artifact_downloaded_bytes: int = 0


class AgentCollector(Collector):
    """Yields the agent's metric families (names prefixed `mcufleet_agent_`) from `read()`."""

    def __init__(self, read: Callable[[], AgentReadings]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """Expose one snapshot of the counts."""
        readings = self._read()
        devices = GaugeMetricFamily(
            "mcufleet_agent_devices", "Devices currently reachable, by transport", labels=["transport"]
        )
        for transport in Transport:
            devices.add_metric([transport.value], readings.devices_by_transport.get(transport.value, 0))
        yield devices
        yield CounterMetricFamily("mcufleet_agent_probes", "Device probes attempted", value=readings.probes)
        yield CounterMetricFamily(
            "mcufleet_agent_probe_failures", "Device probes that got no answer", value=readings.probe_failures
        )
        yield CounterMetricFamily(
            "mcufleet_agent_reports_published", "Device reports queued", value=readings.reports_published
        )
        yield CounterMetricFamily(
            "mcufleet_agent_smp_requests", "SMP requests sent", value=readings.smp_requests
        )
        yield CounterMetricFamily(
            "mcufleet_agent_smp_timeouts",
            "SMP requests that got no reply in time",
            value=readings.smp_timeouts,
        )
        dropped = CounterMetricFamily(
            "mcufleet_agent_smp_replies_dropped",
            "SMP replies dropped: malformed frames, or replies matching no pending request",
            labels=["reason"],
        )
        dropped.add_metric(["malformed"], readings.smp_malformed_replies)
        dropped.add_metric(["stray"], readings.smp_stray_replies)
        yield dropped
        jobs = CounterMetricFamily("mcufleet_agent_jobs", "Jobs finished, by outcome", labels=["outcome"])
        for outcome in JobOutcome:
            jobs.add_metric([outcome.value], readings.jobs_by_outcome.get(outcome.value, 0))
        yield jobs
        yield GaugeMetricFamily(
            "mcufleet_agent_job_queue_depth", "Jobs waiting for a worker", value=readings.job_queue_depth
        )
        yield CounterMetricFamily(
            "mcufleet_agent_uploaded_bytes", "Image bytes written to devices", value=readings.uploaded_bytes
        )
        yield CounterMetricFamily(
            "mcufleet_agent_results_published",
            "Job results acknowledged by the broker",
            value=readings.results_published,
        )
        yield GaugeMetricFamily(
            "mcufleet_agent_artifact_cache_bytes",
            "Bytes held by the artifact cache",
            value=readings.artifact_cache_bytes,
        )
        yield GaugeMetricFamily(
            "mcufleet_agent_artifact_cache_max_bytes",
            "Artifact cache size cap",
            value=readings.artifact_cache_max_bytes,
        )
        yield CounterMetricFamily(
            "mcufleet_agent_artifact_cache_hits", "Artifact cache hits", value=readings.artifact_cache_hits
        )
        yield CounterMetricFamily(
            "mcufleet_agent_artifact_cache_misses",
            "Artifact cache misses",
            value=readings.artifact_cache_misses,
        )
        yield CounterMetricFamily(
            "mcufleet_agent_artifact_downloaded_bytes",
            "Artifact bytes downloaded",
            value=readings.artifact_downloaded_bytes,
        )
