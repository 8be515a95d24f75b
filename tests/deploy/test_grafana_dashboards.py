"""The Grafana dashboards, checked without running anything: drift, datasource, variables, PromQL, names.

The files under deploy/grafana/dashboards must be exactly what `mcufleet dashboards export` writes
from mcufleet/dashboards.py. Every panel target (rows included) and every query variable of every
generated dashboard is extracted, its Grafana variables filled as Grafana would, and then:
it must parse (promtool, i.e. Prometheus's own parser, checks each one as a recording rule
expression), and every series it reads must be one a real agent or controller exports (read from
the registries the services build, not from a list kept here) or one the recording rules produce.
tests/deploy/test_prometheus_live.py runs the same queries against a real Prometheus with data.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mcufleet.cli import EXIT_USAGE, main
from mcufleet.dashboards import drift, export
from tests.deploy.dashboards import (
    DASHBOARD_DIRECTORY,
    DASHBOARDS,
    DATASOURCE_UID,
    GLOBAL_VARIABLES,
    ROOT,
    SCRAPE_SERIES,
    PanelQuery,
    all_queries,
    exported_names,
    grouping_labels,
    load,
    metric_names,
    panels,
    queries,
    recorded_series,
    recording_rules,
    template_variables,
)

_PROMTOOL_ERROR = re.compile(r'"grafana:query_(\d+)": (.*)$', re.MULTILINE)


def static_values(path: Path) -> dict[str, str]:
    """A value for each variable of a dashboard: its current value, else a placeholder."""
    values = {}
    for variable in template_variables(load(path)):
        current = variable.get("current") or {}
        value = current.get("value") if isinstance(current, dict) else None
        values[variable["name"]] = str(value) if isinstance(value, str) and value else "placeholder"
    return values


def filled_queries() -> list[tuple[PanelQuery, str]]:
    """Every query with its variables filled."""
    return [(query, query.filled(static_values(path))) for path in DASHBOARDS for query in queries(path)]


def test_there_are_dashboards_with_queries() -> None:
    """The dashboards exist and each has queries (a broken walk would make every check vacuous)."""
    assert {path.name for path in DASHBOARDS} >= {
        "fleet-overview.json",
        "gateway-detail.json",
        "rollout-detail.json",
    }
    for path in DASHBOARDS:
        assert queries(path), path.name


def test_checked_in_dashboards_match_the_code() -> None:
    """deploy/grafana/dashboards is exactly what `mcufleet dashboards export` writes today."""
    assert drift(DASHBOARD_DIRECTORY) == []


def test_dashboard_drift_is_detected(tmp_path: Path) -> None:
    """A hand edit, a missing file and a stale file are all reported by the check."""
    export(tmp_path)
    edited = tmp_path / "fleet-overview.json"
    edited.write_text(edited.read_text().replace("mcufleet_controller_leader", "mcufleet_leader"))
    (tmp_path / "gateway-detail.json").unlink()
    (tmp_path / "retired.json").write_text("{}", encoding="utf-8")
    assert sorted(drift(tmp_path)) == [
        f"differs: {edited}",
        f"missing: {tmp_path / 'gateway-detail.json'}",
        f"stale: {tmp_path / 'retired.json'}",
    ]


def test_cli_check_passes_on_the_checked_in_dashboards() -> None:
    """`mcufleet dashboards check` exits 0 on this tree."""
    result = subprocess.run(
        [str(Path(sys.executable).with_name("mcufleet")), "dashboards", "check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_cli_names_the_extra_when_the_sdk_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without the SDK, `mcufleet dashboards` says which extra to install instead of a traceback."""
    monkeypatch.delitem(sys.modules, "mcufleet.dashboards")
    for name in [name for name in sys.modules if name.partition(".")[0] == "grafana_foundation_sdk"]:
        monkeypatch.setitem(sys.modules, name, None)  # importing it now raises ModuleNotFoundError
    monkeypatch.setitem(sys.modules, "grafana_foundation_sdk", None)
    assert main(["dashboards", "check"]) == EXIT_USAGE
    assert "pip install 'mcufleet[dashboards]'" in capsys.readouterr().err


def test_panels_tile_the_grid_without_overlapping() -> None:
    """Every panel lies inside Grafana's 24 columns, no two overlap, and ids are unique."""
    for path in DASHBOARDS:
        cells: dict[tuple[int, int], str] = {}
        ids = [panel["id"] for panel in panels(load(path))]
        assert len(ids) == len(set(ids)), path.name
        for panel in panels(load(path)):
            grid = panel["gridPos"]
            assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, (path.name, panel["title"])
            for x in range(grid["x"], grid["x"] + grid["w"]):
                for y in range(grid["y"], grid["y"] + grid["h"]):
                    assert (x, y) not in cells, f"{path.name}: {panel['title']} overlaps {cells[(x, y)]}"
                    cells[(x, y)] = panel["title"]


def test_every_panel_uses_the_provisioned_datasource() -> None:
    """Panels and targets name the datasource uid that provisioning creates, so they resolve."""
    provisioned = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert [source["uid"] for source in provisioned["datasources"]] == [DATASOURCE_UID]
    for path in DASHBOARDS:
        document = load(path)
        for panel in panels(document):
            if panel.get("type") == "row":
                continue
            assert panel["datasource"]["uid"] == DATASOURCE_UID, (path.name, panel.get("title"))
            assert panel.get("targets"), (path.name, panel.get("title"))
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == DATASOURCE_UID, (path.name, panel.get("title"))
        for variable in template_variables(document):
            if variable.get("type") == "query":
                assert variable["datasource"]["uid"] == DATASOURCE_UID, (path.name, variable["name"])


def test_every_variable_a_query_uses_is_defined() -> None:
    """`$name` in a query is a variable of its dashboard or one of Grafana's globals, never a typo.

    Grafana leaves an unknown `$name` in the query, and Prometheus then rejects it or, inside a
    label value, silently matches nothing.
    """
    for path in DASHBOARDS:
        defined = {variable["name"] for variable in template_variables(load(path))}
        for query in queries(path):
            unknown = query.variables() - defined - set(GLOBAL_VARIABLES)
            assert not unknown, f"{query.where}: undefined variables {unknown} in {query.expr}"


def test_every_query_parses(tmp_path: Path) -> None:
    """Prometheus's parser (promtool, each query as a recording rule) accepts every query.

    The parser type-checks too: `rate()` of an instant vector or a binary operation between
    incompatible types is a parse error, as it would be in Grafana's panel.
    """
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: run `make test` (it installs Debian's prometheus package)")
    filled = filled_queries()
    document = {
        "groups": [
            {"name": f"{index} {query.where}", "rules": [{"record": f"grafana:query_{index}", "expr": expr}]}
            for index, (query, expr) in enumerate(filled)
        ]
    }
    rules = tmp_path / "dashboard-queries.rules.yml"
    rules.write_text(yaml.safe_dump(document))
    result = subprocess.run(
        [promtool, "check", "rules", "--lint=none", str(rules)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    errors = [
        f"{filled[int(index)][0].where}: {filled[int(index)][1]}\n    {error}"
        for index, error in _PROMTOOL_ERROR.findall(result.stdout + result.stderr)
    ]
    assert not errors, "queries Prometheus cannot parse:\n" + "\n".join(errors)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(filled)} rules found" in result.stdout, result.stdout


async def test_every_query_reads_only_exported_or_recorded_series(tmp_path: Path) -> None:
    """Each series name a query reads is exported by the agent or controller, or recorded.

    The exported names come from the registries a real AgentService and ControllerService build,
    with each family's scrape suffixes (`_total`, `_bucket`...), so a renamed metric, a missing
    `_total` or a made-up name fails here.
    """
    known = await exported_names(tmp_path) | recorded_series() | SCRAPE_SERIES
    read = set()
    for query, expr in filled_queries():
        names = metric_names(expr)
        assert names, f"{query.where}: reads no series: {expr}"
        assert names <= known, f"{query.where} reads {names - known}, which nothing exports: {expr}"
        read |= names
    # The recorded series the dashboards read are built from exported series too.
    for rule in recording_rules():
        if rule["record"] in read:
            inputs = metric_names(rule["expr"])
            assert inputs <= known, f"rule {rule['record']} reads {inputs - known}, which nothing exports"


def test_label_values_variables_name_a_label_and_a_series() -> None:
    """A `label_values(series, label)` variable reads a series and does not group the label away."""
    variables = [query for query in all_queries() if query.label is not None]
    assert variables, "the gateway and rollout dashboards select by variable"
    for query in variables:
        assert metric_names(query.expr), query.where
        assert not grouping_labels(query.expr) or query.label in grouping_labels(query.expr), query.where


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (a, b) (rate(x_total{c="by (d)"}[5m])) / on(e) group_left(f) y', {"x_total", "y"}),
        ("sum without (a) (x) > bool 1 or vector(0)", {"x"}),
        ("sum(x) by (a) and on() y offset 5m unless z @ start()", {"x", "y", "z"}),
        ("histogram_quantile(0.9, sum by (le) (rate(h_bucket[1m:15s])))", {"h_bucket"}),
        ('topk(5, count_values("v", a:rec:rate5m)) * -1e-3 + Inf', {"a:rec:rate5m"}),
        ('label_replace({__name__="x", a="b"}, "d", "$1", "s", "(.*)")', {"x"}),
        ("max_over_time(deriv(x[5m])[1h:1m])", {"x"}),
    ],
)
def test_metric_names_are_extracted_by_tokens(expr: str, names: set[str]) -> None:
    """The name extractor finds series among functions, groupings, strings, ranges and keywords."""
    assert metric_names(expr) == names


def test_metric_names_refuse_what_they_do_not_understand() -> None:
    """An unfilled variable or an ambiguous `__name__` matcher is an error, never a silent miss."""
    with pytest.raises(ValueError, match="tokenize"):
        metric_names("rate(x[$__rate_interval])")
    with pytest.raises(ValueError, match="__name__"):
        metric_names('{__name__=~"mcufleet_.*"}')
