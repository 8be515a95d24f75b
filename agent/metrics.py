"""The agent's Prometheus metrics, read at scrape time from the objects that keep the counts.

A custom collector rather than module-level counters: the inventory, the runner and the cache already
count what they do, so a scrape reads them and nothing can drift. No device serial is ever a label.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from schemas import JobOutcome, Transport

if TYPE_CHECKING:
    from agent.service import AgentService


class AgentCollector(Collector):
    """Yields the agent's metric families (names prefixed `mcufleet_agent_`)."""

    def __init__(self, service: AgentService) -> None:
        self._service = service

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """Read the current counts."""
        service = self._service
        stats = service.inventory.stats
        devices = GaugeMetricFamily(
            "mcufleet_agent_devices", "Devices currently reachable, by transport", labels=["transport"]
        )
        for transport in Transport:
            devices.add_metric([transport.value], stats.by_transport.get(transport.value, 0))
        yield devices
        yield CounterMetricFamily("mcufleet_agent_probes", "Device probes attempted", value=stats.probes)
        yield CounterMetricFamily(
            "mcufleet_agent_probe_failures", "Device probes that got no answer", value=stats.probe_failures
        )
        yield CounterMetricFamily(
            "mcufleet_agent_reports_published", "Device reports queued", value=stats.reports
        )
        smp = service.smp_counters
        yield CounterMetricFamily("mcufleet_agent_smp_requests", "SMP requests sent", value=smp.requests)
        yield CounterMetricFamily(
            "mcufleet_agent_smp_timeouts", "SMP requests that got no reply in time", value=smp.timeouts
        )
        dropped = CounterMetricFamily(
            "mcufleet_agent_smp_replies_dropped",
            "SMP replies dropped: malformed frames, or replies matching no pending request",
            labels=["reason"],
        )
        dropped.add_metric(["malformed"], smp.malformed_replies)
        dropped.add_metric(["stray"], smp.stray_replies)
        yield dropped
        jobs = CounterMetricFamily("mcufleet_agent_jobs", "Jobs finished, by outcome", labels=["outcome"])
        for outcome in JobOutcome:
            jobs.add_metric([outcome.value], service.runner.outcomes.get(outcome, 0))
        yield jobs
        yield GaugeMetricFamily(
            "mcufleet_agent_job_queue_depth", "Jobs waiting for a worker", value=service.runner.queue_depth
        )
        yield CounterMetricFamily(
            "mcufleet_agent_uploaded_bytes",
            "Image bytes written to devices",
            value=service.runner.uploaded_bytes,
        )
        yield CounterMetricFamily(
            "mcufleet_agent_results_published",
            "Job results acknowledged by the broker",
            value=service.results_published,
        )
        cache_dir = service.fetcher.cache
        yield GaugeMetricFamily(
            "mcufleet_agent_artifact_cache_bytes",
            "Bytes held by the artifact cache",
            value=cache_dir.used_bytes(),
        )
        yield GaugeMetricFamily(
            "mcufleet_agent_artifact_cache_max_bytes", "Artifact cache size cap", value=cache_dir.max_bytes
        )
        cache = cache_dir.stats
        yield CounterMetricFamily(
            "mcufleet_agent_artifact_cache_hits", "Artifact cache hits", value=cache.hits
        )
        yield CounterMetricFamily(
            "mcufleet_agent_artifact_cache_misses", "Artifact cache misses", value=cache.misses
        )
        yield CounterMetricFamily(
            "mcufleet_agent_artifact_downloaded_bytes",
            "Artifact bytes downloaded",
            value=cache.downloaded_bytes,
        )
        yield CounterMetricFamily(
            "mcufleet_agent_commands_fenced",
            "Commands ignored because they came from a controller epoch below the highest obeyed",
            value=service.fenced_commands,
        )
