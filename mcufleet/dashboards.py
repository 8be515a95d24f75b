"""`mcufleet dashboards export|check`: the Grafana dashboards, built with Grafana's foundation SDK.

The files under deploy/grafana/dashboards/ are generated from this module and checked in (Grafana's
file provisioning reads them), so a dashboard change shows up in review as a diff of both; `check`
fails when they drifted from the code. The SDK's builders are generated from Grafana's own schemas
(the pinned release targets Grafana 11.6), so a panel field it does not know is a type error here.

Every query reads series the agent and the controller export or the recording rules produce;
tests/deploy checks each one against the real registries, promtool, and a live Prometheus.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import bargauge, piechart, prometheus, stat, timeseries
from grafana_foundation_sdk.builders.dashboard import Dashboard, QueryVariable
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh

from mcufleet.generated_files import GeneratedFiles

DEFAULT_DIRECTORY = Path("deploy/grafana/dashboards")
DATASOURCE_UID = "mcufleet-prometheus"
"""The uid deploy/grafana/provisioning/datasources/prometheus.yml gives the Prometheus datasource."""
GRID_WIDTH = 24
PANEL_HEIGHT = 8

PanelBuilder = timeseries.Panel | stat.Panel | piechart.Panel | bargauge.Panel


def _datasource() -> DataSourceRef:
    return DataSourceRef(type_val="prometheus", uid=DATASOURCE_UID)


@dataclass(frozen=True, slots=True)
class Query:
    """One PromQL target of a panel, with its legend (`{{label}}` or a fixed name)."""

    expr: str
    legend: str = ""


def _panel(builder: PanelBuilder, title: str, width: int, *queries: Query, unit: str = "") -> PanelBuilder:
    """A panel of `width` grid columns; targets get refIds A, B... in order."""
    builder = builder.title(title).datasource(_datasource()).span(width).height(PANEL_HEIGHT)
    for index, query in enumerate(queries):
        target = (
            prometheus.Dataquery().expr(query.expr).ref_id(chr(ord("A") + index)).datasource(_datasource())
        )
        if query.legend:
            target = target.legend_format(query.legend)
        builder = builder.with_target(target)
    if unit:
        builder = builder.unit(unit)
    return builder


def _label_variable(name: str, label: str, series: str) -> QueryVariable:
    """A single-choice variable listing the values of label `name` on `series`."""
    return (
        QueryVariable(name)
        .label(label)
        .datasource(_datasource())
        .query({"query": f"label_values({series}, {name})", "refId": "var"})
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .include_all(False)
        .multi(False)
    )


def _dashboard(
    uid: str, title: str, panels: Sequence[PanelBuilder], variables: Sequence[QueryVariable] = ()
) -> Dashboard:
    """A read-only dashboard; panels fill rows of 24 columns left to right, ids in order."""
    builder = (
        Dashboard(title)
        .uid(uid)
        .tags(["mcufleet"])
        .readonly()
        .time("now-6h", "now")
        .refresh("30s")
        .version(1)
    )
    for variable in variables:
        builder = builder.with_variable(variable)
    for number, panel in enumerate(panels, start=1):
        builder = builder.with_panel(panel.id(number))
    return builder


def fleet_overview() -> Dashboard:
    """The whole fleet: versions, gateways, rollouts, outcomes, throughput, Memfault, ingest."""
    return _dashboard(
        "mcufleet-fleet",
        "mcufleet: fleet overview",
        [
            _panel(
                piechart.Panel(),
                "Devices by running version",
                8,
                Query(
                    "sum by (software_type, version) (mcufleet_controller_devices_by_version)",
                    "{{software_type}} {{version}}",
                ),
            ),
            _panel(
                stat.Panel(),
                "Gateways online",
                4,
                Query('mcufleet_controller_gateways{state="online"}', "online"),
                Query('mcufleet_controller_gateways{state="offline"}', "offline"),
            ),
            _panel(
                bargauge.Panel(),
                "Rollouts by status",
                12,
                Query("sum by (status) (mcufleet_controller_rollouts)", "{{status}}"),
            ),
            _panel(
                timeseries.Panel(),
                "Job outcomes (per 5 min)",
                12,
                Query("sum by (outcome) (increase(mcufleet_controller_jobs_total[5m]))", "{{outcome}}"),
            ),
            _panel(
                timeseries.Panel(),
                "OTA failure ratio (30 min)",
                12,
                Query("mcufleet:ota_failure_ratio:rate30m"),
                unit="percentunit",
            ),
            _panel(
                timeseries.Panel(),
                "Upload throughput by gateway",
                12,
                Query("sum by (instance) (rate(mcufleet_agent_uploaded_bytes_total[5m]))", "{{instance}}"),
                unit="Bps",
            ),
            _panel(
                timeseries.Panel(),
                "Devices reachable by transport",
                12,
                Query("sum by (transport) (mcufleet_agent_devices)", "{{transport}}"),
            ),
            _panel(
                timeseries.Panel(),
                "Memfault API (per 5 min, by status)",
                12,
                Query(
                    "sum by (status) (increase(mcufleet_controller_memfault_requests_total[5m]))",
                    "{{status}}",
                ),
            ),
            _panel(stat.Panel(), "Controller leader", 6, Query("sum(mcufleet_controller_leader)")),
            _panel(
                timeseries.Panel(),
                "Report ingest rate",
                6,
                Query("sum(rate(mcufleet_controller_reports_applied_total[5m]))"),
                unit="ops",
            ),
        ],
    )


def gateway_detail() -> Dashboard:
    """One gateway (`$instance`): broker link, devices, jobs, uploads, cache, MQTT, probes."""
    instance = 'instance="$instance"'
    return _dashboard(
        "mcufleet-gateway",
        "mcufleet: gateway detail",
        [
            _panel(
                stat.Panel(),
                "Broker connection",
                6,
                Query(f'mcufleet_mqtt_connected{{job="mcufleet-agent", {instance}}}'),
            ),
            _panel(
                timeseries.Panel(),
                "Devices reachable",
                9,
                Query(f"sum by (transport) (mcufleet_agent_devices{{{instance}}})", "{{transport}}"),
            ),
            _panel(
                timeseries.Panel(),
                "Job queue depth",
                9,
                Query(f"mcufleet_agent_job_queue_depth{{{instance}}}"),
            ),
            _panel(
                timeseries.Panel(),
                "Jobs by outcome (per 15 min)",
                12,
                Query(
                    f"sum by (outcome) (increase(mcufleet_agent_jobs_total{{{instance}}}[15m]))",
                    "{{outcome}}",
                ),
            ),
            _panel(
                timeseries.Panel(),
                "Upload throughput",
                12,
                Query(f"rate(mcufleet_agent_uploaded_bytes_total{{{instance}}}[5m])"),
                unit="Bps",
            ),
            _panel(
                timeseries.Panel(),
                "Artifact cache",
                12,
                Query(f"mcufleet_agent_artifact_cache_bytes{{{instance}}}", "used"),
                Query(f"mcufleet_agent_artifact_cache_max_bytes{{{instance}}}", "cap"),
                unit="bytes",
            ),
            _panel(
                timeseries.Panel(),
                "MQTT reconnects and rejected messages",
                12,
                Query(f"increase(mcufleet_mqtt_connects_total{{{instance}}}[15m])", "connects"),
                Query(
                    f"sum(increase(mcufleet_mqtt_messages_rejected_total{{{instance}}}[15m])) or vector(0)",
                    "rejected",
                ),
            ),
            _panel(
                timeseries.Panel(),
                "Probe failures",
                12,
                Query(f"increase(mcufleet_agent_probe_failures_total{{{instance}}}[15m])"),
            ),
        ],
        [_label_variable("instance", "Gateway", "mcufleet_agent_devices")],
    )


def rollout_detail() -> Dashboard:
    """One rollout (`$rollout`): devices by state, wave, progress; gates and failures fleet-wide."""
    rollout = 'rollout="$rollout"'
    return _dashboard(
        "mcufleet-rollout",
        "mcufleet: rollout detail",
        [
            _panel(
                bargauge.Panel(),
                "Devices by state",
                12,
                Query(f"sum by (state) (mcufleet_controller_rollout_devices{{{rollout}}})", "{{state}}"),
            ),
            _panel(
                stat.Panel(),
                "Current wave",
                6,
                Query(f"max(mcufleet_controller_rollout_current_wave{{{rollout}}})"),
            ),
            _panel(
                stat.Panel(),
                "In flight",
                6,
                Query(f'sum(mcufleet_controller_rollout_devices{{{rollout}, state="in_flight"}})'),
            ),
            _panel(
                timeseries.Panel(),
                "Succeeded over time",
                12,
                Query(f'sum(mcufleet_controller_rollout_devices{{{rollout}, state="succeeded"}})'),
            ),
            _panel(
                timeseries.Panel(),
                "Gate decisions (all rollouts)",
                12,
                Query(
                    "sum by (verdict) (increase(mcufleet_controller_gate_decisions_total[15m]))",
                    "{{verdict}}",
                ),
            ),
            _panel(
                bargauge.Panel(),
                "Failures by reason (all rollouts)",
                GRID_WIDTH,
                Query(
                    'sum by (reason) (increase(mcufleet_controller_jobs_total{outcome!="succeeded"}[1h]))',
                    "{{reason}}",
                ),
            ),
        ],
        [_label_variable("rollout", "Rollout", "mcufleet_controller_rollout_devices")],
    )


DASHBOARDS = {
    "fleet-overview.json": fleet_overview,
    "gateway-detail.json": gateway_detail,
    "rollout-detail.json": rollout_detail,
}
"""Each file under deploy/grafana/dashboards/ and the function that builds it."""


def render(directory: Path) -> dict[Path, str]:
    """Return every generated dashboard file under `directory` with its text."""
    return {
        directory / name: json.dumps(build().build(), cls=JSONEncoder, indent=2) + "\n"
        for name, build in DASHBOARDS.items()
    }


DASHBOARD_FILES = GeneratedFiles(
    name="dashboards",
    source="mcufleet/dashboards.py",
    default_directory=DEFAULT_DIRECTORY,
    render=render,
    json_directory=lambda directory: directory,
    fix="`mcufleet dashboards export`",
)
export = DASHBOARD_FILES.export
drift = DASHBOARD_FILES.drift


def run(argv: Sequence[str]) -> int:
    """Entry point of `mcufleet dashboards`."""
    return DASHBOARD_FILES.run(argv, __doc__)
