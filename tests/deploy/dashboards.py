"""The Grafana dashboards mcufleet generates, as data, and the series names mcufleet really exports.

The dashboards are read from what `mcufleet.dashboards` builds, not from the checked-in files under
deploy/grafana/dashboards (tests/deploy/test_grafana_dashboards.py checks those are the same), so
every check here runs on the code that generates them.
`queries(path)` walks every panel (rows nested or collapsed, old-style `rows` too) and every query
variable of a dashboard and returns its PromQL. `PanelQuery.filled` replaces Grafana variables as
Grafana would before sending the expression to Prometheus. `metric_names` lists the series an
expression reads; it walks PromQL tokens (strings, ranges, matchers, calls and grouping lists set
aside) and raises on text it cannot tokenize or a selector whose name it cannot tell, rather than
skip a name silently (tests/deploy/test_grafana_dashboards.py checks it on tricky expressions).
`exported_names` reads the registries a real agent and controller build.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

from agent.factory import build_agent
from agent.settings import AgentSettings
from controller.factory import build_controller
from controller.settings import ControllerSettings, MemfaultConfig, StoreConfig
from mcufleet import dashboards

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_DIRECTORY = ROOT / dashboards.DEFAULT_DIRECTORY
GENERATED = dashboards.render(DASHBOARD_DIRECTORY)
"""Each dashboard's path under deploy/grafana/dashboards and the text the code generates for it."""
DASHBOARDS = sorted(GENERATED)
PROMETHEUS = ROOT / "deploy/prometheus"
DATASOURCE_UID = dashboards.DATASOURCE_UID

# Grafana's global variables, as Grafana fills them for a one-hour range on a wide panel.
GLOBAL_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}
# Series every Prometheus target has, whatever it exports.
SCRAPE_SERIES = frozenset(
    {
        "up",
        "scrape_duration_seconds",
        "scrape_samples_scraped",
        "scrape_samples_post_metric_relabeling",
        "scrape_series_added",
    }
)

# `${name}`, `${name:format}`, `[[name]]` and `$name` (Grafana's three variable syntaxes).
_VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)(?::[^\]]*)?\]\]|\$(\w+)")
_LABEL_VALUES = re.compile(r"^label_values\((?P<expr>.+),\s*(?P<label>\w+)\s*\)$", re.DOTALL)
_QUERY_RESULT = re.compile(r"^query_result\((?P<expr>.+)\)$", re.DOTALL)
_LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")


@dataclass(frozen=True, slots=True)
class PanelQuery:
    """One PromQL expression of a dashboard: a panel target or a query variable's query.

    `legend` is the target's legendFormat; `label` is the label a `label_values` variable reads.
    """

    dashboard: str
    title: str
    expr: str
    legend: str = ""
    label: str | None = None

    @property
    def where(self) -> str:
        """Where the query lives, for messages."""
        return f"{self.dashboard}: {self.title}"

    def variables(self) -> set[str]:
        """The Grafana variables the expression uses (`$1` of a regex replacement is none)."""
        return {name for name in _variable_names(self.expr) if not name.isdigit()}

    def filled(self, variables: Mapping[str, str]) -> str:
        """The expression as Grafana sends it: dashboard and global variables replaced.

        Raises:
            KeyError: the expression uses a variable that has no value.
        """
        values = {**GLOBAL_VARIABLES, **variables}

        def value(match: re.Match[str]) -> str:
            name = match.group(1) or match.group(2) or match.group(3)
            if name.isdigit():
                return match.group(0)
            if name not in values:
                raise KeyError(f"{self.where}: no value for ${name}")
            return values[name]

        return _VARIABLE.sub(value, self.expr)

    def legend_labels(self) -> set[str]:
        """Labels the legend format shows (`{{label}}`)."""
        return set(_LEGEND_LABEL.findall(self.legend))


def _variable_names(text: str) -> list[str]:
    return [m.group(1) or m.group(2) or m.group(3) for m in _VARIABLE.finditer(text)]


def load(path: Path) -> dict[str, Any]:
    """One dashboard document, as generated."""
    document: dict[str, Any] = json.loads(GENERATED[path])
    return document


def panels(document: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel: top level, inside rows (collapsed rows keep theirs), and old-style `rows`."""
    stack = [*document.get("panels", []), *document.get("rows", [])]
    while stack:
        panel = stack.pop(0)
        yield panel
        stack.extend(panel.get("panels", []) or [])


def template_variables(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The dashboard's templating variables, in dependency (declaration) order."""
    variables: list[dict[str, Any]] = document.get("templating", {}).get("list", [])
    return variables


def variable_query(variable: Mapping[str, Any]) -> str:
    """The text of a query variable's query (Grafana stores a string or an object)."""
    query = variable.get("query")
    return str(query.get("query", "") if isinstance(query, dict) else query or "").strip()


def queries(path: Path) -> list[PanelQuery]:
    """Every expression of a dashboard, panel targets first, then query variables.

    A `label_values(expr, label)` variable becomes the query `expr` with `label` remembered;
    `query_result(expr)` becomes `expr`.

    Raises:
        ValueError: a target without an expression, or a variable query form this module does not
            know (so that a new form is handled here rather than skipped).
    """
    document = load(path)
    found: list[PanelQuery] = []
    for panel in panels(document):
        title = str(panel.get("title", ""))
        for target in panel.get("targets", []) or []:
            expr = str(target.get("expr", "")).strip()
            if not expr:
                raise ValueError(f"{path.name}: {title}: a target without a PromQL expression")
            found.append(PanelQuery(path.name, title, expr, legend=str(target.get("legendFormat") or "")))
    for variable in template_variables(document):
        if variable.get("type") != "query":
            continue
        text = variable_query(variable)
        where = f"variable {variable['name']}"
        if match := _LABEL_VALUES.match(text):
            found.append(PanelQuery(path.name, where, match["expr"].strip(), label=match["label"]))
        elif match := _QUERY_RESULT.match(text):
            found.append(PanelQuery(path.name, where, match["expr"].strip()))
        else:
            raise ValueError(f"{path.name}: {where}: unsupported variable query {text!r}")
    return found


def all_queries() -> list[PanelQuery]:
    """Every query of every dashboard."""
    return [query for path in DASHBOARDS for query in queries(path)]


# --- PromQL names ------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<space>\s+|\#[^\n]*)
    | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    | (?P<number>0[xX][0-9a-fA-F]+|[0-9.][0-9a-zA-Z_.]*)
    | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
    | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=,@{}()\[\]])
    """,
    re.VERBOSE,
)
# Words that are PromQL syntax, never a series name, when not followed by `(`.
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "group_left", "group_right", "inf", "nan", "atan2"}
)
# Words followed by a parenthesised list of label names.
_LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})


def _tokens(expr: str) -> list[tuple[str, str]]:
    tokens = []
    position = 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if match is None:
            raise ValueError(f"cannot tokenize PromQL at {position}: {expr[position : position + 20]!r}")
        kind = match.lastgroup or ""
        if kind != "space":
            tokens.append((kind, match.group()))
        position = match.end()
    return tokens


def _skip_to_closing(tokens: list[tuple[str, str]], start: int, opening: str, closing: str) -> int:
    """The index after the bracket that closes the one at `start`."""
    depth = 0
    for index in range(start, len(tokens)):
        if tokens[index][1] == opening:
            depth += 1
        elif tokens[index][1] == closing:
            depth -= 1
            if depth == 0:
                return index + 1
    raise ValueError(f"unbalanced {opening}{closing}")


def _selector_name(tokens: list[tuple[str, str]], start: int, end: int) -> str | None:
    """`foo` of a `{__name__="foo"}` matcher between `start` and `end`, if there is one."""
    for index in range(start, end - 2):
        if tokens[index][1] == "__name__":
            operator, (kind, value) = tokens[index + 1][1], tokens[index + 2]
            if operator != "=" or kind != "string":
                raise ValueError("a __name__ matcher other than = names no definite series")
            return value[1:-1]
    return None


def metric_names(expr: str) -> set[str]:
    """The series names an expression reads (metric names and recorded series).

    Raises:
        ValueError: the expression is not PromQL this tokenizer understands (with Grafana variables
            still in it, for example); a real parser decides whether it is valid PromQL.
    """
    tokens = _tokens(expr)
    names: set[str] = set()
    index = 0
    while index < len(tokens):
        kind, text = tokens[index]
        following = tokens[index + 1][1] if index + 1 < len(tokens) else ""
        if text == "[":  # a range or subquery: durations and a colon only
            index = _skip_to_closing(tokens, index, "[", "]")
            continue
        if text == "{":  # label matchers of a selector: label names and strings
            end = _skip_to_closing(tokens, index, "{", "}")
            if (name := _selector_name(tokens, index, end)) is not None:
                names.add(name)
            index = end
            continue
        if kind == "ident":
            lowered = text.lower()
            if lowered in _LABEL_LISTS and following == "(":
                index = _skip_to_closing(tokens, index + 1, "(", ")")
                continue
            # An identifier before `(` is a function or an aggregation, before `by`/`without` an
            # aggregation with its grouping first (`sum by (a) (x)`).
            calls = following == "(" or following.lower() in {"by", "without"}
            if not calls and lowered not in _KEYWORDS and lowered not in _LABEL_LISTS:
                names.add(text)
        index += 1
    return names


def grouping_labels(expr: str) -> set[str]:
    """Labels named in `by (...)` clauses."""
    tokens = _tokens(expr)
    labels: set[str] = set()
    for index, (kind, text) in enumerate(tokens):
        if (
            kind == "ident"
            and text.lower() == "by"
            and index + 1 < len(tokens)
            and tokens[index + 1][1] == "("
        ):
            end = _skip_to_closing(tokens, index + 1, "(", ")")
            labels.update(label for sort, label in tokens[index + 2 : end - 1] if sort == "ident")
    return labels


# --- What the processes export -----------------------------------------------------------------

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}


def sample_names(family: Metric) -> set[str]:
    """The series names a metric family can produce once scraped, samples present or not."""
    names = {family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",))}
    return names | {sample.name for sample in family.samples}


def registry_names(registries: Iterable[CollectorRegistry]) -> set[str]:
    """Every series name the registries expose."""
    return {name for registry in registries for family in registry.collect() for name in sample_names(family)}


@contextlib.asynccontextmanager
async def service_registries(state_dir: Path) -> AsyncIterator[tuple[CollectorRegistry, CollectorRegistry]]:
    """The registries of a real agent and a real controller, built as their CLIs build them.

    The services are constructed, not run: every collector registers at construction and a scrape
    yields every family (without samples for label sets not seen yet), which is what `/metrics`
    serves from the CLI's registry.
    """
    agent_registry, controller_registry = CollectorRegistry(), CollectorRegistry()
    store_url = f"sqlite:///{state_dir / 'controller.sqlite3'}"
    unused = "http://127.0.0.1:9"
    build_agent(
        AgentSettings(gateway_id="gw-names", state_dir=str(state_dir / "agent")),
        registry=agent_registry,
    )
    settings = ControllerSettings(
        controller_id="controller-names",
        store=StoreConfig(url=store_url),
        memfault=MemfaultConfig(base_url=unused),
    )
    async with build_controller(settings, registry=controller_registry):
        yield agent_registry, controller_registry


async def exported_names(state_dir: Path) -> set[str]:
    """Every series name a real agent or controller exports."""
    async with service_registries(state_dir) as registries:
        return registry_names(registries)


def recording_rules() -> list[dict[str, Any]]:
    """The recording rules of deploy/prometheus, as documents."""
    rules: list[dict[str, Any]] = []
    for path in sorted((PROMETHEUS / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules.extend(rule for rule in group["rules"] if "record" in rule)
    return rules


def recorded_series() -> set[str]:
    """Names the recording rules produce."""
    return {str(rule["record"]) for rule in recording_rules()}
