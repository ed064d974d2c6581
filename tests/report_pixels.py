"""A drill report's screenshot read back (tests/unit/test_drill_report.py, tests/drills/test_drills.py):
the chart drew each engine's writes where they were acknowledged and none in the outage, and each
marker in its colour at the position of its time."""

from __future__ import annotations

from pathlib import Path

from browser import Rgb, columns_with, count_colour, screenshot
from PIL import Image

from tierwatch_lab.drill_kit import DrillResult, per_bin
from tierwatch_lab.drill_report import (
    ENGINE_COLOURS,
    GAP_MIN,
    PAGE_LEFT,
    PAGE_TOP,
    PLOT_LEFT,
    PLOT_RIGHT,
    ChartLayout,
    layout,
    longest_gap,
    report_html,
)

SLACK = 3  # pixels a drawn marker may be off the position of its time
AXIS_INK = (102, 102, 102)  # drill_report's time axis (#666)


def rgb(colour: str) -> Rgb:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def report_screenshot(result: DrillResult, directory: Path) -> tuple[Image.Image, ChartLayout]:
    """Write ``result``'s report into ``directory``, screenshot it at 1280 px wide; the chart's part of
    the image (the rows of the first section's SVG, the page's columns) and its layout."""
    page = directory / f"{result.scenario}-report.html"
    page.write_text(report_html(result), encoding="utf-8")
    plot = layout(result)
    axis = (
        PAGE_LEFT + PLOT_LEFT,
        PAGE_TOP + plot.bottom + 6,
        PAGE_LEFT + PLOT_RIGHT,
        PAGE_TOP + plot.bottom + 7,
    )
    for _ in range(2):
        image = screenshot(
            page, directory / f"{result.scenario}-report.png", 1280, PAGE_TOP + plot.height + 40
        )
        # Chromium once left a 256 px tile of a page unpainted (white): the axis under the chart shows it
        if count_colour(image, AXIS_INK, box=axis) >= 0.95 * (PLOT_RIGHT - PLOT_LEFT):
            break
    return image.crop((0, PAGE_TOP, image.width, PAGE_TOP + plot.bottom)), plot


def page_x(plot: ChartLayout, at: float) -> int:
    return PAGE_LEFT + round(plot.x(at))


def check_markers(chart: Image.Image, plot: ChartLayout) -> dict[str, int]:
    """Each marker's colour is drawn within SLACK px of its time, and nowhere else, in the rows of labels
    above the chart (every marker's line is there, from its own label's row down; below, dark text
    anti-aliased on a lane's pale colour comes near a marker's); the markers per kind."""
    labels = chart.crop((0, 0, chart.width, plot.top - 2))
    found: dict[str, int] = {}
    for kind in {m.kind for m in plot.markers}:
        expected = [page_x(plot, m.at) for m in plot.markers if m.kind == kind]
        columns = columns_with(labels, rgb(kind.colour))
        for x in expected:
            assert any(abs(c - x) <= SLACK for c in columns), f"no {kind.label} marker near x={x}: {columns}"
        stray = [c for c in columns if all(abs(c - x) > SLACK for x in expected)]
        assert not stray, f"{kind.label}'s colour drawn at {stray}, markers at {expected}"
        found[kind.key] = len(expected)
    return found


def check_writes(chart: Image.Image, plot: ChartLayout, result: DrillResult, engine: str) -> float:
    """The columns of the 100 ms bins holding an acknowledged write show the engine's colour (but for
    a few a marker covers), the columns of its longest gap (if a second or more) none. Returns that
    gap's length."""
    columns = set(columns_with(chart, rgb(ENGINE_COLOURS[engine])))
    first, counts = per_bin(result.writes[engine], result.failed_at)
    written: set[int] = set()
    for i, count in enumerate(counts):
        if count:
            start = result.failed_at + (first + i) / 10
            written |= set(range(page_x(plot, start), page_x(plot, start + 0.1)))
    assert written, f"{engine}: no bin with a write"
    missing = written - columns
    assert len(missing) <= 0.1 * len(written), f"{engine}: writes not drawn at {sorted(missing)[:40]}"
    gap = longest_gap(result.writes[engine])
    assert gap is not None
    if gap[1] - gap[0] >= GAP_MIN:  # the bins of the gap's two writes are drawn: look between them
        inside = set(range(page_x(plot, gap[0] + 0.1) + SLACK, page_x(plot, gap[1] - 0.1) - SLACK))
        assert inside and not inside & columns, f"{engine}: drawn in its gap at {sorted(inside & columns)}"
    return gap[1] - gap[0]
