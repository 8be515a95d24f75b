"""The Grafana dashboards under deploy/grafana as data: every panel query, ready to send to Prometheus."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "deploy/grafana/dashboards").glob("*.json"))
DATASOURCE_UID = "mcufleet-prometheus"

# Grafana's global variables, as Grafana would fill them for a short time range.
GLOBAL_VARIABLES = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
_LABEL_VALUES = re.compile(r"^label_values\((?P<metric>.+),\s*(?P<label>\w+)\)$")
# Identifiers followed by a selector, a range or the end: metric names (functions are followed by `(`).
_NAME = re.compile(r"(?<![\w:\"])([a-zA-Z_:][\w:]*)(?=\s*[{\[)]|\s*$|\s*[-+*/]|\s+(?:or|and|unless)\b)")
_NOT_METRICS = {"by", "without", "on", "ignoring", "group_left", "group_right", "or", "and", "unless", "bool"}


@dataclass(frozen=True, slots=True)
class PanelQuery:
    """One PromQL expression of a dashboard: a panel target or a template variable's query."""

    dashboard: str
    title: str
    expr: str

    def filled(self, variables: Mapping[str, str]) -> str:
        """The expression with `$var` and `${var}` replaced (dashboard then Grafana variables)."""
        values = {**GLOBAL_VARIABLES, **variables}

        def value(match: re.Match[str]) -> str:
            name = match.group(1) or match.group(2)
            if name not in values:
                raise KeyError(f"{self.dashboard}: {self.title}: no value for ${name}")
            return values[name]

        return _VARIABLE.sub(value, self.expr)


def load(path: Path) -> dict[str, Any]:
    """One dashboard document."""
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def panels(document: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in rows."""
    stack = list(document.get("panels", []))
    while stack:
        panel = stack.pop(0)
        yield panel
        stack.extend(panel.get("panels", []) or [])


def queries(path: Path) -> list[PanelQuery]:
    """Every expression of a dashboard; `label_values(m, l)` variables become the series query `m`."""
    document = load(path)
    found = [
        PanelQuery(path.name, str(panel.get("title", "")), str(target["expr"]))
        for panel in panels(document)
        for target in panel.get("targets", []) or []
        if target.get("expr")
    ]
    for variable in document.get("templating", {}).get("list", []):
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        match = _LABEL_VALUES.match(text.strip())
        if match:
            found.append(PanelQuery(path.name, f"variable {variable['name']}", match.group("metric")))
    return found


def metric_names(expr: str) -> set[str]:
    """The metric (or recorded series) names an expression reads."""
    without_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    without_groupings = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", without_strings)
    return {name for name in _NAME.findall(without_groupings) if name not in _NOT_METRICS}
