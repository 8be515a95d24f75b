"""Every Grafana query against Debian's Prometheus scraping a live agent and controller.

A small rollout runs through a real mosquitto, five simulated devices, an agent and the
controller, each serving `/metrics` from its registry on a free loopback port with the server the
CLIs use. One device has a bad build (it reverts) and one malformed command reaches the agent, so
the failure panels read real series too. Prometheus runs with the scrape jobs, gateway file
discovery and recording rules of deploy/prometheus, only targets and intervals changed (to the
live processes, one second). Dashboard variables are resolved from Prometheus as Grafana resolves
them; then every panel query must parse, return data, read only series Prometheus received, and
carry the labels its legend shows and its groupings name.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
import pytest_asyncio
import yaml
from prometheus_client import CollectorRegistry

from controller.service import ControllerService
from schemas import RolloutSpec, TopicKind, WaveSpec
from service_runtime.metrics_http import MetricsServer
from simulator.cloud import CloudEmulator
from simulator.device import FaultPlan
from simulator.server import FleetServer
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
from tests.harness.ready_process import ready_process
from tests.integration.world import (
    TREE,
    agent_settings,
    create_and_start,
    operator_client,
    publish_release,
    registry_has,
    running_agent,
    running_controller,
    simulated_devices,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]
GATEWAY = "gw-0"
ROLLOUT = "r-dash"
START_WAIT_S = 20.0
DATA_WAIT_S = 45.0
CONTROLLER_JOB, AGENT_JOB = "mcufleet-controller", "mcufleet-agent"


def prometheus_config(tmp_path: Path, targets: dict[str, str], alertmanager: str | None = None) -> Path:
    """deploy/prometheus/prometheus.yml pointed at the live processes, scraping every second.

    Job names, rule files and file discovery stay as deployed: the agent is listed in a gateway
    file with the labels of deploy/prometheus/gateways (so `gateway` exists, as in production).
    Alerts go to `alertmanager` (host:port) if given, else nowhere (never to the deployed host name).
    """
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    config["global"] = {**config.get("global", {}), "scrape_interval": "1s", "evaluation_interval": "1s"}
    assert config["alerting"]["alertmanagers"], "prometheus.yml sends alerts nowhere"
    if alertmanager is None:
        del config["alerting"]
    else:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
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
    tmp_path: Path, targets: dict[str, str], http: httpx.AsyncClient, alertmanager: str | None = None
) -> AsyncIterator[str]:
    """Debian's Prometheus with that config, ready; yields its base URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus not found: run `make test` (it installs Debian's prometheus package)")
    config = prometheus_config(tmp_path, targets, alertmanager)
    port = free_tcp_port()
    base_url = f"http://127.0.0.1:{port}"
    argv = (
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    )
    log_path = tmp_path / "prometheus.log"
    async with ready_process(
        "prometheus",
        argv,
        log_path=log_path,
        ready_url=f"{base_url}/-/ready",
        http=http,
        timeout_s=START_WAIT_S,
    ):
        yield base_url


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


async def all_scraped(http: httpx.AsyncClient, base_url: str, jobs: set[str]) -> bool:
    """Whether Prometheus has scraped every job successfully (`up` is 1)."""
    answer = await api(http, base_url, "query", query="up == 1")
    return {series["metric"]["job"] for series in answer["data"]["result"]} == jobs


@dataclass
class Survey:
    """What Prometheus answered for every dashboard query, variables resolved as Grafana does."""

    base_url: str
    preferred: dict[str, str]
    answers: dict[PanelQuery, tuple[str, list[dict[str, Any]]]] = field(default_factory=dict)
    errors: dict[PanelQuery, str] = field(default_factory=dict)
    unresolved: list[str] = field(default_factory=list)
    received: set[str] = field(default_factory=set)

    async def variables(self, http: httpx.AsyncClient, path: Path) -> dict[str, str] | None:
        """A value for each variable (the preferred one), or None while a query variable has no options."""
        values: dict[str, str] = {}
        dashboard_queries = {query.title: query for query in queries(path) if query.label is not None}
        for variable in template_variables(load(path)):
            name = variable["name"]
            if variable.get("type") != "query":  # custom, interval, constant: what the JSON says
                values[name] = str((variable.get("current") or {}).get("value", ""))
                continue
            query = dashboard_queries.get(f"variable {name}")
            if query is None:  # a query_result() variable: no label to read values from
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
        """Run one query and remember the answer (an error counts as no data, and is kept)."""
        answer = await api(http, self.base_url, "query", query=expr)
        result: list[dict[str, Any]] = []
        if answer["status"] == "success":
            result = answer["data"]["result"]
        else:
            self.errors[query] = f"{answer.get('errorType')}: {answer.get('error')}"
        self.answers[query] = (expr, result)
        return result

    async def complete(self, http: httpx.AsyncClient) -> bool:
        """Run every query once; True when each has returned data and read only received series.

        Both are awaited, not sampled once: a series appears a scrape after the event that creates
        it (an `or vector(0)` query has data before its series exists, hence the second condition).
        """
        self.unresolved.clear()
        for path in DASHBOARDS:
            values = await self.variables(http, path)
            if values is None:
                continue
            for query in queries(path):
                await self.run(http, query, query.filled(values))
        self.received = set((await api(http, self.base_url, "label/__name__/values"))["data"])
        return not (self.unresolved or self.empty() or self.unreceived())

    def valid(self) -> dict[PanelQuery, tuple[str, list[dict[str, Any]]]]:
        """The answers of the queries Prometheus accepted (errors are reported on their own)."""
        return {query: answer for query, answer in self.answers.items() if query not in self.errors}

    def empty(self) -> list[str]:
        """Accepted queries whose last answer had no series."""
        return [f"{query.where}: {expr}" for query, (expr, result) in self.valid().items() if not result]

    def unreceived(self) -> list[str]:
        """Accepted queries that read a series Prometheus has not received."""
        return [
            f"{query.where}: reads {missing}, which Prometheus never received: {expr}"
            for query, (expr, _) in self.valid().items()
            if (missing := metric_names(expr) - self.received)
        ]


@dataclass
class LiveRun:
    """The scenario's outcome, with its Prometheus still running for further questions."""

    http: httpx.AsyncClient
    prometheus: str
    survey: Survey

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result (which must succeed)."""
        answer = await api(self.http, self.prometheus, "query", query=expr)
        assert answer["status"] == "success", f"{expr}: {answer}"
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result


@dataclass
class ScrapedFleet:
    """A live world whose controller and agent serve `/metrics`: what a Prometheus test scrapes."""

    cloud: CloudEmulator
    devices: FleetServer
    controller: ControllerService
    client: aiomqtt.Client
    http: httpx.AsyncClient
    targets: dict[str, str]
    """Prometheus job name -> host:port of its `/metrics`."""


@contextlib.asynccontextmanager
async def scraped_fleet(tmp_path: Path, serials: list[str]) -> AsyncIterator[ScrapedFleet]:
    """Broker, emulator, simulated devices, a controller and an agent (both serving `/metrics`)."""
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    controller_registry, agent_registry = CollectorRegistry(), CollectorRegistry()
    try:
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
                yield ScrapedFleet(cloud, devices, controller, client, http, targets)
    finally:
        broker.crash()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live_run(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LiveRun]:
    """A rollout scraped by Prometheus, until every dashboard query has data (or DATA_WAIT_S)."""
    tmp_path = tmp_path_factory.mktemp("prometheus-live")
    serials = [f"DEV-{i}" for i in range(5)]
    async with scraped_fleet(tmp_path, serials) as fleet:
        cloud, devices, controller, client, http = (
            fleet.cloud,
            fleet.devices,
            fleet.controller,
            fleet.client,
            fleet.http,
        )
        targets, agent_target = fleet.targets, fleet.targets[AGENT_JOB]
        async with running_prometheus(tmp_path, targets, http) as prometheus:
            # Counters must be scraped before the rollout moves them, or increase() sees nothing.
            await wait_until(lambda: all_scraped(http, prometheus, set(targets)), START_WAIT_S)
            publish_release(cloud, "1.1.0")
            # One device reverts: the failure panels (outcomes, reasons, failure ratio) get data.
            devices.device(serials[0]).faults = FaultPlan(bad_build_versions=frozenset({"1.1.0"}))
            await wait_until(lambda: registry_has(controller, len(serials)))
            spec = RolloutSpec(software_type="app", target_version="1.1.0", waves=[WaveSpec(percent=100)])
            await create_and_start(client, ROLLOUT, spec)
            # A malformed command: the agent rejects it, so the panel of rejected messages
            # reads a real series (its `or vector(0)` covers gateways that never rejected one).
            command_topic = TREE.topic(TopicKind.GATEWAY_COMMAND, gateway_id=GATEWAY)
            await client.publish(command_topic, b"{not a command", qos=1)
            preferred = {"instance": agent_target, "rollout": ROLLOUT, "gateway": GATEWAY}
            survey = Survey(prometheus, preferred)
            with contextlib.suppress(TimeoutError):  # the tests say what is missing
                await wait_until(lambda: survey.complete(http), timeout_s=DATA_WAIT_S, poll_s=1.0)
            yield LiveRun(http, prometheus, survey)


async def test_every_query_parses_and_returns_data(live_run: LiveRun) -> None:
    """Prometheus accepts every panel and variable query and answers each with at least one series."""
    survey = live_run.survey
    assert survey.answers, "no query ran"
    errors = [f"{query.where}: {error}" for query, error in survey.errors.items()]
    assert not errors, "queries Prometheus rejects:\n" + "\n".join(errors)
    missing = survey.unresolved + survey.empty()
    assert not missing, "queries without data:\n" + "\n".join(missing)


async def test_every_query_reads_series_prometheus_received(live_run: LiveRun) -> None:
    """Each series a query names was scraped or recorded in the run (`or vector(0)` hides nothing)."""
    unreceived = live_run.survey.unreceived()
    assert not unreceived, "\n".join(unreceived)


async def test_legends_and_groupings_name_labels_the_series_have(live_run: LiveRun) -> None:
    """`{{label}}` in a legend is on every series shown; `by (label)` names a label of the input."""
    labels_by_name: dict[str, set[str]] = {}
    problems = []
    for query, (expr, result) in live_run.survey.valid().items():
        read = metric_names(expr)
        for name in read - set(labels_by_name):
            series = (await api(live_run.http, live_run.prometheus, "series", **{"match[]": name}))["data"]
            labels_by_name[name] = {label for item in series for label in item}
        available = {label for name in read for label in labels_by_name[name]}
        if ungrouped := grouping_labels(expr) - available:
            problems.append(f"{query.where}: groups by {ungrouped}, which no series it reads has")
        for series in result:
            if unlabelled := query.legend_labels() - set(series["metric"]):
                problems.append(f"{query.where}: legend shows {unlabelled}, absent from {series['metric']}")
    assert not problems, "\n".join(problems)


async def test_counters_the_dashboards_read_exist_before_their_first_event(live_run: LiveRun) -> None:
    """Every counter series a panel reads is scraped at its starting value before it moves.

    A series born after the first scrape with a non-zero value has its first increments invisible
    to increase() and rate(): the failure panels would show 0 for a run with a failure.
    """
    counters = {
        name
        for expr, _ in live_run.survey.valid().values()
        for name in metric_names(expr)
        if name.endswith("_total")
    }
    first_scrape = {
        series["metric"]["job"]: min(float(t) for t, _ in series["values"])
        for series in await live_run.query("up[1h]")
    }
    late = []
    for name in sorted(counters):
        for series in await live_run.query(f"{name}[1h]"):
            born, value = series["values"][0]
            if float(born) > first_scrape[series["metric"]["job"]] and float(value) > 0:
                late.append(f"{series['metric']} first scraped at {value}")
    assert not late, (
        "counter series born after the first scrape, their first events uncounted:\n" + "\n".join(late)
    )
