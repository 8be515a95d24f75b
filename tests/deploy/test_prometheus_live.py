"""Every Grafana query against Debian's Prometheus scraping a live agent and controller.

A small rollout runs through a real mosquitto, simulated devices (one of them with a bad build, so
the failure panels have data), an agent and the controller, each serving `/metrics` from its
registry on a free loopback port with the server the CLIs use. Prometheus runs with the scrape
jobs, gateway file discovery and recording rules of deploy/prometheus (only targets and intervals
changed, to the live processes and one second). Dashboard variables are resolved from Prometheus,
as Grafana resolves them; then every panel query must parse, return data, read only series that
exist in Prometheus, and carry the labels its legend shows and its groupings name.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
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
    PROMETHEUS,
    PanelQuery,
    grouping_labels,
    load,
    metric_names,
    queries,
    template_variables,
    variable_query,
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
GATEWAY = "gw-0"
ROLLOUT = "r-dash"
START_WAIT_S = 20.0
DATA_WAIT_S = 45.0
CONTROLLER_JOB, AGENT_JOB = "mcufleet-controller", "mcufleet-agent"


def prometheus_config(tmp_path: Path, targets: dict[str, str]) -> Path:
    """deploy/prometheus/prometheus.yml pointed at the live processes, scraping every second.

    Job names, rule files and file discovery stay as deployed: the agent is listed in a gateway
    file with the labels of deploy/prometheus/gateways (so `gateway` exists, as in production).
    """
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    config["global"] = {**config.get("global", {}), "scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [
        str(path) for pattern in config["rule_files"] for path in PROMETHEUS.glob(pattern)
    ]
    assert config["rule_files"], "prometheus.yml loads no rule file"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == set(targets), f"scrape jobs {set(jobs)}, live processes {set(targets)}"
    example = yaml.safe_load(next((PROMETHEUS / "gateways").glob("*.yml")).read_text())
    for name, job in jobs.items():
        if "file_sd_configs" in job:
            listing = tmp_path / f"{name}.targets.yml"
            labels = {**example[0].get("labels", {}), "gateway": GATEWAY}
            listing.write_text(yaml.safe_dump([{"targets": [targets[name]], "labels": labels}]))
            job["file_sd_configs"] = [{"files": [str(listing)]}]
        else:
            job["static_configs"] = [{"targets": [targets[name]]}]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.asynccontextmanager
async def running_prometheus(
    tmp_path: Path, targets: dict[str, str], http: httpx.AsyncClient
) -> AsyncIterator[str]:
    """Debian's Prometheus with that config, ready; yields its base URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus not found: run `make test` (it installs Debian's prometheus package)")
    config = prometheus_config(tmp_path, targets)
    port = free_tcp_port()
    base_url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "prometheus.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        async def ready() -> bool:
            if process.returncode is not None:
                raise AssertionError(f"prometheus exited:\n{log_path.read_text(errors='replace')}")
            with contextlib.suppress(httpx.TransportError):
                return (await http.get(f"{base_url}/-/ready")).status_code == 200
            return False

        try:
            await wait_until(ready, timeout_s=START_WAIT_S, poll_s=0.1)
        except TimeoutError:
            raise AssertionError(f"prometheus not ready:\n{log_path.read_text(errors='replace')}") from None
        yield base_url
    finally:
        if process.returncode is None:
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 20)
        except TimeoutError:
            process.kill()
            await process.wait()


@contextlib.contextmanager
def serving(registry: CollectorRegistry) -> Iterator[str]:
    """`/metrics` of a registry on a free loopback port, as the CLIs serve it; yields host:port."""
    server = MetricsServer(registry, "127.0.0.1", 0)
    server.start()
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        server.stop()


async def api(http: httpx.AsyncClient, base_url: str, endpoint: str, **params: str) -> dict[str, Any]:
    """Prometheus's JSON answer (`status` and `data`, or `errorType` and `error`)."""
    response = await http.get(f"{base_url}/api/v1/{endpoint}", params=params)
    answer: dict[str, Any] = response.json()
    return answer


@dataclass
class Survey:
    """What Prometheus answered for every dashboard query, variables resolved as Grafana does."""

    base_url: str
    preferred: dict[str, str]
    answers: dict[PanelQuery, tuple[str, list[dict[str, Any]]]] = field(default_factory=dict)
    unresolved: list[str] = field(default_factory=list)

    async def variables(self, http: httpx.AsyncClient, path: Path) -> dict[str, str] | None:
        """A value for each query variable (the preferred one), or None while one has no options."""
        values: dict[str, str] = {}
        dashboard_queries = {query.title: query for query in queries(path) if query.label is not None}
        for variable in template_variables(load(path)):
            name = variable["name"]
            query = dashboard_queries.get(f"variable {name}")
            if query is None:  # a query_result() variable, or not a query variable at all
                raise AssertionError(
                    f"{path.name}: ${name} ({variable_query(variable)!r}) is not resolved here"
                )
            series = await self.run(http, query, query.filled(values))
            options = sorted(
                {item["metric"][query.label] for item in series if query.label in item["metric"]}
            )
            wanted = self.preferred.get(name, options[0] if options else "")
            if wanted not in options:
                self.unresolved.append(f"{path.name}: ${name} offers {options}, not {wanted!r} yet")
                return None
            values[name] = wanted
        return values

    async def run(self, http: httpx.AsyncClient, query: PanelQuery, expr: str) -> list[dict[str, Any]]:
        """Run one query; a parse or evaluation error fails the test at once."""
        answer = await api(http, self.base_url, "query", query=expr)
        assert answer["status"] == "success", f"{query.where}: {expr}: {answer}"
        result: list[dict[str, Any]] = answer["data"]["result"]
        self.answers[query] = (expr, result)
        return result

    async def complete(self, http: httpx.AsyncClient) -> bool:
        """Run every query once; True when each has returned data."""
        self.unresolved.clear()
        for path in DASHBOARDS:
            values = await self.variables(http, path)
            if values is None:
                continue
            for query in queries(path):
                await self.run(http, query, query.filled(values))
        return not self.unresolved and not self.empty()

    def empty(self) -> list[str]:
        """Queries whose last answer had no series."""
        return [f"{query.where}: {expr}" for query, (expr, result) in self.answers.items() if not result]


async def test_every_dashboard_query_returns_data_from_live_processes(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """Variables, parse, data, series names and labels: every query against a real scrape of a real run."""
    serials = [f"DEV-{i}" for i in range(5)]
    controller_registry, agent_registry = CollectorRegistry(), CollectorRegistry()
    async with (
        CloudEmulator() as cloud,
        simulated_devices(serials) as devices,
        running_controller(
            broker, cloud.base_url, f"sqlite:///{tmp_path / 'c.sqlite3'}", registry=controller_registry
        ) as controller,
        running_agent(
            agent_settings(GATEWAY, broker, tmp_path / GATEWAY, list(devices.endpoints.values())),
            registry=agent_registry,
        ),
        operator_client(broker) as client,
        httpx.AsyncClient(timeout=10) as http,
    ):
        with serving(controller_registry) as controller_target, serving(agent_registry) as agent_target:
            targets = {CONTROLLER_JOB: controller_target, AGENT_JOB: agent_target}
            async with running_prometheus(tmp_path, targets, http) as prometheus:
                publish_release(cloud, "1.1.0")
                # One device reverts: the failure panels (outcomes, reasons, failure ratio) get data.
                devices.device(serials[0]).faults = FaultPlan(bad_build_versions=frozenset({"1.1.0"}))
                await wait_until(lambda: registry_has(controller, len(serials)))
                await create_and_start(
                    client,
                    ROLLOUT,
                    RolloutSpec(software_type="app", target_version="1.1.0", waves=[WaveSpec(percent=100)]),
                )
                survey = Survey(
                    prometheus, {"instance": agent_target, "rollout": ROLLOUT, "gateway": GATEWAY}
                )
                try:
                    await wait_until(lambda: survey.complete(http), timeout_s=DATA_WAIT_S, poll_s=1.0)
                except TimeoutError:
                    missing = survey.unresolved + survey.empty()
                    raise AssertionError("queries without data:\n" + "\n".join(missing)) from None
                received = set((await api(http, prometheus, "label/__name__/values"))["data"])
                labels_by_name: dict[str, set[str]] = {}
                for expr, _ in survey.answers.values():
                    for name in metric_names(expr) - set(labels_by_name):
                        series = (await api(http, prometheus, "series", **{"match[]": name}))["data"]
                        labels_by_name[name] = {label for item in series for label in item}

    problems = []
    for query, (expr, result) in survey.answers.items():
        read = metric_names(expr)
        if missing_names := read - received:
            problems.append(f"{query.where}: reads {missing_names}, which Prometheus never received")
        available = {label for name in read for label in labels_by_name.get(name, set())}
        if ungrouped := grouping_labels(expr) - available:
            problems.append(f"{query.where}: groups by {ungrouped}, which no series it reads has")
        for series in result:
            if unlabelled := query.legend_labels() - set(series["metric"]):
                problems.append(f"{query.where}: legend shows {unlabelled}, absent from {series['metric']}")
    assert not problems, "\n".join(problems)
