"""The agent's metrics: the collector exposes only the readings it is handed, and a scrape only reads."""

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from agent.factory import build_agent
from agent.metrics import AgentCollector, AgentReadings
from agent.settings import AgentSettings, DownloadConfig
from schemas import JobOutcome, Transport


def _registry(readings: AgentReadings) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(AgentCollector(lambda: readings))
    return registry


def test_the_collector_exposes_the_readings_it_is_handed() -> None:
    """Each reading appears under its series name and labels, with its value."""
    registry = _registry(
        AgentReadings(
            devices_by_transport={Transport.UDP.value: 3},
            probes=10,
            probe_failures=2,
            smp_malformed_replies=4,
            smp_stray_replies=5,
            jobs_by_outcome={JobOutcome.SUCCEEDED.value: 7},
            job_queue_depth=1,
            uploaded_bytes=4096,
            artifact_cache_bytes=100,
            artifact_cache_max_bytes=1000,
        )
    )
    value = registry.get_sample_value
    assert value("mcufleet_agent_devices", {"transport": Transport.UDP.value}) == 3
    assert value("mcufleet_agent_devices", {"transport": Transport.BLE.value}) == 0
    assert value("mcufleet_agent_probes_total") == 10
    assert value("mcufleet_agent_probe_failures_total") == 2
    assert value("mcufleet_agent_smp_replies_dropped_total", {"reason": "malformed"}) == 4
    assert value("mcufleet_agent_smp_replies_dropped_total", {"reason": "stray"}) == 5
    assert value("mcufleet_agent_jobs_total", {"outcome": JobOutcome.SUCCEEDED.value}) == 7
    assert value("mcufleet_agent_jobs_total", {"outcome": JobOutcome.FAILED.value}) == 0
    assert value("mcufleet_agent_job_queue_depth") == 1
    assert value("mcufleet_agent_uploaded_bytes_total") == 4096
    assert value("mcufleet_agent_artifact_cache_bytes") == 100
    assert value("mcufleet_agent_artifact_cache_max_bytes") == 1000


async def test_a_real_agent_scraped_twice_answers_the_same(tmp_path: Path) -> None:
    """Two scrapes of a constructed agent's registry return the same text; readings are its own."""
    registry = CollectorRegistry()
    agent = build_agent(
        AgentSettings(
            gateway_id="gw-metrics",
            state_dir=str(tmp_path),
            downloads=DownloadConfig(cache_max_bytes=12345),
        ),
        registry=registry,
    )
    try:
        agent.inventory.stats.probes = 3
        first, second = generate_latest(registry), generate_latest(registry)
        assert first == second
        assert registry.get_sample_value("mcufleet_agent_probes_total") == 3
        assert registry.get_sample_value("mcufleet_agent_artifact_cache_max_bytes") == 12345
    finally:
        agent.journal.close()
