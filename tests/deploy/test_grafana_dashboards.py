"""The Grafana dashboards against a real Prometheus scraping a live agent and controller.

A small rollout runs through the real broker, the simulator, an agent and the controller, each
serving `/metrics`. Debian's Prometheus scrapes both every second with the recording rules of
deploy/prometheus loaded. Then every panel and variable query of every dashboard is sent to it:
each must parse, name only series the processes (or the recording rules) really export, keep
the labels it groups by, and return data.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry

from schemas import RolloutSpec, WaveSpec
from service_runtime.metrics_http import MetricsServer
from simulator.cloud import CloudEmulator
from simulator.device import FaultPlan
from tests.deploy.dashboards import (
    DASHBOARDS,
    DATASOURCE_UID,
    PanelQuery,
    load,
    metric_names,
    panels,
    queries,
)
from tests.harness.broker import MosquittoBroker
from tests.harness.ports import free_tcp_port
from tests.integration.test_rollout_e2e import create_and_start, registry_has
from tests.integration.world import (
    agent_settings,
    operator_client,
    publish_release,
    running_agent,
    running_controller,
    simulated_devices,
    wait_until,
)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/rules/mcufleet.rules.yml"
ROLLOUT = "r-dash"
DATA_WAIT_S = 60.0
_GROUPING = re.compile(r"\b(?:sum|max|min|avg|count)\s+by\s*\(([^)]*)\)")


def all_queries() -> list[PanelQuery]:
    """Every query of every dashboard."""
    return [query for path in DASHBOARDS for query in queries(path)]


def recorded_series() -> set[str]:
    """Names the recording rules produce."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}


def test_every_panel_uses_the_provisioned_datasource() -> None:
    """Panels and targets name the datasource uid that provisioning creates, so they resolve."""
    provisioned = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert [source["uid"] for source in provisioned["datasources"]] == [DATASOURCE_UID]
    for path in DASHBOARDS:
        for panel in panels(load(path)):
            if panel.get("type") == "row":
                continue
            assert panel["datasource"]["uid"] == DATASOURCE_UID, (path.name, panel.get("title"))
            assert panel.get("targets"), (path.name, panel.get("title"))
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == DATASOURCE_UID, (path.name, panel.get("title"))


@contextlib.contextmanager
def running_prometheus(tmp_path: Path, controller_port: int, agent_port: int) -> Iterator[str]:
    """Debian's Prometheus scraping both processes every second; yields its base URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus not found: run `make test` (it installs Debian's prometheus package)")
    port = free_tcp_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {
                "job_name": "mcufleet-controller",
                "static_configs": [{"targets": [f"127.0.0.1:{controller_port}"]}],
            },
            {"job_name": "mcufleet-agent", "static_configs": [{"targets": [f"127.0.0.1:{agent_port}"]}]},
        ],
    }
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@contextlib.asynccontextmanager
async def serving(registry: CollectorRegistry) -> AsyncIterator[int]:
    """`/metrics` of one registry on a free loopback port; yields the port."""
    server = MetricsServer(registry)
    server.start()
    try:
        yield server.port
    finally:
        server.stop()


async def query(http: httpx.AsyncClient, base_url: str, expr: str) -> dict[str, Any]:
    """Prometheus's answer to an instant query (status and data, or errorType and error)."""
    response = await http.get(f"{base_url}/api/v1/query", params={"query": expr})
    answer: dict[str, Any] = response.json()
    return answer


async def exported_names(http: httpx.AsyncClient, *ports: int) -> set[str]:
    """Metric family names as the processes expose them (suffixes included)."""
    names = set()
    for port in ports:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                names.add(line.split()[2])  # also families without samples yet (no label set seen)
            elif line and not line.startswith("#"):
                names.add(line.split("{")[0].split(" ")[0])
    return names


async def test_every_dashboard_query_returns_data_from_live_processes(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """Parse, names, grouping labels and data: every query, against a real scrape of a real run."""
    serials = [f"DEV-{i}" for i in range(5)]
    controller_registry, agent_registry = CollectorRegistry(), CollectorRegistry()
    async with (
        CloudEmulator() as cloud,
        simulated_devices(serials) as devices,
        running_controller(
            broker, cloud.base_url, f"sqlite:///{tmp_path / 'c.sqlite3'}", registry=controller_registry
        ) as controller,
        running_agent(
            agent_settings("gw-0", broker, tmp_path / "gw-0", list(devices.endpoints.values())),
            registry=agent_registry,
        ),
        serving(controller_registry) as controller_port,
        serving(agent_registry) as agent_port,
        operator_client(broker) as client,
        httpx.AsyncClient(timeout=10) as http,
    ):
        publish_release(cloud, "1.1.0")
        # One device reverts, so failure panels (outcomes, reasons, failure ratio) have data too.
        devices.device(serials[0]).faults = FaultPlan(bad_build_versions=frozenset({"1.1.0"}))
        await wait_until(lambda: registry_has(controller, len(serials)))
        with running_prometheus(tmp_path, controller_port, agent_port) as prometheus:
            await create_and_start(
                client,
                ROLLOUT,
                RolloutSpec(software_type="app", target_version="1.1.0", waves=[WaveSpec(percent=100)]),
            )
            variables = {"instance": f"127.0.0.1:{agent_port}", "rollout": ROLLOUT}
            pending = {q: q.filled(variables) for q in all_queries()}
            answers: dict[PanelQuery, dict[str, Any]] = {}

            async def all_have_data() -> bool:
                for panel_query, expr in list(pending.items()):
                    answer = await query(http, prometheus, expr)
                    answers[panel_query] = answer
                    assert answer["status"] == "success", (panel_query, answer)  # it parses
                    if answer["data"]["result"]:
                        del pending[panel_query]
                return not pending

            try:
                await wait_until(all_have_data, timeout_s=DATA_WAIT_S, poll_s=1.0)
            except TimeoutError:
                empty = [f"{q.dashboard}: {q.title}: {expr}" for q, expr in pending.items()]
                raise AssertionError("queries without data:\n" + "\n".join(empty)) from None
            known = await exported_names(http, controller_port, agent_port) | recorded_series()

    for panel_query, answer in answers.items():
        unknown = metric_names(panel_query.expr) - known
        assert not unknown, (
            f"{panel_query.dashboard}: {panel_query.title} reads {unknown}, which nothing exports"
        )
        for grouping in _GROUPING.findall(panel_query.expr):
            labels = {label.strip() for label in grouping.split(",") if label.strip()}
            for series in answer["data"]["result"]:
                assert labels <= set(series["metric"]), (panel_query, series)
