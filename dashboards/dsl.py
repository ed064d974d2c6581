"""The building blocks of tierwatch's dashboards: what a dashboard, row, panel and query are, the
PromQL helpers, the template-variable matchers and the panels several dashboards share.

Plain data, no Grafana SDK: dashboards/render.py turns it into dashboard JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

RATE = "$__rate_interval"
RANGE = "$__range"  # only in instant "in the selected time range" totals (see tests/unit/test_dashboards.py)

# Matchers for the template variables, by what the series is about.
C = 'cluster=~"$cluster"'
R = f'{C}, region=~"$region"'
T = f'{R}, target=~"$target"'
TV = 'tier=~"$tier"'  # the overview's tier variable

Kind = Literal["stat", "timeseries", "table"]
Mapping = tuple[str, str, str]  # value (or NAN), text, colour
NAN = "NaN"  # a Mapping value that matches NaN (a special value map in Grafana)


@dataclass(frozen=True)
class Query:
    """One PromQL query of a panel and its legend."""

    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    """What a panel shows; render.py turns it into SDK builders (``build_panel``)."""

    kind: Kind
    title: str
    description: str
    unit: str
    queries: tuple[Query, ...]
    alerts: tuple[str, ...] = ()
    width: int = 8
    height: int = 8
    mappings: tuple[Mapping, ...] = ()
    thresholds: tuple[tuple[float | None, str], ...] = ((None, "green"),)
    row_link_alertname: bool = False  # table rows link to the runbook of their `alertname`

    @property
    def instant(self) -> bool:
        return self.kind != "timeseries"


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Dashboard:
    """One dashboard: file name, stable uid, what it shows, its variables and rows."""

    file: str
    uid: str
    title: str
    description: str
    tiers: str  # regex of the tiers the cluster/region/target variables list
    rows: tuple[Row, ...]
    tier_variable: bool = False
    extra_variables: tuple[tuple[str, str, str], ...] = field(default=())  # name, label, label_values()


def sel(metric: str, *matchers: str) -> str:
    """A vector selector ``metric{m1, m2, ...}``."""
    return f"{metric}{{{', '.join(m for m in matchers if m)}}}"


def rate(metric: str, *matchers: str, fn: str = "rate", window: str = RATE) -> str:
    """``rate(metric{...}[$__rate_interval])`` (or another counter function/window)."""
    return f"{fn}({sel(metric, *matchers)}[{window}])"


def q(expr: str, legend: str = "") -> Query:
    return Query(" ".join(expr.split()), legend)


# a ratio with nothing to divide (a replica that serves no reads, an idle frontend) is 0/0: NaN
NO_TRAFFIC: Mapping = (NAN, "no traffic", "text")


def stat(title: str, description: str, unit: str, *queries: Query, **kw: Any) -> Panel:
    """A stat panel; a ratio (unit percentunit) shows "no traffic" where it is 0/0."""
    if unit == "percentunit":
        kw["mappings"] = (*kw.get("mappings", ()), NO_TRAFFIC)
    return Panel("stat", title, description, unit, queries, **kw)


def ts(title: str, description: str, unit: str, *queries: Query, **kw: Any) -> Panel:
    return Panel("timeseries", title, description, unit, queries, **kw)


def table(title: str, description: str, unit: str, *queries: Query, **kw: Any) -> Panel:
    return Panel("table", title, description, unit, queries, **kw)


UP_DOWN: tuple[Mapping, ...] = (("1", "UP", "green"), ("0", "DOWN", "red"))
OK_FAIL: tuple[Mapping, ...] = (("1", "OK", "green"), ("0", "FAILING", "red"))
RED_AT_1 = ((None, "green"), (1.0, "red"))


def role_panel(title: str, tier: str, top: str, other: str, alerts: tuple[str, ...], **kw: Any) -> Panel:
    """A stat per target: up + 2 x (role == top), so one value tells role and health together."""
    tier_is, role_is = f'tier="{tier}"', f'role="{top}"'
    expr = (
        sel("tierwatch_up", tier_is, T)
        + " + ignoring(role) (2 * "
        + sel("tierwatch_role", tier_is, role_is, T)
        + ")"
    )
    return stat(
        title,
        f"Every {tier} target with its current role ({top} or {other}) and whether its last probe "
        f"succeeded. The role is the last one a successful probe saw, so a dead {top} stays marked.",
        "none",
        q(expr, "{{target}}"),
        alerts=alerts,
        mappings=(
            ("3", top.upper(), "green"),
            ("1", other, "blue"),
            ("2", f"{top.upper()} DOWN", "red"),
            ("0", f"{other} DOWN", "orange"),
        ),
        **kw,
    )


def live_primaries(tier: str, what: str, alerts: tuple[str, ...], **kw: Any) -> Panel:
    """Live primaries per cluster (cluster:tierwatch_live_primaries:count): 1 is healthy."""
    return stat(
        "Live primaries",
        f"{what} that are up, per cluster (cluster:tierwatch_live_primaries:count): 1 is healthy, "
        "0 means writes fail, 2 or more is split brain.",
        "none",
        q(sel("cluster:tierwatch_live_primaries:count", tier, C), "{{cluster}}"),
        alerts=alerts,
        thresholds=((None, "red"), (1.0, "green"), (2.0, "red")),
        **kw,
    )


def process_row(job: str, what: str) -> Row:
    """CPU, memory, file descriptors and garbage collections of the kit's own processes (prometheus-client's
    standard ``process_*`` and ``python_*`` series), for the jobs ``job`` (a ``job`` matcher) selects."""
    by = "{{job}} {{instance}}"
    return Row(
        "Process",
        (
            ts(
                "CPU",
                f"CPU time used per second by {what} (1 = 100% = one core), user and system together.",
                "percentunit",
                q(f"sum by (job, instance) ({rate('process_cpu_seconds_total', job)})", by),
                width=6,
            ),
            ts(
                "Resident memory",
                f"Resident set size of {what}. A line that only rises is a leak; TierwatchMemoryGrowing "
                "fires when the last hour's trend passes 512 MiB within 4 hours.",
                "bytes",
                q(sel("process_resident_memory_bytes", job), by),
                alerts=("TierwatchMemoryGrowing",),
                width=6,
            ),
            ts(
                "File descriptors in use",
                f"Open file descriptors of {what} as a share of their limit (process_open_fds / "
                "process_max_fds, the soft ulimit -n): sockets to targets, Prometheus, Alertmanager, files.",
                "percentunit",
                q(f"{sel('process_open_fds', job)} / {sel('process_max_fds', job)}", by),
                alerts=("TierwatchFileDescriptorsRunningOut",),
                thresholds=((None, "green"), (0.8, "red")),
                width=6,
            ),
            ts(
                "Garbage collections",
                f"Python garbage collector runs per second of {what}, by generation (frequent generation 2 "
                "runs mean many long-lived objects are being created).",
                "cps",
                q(
                    f"sum by (job, instance, generation) ({rate('python_gc_collections_total', job)})",
                    "{{job}} {{instance}} gen {{generation}}",
                ),
                width=6,
            ),
        ),
    )
