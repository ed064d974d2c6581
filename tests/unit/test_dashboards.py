"""Static checks of the Grafana dashboards in dashboards/ (no server needed).

The committed JSON must equal what dashboards/generate.py produces, and every dashboard must pass lint
rules modelled on grafana/dashboard-linter's (implemented here):

- template-datasource: a ``datasource`` variable of type prometheus;
- template variables (the linter's job/instance rules, with tierwatch's label model): ``cluster``,
  ``region`` and ``target`` query variables whose ``label_values()`` query parses and uses a known metric;
- panel-datasource: every panel and query uses ``${datasource}``;
- panel-title-description, panel-units (a known Grafana unit on every panel);
- target-promql: every query parses as PromQL (promql-parser, a Rust PromQL parser; the live test also
  sends every query to a real Prometheus);
- target-rate-interval: every range is ``$__rate_interval`` inside rate/irate/increase; the one
  exception is ``increase(...[$__range])`` in an instant query, a total over the selected time range;
- target-counter-agg: counters (and histogram series) appear only inside rate/irate/increase;
- target variables (the linter's target-job/instance rules): every selector filters on each dashboard
  variable whose label its series carries;
- known metrics: every metric is produced by the exporter or the recovery service (the catalogue, or
  one of prometheus-client's standard ``process_*``/``python_*`` families both export), by node_exporter
  (its own series, or the batch commands' textfiles it serves: ``TEXTFILE_SERIES``, checked against
  the gauges tierwatch.restore declares), or is a recording rule of rules/, or a Prometheus built-in
  (``ALERTS``, ``up``, ``scrape_duration_seconds``);
- runbook links: every panel link points at docs/runbooks/<Alert>.md of an alert of rules/ whose
  expression shares a metric with the panel, and every alert is linked from some panel;
- uid: set, stable, unique; dashboards not editable.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import sys
from collections.abc import Iterator
from datetime import timedelta
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import promql_parser
import pytest
import yaml

from tierwatch.metric_catalog import CATALOG
from tierwatch_lab.docs_gen import load_all_metric_modules

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_DIR = ROOT / "dashboards"
RUNBOOKS = ROOT / "docs" / "runbooks"
DS = {"type": "prometheus", "uid": "${datasource}"}
RATE_SENTINEL, RANGE_SENTINEL = 4242, 4243  # seconds standing in for $__rate_interval and $__range
COUNTER_FUNCTIONS = {"rate", "irate", "increase"}
REQUIRED_VARIABLES = ("cluster", "region", "target")
# Grafana unit ids (a subset of Grafana's unit registry, with every unit these dashboards may need)
VALID_UNITS = {
    "none", "short", "percent", "percentunit", "s", "ms", "µs", "ns", "m", "h", "d", "dtdurations",
    "dtdurationms", "bytes", "decbytes", "bits", "Bps", "binBps", "bps", "reqps", "rps", "ops", "cps",
    "wps", "iops", "rpm", "opm", "cpm", "dateTimeAsIso", "dateTimeAsSystem", "dateTimeFromNow", "bool",
    "bool_yes_no", "bool_on_off", "hertz", "string",
}  # fmt: skip
BUILTIN_LABELS = {
    "ALERTS": {"alertname", "alertstate", "severity", "tier", "cluster"},
    "up": {"job", "instance"},
    "scrape_duration_seconds": {"job", "instance"},
}
# prometheus-client's standard collectors, which both kit services export (not in the catalogue):
# name -> (kind, labels).
CLIENT_SERIES: dict[str, tuple[str, set[str]]] = {
    "process_cpu_seconds_total": ("counter", {"job", "instance"}),
    "process_resident_memory_bytes": ("gauge", {"job", "instance"}),
    "process_virtual_memory_bytes": ("gauge", {"job", "instance"}),
    "process_open_fds": ("gauge", {"job", "instance"}),
    "process_max_fds": ("gauge", {"job", "instance"}),
    "process_start_time_seconds": ("gauge", {"job", "instance"}),
    "python_info": (
        "gauge",
        {"job", "instance", "implementation", "major", "minor", "patchlevel", "version"},
    ),
    "python_gc_objects_collected_total": ("counter", {"job", "instance", "generation"}),
    "python_gc_collections_total": ("counter", {"job", "instance", "generation"}),
    "python_gc_objects_uncollectable_total": ("counter", {"job", "instance", "generation"}),
}
# node_exporter's series that the hosts dashboard reads (job node; `cluster` and `region` where the node
# target carries them): checked like the client's series (known, typed, filtered on the variables).
NODE_LABELS = {"job", "instance", "cluster", "region"}
NODE_SERIES: dict[str, tuple[str, set[str]]] = {
    "node_cpu_seconds_total": ("counter", NODE_LABELS | {"cpu", "mode"}),
    "node_load5": ("gauge", NODE_LABELS),
    "node_memory_MemAvailable_bytes": ("gauge", NODE_LABELS),
    "node_memory_MemTotal_bytes": ("gauge", NODE_LABELS),
    "node_filesystem_avail_bytes": ("gauge", NODE_LABELS | {"device", "fstype", "mountpoint"}),
    "node_filesystem_size_bytes": ("gauge", NODE_LABELS | {"device", "fstype", "mountpoint"}),
    "node_filesystem_files": ("gauge", NODE_LABELS | {"device", "fstype", "mountpoint"}),
    "node_filesystem_files_free": ("gauge", NODE_LABELS | {"device", "fstype", "mountpoint"}),
    "node_textfile_scrape_error": ("gauge", NODE_LABELS),
    "node_disk_io_time_seconds_total": ("counter", NODE_LABELS | {"device"}),
    "node_filefd_allocated": ("gauge", NODE_LABELS),
    "node_filefd_maximum": ("gauge", NODE_LABELS),
    "node_network_receive_bytes_total": ("counter", NODE_LABELS | {"device"}),
    "node_network_transmit_bytes_total": ("counter", NODE_LABELS | {"device"}),
}
CLIENT_SERIES.update(NODE_SERIES)
# The batch commands' results (`tierwatch restore-test`, `tierwatch redis-snapshot`), textfiles that
# node_exporter serves (job node) with the labels tier, cluster, backup: the backups dashboard reads them.
TEXTFILE_LABELS = {"job", "instance", "tier", "cluster", "backup"}
TEXTFILE_SERIES: dict[str, tuple[str, set[str]]] = {
    f"tierwatch_{name}": ("gauge", TEXTFILE_LABELS)
    for name in (
        "restore_test_last_run_timestamp_seconds", "restore_test_last_success_timestamp_seconds",
        "restore_test_success", "restore_test_rto_seconds", "restore_test_rpo_seconds",
        "restore_test_restored_bytes", "redis_backup_last_run_timestamp_seconds",
        "redis_backup_last_success_timestamp_seconds", "redis_backup_success", "redis_backup_size_bytes",
        "redis_backup_duration_seconds",
    )
}  # fmt: skip
CLIENT_SERIES.update(TEXTFILE_SERIES)
# The counters the mtail programs make of the central log (logs/mtail/*.mtail, scraped as job logs; the logs
# dashboard reads them): their own labels, mtail's `prog`, and the scrape's job and instance.
LOG_SERIES: dict[str, tuple[str, set[str]]] = {
    name: (
        "counter",
        {"job", "instance", "prog", *(label.strip() for label in labels.split(",") if label.strip())},
    )
    for path in sorted((ROOT / "logs" / "mtail").glob("*.mtail"))
    for name, labels in re.findall(
        r"^counter (tierwatch_\w+)(?: by ([\w, ]+))?$", path.read_text(), re.MULTILINE
    )
}
CLIENT_SERIES.update(LOG_SERIES)
LEVEL_LABELS = {
    "cluster": {"cluster"},
    "region": {"region"},
    "queue": {"queue"},
    "proxy": {"proxy"},
    "target": {"cluster", "target", "region"},
}


def _load_generator() -> ModuleType:
    """dashboards/generate.py (the dashboards package lives at the repository root, not in the wheel)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module("dashboards.generate")


def _load_module(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


GEN = _load_generator()
FILES = [spec.file for spec in GEN.DASHBOARDS]


def load(file: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DASHBOARD_DIR / file).read_text())
    return data


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every non-row panel (rows are flat in generated dashboards; collapsed rows nest theirs)."""
    found = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            found += panel.get("panels", [])
        else:
            found.append(panel)
    return found


def targets(dashboard: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield panel, target


def query_variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"] if v["type"] == "query"}


# ------------------------------------------------------------------------------------------ PromQL helpers


def parse(expr: str) -> Any:
    """Parse a panel query: the Grafana ranges become sentinel durations, variables stay in strings."""
    text = expr.replace("[$__rate_interval]", f"[{RATE_SENTINEL}s]").replace(
        "[$__range]", f"[{RANGE_SENTINEL}s]"
    )
    assert "$__" not in text, f"unsupported Grafana macro in {expr!r}"
    return promql_parser.parse(text)


def children(node: Any) -> list[Any]:
    if isinstance(node, promql_parser.BinaryExpr):
        return [node.lhs, node.rhs]
    if isinstance(node, promql_parser.AggregateExpr):
        return [node.expr] + ([node.param] if node.param is not None else [])
    if isinstance(node, promql_parser.Call):
        return list(node.args)
    if isinstance(node, (promql_parser.ParenExpr, promql_parser.UnaryExpr, promql_parser.SubqueryExpr)):
        return [node.expr]
    if isinstance(node, promql_parser.MatrixSelector):
        return [node.vector_selector]
    return []


def selectors(
    node: Any, call: str | None = None, in_matrix: bool = False
) -> Iterator[tuple[Any, str | None]]:
    """(vector selector, name of the function whose range argument it is, or None)."""
    if isinstance(node, promql_parser.VectorSelector):
        yield node, call if in_matrix else None
        return
    if isinstance(node, promql_parser.MatrixSelector):
        yield from selectors(node.vector_selector, call, True)
        return
    name = node.func.name if isinstance(node, promql_parser.Call) else None
    for child in children(node):
        yield from selectors(child, name)


def ranges(node: Any, call: str | None = None) -> Iterator[tuple[timedelta, str | None]]:
    """(range, enclosing function) of every range vector and subquery."""
    if isinstance(node, promql_parser.MatrixSelector):
        yield node.range, call
    if isinstance(node, promql_parser.SubqueryExpr):
        yield node.range, "subquery"
    name = node.func.name if isinstance(node, promql_parser.Call) else None
    for child in children(node):
        yield from ranges(child, name)


def metric_names(expr: Any) -> set[str]:
    return {vs.name for vs, _ in selectors(expr)}


def matchers(vs: Any) -> list[Any]:
    return list(vs.matchers.matchers)


@cache
def rules() -> tuple[dict[str, str], dict[str, str]]:
    """(recording rule name -> expr, alert name -> expr) from rules/*.yml."""
    records, alerts = {}, {}
    for path in sorted((ROOT / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "record" in rule:
                    records[rule["record"]] = rule["expr"]
                else:
                    alerts[rule["alert"]] = rule["expr"]
    return records, alerts


@cache
def catalogue() -> dict[str, tuple[str, set[str]]]:
    """Every exposed series name -> (kind, labels), histogram series included."""
    load_all_metric_modules()
    series: dict[str, tuple[str, set[str]]] = {}
    for spec in CATALOG.values():
        labels = set(spec.all_labels)
        if spec.kind == "histogram":
            for suffix in ("_bucket", "_count", "_sum"):
                series[spec.name + suffix] = ("counter", labels | ({"le"} if suffix == "_bucket" else set()))
        else:
            series[spec.name] = (spec.kind, labels)
    return series


def series_labels(name: str) -> set[str]:
    """The target/cluster labels a metric, recording rule or built-in carries."""
    if name in catalogue():
        return catalogue()[name][1]
    if name in CLIENT_SERIES:
        return CLIENT_SERIES[name][1]
    if name in rules()[0]:
        level = name.split(":")[0]
        labels = {"tier"}
        for token in level.split("_"):
            labels |= LEVEL_LABELS[token]
        return labels
    return BUILTIN_LABELS[name]


def expand(names: set[str]) -> set[str]:
    """Metric names with every recording rule replaced, recursively, by the names it reads too."""
    records = rules()[0]
    result, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in result:
            continue
        result.add(name)
        if name in records:
            todo += metric_names(promql_parser.parse(records[name]))
    return result


# ------------------------------------------------------------------------------------------ the tests


def test_committed_json_equals_generator_output() -> None:
    for spec in GEN.DASHBOARDS:
        path = DASHBOARD_DIR / spec.file
        assert path.exists(), f"{spec.file} missing: run python -m dashboards.generate"
        assert path.read_text() == GEN.render(spec), (
            f"{spec.file} is stale: run python -m dashboards.generate"
        )
    committed = {p.name for p in DASHBOARD_DIR.glob("*.json")}
    assert committed == set(FILES), "dashboards/*.json must be exactly the generated files"
    assert GEN.main(["--check"]) == 0


def test_uids_are_set_stable_and_unique() -> None:
    uids = [load(file)["uid"] for file in FILES]
    assert len(set(uids)) == len(uids)
    for file, uid in zip(FILES, uids, strict=True):
        assert re.fullmatch(r"tierwatch-[a-z]+", uid) and len(uid) <= 40, uid
        assert uid == f"tierwatch-{Path(file).stem}"  # stable: derived from nothing that changes


@pytest.mark.parametrize("file", FILES)
def test_dashboard_not_editable_titled_and_described(file: str) -> None:
    dashboard = load(file)
    assert dashboard["editable"] is False
    assert dashboard["title"].startswith("tierwatch / ")
    assert dashboard["description"].strip()
    assert "tierwatch" in dashboard["tags"]


@pytest.mark.parametrize("file", FILES)
def test_template_datasource_rule(file: str) -> None:
    found = [v for v in load(file)["templating"]["list"] if v["type"] == "datasource"]
    assert [(v["name"], v["query"]) for v in found] == [("datasource", "prometheus")]


@pytest.mark.parametrize("file", FILES)
def test_template_variables_rule(file: str) -> None:
    variables = query_variables(load(file))
    assert set(REQUIRED_VARIABLES) <= set(variables)
    for name, variable in variables.items():
        assert variable["datasource"] == DS, name
        assert variable["multi"] and variable["includeAll"] and variable["allValue"] == ".*", name
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"])
        assert match, f"{name}: {variable['query']}"
        assert match.group(2) == name
        expr = promql_parser.parse(match.group(1))  # template-label-promql-rule
        assert isinstance(expr, promql_parser.VectorSelector)
        known = expr.name in catalogue() or expr.name in NODE_SERIES or expr.name in TEXTFILE_SERIES
        assert known and name in series_labels(expr.name), variable["query"]


@pytest.mark.parametrize("file", FILES)
def test_panel_datasource_rule(file: str) -> None:
    for panel, target in targets(load(file)):
        assert panel["datasource"] == DS, panel["title"]
        assert target["datasource"] == DS, panel["title"]


@pytest.mark.parametrize("file", FILES)
def test_panel_title_description_units_and_targets(file: str) -> None:
    seen_ids = set()
    for panel in panels(load(file)):
        title = panel.get("title", "")
        assert title.strip(), panel
        assert panel.get("description", "").strip(), title
        assert panel["fieldConfig"]["defaults"].get("unit") in VALID_UNITS, title
        assert panel["targets"], f"{title}: no query"
        assert [t["refId"] for t in panel["targets"]] == [chr(65 + i) for i in range(len(panel["targets"]))]
        assert panel["id"] not in seen_ids
        seen_ids.add(panel["id"])


@pytest.mark.parametrize("file", FILES)
def test_target_promql_rule(file: str) -> None:
    for panel, target in targets(load(file)):
        try:
            parse(target["expr"])
        except ValueError as exc:
            pytest.fail(f"{panel['title']}: {target['expr']!r} does not parse: {exc}")


@pytest.mark.parametrize("file", FILES)
def test_target_rate_interval_rule(file: str) -> None:
    for panel, target in targets(load(file)):
        for window, function in ranges(parse(target["expr"])):
            where = f"{panel['title']}: {target['expr']}"
            assert function in COUNTER_FUNCTIONS, f"{where}: range outside rate/irate/increase"
            seconds = window.total_seconds()
            if seconds == RANGE_SENTINEL:
                assert function == "increase" and target.get("instant"), (
                    f"{where}: $__range only in instant increase"
                )
            else:
                assert seconds == RATE_SENTINEL, f"{where}: use $__rate_interval"


@pytest.mark.parametrize("file", FILES)
def test_target_counter_agg_rule(file: str) -> None:
    for panel, target in targets(load(file)):
        for vs, function in selectors(parse(target["expr"])):
            kind = catalogue().get(vs.name, CLIENT_SERIES.get(vs.name, ("gauge", set())))[0]
            if kind == "counter":
                assert function in COUNTER_FUNCTIONS, f"{panel['title']}: counter {vs.name} outside rate()"


@pytest.mark.parametrize("file", FILES)
def test_every_metric_is_produced(file: str) -> None:
    known = set(catalogue()) | set(rules()[0]) | set(BUILTIN_LABELS) | set(CLIENT_SERIES)
    for panel, target in targets(load(file)):
        for vs, _ in selectors(parse(target["expr"])):
            assert vs.name, f"{panel['title']}: selector without a metric name"
            assert vs.name in known, f"{panel['title']}: {vs.name} is produced by nothing"


@pytest.mark.parametrize("file", FILES)
def test_selectors_filter_on_the_variables(file: str) -> None:
    dashboard = load(file)
    variables = set(query_variables(dashboard))
    for panel, target in targets(dashboard):
        for vs, _ in selectors(parse(target["expr"])):
            by_label = {m.name: m for m in matchers(vs)}
            alertname = by_label.get("alertname")
            if vs.name == "ALERTS" and alertname is not None and alertname.op == promql_parser.MatchOp.Equal:
                continue  # one named alert (e.g. the kit's Watchdog), whatever its cluster
            for label in sorted(variables & series_labels(vs.name)):
                matcher = by_label.get(label)
                where = f"{panel['title']}: {vs.name} does not filter on ${label}"
                assert matcher is not None, where
                fixed_tier = label == "tier" and "$" not in matcher.value
                assert fixed_tier or (
                    matcher.op == promql_parser.MatchOp.Re and matcher.value == f"${label}"
                ), where


def test_textfile_series_are_the_batch_commands_own() -> None:
    """TEXTFILE_SERIES are exactly the gauges `tierwatch restore-test` and `tierwatch redis-snapshot`
    write (the lists of textfile.Gauge of the tierwatch.restore modules)."""
    import pkgutil

    import tierwatch.restore
    from tierwatch.restore.textfile import Gauge

    declared: set[str] = set()
    for info in pkgutil.iter_modules(tierwatch.restore.__path__):
        module = importlib.import_module(f"tierwatch.restore.{info.name}")
        for value in vars(module).values():
            if isinstance(value, (list, tuple)):
                declared |= {gauge.name for gauge in value if isinstance(gauge, Gauge)}
    assert declared == set(TEXTFILE_SERIES)


def test_runbook_links_point_at_related_alerts_and_cover_every_alert() -> None:
    alerts = rules()[1]
    linked: set[str] = set()
    prefix = GEN.RUNBOOK_BASE_URL + "/"
    for file in FILES:
        for panel in panels(load(file)):
            used = set()
            named_alerts = set()
            for target in panel["targets"]:
                expr = parse(target["expr"])
                used |= metric_names(expr)
                for vs, _ in selectors(expr):
                    named_alerts |= {
                        m.value for m in matchers(vs) if vs.name == "ALERTS" and m.name == "alertname"
                    }
            for link in panel.get("links", []):
                url = link["url"]
                assert url.startswith(prefix) and url.endswith(".md"), url
                alert = url[len(prefix) : -len(".md")]
                assert alert in alerts, f"{panel['title']}: {alert} is not an alert of rules/"
                assert (RUNBOOKS / f"{alert}.md").is_file(), f"no runbook for {alert}"
                alert_metrics = expand(metric_names(promql_parser.parse(alerts[alert])))
                related = bool(expand(used) & alert_metrics) or alert in named_alerts
                assert related, f"{file}: panel {panel['title']!r} shares no metric with {alert}"
                linked.add(alert)
    assert sorted(set(alerts) - linked) == [], "alerts no panel links to"


def test_firing_alerts_table_links_rows_to_runbooks() -> None:
    (panel,) = [p for p in panels(load("overview.json")) if p["title"] == "Firing alerts"]
    (link,) = panel["fieldConfig"]["defaults"]["links"]
    assert link["url"] == GEN.RUNBOOK_BASE_URL + "/${__data.fields.alertname}.md"


def test_runbook_links_are_absolute_and_the_alerts_own() -> None:
    """A panel's runbook link is the runbook_url its alert carries (an absolute URL, not a repo path)."""
    runbook_urls = {
        rule["alert"]: rule["annotations"]["runbook_url"]
        for path in sorted((ROOT / "rules").glob("*.rules.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    assert re.fullmatch(r"https?://[^/\s]+/\S+", GEN.RUNBOOK_BASE_URL), GEN.RUNBOOK_BASE_URL
    seen = 0
    for file in FILES:
        for panel in panels(load(file)):
            for link in panel.get("links", []):
                alert = link["title"].removeprefix("Runbook: ")
                assert link["url"] == runbook_urls[alert], (file, panel["title"], link["url"])
                seen += 1
    assert seen >= len(runbook_urls)


@pytest.mark.parametrize("file", FILES)
def test_dashboards_are_import_ready(file: str) -> None:
    """__inputs asks for the Prometheus; __requires names Grafana, the data source and every panel
    plugin used; importing (Grafana substitutes ${DS_PROMETHEUS}) makes that Prometheus the default."""
    text = (DASHBOARD_DIR / file).read_text()
    data = json.loads(text)
    assert data["__inputs"] == [
        {
            "name": "DS_PROMETHEUS",
            "label": "Prometheus",
            "description": "The Prometheus that scrapes tierwatch and loads its rules",
            "type": "datasource",
            "pluginId": "prometheus",
            "pluginName": "Prometheus",
        }
    ]
    requires = {(r["type"], r["id"]): r for r in data["__requires"]}
    assert requires[("grafana", "grafana")]["version"] == GEN.GRAFANA_VERSION
    assert ("datasource", "prometheus") in requires
    used = {panel["type"] for panel in panels(data)}
    assert {kind for (type_, kind) in requires if type_ == "panel"} == used
    imported = json.loads(text.replace("${DS_PROMETHEUS}", "prom-uid-1"))
    assert "${DS_" not in json.dumps(imported)
    (variable,) = [v for v in imported["templating"]["list"] if v["type"] == "datasource"]
    assert variable["name"] == "datasource" and variable["current"]["value"] == "prom-uid-1"
    for panel in panels(imported):
        assert panel["datasource"] == DS, panel["title"]


def test_provisioning_files() -> None:
    providers = yaml.safe_load((DASHBOARD_DIR / "provisioning" / "dashboards" / "tierwatch.yml").read_text())
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["allowUiUpdates"] is False
    assert provider["options"]["path"]
    sources = yaml.safe_load((DASHBOARD_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert sources["apiVersion"] == 1
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    # $__rate_interval is derived from the scrape interval Grafana is told about
    assert re.fullmatch(r"\d+s", source["jsonData"]["timeInterval"])


def test_lint_rules_catch_bad_queries() -> None:
    """The rules fail on what they are meant to catch (a lint that passes everything proves nothing)."""
    with pytest.raises(ValueError):
        parse("sum(rate(tierwatch_up[$__rate_interval])")
    ((_, function),) = list(ranges(parse("rate(tierwatch_probe_rounds_total[5m])")))
    assert function == "rate"
    ((window, _),) = list(ranges(parse("rate(tierwatch_probe_rounds_total[5m])")))
    assert window.total_seconds() not in (RATE_SENTINEL, RANGE_SENTINEL)
    ((vs, function),) = list(selectors(parse("tierwatch_probe_rounds_total")))
    assert catalogue()[vs.name][0] == "counter" and function is None
    ((vs, function),) = list(
        selectors(parse("sum_over_time(tierwatch_probe_rounds_total[$__rate_interval])"))
    )
    assert function not in COUNTER_FUNCTIONS
    assert "tierwatch_no_such_metric" not in catalogue()
    ((vs, function),) = list(selectors(parse("process_cpu_seconds_total")))
    assert CLIENT_SERIES[vs.name][0] == "counter" and function is None
    assert "process_open_fd" not in CLIENT_SERIES and series_labels("process_open_fds") == {"job", "instance"}
    assert series_labels("cluster_queue:tierwatch_queue_backlog:sum") == {"tier", "cluster", "queue"}
    assert series_labels("target:tierwatch_cache_hit:ratio_rate10m") == {
        "tier",
        "cluster",
        "target",
        "region",
    }


def _links(data: dict[str, Any]) -> list[str]:
    """Every runbook link of a dashboard: panel links and data links of table rows."""
    found = [link["url"] for panel in panels(data) for link in panel.get("links", [])]
    for panel in panels(data):
        found += [link["url"] for link in panel.get("fieldConfig", {}).get("defaults", {}).get("links", [])]
    return found


def test_a_rules_settings_file_moves_the_dashboards_runbook_links_too(tmp_path: Path) -> None:
    """The settings file that moves the alerts' runbook_url (rules/generate.py --settings) moves the
    dashboards' runbook links with it: a panel's link and its alert's link stay the same URL."""
    base = "https://wiki.example.com/ops/tierwatch-runbooks/"
    settings = tmp_path / "my-settings.yml"
    settings.write_text(f"runbook_url_base: {base}\nthresholds: {{queue_backlog_jobs: 5000}}\n")
    out, rules_out = tmp_path / "dashboards", tmp_path / "rules"
    out.mkdir()
    assert GEN.main(["--settings", str(settings), "--out", str(out)]) == 0
    rules_gen = _load_module("rules_generate_for_dashboards", ROOT / "rules" / "generate.py")
    assert rules_gen.main(["--settings", str(settings), "--out", str(rules_out)]) == 0
    alert_urls = {
        rule["alert"]: rule["annotations"]["runbook_url"]
        for path in rules_out.glob("*.rules.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    moved = 0
    for file in FILES:
        committed, generated = load(file), json.loads((out / file).read_text())
        links = _links(generated)
        assert len(links) == len(_links(committed)), file
        for url in links:
            assert url.startswith(base), (file, url)
            alert = url[len(base) :].removesuffix(".md")
            assert "{" in alert or url == alert_urls[alert], (file, url)
            moved += 1
    assert moved > len(FILES)
    assert GEN.main(["--check"]) == 0  # the committed dashboards are untouched, the default base back

    bad = tmp_path / "bad.yml"
    bad.write_text("runbook_url_base: docs/runbooks/\n")
    assert GEN.main(["--settings", str(bad), "--out", str(out)]) == 2
