"""Turn the dashboards of dashboards/dsl.py into Grafana dashboard JSON with grafana-foundation-sdk.

Every panel queries the templated ``datasource`` and links to the runbooks of the alerts it is about;
the result carries what Grafana's import reads (``__inputs``, ``__requires``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dash_b
from grafana_foundation_sdk.builders import prometheus as prom_b
from grafana_foundation_sdk.builders import stat as stat_b
from grafana_foundation_sdk.builders import table as table_b
from grafana_foundation_sdk.builders import timeseries as ts_b
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_m
from grafana_foundation_sdk.models import dashboard as dash_m
from grafana_foundation_sdk.models import prometheus as prom_m

from .dsl import NAN, Dashboard, Mapping, Panel

ROOT = Path(__file__).resolve().parents[1]
# Where panel links point: <base>/<AlertName>.md, the same absolute base as the alerts' runbook_url
# (runbook_url_base of rules/src/settings.yml), so that a link from a panel and from an alert agree.
# dashboards/generate.py --settings renders with another base, as rules/generate.py --settings does.
RUNBOOK_BASE_URL = yaml.safe_load((ROOT / "rules" / "src" / "settings.yml").read_text())[
    "runbook_url_base"
].rstrip("/")
# Grafana's import ("Dashboards > New > Import") asks for the inputs and checks the requirements;
# the generated JSON follows the schema of this Grafana version (grafana-foundation-sdk 10.1).
GRAFANA_VERSION = "10.1.0"
DS_INPUT = "DS_PROMETHEUS"
PANEL_NAMES = {"stat": "Stat", "table": "Table", "timeseries": "Time series"}
TAGS = ["tierwatch"]
DS = dash_m.DataSourceRef(type_val="prometheus", uid="${datasource}")


def runbook_url(alert: str, base: str = RUNBOOK_BASE_URL) -> str:
    return f"{base}/{alert}.md"


def _thresholds(steps: Sequence[tuple[float | None, str]]) -> dash_b.ThresholdsConfig:
    return (
        dash_b.ThresholdsConfig()
        .mode(dash_m.ThresholdsMode.ABSOLUTE)
        .steps([dash_m.Threshold(value=v, color=c) for v, c in steps])
    )


def _mappings(mappings: Sequence[Mapping]) -> list[dash_m.ValueMapping]:
    if not mappings:
        return []
    options = {
        value: dash_m.ValueMappingResult(text=text, color=color, index=i)
        for i, (value, text, color) in enumerate(mappings)
        if value != NAN
    }
    maps: list[dash_m.ValueMapping] = [dash_m.ValueMap(options=options)] if options else []
    for i, (value, text, color) in enumerate(mappings):
        if value == NAN:
            result = dash_m.ValueMappingResult(text=text, color=color, index=i)
            options_nan = dash_m.DashboardSpecialValueMapOptions(
                match=dash_m.SpecialValueMatch.NA_N, result=result
            )
            maps.append(dash_m.SpecialValueMap(options=options_nan))
    return maps


def build_panel(spec: Panel, panel_id: int, runbook_base: str = RUNBOOK_BASE_URL) -> Builder[dash_m.Panel]:
    """The SDK builder of one panel, its runbook links under ``runbook_base``."""
    builder: Any
    if spec.kind == "stat":
        builder = (
            stat_b.Panel()
            .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
            .color_mode(common_m.BigValueColorMode.BACKGROUND)
            .graph_mode(common_m.BigValueGraphMode.NONE)
            .text_mode(common_m.BigValueTextMode.VALUE_AND_NAME)
            .justify_mode(common_m.BigValueJustifyMode.AUTO)
            .orientation(common_m.VizOrientation.AUTO)
        )
    elif spec.kind == "timeseries":
        builder = (
            ts_b.Panel()
            .legend(
                common_b.VizLegendOptions()
                .display_mode(common_m.LegendDisplayMode.LIST)
                .placement(common_m.LegendPlacement.BOTTOM)
                .show_legend(True)
            )
            .line_width(1)
            .fill_opacity(10)
        )
    else:
        builder = (
            table_b.Panel()
            .show_header(True)
            .with_transformation(
                dash_m.DataTransformerConfig(id_val="organize", options={"excludeByName": {"Time": True}})
            )
        )
    builder = (
        builder.id(panel_id)
        .title(spec.title)
        .description(spec.description)
        .datasource(DS)
        .unit(spec.unit)
        .span(spec.width)
        .height(spec.height)
        .thresholds(_thresholds(spec.thresholds))
    )
    if spec.mappings:
        builder = builder.mappings(_mappings(spec.mappings))
    links = [
        dash_b.DashboardLink(f"Runbook: {alert}").url(runbook_url(alert, runbook_base)).target_blank(True)
        for alert in spec.alerts
    ]
    if links:
        builder = builder.links(links)
    if spec.row_link_alertname:
        builder = builder.data_links(
            [
                dash_b.DashboardLink("Runbook of ${__data.fields.alertname}")
                .url(f"{runbook_base}/${{__data.fields.alertname}}.md")
                .target_blank(True)
            ]
        )
    for index, query in enumerate(spec.queries):
        target = prom_b.Dataquery().expr(query.expr).ref_id(chr(ord("A") + index)).datasource(DS)
        if query.legend:
            target = target.legend_format(query.legend)
        if spec.kind == "table":
            target = target.instant().format(prom_m.PromQueryFormat.TABLE)
        elif spec.instant:
            target = target.instant()
        else:
            target = target.range()
        builder = builder.with_target(target)
    return builder


def _query_variable(name: str, label: str, query: str) -> dash_b.QueryVariable:
    return (
        dash_b.QueryVariable(name)
        .label(label)
        .datasource(DS)
        .query(query)
        .refresh(dash_m.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dash_m.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(dash_m.VariableOption(selected=True, text="All", value="$__all"))
    )


def variables(spec: Dashboard) -> list[Builder[dash_m.VariableModel]]:
    """datasource, [tier,] cluster, region, target and the dashboard's extra variables."""
    tiers = f'tier=~"{spec.tiers}"'
    result: list[Builder[dash_m.VariableModel]] = [
        dash_b.DatasourceVariable("datasource").label("Data source").type("prometheus")
    ]
    if spec.tier_variable:
        result.append(_query_variable("tier", "Tier", "label_values(tierwatch_up, tier)"))
    result += [
        _query_variable("cluster", "Cluster", f"label_values(tierwatch_up{{{tiers}}}, cluster)"),
        _query_variable(
            "region", "Region", f'label_values(tierwatch_up{{{tiers}, cluster=~"$cluster"}}, region)'
        ),
        _query_variable(
            "target",
            "Target",
            f'label_values(tierwatch_up{{{tiers}, cluster=~"$cluster", region=~"$region"}}, target)',
        ),
    ]
    result += [_query_variable(name, label, query) for name, label, query in spec.extra_variables]
    return result


def build_dashboard(spec: Dashboard, runbook_base: str = RUNBOOK_BASE_URL) -> dict[str, Any]:
    """The dashboard as JSON-ready data, its runbook links under ``runbook_base``."""
    builder = (
        dash_b.Dashboard(spec.title)
        .uid(spec.uid)
        .description(spec.description)
        .tags(TAGS)
        .readonly()
        .time("now-1h", "now")
        .refresh("30s")
        .timezone("browser")
        .tooltip(dash_m.DashboardCursorSync.CROSSHAIR)
        .link(
            dash_b.DashboardLink("tierwatch dashboards")
            .type(dash_m.DashboardLinkType.DASHBOARDS)
            .tags(TAGS)
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
        .variables(variables(spec))
    )
    panel_id = 1
    for row in spec.rows:
        builder = builder.with_row(dash_b.Row(row.title).id(panel_id))
        panel_id += 1
        for panel in row.panels:
            builder = builder.with_panel(build_panel(panel, panel_id, runbook_base))
            panel_id += 1
    data: dict[str, Any] = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    return import_ready(data)


def import_ready(data: dict[str, Any]) -> dict[str, Any]:
    """Add what Grafana's import reads: ``__inputs`` (the Prometheus to use, which becomes the default of
    the ``datasource`` variable) and ``__requires`` (Grafana version, data source and panel plugins)."""
    data["__inputs"] = [
        {
            "name": DS_INPUT,
            "label": "Prometheus",
            "description": "The Prometheus that scrapes tierwatch and loads its rules",
            "type": "datasource",
            "pluginId": "prometheus",
            "pluginName": "Prometheus",
        }
    ]
    every_panel = [*data["panels"], *(inner for row in data["panels"] for inner in row.get("panels", []))]
    panel_types = sorted({panel["type"] for panel in every_panel if panel["type"] != "row"})
    data["__requires"] = [
        {"type": "grafana", "id": "grafana", "name": "Grafana", "version": GRAFANA_VERSION},
        {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
        *({"type": "panel", "id": kind, "name": PANEL_NAMES[kind], "version": ""} for kind in panel_types),
    ]
    for variable in data["templating"]["list"]:
        if variable["type"] == "datasource":
            variable["current"] = {"selected": True, "text": f"${{{DS_INPUT}}}", "value": f"${{{DS_INPUT}}}"}
    return data


def render(spec: Dashboard, runbook_base: str = RUNBOOK_BASE_URL) -> str:
    """The text of one dashboard file (the committed one with the default ``runbook_base``)."""
    return json.dumps(build_dashboard(spec, runbook_base), indent=2, sort_keys=True) + "\n"
