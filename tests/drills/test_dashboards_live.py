"""Every dashboard query on a real Prometheus that scrapes the real exporter and recovery service.

dashboards/livestack.py starts the stack (HAProxy pair + VIP + app servers, Redis master + replica +
Sentinel with queues, PostgreSQL primary + replica, ``tierwatch serve`` at 1 s, ``tierwatch recover`` in
dry-run mode, Prometheus with the real rules). Then:

- every query of every dashboard is accepted by Prometheus (no ``bad_data``), variables substituted as
  Grafana would with "All" selected, ``$__rate_interval`` as 5s (4 x the 1 s scrape interval, plus margin);
- every panel query of every dashboard returns at least one series, polled with a deadline. Two
  exceptions: the recovery dashboard's "Last failover" (its series exists only after a completed
  failover, which this stack does not perform: the recovery service runs in dry-run mode), and the
  PostgreSQL dashboard's Patroni panels (this stack runs no Patroni; their series are checked on a
  real Patroni cluster by tests/integration/test_patroni_probe.py);
- every template variable lists values;
- the overview tells the truth: the active LB, the Redis master, the PostgreSQL primary, the app server
  that was stopped, the alert that fires for it and the refused recovery action are where they are.
"""

from __future__ import annotations

import importlib
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tierwatch_lab.stack.prometheus import PrometheusServer

ROOT = Path(__file__).resolve().parents[2]
RATE_INTERVAL, RANGE = "5s", "5m"
# (dashboard file, panel title): series that appear only after a completed failover
AFTER_A_FAILOVER = {("recovery.json", "Last failover")}
PATRONI_SERIES = "tierwatch_patroni_"  # panels of a Patroni cluster: none in this stack
VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)\}")

pytestmark = pytest.mark.slow


def _import(name: str) -> ModuleType:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module(name)


GEN = _import("dashboards.generate")
LIVE = _import("dashboards.livestack")


def substitute(expr: str) -> str:
    """The query Grafana sends with every variable on "All" (allValue ``.*``)."""
    expr = expr.replace("$__rate_interval", RATE_INTERVAL).replace("$__range", RANGE)
    return VARIABLE.sub(".*", expr)


def panel_queries() -> list[tuple[str, str, str, str, bool]]:
    """(file, panel title, refId, query, instant) of every dashboard."""
    found = []
    for spec in GEN.DASHBOARDS:
        data = GEN.build_dashboard(spec)
        for panel in data["panels"]:
            for target in panel.get("targets", []):
                found.append(
                    (
                        spec.file,
                        panel["title"],
                        target["refId"],
                        substitute(target["expr"]),
                        bool(target.get("instant")),
                    )
                )
    return found


def run(prom: PrometheusServer, query: str, instant: bool) -> list[dict[str, Any]]:
    """The series a panel would show: an instant query, or a range query over the last minute."""
    if instant:
        result: list[dict[str, Any]] = prom.api("query", query=query)["result"]
        return result
    now = time.time()
    data = prom.api("query_range", query=query, start=str(now - 60), end=str(now), step="5")
    ranged: list[dict[str, Any]] = data["result"]
    return ranged


@pytest.fixture(scope="module")
def live() -> Iterator[Any]:
    with LIVE.live_stack() as stack:
        yield stack


def test_every_query_is_accepted_by_prometheus(live: Any) -> None:
    for file, title, ref, query, instant in panel_queries():
        try:
            run(live.prometheus, query, instant)
        except Exception as exc:  # noqa: BLE001 - reported with the panel it belongs to
            pytest.fail(f"{file} / {title} / {ref}: {query}: {exc}")


def test_every_panel_query_returns_data(live: Any) -> None:
    pending = {
        (f, t, r): (q, i)
        for f, t, r, q, i in panel_queries()
        if (f, t) not in AFTER_A_FAILOVER and PATRONI_SERIES not in q
    }
    assert len(pending) > 100
    deadline = time.monotonic() + 180
    while pending and time.monotonic() < deadline:
        for key, (query, instant) in list(pending.items()):
            if run(live.prometheus, query, instant):
                del pending[key]
        if pending:
            time.sleep(2)
    missing = "\n".join(f"{f} / {t} / {r}: {pending[(f, t, r)][0]}" for f, t, r in sorted(pending))
    assert not pending, f"panel queries without data after 180 s:\n{missing}"


def test_the_excluded_panel_is_the_failover_one_and_has_no_data_yet(live: Any) -> None:
    """The exclusion is not a blanket one: its query is valid and empty only for want of a failover."""
    excluded = [(f, t, q, i) for f, t, _, q, i in panel_queries() if (f, t) in AFTER_A_FAILOVER]
    assert len(excluded) == 1
    ((_, _, query, instant),) = excluded
    assert run(live.prometheus, query, instant) == []
    assert live.prometheus.value('sum(tierwatch_recovery_failovers_total{cluster="cache-main"})') == 0


def test_every_variable_lists_values(live: Any) -> None:
    for spec in GEN.DASHBOARDS:
        for variable in GEN.build_dashboard(spec)["templating"]["list"]:
            if variable["type"] != "query":
                continue
            match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"])
            assert match, variable["query"]
            series = live.prometheus.api("series", **{"match[]": substitute(match.group(1))})
            values = {s[match.group(2)] for s in series if match.group(2) in s}
            assert values, f"{spec.file}: variable {variable['name']} lists nothing"


def overview_values(prom: PrometheusServer, title: str) -> dict[str, float]:
    """The overview panel ``title``'s instant values by legend-relevant labels."""
    (expr,) = [q for f, t, _, q, _ in panel_queries() if f == "overview.json" and t == title]
    return {s["metric"].get("target", ""): float(s["value"][1]) for s in prom.query(expr)}


def test_overview_shows_where_the_problem_is(live: Any) -> None:
    prom = live.prometheus
    stopped = LIVE.STOPPED_APP

    def settled() -> bool:
        apps = overview_values(prom, "App servers by region")
        lbs = sorted(overview_values(prom, "Load balancer pair").values())
        return apps.get(stopped) == 0 and lbs == [1.0, 3.0]

    deadline = time.monotonic() + 60
    while not settled():
        assert time.monotonic() < deadline, "overview did not show the stopped app server and the LB roles"
        time.sleep(1)
    apps = overview_values(prom, "App servers by region")
    assert {name: value for name, value in apps.items() if name != stopped} == {
        "es-1": 1,
        "es-2": 1,
        "es-3": 1,
        "portal-1": 1,  # the https app server of the TLS certificates panel
    }
    assert overview_values(prom, "Redis cluster") == {"redis-a": 3, "redis-b": 1}  # master up, replica up
    assert overview_values(prom, "PostgreSQL cluster") == {"pg-1": 3, "pg-2": 1}

    (alerts_query,) = [q for f, t, _, q, _ in panel_queries() if t == "Firing alerts"]
    deadline = time.monotonic() + 60
    while not any(
        s["metric"]["alertname"] == "AppInstanceDown" and s["metric"].get("target") == stopped
        for s in prom.query(alerts_query)
    ):
        assert time.monotonic() < deadline, "AppInstanceDown for the stopped app is not in the firing alerts"
        time.sleep(1)
    assert all(s["metric"]["alertname"] != "Watchdog" for s in prom.query(alerts_query))

    (actions_query,) = [q for f, t, _, q, _ in panel_queries() if t == "Recent recovery actions"]
    rows = {(s["metric"]["action"], s["metric"]["outcome"]) for s in prom.query(actions_query)}
    assert rows == {("redis_failover", "refused")}


def test_traffic_panels_show_the_requests_sent_through_the_lbs(live: Any) -> None:
    """The real-traffic panels (TRAFFIC_ROWS of dashboards/lb_dashboard.py and app_dashboard.py) on real
    HAProxy and Express app servers: each returns data, and the request rates show the traffic the stack
    sends through the VIP, at the LBs (backend be_app) and at the apps of both regions."""
    lb, app = _import("dashboards.lb_dashboard"), _import("dashboards.app_dashboard")
    rows = (*lb.TRAFFIC_ROWS, *app.TRAFFIC_ROWS)
    titles = {panel.title for row in rows for panel in row.panels}
    queries = [(f, t, q, i) for f, t, _, q, i in panel_queries() if t in titles]
    assert len(titles) == 13 and len(queries) == 15

    def rates(file: str, title: str) -> dict[str, float]:
        (query,) = [q for f, t, q, _ in queries if (f, t) == (file, title)]
        return {
            s["metric"].get("region", s["metric"].get("proxy", "")): float(s["value"][1])
            for s in live.prometheus.query(query)
        }

    def shown() -> bool:
        return (
            all(run(live.prometheus, q, i) for _, _, q, i in queries)
            and rates("lb.json", "Requests by backend").get("be_app", 0) > 0
            and all(rates("app.json", "Requests by region").get(r, 0) > 0 for r in ("primary", "failover"))
            and all(
                rates("app.json", "LB requests by backend and region").get(r, 0) > 0
                for r in ("primary", "failover")
            )
        )

    deadline = time.monotonic() + 120
    while not shown():
        empty = [f"{f} / {t}" for f, t, q, i in queries if not run(live.prometheus, q, i)]
        assert time.monotonic() < deadline, f"traffic panels without data or traffic: {empty}"
        time.sleep(2)


def test_the_patroni_panels_are_the_postgres_dashboards_and_have_no_data_here(live: Any) -> None:
    patroni = [(f, t, q, i) for f, t, _, q, i in panel_queries() if PATRONI_SERIES in q]
    assert patroni and {f for f, _, _, _ in patroni} == {"postgres.json"}
    assert not any(run(live.prometheus, q, i) for _, _, q, i in patroni)
