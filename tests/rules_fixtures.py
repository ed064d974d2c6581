"""The shipped rules for live tests: rendered by rules/generate.py with a few settings changed (a
threshold a test can cross in seconds, a shorter ``for``), checked to differ from rules/ only in the
alerts the test means to change; and polling a live Prometheus until a condition holds."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

RULES = Path(__file__).resolve().parents[1] / "rules"


def rules_with_settings(directory: Path, settings: dict[str, Any], changed: set[str] | None = None) -> Path:
    """The folder of rules/*.rules.yml rendered with ``settings`` over the shipped settings; with
    ``changed``, checked to differ from the shipped files in exactly those alerts."""
    (directory / "settings.yml").write_text(yaml.safe_dump(settings))
    out = directory / "rules"
    subprocess.run(
        [sys.executable, str(RULES / "generate.py"), "--settings", str(directory / "settings.yml"),
         "--out", str(out)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    if changed is not None:
        differ = set()
        for shipped in sorted(RULES.glob("*.rules.yml")):
            ours = yaml.safe_load((out / shipped.name).read_text())["groups"]
            for group_a, group_b in zip(yaml.safe_load(shipped.read_text())["groups"], ours, strict=True):
                differ |= {
                    b.get("alert") for a, b in zip(group_a["rules"], group_b["rules"], strict=True) if a != b
                }
        assert differ == changed, differ
    return out


def poll(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll every 0.5 s until ``condition`` is truthy; fail the test with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.5)
