"""The small HTML status page at ``/``: every cluster and target with its state, at a glance."""

from __future__ import annotations

import html
import time

from . import __version__
from .monitor import Monitor, TargetState

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1d1d1f;background:#fafafa}
h1{font-size:1.3rem;margin:0 0 .3rem} .meta{color:#666;font-size:.85rem;margin-bottom:1rem}
.summary span{display:inline-block;margin-right:1rem;font-weight:600}
section{background:#fff;border:1px solid #ddd;border-radius:6px;margin:0 0 1rem;padding:.6rem .9rem}
h2{font-size:1.05rem;margin:.2rem 0 .5rem} h2 small{color:#666;font-weight:normal}
table{border-collapse:collapse;width:100%;font-size:.9rem}
th,td{text-align:left;padding:.25rem .5rem;border-bottom:1px solid #eee}
th{color:#555;font-weight:600}
.state{font-weight:700;padding:.1rem .45rem;border-radius:4px;color:#fff}
.up{background:#2e7d32}.down{background:#c62828}.unknown{background:#888}
.open{color:#c62828;font-weight:700}.half_open{color:#ef6c00;font-weight:700}
"""


def _age(now: float, then: float | None) -> str:
    if then is None:
        return "never"
    seconds = max(0.0, now - then)
    return f"{seconds:.1f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago"


def _row(state: TargetState, now: float) -> str:
    status = state.status
    latency = f"{state.last_duration * 1000:.1f} ms" if state.last_duration is not None else "-"
    problem = state.last_error or ""
    cells = [
        f'<span class="state {status}">{status.upper()}</span>',
        html.escape(state.info.name),
        html.escape(state.info.tier),
        html.escape(state.info.region),
        html.escape(state.role or "-"),
        f'<span class="{state.breaker.state}">{state.breaker.state.replace("_", "-")}</span>',
        latency,
        _age(now, state.last_probe),
        _age(now, state.changed_at),
        html.escape(problem),
    ]
    return "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def render_status_page(monitor: Monitor) -> str:
    """The status page as an HTML document (auto-refreshes every monitor interval)."""
    now = time.time()
    states = monitor.states
    up = sum(1 for s in states if s.up)
    down = sum(1 for s in states if s.up is False)
    opened = sum(1 for s in states if s.breaker.state != "closed")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<meta http-equiv='refresh' content='{max(1, int(monitor.interval))}'>",
        f"<title>tierwatch: {up}/{len(states)} up</title><style>{_STYLE}</style></head><body>",
        "<h1>tierwatch</h1>",
        f"<div class='meta'>version {__version__} · probe every {monitor.interval:g}s, "
        f"timeout {monitor.timeout:g}s · rounds {monitor.rounds} · "
        "<a href='/metrics'>/metrics</a> · <a href='/ready'>/ready</a></div>",
        f"<div class='summary'><span>{up} up</span><span>{down} down</span>"
        f"<span>{opened} circuits not closed</span></div>",
    ]
    columns = (
        "state",
        "target",
        "tier",
        "region",
        "role",
        "circuit",
        "latency",
        "probed",
        "changed",
        "problem",
    )
    header = "".join(f"<th>{h}</th>" for h in columns)
    for name, cluster in monitor.clusters.items():
        members = [s for s in states if s.info.cluster.name == name]
        members_up = sum(1 for s in members if s.up)
        vip = ""
        if cluster.vip is not None:
            served = cluster.vip.served_by or "unknown LB"
            vip = f" · VIP {'served by ' + html.escape(served) if cluster.vip.up else 'NOT SERVED'}"
        parts.append(
            f"<section><h2>{html.escape(name)} <small>{html.escape(cluster.config.tier)} · "
            f"{members_up}/{len(members)} up{vip}</small></h2><table><tr>{header}</tr>"
        )
        parts.extend(_row(s, now) for s in members)
        parts.append("</table></section>")
    parts.append("</body></html>")
    return "".join(parts)
