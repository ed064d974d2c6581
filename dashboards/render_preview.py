"""Render the overview dashboard with real data to a PNG (docs/img/overview.png).

Grafana is not in the Debian archive, so this draws a faithful static preview instead: it starts the
live stack of dashboards/livestack.py, runs every query of the generated overview dashboard on its
Prometheus exactly as the panel defines it (variables on "All", ``$__rate_interval`` = 5s), and lays
the results out at the panels' grid positions as HTML/SVG: stat panels with their value mappings,
thresholds and units, time series as lines over the last minutes, tables as tables. Headless Chromium
(Debian package ``chromium``) takes the screenshot. Run from the repository root:

    python -m dashboards.render_preview [--out docs/img/overview.png] [--warmup 120]
"""

from __future__ import annotations

import argparse
import html
import math
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tierwatch_lab.stack.prometheus import PrometheusServer

from .livestack import live_stack
from .overview_dashboard import OVERVIEW
from .render import build_dashboard

ROOT = Path(__file__).resolve().parents[1]
WIDTH, ROW_PX, HEADER_PX = 1600, 30, 64
RANGE_SECONDS, STEP_SECONDS = 300, 5
COLORS = {
    "green": "#56A64B", "red": "#E02F44", "orange": "#FF9830", "blue": "#3274D9", "text": "#464C54",
}  # fmt: skip
SERIES = ["#73BF69", "#F2CC0C", "#8AB8FF", "#FF780A", "#F2495C", "#5794F2", "#B877D9", "#705DA0"]
VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)\}")


def concrete(expr: str) -> str:
    """The query Grafana would send with every variable on "All"."""
    expr = expr.replace("$__rate_interval", "5s").replace("$__range", f"{RANGE_SECONDS}s")
    return VARIABLE.sub(".*", expr)


def legend(fmt: str, labels: dict[str, str]) -> str:
    if not fmt:
        return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__") or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip()


def fmt_value(value: float, unit: str) -> str:
    """A value as Grafana shows it in ``unit`` (the units the overview uses)."""
    if math.isnan(value):
        return "NaN"
    if unit == "percentunit":
        return f"{value * 100:.1f}%"
    if unit == "s":
        return f"{value * 1000:.0f} ms" if abs(value) < 1 else f"{value:.1f} s"
    if unit == "bytes":
        for suffix in ("B", "KiB", "MiB", "GiB"):
            if abs(value) < 1024 or suffix == "GiB":
                return f"{value:.0f} {suffix}" if suffix == "B" else f"{value:.1f} {suffix}"
            value /= 1024
    if value == int(value):
        return str(int(value))
    return f"{value:.2f}"


def color_for(value: float, panel: dict[str, Any]) -> str:
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    color = steps[0]["color"]
    for step in steps[1:]:
        if not math.isnan(value) and value >= step["value"]:
            color = step["color"]
    return COLORS.get(color, color)


def mapped(value: float, panel: dict[str, Any]) -> tuple[str, str] | None:
    for mapping in panel["fieldConfig"]["defaults"].get("mappings", []):
        if mapping.get("type") == "special":
            result = mapping["options"]["result"]
            if mapping["options"]["match"] == "nan" and math.isnan(value):
                return result["text"], COLORS.get(result["color"], result["color"])
            continue
        for key, result in mapping["options"].items():
            if not math.isnan(value) and float(key) == value:
                return result["text"], COLORS.get(result["color"], result["color"])
    return None


def stat_html(panel: dict[str, Any], series: list[tuple[str, list[tuple[float, float]]]]) -> str:
    unit = panel["fieldConfig"]["defaults"]["unit"]
    boxes = []
    for name, points in series:
        value = points[-1][1]
        text, color = mapped(value, panel) or (fmt_value(value, unit), color_for(value, panel))
        boxes.append(
            f'<div class="box" style="background:{color}"><div class="name">{html.escape(name)}</div>'
            f'<div class="value">{html.escape(text)}</div></div>'
        )
    return f'<div class="stat">{"".join(boxes)}</div>'


def table_html(panel: dict[str, Any], rows: list[tuple[dict[str, str], float]]) -> str:
    if not rows:
        return '<div class="empty">No data</div>'
    columns = sorted({k for labels, _ in rows for k in labels if k != "__name__"})
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "<th>Value</th>"
    body = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(labels.get(c, ''))}</td>" for c in columns)
        + f"<td>{fmt_value(value, panel['fieldConfig']['defaults']['unit'])}</td></tr>"
        for labels, value in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def timeseries_svg(
    panel: dict[str, Any], series: list[tuple[str, list[tuple[float, float]]]], w: int, h: int
) -> str:
    unit = panel["fieldConfig"]["defaults"]["unit"]
    values = [v for _, points in series for _, v in points if not math.isnan(v)]
    if not values:
        return '<div class="empty">No data</div>'
    lo, hi = min(0.0, min(values)), max(values)
    hi = hi if hi > lo else lo + 1
    end = time.time()
    start = end - RANGE_SECONDS
    left, plot_w, plot_h = 64, w - 76, h - 40
    lines = []
    for index, (_, points) in enumerate(series):
        coords = " ".join(
            f"{left + (t - start) / RANGE_SECONDS * plot_w:.1f},{8 + (1 - (v - lo) / (hi - lo)) * plot_h:.1f}"
            for t, v in points
            if not math.isnan(v)
        )
        lines.append(
            f'<polyline points="{coords}" fill="none" stroke="{SERIES[index % 8]}" stroke-width="1.5"/>'
        )
    grid = "".join(
        f'<line x1="{left}" x2="{left + plot_w}" y1="{8 + f * plot_h:.1f}" y2="{8 + f * plot_h:.1f}" '
        f'stroke="#2c3235"/><text x="{left - 6}" y="{12 + f * plot_h:.1f}" text-anchor="end">'
        f"{fmt_value(hi - f * (hi - lo), unit)}</text>"
        for f in (0, 0.5, 1)
    )
    keys = "".join(
        f'<span class="key"><i style="background:{SERIES[i % 8]}"></i>{html.escape(name)}</span>'
        for i, (name, _) in enumerate(series)
    )
    return (
        f'<svg width="{w}" height="{h - 24}">{grid}{"".join(lines)}'
        f'<text x="{left}" y="{h - 26}">-5m</text><text x="{left + plot_w}" y="{h - 26}" '
        f'text-anchor="end">now</text></svg><div class="legend">{keys}</div>'
    )


def panel_html(prom: PrometheusServer, panel: dict[str, Any], w: int, h: int) -> str:
    series: list[tuple[str, list[tuple[float, float]]]] = []
    rows: list[tuple[dict[str, str], float]] = []
    for target in panel["targets"]:
        query = concrete(target["expr"])
        if target.get("instant"):
            for sample in prom.api("query", query=query)["result"]:
                value = float(sample["value"][1])
                rows.append((sample["metric"], value))
                series.append((legend(target.get("legendFormat", ""), sample["metric"]), [(0.0, value)]))
        else:
            now = time.time()
            data = prom.api(
                "query_range",
                query=query,
                start=str(now - RANGE_SECONDS),
                end=str(now),
                step=str(STEP_SECONDS),
            )
            for sample in data["result"]:
                points = [(float(t), float(v)) for t, v in sample["values"]]
                series.append((legend(target.get("legendFormat", ""), sample["metric"]), points))
    series.sort(key=lambda item: item[0])
    if panel["type"] == "stat":
        body = stat_html(panel, series) if series else '<div class="empty">No data</div>'
    elif panel["type"] == "table":
        body = table_html(panel, rows)
    else:
        body = timeseries_svg(panel, series, w - 16, h - 36)
    return body


CSS = """
body { margin: 0; background: #111217; color: #CCCCDC; font: 13px/1.3 'DejaVu Sans', sans-serif; }
header { height: 48px; padding: 8px 16px; border-bottom: 1px solid #2c3235; }
header h1 { font-size: 18px; margin: 0 0 4px; color: #fff; }
header span { margin-right: 16px; color: #8e8e8e; }
.panel { position: absolute; box-sizing: border-box; background: #181b1f; border: 1px solid #2c3235;
         border-radius: 3px; padding: 6px 8px; overflow: hidden; }
.panel h2 { display: flex; gap: 12px; font-size: 13px; margin: 0 0 6px; color: #fff; font-weight: 500;
            white-space: nowrap; }
.panel h2 .links { flex: 1; min-width: 0; overflow: hidden; text-overflow: ellipsis; text-align: right;
                   color: #6e9fff; font-weight: normal; font-size: 11px; }
.row { position: absolute; font-size: 15px; color: #fff; font-weight: 500; padding: 6px 8px; }
.stat { display: flex; flex-wrap: wrap; gap: 4px; height: calc(100% - 24px); }
.box { flex: 1 1 90px; border-radius: 2px; padding: 4px 8px; color: #fff; display: flex;
       flex-direction: column; justify-content: center; min-height: 40px; }
.box .name { font-size: 12px; opacity: .9; } .box .value { font-size: 22px; font-weight: 600; }
.empty { color: #8e8e8e; padding: 20px; text-align: center; }
svg text { fill: #8e8e8e; font-size: 10px; }
.legend { font-size: 11px; } .key { margin-right: 10px; white-space: nowrap; }
.key i { display: inline-block; width: 12px; height: 3px; margin: 0 4px 3px 0; }
table { border-collapse: collapse; width: 100%; font-size: 12px; }
th { text-align: left; color: #6e9fff; border-bottom: 1px solid #2c3235; padding: 4px; }
td { border-bottom: 1px solid #202226; padding: 4px; }
"""


def render_html(prom: PrometheusServer) -> tuple[str, int]:
    """The preview page and its height in pixels."""
    dashboard = build_dashboard(OVERVIEW)
    unit_w = WIDTH / 24
    parts, bottom = [], 0
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        x, y, w, h = pos["x"] * unit_w, HEADER_PX + pos["y"] * ROW_PX, pos["w"] * unit_w, pos["h"] * ROW_PX
        bottom = max(bottom, int(y + h))
        style = f"left:{x + 4:.0f}px;top:{y + 4:.0f}px;width:{w - 8:.0f}px;height:{h - 8:.0f}px"
        if panel["type"] == "row":
            parts.append(f'<div class="row" style="{style}">{html.escape(panel["title"])}</div>')
            continue
        links = " · ".join(link["title"].removeprefix("Runbook: ") for link in panel.get("links", []))
        link_html = f'<span class="links">runbooks: {html.escape(links)}</span>' if links else ""
        body = panel_html(prom, panel, int(w - 8), int(h - 8))
        parts.append(
            f'<div class="panel" style="{style}">'
            f"<h2>{html.escape(panel['title'])}{link_html}</h2>{body}</div>"
        )
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    header = (
        f"<header><h1>{html.escape(dashboard['title'])}</h1><span>datasource: Prometheus</span>"
        "<span>tier: All</span><span>cluster: All</span><span>region: All</span><span>target: All</span>"
        f"<span>last 5 minutes · {stamp}</span><span>static preview of dashboards/overview.json with live "
        "data (dashboards/render_preview.py)</span></header>"
    )
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><style>{CSS}</style></head>'
        f'<body style="height:{bottom + 8}px;position:relative">{header}{"".join(parts)}</body></html>'
    ), bottom + 8


def screenshot(page: Path, out: Path, height: int) -> None:
    """Headless Chromium screenshot of ``page`` (a fresh profile; no network, no sync)."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        raise SystemExit("chromium not found: apt-get install chromium")
    with tempfile.TemporaryDirectory(prefix="tierwatch-chromium-") as profile:
        subprocess.run(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
             f"--user-data-dir={profile}", f"--window-size={WIDTH},{height}", f"--screenshot={out}",
             page.as_uri()],
            check=True, timeout=120, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description="Render the overview dashboard with live data to a PNG.")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "overview.png")
    parser.add_argument("--warmup", type=float, default=150.0, help="seconds of data to collect first")
    args = parser.parse_args()
    with live_stack() as live:
        time.sleep(args.warmup)  # let the time series and the 5m/10m recording rules fill up
        page, height = render_html(live.prometheus)
        with tempfile.TemporaryDirectory(prefix="tierwatch-preview-") as directory:
            path = Path(directory) / "overview.html"
            path.write_text(page)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            screenshot(path, args.out, height)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
