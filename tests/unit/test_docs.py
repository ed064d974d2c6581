"""The docs stay true: docs/metrics.md equals what the catalogue generates, metric names follow
Prometheus conventions, and the README's two commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

from tierwatch.metric_catalog import CATALOG, TARGET_LABELS
from tierwatch_lab.docs_gen import render

ROOT = Path(__file__).resolve().parents[2]


def test_metrics_reference_is_generated_from_the_code() -> None:
    committed = (ROOT / "docs" / "metrics.md").read_text()
    assert committed == render(), "docs/metrics.md is stale: run python -m tierwatch_lab.docs_gen"


def test_every_metric_follows_naming_conventions() -> None:
    render()  # loads every probe module
    assert len(CATALOG) > 40
    for spec in CATALOG.values():
        assert re.fullmatch(r"tierwatch_[a-z0-9_]+", spec.name), spec.name
        assert spec.help.endswith("."), spec.name
        if spec.kind == "counter":
            assert spec.name.endswith("_total"), spec.name
        else:
            assert not spec.name.endswith("_total"), spec.name
        if spec.scope != "exporter":
            assert not set(spec.labels) & set(TARGET_LABELS), f"{spec.name} redefines a target label"
        for forbidden in ("error", "message", "dsn", "password", "query", "address", "addr", "url", "key"):
            assert forbidden not in spec.labels, f"{spec.name} has an unbounded label {forbidden}"


def test_readme_quick_start_is_the_ci_command() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Quick start", 1)[1].split("```", 2)[1]
    commands = [line for line in block.splitlines()[1:] if line.strip() and not line.startswith("#")]
    assert commands == ["./scripts/quickstart", "./scripts/test"]
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert commands[1] in ci_lines, "the README's test command must be a line of .ci/run"
