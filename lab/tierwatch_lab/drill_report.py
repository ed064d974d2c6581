"""A drill's report: one self-contained HTML page (``tierwatch demo drill SCENARIO --report FILE``).

:func:`report_html` turns a :class:`~.drill_kit.DrillResult` into a page (:func:`report_page`: several,
one section each) that needs nothing else: no script, no stylesheet or font to fetch, the chart an
inline SVG. Every text from the drill is HTML-escaped. The chart, on one time axis (seconds from the
failure):

- per engine that had writers (redis, postgres, http), its acknowledged writes per 100 ms, the
  stretches of a second or more without one shaded and labelled (the outage the drill measures);
- a vertical marker per timeline line of a kind in :data:`MARKERS` (failure, detected, alert
  delivered, action started, action done, writes back, old primary rejoined), labelled above the
  chart. The kind comes from the line's text, here and nowhere else (:func:`marker_kind`): the
  drills' lines begin with ``failure:``, ``detected:``, ``alert:``, ``action: NAME started``,
  ``action:`` (its outcome), ``recovered...`` or contain ``acknowledged again``/``committed again``
  (writes back), ``rejoined:``; a ``[phase] `` or ``redis: ``/``postgres: `` prefix is skipped.
  The other lines (healed, fenced, dns, watcher...) are in the timeline table only;
- per engine sampled, a lane of the servers reporting the primary role (drill_kit.PrimarySampler)
  and, where the drill has the checker's probers, a lane of the servers acknowledging writes
  (drill_checker.accepting_over_time): 0, 1, or 2 and more (a split brain when they accept writes).

Below the chart: a legend of the colours, the figures (acknowledged, lost, primaries, the checker's
figures) and the timeline. The SVG is SVG_WIDTH px wide, placed at (PAGE_LEFT, PAGE_TOP) on the page
(the header above it has a fixed height), so a screenshot test can find what :func:`layout` placed.
"""

from __future__ import annotations

import html
import itertools
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .drill_catalog import SCENARIOS
from .drill_kit import BINS_PER_SECOND, DrillResult, per_bin, sample_runs


@dataclass(frozen=True)
class MarkerKind:
    key: str
    label: str
    colour: str


FAILURE = MarkerKind("failure", "failure", "#d62728")
DETECTED = MarkerKind("detected", "detected", "#ff7f0e")
ALERT = MarkerKind("alert", "alert delivered", "#9467bd")
ACTION_STARTED = MarkerKind("action-started", "action started", "#e377c2")
ACTION_DONE = MarkerKind("action-done", "action done", "#8c564b")
WRITES_BACK = MarkerKind("writes-back", "writes back", "#bcbd22")
REJOINED = MarkerKind("rejoined", "old primary rejoined", "#393b79")
MARKERS = (FAILURE, DETECTED, ALERT, ACTION_STARTED, ACTION_DONE, WRITES_BACK, REJOINED)

ENGINE_COLOURS = {"redis": "#1f77b4", "postgres": "#2ca02c", "http": "#17becf"}
OTHER_ENGINE = "#7f7f7f"
LANE_COLOURS = ("#fdd0a2", "#c7e9c0", "#a50026")  # 0, 1, 2 or more
GAP_FILL = "#ececec"
GAP_MIN = 1.0  # seconds without an acknowledged write that the chart shades as a gap

SVG_WIDTH = 1200
PAGE_LEFT, PAGE_TOP = 20, 72  # where the first section's SVG starts on the page: the CSS's padding + header
PLOT_LEFT, PLOT_RIGHT = 160, SVG_WIDTH - 24
LABEL_ROW = 15  # height of a row of marker labels above the chart
MAX_ROWS = 6
BAND, BAND_GAP = 110, 12  # an engine's writes
LANE, LANE_GAP = 20, 4
AXIS = 34
TICK_STEPS = (0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600)


def marker_kind(text: str) -> MarkerKind | None:
    """The marker a timeline line draws (None: the timeline table only)."""
    what = re.sub(r"^\[[^\]]*\]\s*", "", text)
    what = re.sub(r"^(redis|postgres|http): ", "", what)
    if what.startswith("failure:"):
        return FAILURE
    if what.startswith("detected:"):
        return DETECTED
    if what.startswith("alert:"):
        return ALERT
    if what.startswith("action:"):
        return ACTION_STARTED if re.match(r"action: \S+ started\b", what) else ACTION_DONE
    if what.startswith("rejoined:"):
        return REJOINED
    if what.startswith(("recovered", "traffic served by")) or re.search(
        r"(acknowledged|committed) again", what
    ):
        return WRITES_BACK
    return None


@dataclass(frozen=True)
class Marker:
    at: float
    kind: MarkerKind
    text: str
    row: int  # of the labels above the chart
    label_left: bool = False  # the label is left of the line (near the right edge)


@dataclass(frozen=True)
class Lane:
    engine: str
    label: str
    runs: list[tuple[float, float, int]]


@dataclass(frozen=True)
class ChartLayout:
    """Where a result's chart draws what (SVG coordinates; add PAGE_LEFT/PAGE_TOP for the page's)."""

    start: float  # the times at the plot's left and right edges
    end: float
    engines: list[str]
    lanes: list[Lane]
    markers: list[Marker]
    rows: int

    def x(self, at: float) -> float:
        return PLOT_LEFT + (at - self.start) / (self.end - self.start) * (PLOT_RIGHT - PLOT_LEFT)

    @property
    def top(self) -> int:
        """The top of the first engine's band (the marker labels are above)."""
        return 6 + self.rows * LABEL_ROW + 4

    def band_top(self, index: int) -> int:
        return self.top + index * (BAND + BAND_GAP)

    def lane_top(self, index: int) -> int:
        return self.band_top(len(self.engines)) + index * (LANE + LANE_GAP)

    @property
    def bottom(self) -> int:
        """The bottom of the last band or lane (where the markers end and the axis begins)."""
        if self.lanes:
            return self.lane_top(len(self.lanes)) - LANE_GAP
        return self.band_top(len(self.engines)) - (BAND_GAP if self.engines else 0)

    @property
    def height(self) -> int:
        return self.bottom + AXIS


def _engines(result: DrillResult) -> list[str]:
    known = [e for e in ENGINE_COLOURS if result.writes.get(e)]
    return known + sorted(e for e, times in result.writes.items() if times and e not in ENGINE_COLOURS)


def layout(result: DrillResult) -> ChartLayout:
    """What ``result``'s chart shows and where."""
    engines = _engines(result)
    lanes = []
    for engine in [*ENGINE_COLOURS, *sorted(set(result.primaries_seen) | set(result.accepting))]:
        for label, samples in (
            ("report primary", result.primaries_seen),
            ("accept writes", result.accepting),
        ):
            runs = sample_runs(samples.get(engine, []))
            if runs and not any(lane.engine == engine and lane.label == label for lane in lanes):
                lanes.append(Lane(engine, label, runs))
    times = [at for e in engines for at in (result.writes[e][0], result.writes[e][-1])]
    times += [at for at, _ in result.timeline] + [result.failed_at]
    times += [at for lane in lanes for run in lane.runs for at in run[:2]]
    start, end = min(times), max(times)
    pad = max(0.5, 0.02 * (end - start))
    plot = ChartLayout(start - pad, end + pad, engines, lanes, [], 1)
    markers: list[Marker] = []
    taken: list[list[tuple[float, float]]] = []  # per row, the spans of its labels
    for at, text in sorted(result.timeline):
        kind = marker_kind(text)
        if kind is None:
            continue
        x, width = plot.x(at), 5 + 6.8 * len(kind.label) + 8
        left = x + width > SVG_WIDTH  # near the right edge the label goes left of its line
        a, b = (x - width, x) if left else (x, x + width)
        row = next((r for r, spans in enumerate(taken) if all(b <= c or a >= d for c, d in spans)), None)
        if row is None and len(taken) < MAX_ROWS:
            row = len(taken)
            taken.append([])
        elif row is None:  # crowded: overlap in the row whose labels end first
            row = min(range(len(taken)), key=lambda r: max(d for _, d in taken[r]))
        taken[row].append((a, b))
        markers.append(Marker(at, kind, text, row, left))
    return ChartLayout(plot.start, plot.end, engines, lanes, markers, max(1, len(taken)))


def longest_gap(times: Sequence[float]) -> tuple[float, float] | None:
    """The longest stretch between two consecutive acknowledged writes (None: fewer than two)."""
    pairs = list(itertools.pairwise(times))
    return max(pairs, key=lambda p: p[1] - p[0]) if pairs else None


# --- the SVG ------------------------------------------------------------------------------------------


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _seconds(result: DrillResult, at: float) -> str:
    seconds = round(at - result.failed_at, 2)
    return f"{seconds + 0.0:+.2f} s"  # + 0.0: no "-0.00"


def _ticks(result: DrillResult, plot: ChartLayout) -> list[float]:
    span = plot.end - plot.start
    step = next((s for s in TICK_STEPS if span / s <= 14), TICK_STEPS[-1])
    first = -int((result.failed_at - plot.start) // step)
    last = int((plot.end - result.failed_at) // step)
    return [result.failed_at + i * step for i in range(first, last + 1)]


def _writes_band(result: DrillResult, plot: ChartLayout, index: int, engine: str) -> list[str]:
    colour = ENGINE_COLOURS.get(engine, OTHER_ENGINE)
    top = plot.band_top(index)
    base = top + BAND
    times = result.writes[engine]
    first, counts = per_bin(times, result.failed_at)
    peak = max(counts)
    out = [
        f'<text x="{PLOT_LEFT - 10}" y="{top + BAND // 2 - 4}" text-anchor="end" font-weight="bold">'
        f"{_e(engine)}</text>",
        f'<text x="{PLOT_LEFT - 10}" y="{top + BAND // 2 + 10}" text-anchor="end">'
        "acked writes / 100 ms</text>",
        f'<text x="{PLOT_LEFT - 4}" y="{base}" text-anchor="end">0</text>',
        f'<text x="{PLOT_LEFT - 4}" y="{top + 20}" text-anchor="end">{peak}</text>',
    ]
    for a, b in itertools.pairwise(times):
        if b - a < GAP_MIN:
            continue
        xa, xb = plot.x(a), plot.x(b)
        out.append(
            f'<rect x="{xa:.1f}" y="{top}" width="{xb - xa:.1f}" height="{BAND}" fill="{GAP_FILL}">'
            f"<title>{_e(engine)}: no acknowledged write from {_seconds(result, a)} to "
            f"{_seconds(result, b)} ({b - a:.2f} s)</title></rect>"
        )
        label = f"no acknowledged write for {b - a:.2f} s" if xb - xa >= 190 else f"{b - a:.1f} s"
        if xb - xa >= 40:
            out.append(f'<text x="{(xa + xb) / 2:.1f}" y="{top + 34}" text-anchor="middle">{label}</text>')
    height = BAND - 16
    path = [f"M{plot.x(_bin_start(result, first)):.2f},{base}"]
    for i, count in enumerate(counts):
        y = base - count / peak * height
        x0, x1 = plot.x(_bin_start(result, first + i)), plot.x(_bin_start(result, first + i + 1))
        path.append(f"L{x0:.2f},{y:.1f}L{x1:.2f},{y:.1f}")
    path.append(f"L{plot.x(_bin_start(result, first + len(counts))):.2f},{base}Z")
    out.append(f'<path d="{"".join(path)}" fill="{colour}" shape-rendering="crispEdges"/>')
    out.append(
        f'<line x1="{PLOT_LEFT}" y1="{base + 0.5}" x2="{PLOT_RIGHT}" y2="{base + 0.5}" stroke="#999"/>'
    )
    return out


def _bin_start(result: DrillResult, index: int) -> float:
    return result.failed_at + index / BINS_PER_SECOND


def _lane(result: DrillResult, plot: ChartLayout, index: int, lane: Lane) -> list[str]:
    top = plot.lane_top(index)
    what = "report the primary role" if lane.label == "report primary" else "acknowledge writes"
    out = [
        f'<text x="{PLOT_LEFT - 10}" y="{top + 14}" text-anchor="end">'
        f"{_e(lane.engine)}: {_e(lane.label)}</text>",
        f'<rect x="{PLOT_LEFT}" y="{top}" width="{PLOT_RIGHT - PLOT_LEFT}" height="{LANE}" fill="#fafafa" '
        'stroke="#dddddd" shape-rendering="crispEdges"/>',
    ]
    for a, b, count in lane.runs:
        xa, xb = plot.x(a), max(plot.x(b), plot.x(a) + 1)
        fill = LANE_COLOURS[min(count, 2)]
        out.append(
            f'<rect class="servers-{min(count, 2)}" x="{xa:.1f}" y="{top}" width="{xb - xa:.1f}" '
            f'height="{LANE}" fill="{fill}" shape-rendering="crispEdges"><title>{_e(lane.engine)}: {count} '
            f"server(s) {what}, {_seconds(result, a)} to {_seconds(result, b)}</title></rect>"
        )
        if xb - xa >= 16:
            ink = "#ffffff" if count >= 2 else "#333333"
            out.append(
                f'<text x="{(xa + xb) / 2:.1f}" y="{top + 14}" text-anchor="middle" style="fill:{ink}">'
                f"{count}</text>"
            )
    return out


def _axis(result: DrillResult, plot: ChartLayout) -> list[str]:
    y = plot.bottom + 6
    out = [f'<line x1="{PLOT_LEFT}" y1="{y + 0.5}" x2="{PLOT_RIGHT}" y2="{y + 0.5}" stroke="#666"/>']
    for at in _ticks(result, plot):
        x = round(plot.x(at)) + 0.5
        seconds = at - result.failed_at
        label = "0 s" if abs(seconds) < 1e-9 else f"{seconds:+g} s"
        out.append(f'<line x1="{x}" y1="{y}" x2="{x}" y2="{y + 5}" stroke="#666"/>')
        if x - PLOT_LEFT >= 20:  # clear of the axis's title
            out.append(f'<text x="{x}" y="{y + 18}" text-anchor="middle">{_e(label)}</text>')
    out.append(f'<text x="{PLOT_LEFT - 10}" y="{y + 18}" text-anchor="end">seconds from the failure</text>')
    return out


def chart_svg(result: DrillResult, plot: ChartLayout | None = None) -> str:
    """The timeline chart of ``result`` as an inline SVG element."""
    plot = plot or layout(result)
    out = [
        f'<svg class="chart" width="{SVG_WIDTH}" height="{plot.height}" viewBox="0 0 {SVG_WIDTH} '
        f'{plot.height}" role="img" aria-label="{_e(result.scenario)}: acknowledged writes, markers and '
        'primaries over time">',
        f'<rect width="{SVG_WIDTH}" height="{plot.height}" fill="#ffffff"/>',
    ]
    grid_bottom = plot.band_top(len(plot.engines)) - BAND_GAP if plot.engines else plot.top
    for at in _ticks(result, plot):
        x = round(plot.x(at)) + 0.5
        out.append(f'<line x1="{x}" y1="{plot.top}" x2="{x}" y2="{grid_bottom}" stroke="#f2f2f2"/>')
    for index, engine in enumerate(plot.engines):
        out += _writes_band(result, plot, index, engine)
    if not plot.engines:
        out.append(f'<text x="{PLOT_LEFT}" y="{plot.top + 14}">no writer ran in this drill</text>')
    for index, lane in enumerate(plot.lanes):
        out += _lane(result, plot, index, lane)
    out += _axis(result, plot)
    # row 0 first: a marker in a lower row, drawn later, covers one above it at the same time only
    # below its own label, so both colours stay visible
    for marker in sorted(plot.markers, key=lambda m: m.row):
        x = round(plot.x(marker.at))
        y = 6 + marker.row * LABEL_ROW
        out.append(
            f'<g class="marker {marker.kind.key}">'
            f"<title>{_seconds(result, marker.at)} {_e(marker.text)}</title>"
            f'<rect x="{x - 1}" y="{y}" width="2" height="{plot.bottom - y}" fill="{marker.kind.colour}" '
            'shape-rendering="crispEdges"/>'
            f'<text x="{x - 5 if marker.label_left else x + 5}" y="{y + 11}" '
            f'text-anchor="{"end" if marker.label_left else "start"}">{_e(marker.kind.label)}</text></g>'
        )
    out.append("</svg>")
    return "\n".join(out)


# --- the page -----------------------------------------------------------------------------------------

STYLE = """
body{margin:0;padding:16px 20px 40px;color:#222;background:#fff;
  font:14px/1.45 "DejaVu Sans",system-ui,sans-serif}
section{margin:0 0 56px}
header{height:56px;overflow:hidden}
h1{margin:0;font-size:20px;line-height:30px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
header p{margin:0;line-height:22px;color:#555;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.recovered{color:#1a7f37}.not-recovered{color:#b42318}
svg.chart{display:block}
svg text{font:11px "DejaVu Sans",system-ui,sans-serif;fill:#333}
.legend{display:flex;flex-wrap:wrap;gap:6px 20px;margin:10px 0 18px;max-width:1200px;font-size:13px}
.sw{display:inline-block;width:12px;height:12px;margin-right:6px;vertical-align:-1px;border:1px solid #0002}
h2{font-size:16px;margin:18px 0 6px}
table{border-collapse:collapse;max-width:1200px;font-size:13px}
th,td{border-bottom:1px solid #e6e6e6;padding:3px 14px 3px 0;text-align:left;vertical-align:top}
td.num{white-space:nowrap;font-variant-numeric:tabular-nums}
"""
KNOWN_KEYS = {"scenario", "recovered", "acked", "lost", "primaries", "detail", "faults", "timeline"}
SERIES_KEYS = {"writes_per_100ms", "primaries_seen", "accepting"}
MAX_VALUE = 400  # characters of one figure's value in the table


def _swatch(colour: str) -> str:
    return f'<span class="sw" style="background:{colour}"></span>'


def _legend(plot: ChartLayout) -> str:
    items = [
        f"{_swatch(ENGINE_COLOURS.get(e, OTHER_ENGINE))}{_e(e)}: acknowledged writes per 100 ms"
        for e in plot.engines
    ]
    if plot.engines:
        items.append(f"{_swatch(GAP_FILL)}no acknowledged write for {GAP_MIN:g} s or more")
    kinds = {m.kind for m in plot.markers}
    items += [f"{_swatch(k.colour)}{_e(k.label)}" for k in MARKERS if k in kinds]
    if plot.lanes:
        items += [
            f"{_swatch(LANE_COLOURS[0])}no server",
            f"{_swatch(LANE_COLOURS[1])}one server",
            f"{_swatch(LANE_COLOURS[2])}two or more (split brain when they accept writes)",
        ]
    return '<div class="legend">' + "".join(f"<span>{item}</span>" for item in items) + "</div>"


def _flatten(prefix: str, value: Any) -> list[tuple[str, str]]:
    if isinstance(value, dict):
        return [row for k, v in value.items() for row in _flatten(f"{prefix}.{k}" if prefix else str(k), v)]
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return [(prefix, text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 1] + "…")]


def _figures(result: DrillResult) -> list[tuple[str, str]]:
    rows = [
        ("result", "RECOVERED" if result.recovered else "NOT RECOVERED"),
        ("failure at", time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(result.failed_at))),
        ("acknowledged writes", str(result.acked)),
        ("acknowledged writes lost", str(result.lost)),
    ]
    if result.primaries:
        rows.append(("primaries now", ", ".join(f"{k}={v}" for k, v in result.primaries.items())))
    if result.detail:
        rows.append(("detail", result.detail))
    for engine in _engines(result):
        times = result.writes[engine]
        gap = longest_gap(times)
        text = f"{len(times)} acknowledged"
        if gap:
            text += (
                f"; longest stretch without one {gap[1] - gap[0]:.2f} s "
                f"({_seconds(result, gap[0])} to {_seconds(result, gap[1])})"
            )
        rows.append((f"writes: {engine}", text))
    rows += _flatten("faults", result.faults) if result.faults else []
    extra = {k: v for k, v in result.as_dict().items() if k not in KNOWN_KEYS | SERIES_KEYS}
    rows += _flatten("", extra) if extra else []  # a subclass's own figures (slow-app: alerts fired)
    return rows


def _section(result: DrillResult) -> str:
    plot = layout(result)
    state = "recovered" if result.recovered else "not-recovered"
    what = SCENARIOS.get(result.scenario, "")
    figures = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in _figures(result))
    lines = []
    for at, text in sorted(result.timeline):
        kind = marker_kind(text)
        mark = f"{_swatch(kind.colour)}{_e(kind.label)}" if kind else ""
        lines.append(
            f'<tr><td class="num">{_seconds(result, at)}</td><td>{mark}</td><td>{_e(text)}</td></tr>'
        )
    return "\n".join(
        [
            f'<section id="{_e(result.scenario)}">',
            f'<header><h1>drill {_e(result.scenario)}: <span class="{state}">'
            f"{'RECOVERED' if result.recovered else 'NOT RECOVERED'}</span></h1>",
            f"<p>{_e(what)}</p></header>",
            chart_svg(result, plot),
            _legend(plot),
            "<h2>Figures</h2>",
            f"<table>{figures}</table>",
            "<h2>Timeline</h2>",
            "<table><tr><th>from the failure</th><th>marker</th><th>event</th></tr>"
            + "".join(lines)
            + "</table>",
            "</section>",
        ]
    )


def report_page(results: Sequence[DrillResult]) -> str:
    """One HTML page with a section per result, in order."""
    title = "drill report: " + ", ".join(r.scenario for r in results)
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>tierwatch {_e(title)}</title>",
            f"<style>{STYLE}</style></head><body>",
            *(_section(r) for r in results),
            "</body></html>",
            "",
        ]
    )


def report_html(result: DrillResult) -> str:
    """The report of one drill: a self-contained HTML page."""
    return report_page([result])
