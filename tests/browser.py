"""Headless Chromium for the tests that check what a page really draws: a screenshot, then its pixels.

Debian's ``chromium`` (scripts/setup installs it) renders the page with a fresh profile and no
network; Pillow reads the PNG back so a test can count the pixels of a colour (a chart's line, a
marker) instead of trusting that an HTML file exists.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from PIL import Image

Rgb = tuple[int, int, int]


def chromium() -> str:
    """The Chromium binary (fails the test, never skips it, when it is missing)."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary is not None, "chromium not found: run scripts/setup (apt-get install chromium)"
    return binary


def screenshot(page: Path | str, out: Path, width: int = 1280, height: int = 900) -> Image.Image:
    """A screenshot of ``page`` (a file or an http:// URL) at ``width`` by ``height``, as an RGB image."""
    source = page.as_uri() if isinstance(page, Path) else page
    with tempfile.TemporaryDirectory(prefix="tierwatch-chromium-") as profile:
        subprocess.run(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
             "--virtual-time-budget=3000", f"--user-data-dir={profile}",
             f"--window-size={width},{height}", f"--screenshot={out}", source],
            check=True, timeout=120, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
    with Image.open(out) as image:
        return image.convert("RGB")


def count_colour(
    image: Image.Image, colour: Rgb, tolerance: int = 24, box: tuple[int, int, int, int] | None = None
) -> int:
    """How many pixels of ``image`` (within ``box``, left/top/right/bottom) are ``colour`` ± ``tolerance``
    per channel (anti-aliasing blends the edges of a line)."""
    region = image.crop(box) if box else image
    data = region.tobytes()  # RGB: three bytes a pixel
    r0, g0, b0 = colour
    return sum(
        1
        for i in range(0, len(data), 3)
        if abs(data[i] - r0) <= tolerance
        and abs(data[i + 1] - g0) <= tolerance
        and abs(data[i + 2] - b0) <= tolerance
    )


def columns_with(image: Image.Image, colour: Rgb, tolerance: int = 24) -> list[int]:
    """The x positions of the columns that hold at least one pixel of ``colour`` (where a vertical
    marker or a bar was drawn)."""
    width, height = image.size
    pixels = image.load()
    r0, g0, b0 = colour
    found = []
    for x in range(width):
        for y in range(height):
            r, g, b = pixels[x, y]
            if abs(r - r0) <= tolerance and abs(g - g0) <= tolerance and abs(b - b0) <= tolerance:
                found.append(x)
                break
    return found
