"""The small HTML status page at ``/``: every cluster and target with its state, at a glance, and the
recent past of the targets that need a look; ``/target?name=...``: one target's whole kept history.

Bounded at any number of targets: the overview shows the history (last changes and a latency
sparkline) inline only for the ``INLINE_MAX`` targets that changed most recently among those that are
not up, have a circuit that is not closed, or changed in the last ``RECENT_SECONDS``; every other
target's history is one click away, on its own page. With ``INLINE_MAX`` targets or fewer, every row
carries its sparkline. Everything shown is escaped; the error texts are the probes' secret-free
descriptions (``probes.base.describe_failure``).
"""

from __future__ import annotations

import html
import math
import re
import time
import urllib.parse
from collections.abc import Sequence

from . import __version__
from .monitor import Monitor, TargetState
from .target_history import PROBES_KEPT, Change, ProbeMark

RECENT_SECONDS = 900.0  # a change this recent puts a target's history on the overview
INLINE_MAX = 100  # targets shown with their history on the overview, at most
# a page reloaded every second flickers, and at 10,000 targets costs a 2.5 MB render per open tab
MIN_REFRESH = 5
LINE_COLOUR = "#1565c0"  # the sparkline of successful probes
DOWN_COLOUR = "#c62828"  # a failed probe in the sparkline, a down state
_PLAIN = re.compile(r"[A-Za-z0-9_.-]+")  # safe as they are in a URL's query and in HTML

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1d1d1f;background:#fafafa}
h1{font-size:1.3rem;margin:0 0 .3rem} .meta{color:#666;font-size:.85rem;margin-bottom:1rem}
.summary span{display:inline-block;margin-right:1rem;font-weight:600}
section{background:#fff;border:1px solid #ddd;border-radius:6px;margin:0 0 1rem;padding:.6rem .9rem}
h2{font-size:1.05rem;margin:.2rem 0 .5rem} h2 small{color:#666;font-weight:normal}
table{border-collapse:collapse;width:100%;font-size:.9rem}
th,td{text-align:left;padding:.25rem .5rem;border-bottom:1px solid #eee}
th{color:#555;font-weight:600}
a{color:inherit}
.state{font-weight:700;padding:.1rem .45rem;border-radius:4px;color:#fff}
.up{background:#2e7d32}.down{background:#c62828}.unknown{background:#888}
.open{color:#c62828;font-weight:700}.half_open{color:#ef6c00;font-weight:700}
td svg{vertical-align:middle;margin-left:.4rem}
tr.history td{border-bottom:1px solid #ddd;padding-top:0;font-size:.8rem;color:#444}
.change{display:inline-block;margin:0 .9rem .15rem 0;white-space:nowrap}
.to{font-weight:700;padding:0 .3rem;border-radius:3px;color:#fff;background:#555}
.to.up,.to.closed{background:#2e7d32}.to.down,.to.open{background:#c62828}
.to.half_open{background:#ef6c00}.to.role{background:#5e35b1}
.detail{color:#8a1c1c;white-space:normal}.when{color:#777}
.note{color:#555;font-size:.85rem}
"""


def _age(now: float, then: float | None) -> str:
    if then is None:
        return "never"
    seconds = max(0.0, now - then)
    return f"{seconds:.1f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago"


def _clock(when: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(when))


def _link(name: str) -> str:
    if _PLAIN.fullmatch(name):  # every configured name (config.target.NAME_PATTERN): nothing to quote
        return f'<a href="/target?name={name}">{name}</a>'
    href = "/target?name=" + urllib.parse.quote(name, safe="")
    return f'<a href="{html.escape(href)}">{html.escape(name)}</a>'


def sparkline(marks: Sequence[ProbeMark], width: int = 120, height: int = 22) -> str:
    """An inline SVG of probe durations, oldest left, newest at the right edge, scaled to the
    slowest successful one: a line through the successful probes, a full-height red tick for each
    failed one (the line breaks there). Empty when there is no probe yet."""
    if not marks:
        return ""
    finite = [m.seconds for m in marks if m.ok and math.isfinite(m.seconds)]
    top = max(finite, default=0.0)
    usable = height - 4
    step = width / (PROBES_KEPT - 1)
    left = width - (len(marks) - 1) * step
    runs: list[list[tuple[float, float]]] = []
    ticks: list[float] = []
    run: list[tuple[float, float]] | None = None
    for i, mark in enumerate(marks):
        x = left + i * step
        if not mark.ok:
            ticks.append(x)
            run = None
            continue
        value = min(mark.seconds, top) if math.isfinite(mark.seconds) else top
        y = height - 2 - (value / top * usable if top > 0 else 0.0)
        if run is None:
            run = []
            runs.append(run)
        run.append((x, y))
    failed = len(ticks)
    title = f"last {len(marks)} probes: slowest {top * 1000:.1f} ms, {failed} failed"
    parts = [
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'xmlns="http://www.w3.org/2000/svg" role="img"><title>{title}</title>'
        f'<rect width="{width}" height="{height}" fill="#f3f5f8"/>'
    ]
    for points in runs:
        if len(points) == 1:
            (x, y) = points[0]
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="1.5" fill="{LINE_COLOUR}"/>')
        else:
            text = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            parts.append(f'<polyline points="{text}" fill="none" stroke="{LINE_COLOUR}" stroke-width="1.5"/>')
    if ticks:
        path = "".join(f"M{x:.1f} 0V{height}" for x in ticks)
        parts.append(f'<path d="{path}" stroke="{DOWN_COLOUR}" stroke-width="2"/>')
    parts.append("</svg>")
    return "".join(parts)


def _transition(change: Change) -> str:
    """``before → after`` (the new state marked by its colour), and why it went down."""
    to_class = "role" if change.kind == "role" else change.after
    detail = f' <span class="detail">{html.escape(change.detail)}</span>' if change.detail else ""
    return (
        f'{html.escape(change.before)} → <span class="to {html.escape(to_class)}">'
        f"{html.escape(change.after)}</span>{detail}"
    )


def _change(change: Change, now: float) -> str:
    """One change inline: ``12:00:01 circuit closed → open`` (up/down changes are not named)."""
    what = "" if change.kind == "status" else f"{html.escape(change.kind)} "
    return (
        f'<span class="change"><span class="when" title="{_age(now, change.when)}">'
        f"{_clock(change.when)}</span> {what}{_transition(change)}</span>"
    )


def _row(state: TargetState, now: float, spark: bool) -> str:
    status = state.status
    latency = f"{state.last_duration * 1000:.1f} ms" if state.last_duration is not None else "-"
    if spark:
        latency += sparkline(state.history.probes(), 90, 18)
    cells = [
        f'<span class="state {status}">{status.upper()}</span>',
        _link(state.info.name),
        html.escape(state.info.tier),
        html.escape(state.info.region),
        html.escape(state.role or "-"),
        f'<span class="{state.breaker.state}">{state.breaker.state.replace("_", "-")}</span>',
        latency,
        _age(now, state.last_probe),
        _age(now, state.changed_at),
        html.escape(state.last_error or ""),
    ]
    return "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def _history_row(state: TargetState, now: float, columns: int) -> str:
    changes = "".join(_change(c, now) for c in state.history.changes())
    return f'<tr class="history"><td></td><td colspan="{columns - 1}">{changes}</td></tr>'


def noteworthy(states: Sequence[TargetState], now: float) -> list[TargetState]:
    """The targets whose history the overview shows: not up, circuit not closed, or changed in the
    last ``RECENT_SECONDS``; the ``INLINE_MAX`` most recently changed of them."""
    found: list[tuple[float, int, TargetState]] = []
    for index, state in enumerate(states):
        changed = state.history.last_change_at()
        recent = changed is not None and now - changed <= RECENT_SECONDS
        if recent or state.up is False or state.breaker.state != "closed":
            found.append((changed or state.changed_at or 0.0, index, state))
    found.sort(key=lambda item: (-item[0], item[1]))
    return [state for _, _, state in found[:INLINE_MAX]]


COLUMNS = ("state", "target", "tier", "region", "role", "circuit", "latency", "probed", "changed", "problem")


def _head(title: str, refresh: float) -> str:
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<meta http-equiv='refresh' content='{max(MIN_REFRESH, int(refresh))}'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
    )


def render_status_page(monitor: Monitor) -> str:
    """The status page as an HTML document (auto-refreshes every monitor interval, at most every
    ``MIN_REFRESH`` seconds)."""
    now = time.time()
    states = monitor.states
    up = sum(1 for s in states if s.up)
    down = sum(1 for s in states if s.up is False)
    opened = sum(1 for s in states if s.breaker.state != "closed")
    shown = noteworthy(states, now)
    detailed = {id(s) for s in shown}
    every_spark = len(states) <= INLINE_MAX
    parts = [
        _head(f"tierwatch: {up}/{len(states)} up", monitor.interval),
        "<h1>tierwatch</h1>",
        f"<div class='meta'>version {__version__} · probe every {monitor.interval:g}s, "
        f"timeout {monitor.timeout:g}s · rounds {monitor.rounds} · "
        "<a href='/metrics'>/metrics</a> · <a href='/ready'>/ready</a></div>",
        f"<div class='summary'><span>{up} up</span><span>{down} down</span>"
        f"<span>{opened} circuits not closed</span></div>",
    ]
    header = "".join(f"<th>{h}</th>" for h in COLUMNS)
    by_cluster: dict[str, list[TargetState]] = {}
    for state in states:
        by_cluster.setdefault(state.info.cluster.name, []).append(state)
    for name, cluster in monitor.clusters.items():
        members = by_cluster.get(name, [])
        members_up = sum(1 for s in members if s.up)
        vip = ""
        if cluster.vip is not None:
            served = cluster.vip.served_by or "unknown LB"
            vip = f" · VIP {'served by ' + html.escape(served) if cluster.vip.up else 'NOT SERVED'}"
        parts.append(
            f"<section><h2>{html.escape(name)} <small>{html.escape(cluster.config.tier)} · "
            f"{members_up}/{len(members)} up{vip}</small></h2><table><tr>{header}</tr>"
        )
        for state in members:
            inline = id(state) in detailed
            parts.append(_row(state, now, every_spark or inline))
            if inline:
                parts.append(_history_row(state, now, len(COLUMNS)))
        parts.append("</table></section>")
    parts.append(
        "<p class='note'>History (last changes, times in UTC) is shown under the targets that are not "
        f"up, have a circuit not closed, or changed in the last {RECENT_SECONDS / 60:g} minutes, "
        f"at most {INLINE_MAX}; every target's own page (follow its name) has its whole kept history.</p>"
    )
    parts.append("</body></html>")
    return "".join(parts)


def render_target_page(monitor: Monitor, state: TargetState) -> str:
    """One target's page: its state, a large sparkline of its last probes and every kept change."""
    now = time.time()
    info = state.info
    marks = state.history.probes()
    failed = sum(1 for m in marks if not m.ok)
    timed = [m.seconds for m in marks if m.ok and math.isfinite(m.seconds)]
    figures = (
        f"{len(marks)} probes shown, {failed} failed"
        + (f"; fastest {min(timed) * 1000:.1f} ms, slowest {max(timed) * 1000:.1f} ms" if timed else "")
        + (f"; last {state.last_duration * 1000:.1f} ms" if state.last_duration is not None else "")
    )
    changes = state.history.changes()
    rows = "".join(
        f"<tr><td>{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(c.when))} UTC "
        f"<span class='when'>({_age(now, c.when)})</span></td><td>{html.escape(c.kind)}</td>"
        f"<td>{_transition(c)}</td></tr>"
        for c in changes
    )
    earlier = state.history.total_changes - len(changes)
    status = state.status
    return "".join(
        [
            _head(f"tierwatch: {info.name} {status}", monitor.interval),
            f"<h1>{html.escape(info.name)} <span class='state {status}'>{status.upper()}</span></h1>",
            f"<div class='meta'><a href='/'>all targets</a> · cluster {html.escape(info.cluster.name)} · "
            f"tier {html.escape(info.tier)} · region {html.escape(info.region)} · "
            f"role {html.escape(state.role or '-')} · circuit "
            f"<span class='{state.breaker.state}'>{state.breaker.state.replace('_', '-')}</span> · "
            f"probed {_age(now, state.last_probe)}</div>",
            f"<section><h2>Latency <small>{figures}</small></h2>{sparkline(marks, 600, 80)}",
            f"<div class='detail'>{html.escape(state.last_error or '')}</div></section>",
            f"<section><h2>Changes <small>newest first, the last {len(changes)} kept"
            + (f" ({earlier} earlier not kept)" if earlier else "")
            + "</small></h2>",
            f"<table><tr><th>when</th><th>what</th><th>change</th></tr>{rows}</table></section>"
            if rows
            else "<p class='note'>No change since the exporter started.</p></section>",
            "</body></html>",
        ]
    )


def render_unknown_target(name: str) -> str:
    """The page for a name that is no target (answered with 404)."""
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>tierwatch: no such target</title>"
        f"<style>{_STYLE}</style></head><body><h1>No target named {html.escape(name)}</h1>"
        "<p><a href='/'>all targets</a></p></body></html>"
    )
