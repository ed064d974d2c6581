"""rules/coverage/coverage.yml, the kit's alerts against the public rule sets (awesome-prometheus-alerts and
the monitoring mixins): it parses into its typed model, every row is decided (covered or added by alerts that
exist in rules/*.rules.yml, or not covered with a reason), no row is listed twice or lost, and the section
of docs/alerts.md rendered from it (rules/coverage.py) is current."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "rules"

# The alerts each public file had when it was read (rules/coverage/coverage.yml records the commit): a floor,
# so that a row cannot vanish together with its source's count in the yml header.
FOUND = {
    "awesome-postgres": 25,
    "postgres-mixin": 15,
    "awesome-redis": 16,
    "redis-mixin": 6,
    "awesome-haproxy": 17,
    "haproxy-mixin": 3,
    "awesome-blackbox": 10,
    "awesome-node": 40,
    "node-mixin": 21,
}


def _load_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tierwatch_rules_coverage", RULES / "coverage.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


cov = _load_module()
RAW: dict[str, Any] = yaml.safe_load((RULES / "coverage" / "coverage.yml").read_text())
COVERAGE = cov.load()


def _with_rows(*rows: dict[str, Any]) -> dict[str, Any]:
    """The shipped file with ``rows`` in place of its rows."""
    return {**RAW, "rows": list(rows)}


GOOD_ROW = {
    "source": "awesome-redis",
    "public": "RedisDown",
    "what": "The exporter cannot reach the Redis server.",
    "decision": "covered",
    "by": ["RedisMasterDown"],
}


def test_the_file_parses_into_the_typed_model() -> None:
    assert isinstance(COVERAGE, cov.Coverage)
    assert len(COVERAGE.rows) == len(RAW["rows"]) == sum(FOUND.values())
    assert {source.id for source in COVERAGE.sources} == set(FOUND)
    assert {source.tier for source in COVERAGE.sources} == set(cov.TIER_TITLES)


def test_every_row_is_decided() -> None:
    for row in COVERAGE.rows:
        assert row.decision in cov.DECISIONS, row
        assert row.what.strip(), row
        if row.decision == "not_covered":
            assert row.reason and row.reason.strip() and not row.by, row
        else:
            assert row.by and all(name.strip() for name in row.by) and row.reason is None, row
    assert {row.decision for row in COVERAGE.rows} == set(cov.DECISIONS)


def test_every_alert_named_exists_in_the_rule_files() -> None:
    """Fails until the alerts a row names (the added ones included) are in the generated rules."""
    known = cov.kit_alerts()
    assert len(known) > 90
    assert cov.unknown_alerts(COVERAGE, known) == []
    assert sorted(set(COVERAGE.added) - known) == []


def test_unknown_alerts_are_reported() -> None:
    broken = cov.Coverage.model_validate(_with_rows({**GOOD_ROW, "by": ["RedisMasterDown", "RedisGone"]}))
    assert cov.unknown_alerts(broken, cov.kit_alerts()) == ["RedisGone"]


def test_added_rows_name_the_added_alerts_and_covered_rows_do_not() -> None:
    added = set(COVERAGE.added)
    for row in COVERAGE.rows:
        assert (row.decision == "added") == bool(set(row.by) & added), row
    with pytest.raises(ValidationError, match="the decision is added"):
        cov.Coverage.model_validate(_with_rows({**GOOD_ROW, "by": ["RedisRestarted"]}))
    with pytest.raises(ValidationError, match="names none of the added alerts"):
        cov.Coverage.model_validate(_with_rows({**GOOD_ROW, "decision": "added"}))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"decision": "maybe"}, "decision"),
        ({"decision": "not_covered", "by": []}, "needs a reason"),
        ({"decision": "not_covered", "reason": "noisy"}, "not by or note"),
        ({"by": []}, "needs by"),
        ({"reason": "because"}, "not a reason"),
        ({"by": ["RedisMasterDown", "RedisMasterDown"]}, "twice"),
        ({"by": ["redis master down"]}, "pattern"),
        ({"what": "TODO"}, "placeholder"),
        ({"decision": "not_covered", "by": [], "reason": "TBD later"}, "placeholder"),
        ({"what": ""}, "what"),
        ({"source": "awesome-mysql"}, "unknown source"),
        ({"severity": "critical"}, "Extra inputs"),
    ],
)
def test_the_model_refuses_an_undecided_or_malformed_row(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        cov.Coverage.model_validate(_with_rows({**GOOD_ROW, **change}))


def test_no_row_is_listed_twice() -> None:
    keys = Counter((row.source, row.public) for row in COVERAGE.rows)
    assert [key for key, n in keys.items() if n > 1] == []
    with pytest.raises(ValidationError, match="rows listed twice"):
        cov.Coverage.model_validate(_with_rows(GOOD_ROW, GOOD_ROW))


def test_every_source_keeps_the_alerts_found_in_its_file() -> None:
    rows = Counter(row.source for row in COVERAGE.rows)
    assert {source.id: source.alerts for source in COVERAGE.sources} == FOUND
    assert dict(rows) == FOUND
    assert cov.count_mismatches(COVERAGE) == []
    fewer = cov.Coverage.model_validate({**RAW, "rows": RAW["rows"][1:]})
    assert cov.count_mismatches(fewer) == [
        f"{RAW['rows'][0]['source']}: {FOUND[RAW['rows'][0]['source']] - 1} rows, "
        f"but the source records {FOUND[RAW['rows'][0]['source']]} alerts"
    ]


def test_gap_rows_are_not_covered_and_listed_in_the_doc() -> None:
    gaps = [row for row in COVERAGE.rows if row.gap]
    assert gaps and all(row.decision == "not_covered" for row in gaps)
    section = cov.render(COVERAGE).replace("\n", " ")  # the gap list is a wrapped paragraph
    for row in gaps:
        assert f"`{row.public}` ({row.source})" in section
    assert section.count("not covered (gap)") == len(gaps)


def test_the_doc_section_is_current() -> None:
    assert cov.main(["--check"]) == 0, "docs/alerts.md is stale: run python rules/coverage.py"


def test_check_notices_a_stale_section_and_the_rewrite_keeps_the_rest(tmp_path: Path) -> None:
    doc = tmp_path / "alerts.md"
    shipped = cov.DOC.read_text()
    before, after = shipped.split(cov.BEGIN)[0], shipped.split(cov.END)[1]
    doc.write_text(shipped.replace("| covered |", "| added |", 1))
    assert cov.main(["--check", "--doc", str(doc)]) == 1
    assert cov.main(["--doc", str(doc)]) == 0
    assert doc.read_text() == shipped
    assert doc.read_text().startswith(before) and doc.read_text().endswith(after)
    doc.write_text(shipped.replace(cov.END, ""))
    assert cov.main(["--check", "--doc", str(doc)]) == 2


def test_the_section_has_a_table_row_per_public_alert_and_no_runbook_rows() -> None:
    """A row starting with a runbook link would count as a tierwatch alert's own row in docs/alerts.md."""
    section = cov.render(COVERAGE)
    table_rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert len(table_rows) == len(COVERAGE.rows)
    assert not [line for line in section.splitlines() if line.startswith("| [")]
    assert "[Coverage against public rule sets](#coverage-against-public-rule-sets)" in cov.DOC.read_text()
