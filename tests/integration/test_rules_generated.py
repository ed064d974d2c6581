"""The shipped rules are generated (rules/generate.py) from rules/src/templates/ and rules/src/settings.yml:
the committed files equal the generator's output; a user's settings change the job selectors, thresholds,
``for``/``keep_firing_for`` durations and runbook base, and bad settings are refused; every runbook_url is
absolute and names a runbook that exists; every keep_firing_for has a promtool test that fails without it."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "rules"
# keep_firing_slo.test.yml: the burn-rate alerts, whose day-long windows are slow to evaluate with every file
KEEP_FIRING_TESTS = sorted((RULES / "tests").glob("keep_firing*.test.yml"))
PROMTOOL = shutil.which("promtool")


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tierwatch_rules_generate", RULES / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


def alerts_of(files: dict[str, str]) -> dict[str, dict[str, Any]]:
    return {
        rule["alert"]: rule
        for text in files.values()
        for group in yaml.safe_load(text)["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


def write_overrides(tmp_path: Path, overrides: dict[str, Any]) -> Path:
    path = tmp_path / "my-settings.yml"
    path.write_text(yaml.safe_dump(overrides))
    return path


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL, "promtool (Debian package prometheus) is needed"
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=300
    )


SHIPPED = alerts_of(gen.render())


def test_committed_rules_equal_the_generators_output() -> None:
    problems = gen.stale(gen.render())
    assert not problems, "rules are stale: run python rules/generate.py\n" + "\n".join(problems)


def test_stale_notices_a_hand_edit(tmp_path: Path) -> None:
    rendered = gen.render()
    for name, text in rendered.items():
        (tmp_path / name).write_text(text)
    assert gen.stale(rendered, tmp_path) == []
    kit = tmp_path / "kit.rules.yml"
    kit.write_text(kit.read_text().replace("for: 5m", "for: 6m", 1))
    assert gen.stale(rendered, tmp_path) == [f"{kit} differs from the generator's output"]
    assert gen.main(["--check", "--out", str(tmp_path)]) == 1


def test_every_setting_is_used_by_a_template() -> None:
    assert gen.unused_settings(gen.load_settings()) == []


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_runbook_url_is_absolute_and_its_runbook_exists(name: str) -> None:
    url = SHIPPED[name]["annotations"]["runbook_url"]
    match = re.fullmatch(r"https?://[^/\s]+/\S*/docs/runbooks/(\w+)\.md", url)
    assert match, f"{name}: runbook_url {url!r} is not an absolute URL to docs/runbooks/"
    assert match.group(1) == name
    assert (ROOT / "docs" / "runbooks" / f"{name}.md").is_file()


def test_settings_change_selectors_thresholds_durations_and_runbooks(tmp_path: Path) -> None:
    overrides = {
        "selectors": {"exporter": 'job="tw-exporter", env="prod"', "recovery": 'job=~"tw-rec.*"'},
        "runbook_url_base": "https://wiki.example.com/tw/",
        "thresholds": {"queue_backlog_jobs": 5000, "app_probe_latency_p95_seconds": 0.25},
        "for": {"AppInstanceDown": "90s"},
        "keep_firing_for": {"QueueBacklogHigh": None, "AppProbeLatencyHigh": "20m"},
    }
    out = tmp_path / "out"
    assert gen.main(["--settings", str(write_overrides(tmp_path, overrides)), "--out", str(out)]) == 0
    files = {p.name: p.read_text() for p in sorted(out.glob("*.rules.yml"))}
    assert set(files) == set(gen.render())
    alerts = alerts_of(files)
    assert alerts["TierwatchExporterAbsent"]["expr"] == 'absent(up{job="tw-exporter", env="prod"} == 1)'
    assert alerts["TierwatchRecoveryAbsent"]["expr"] == 'absent(up{job=~"tw-rec.*"} == 1)'
    assert 'job="tierwatch' not in "".join(files.values())
    assert all(
        a["annotations"]["runbook_url"] == f"https://wiki.example.com/tw/{n}.md" for n, a in alerts.items()
    )
    assert alerts["QueueBacklogHigh"]["expr"].endswith("> 5000")
    assert alerts["QueueBacklogHigh"]["annotations"]["summary"].startswith("More than 5000 jobs")
    assert "5000" in alerts["QueueBacklogGrowing"]["expr"]
    assert "p95 above 250ms" in alerts["AppProbeLatencyHigh"]["annotations"]["summary"]
    assert alerts["AppInstanceDown"]["for"] == "90s"
    assert "1 minute 30 seconds" in alerts["AppInstanceDown"]["annotations"]["description"]
    assert "keep_firing_for" not in alerts["QueueBacklogHigh"]
    assert alerts["AppProbeLatencyHigh"]["keep_firing_for"] == "20m"
    # everything not overridden keeps its default
    shipped = SHIPPED
    assert alerts["RedisMasterDown"] == shipped["RedisMasterDown"] | {
        "annotations": shipped["RedisMasterDown"]["annotations"]
        | {"runbook_url": "https://wiki.example.com/tw/RedisMasterDown.md"}
    }
    done = promtool("check", "rules", *map(str, sorted(out.glob("*.rules.yml"))))
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"thresholds": {"queue_backlog_job": 5}}, "thresholds.queue_backlog_job: unknown setting"),
        ({"for": {"AppInstanceDown": "2 minutes"}}, "for.AppInstanceDown: expected a Prometheus duration"),
        ({"runbook_url_base": "docs/runbooks/"}, "runbook_url_base: expected an absolute http(s) URL"),
        ({"selectors": {"exporter": "tierwatch"}}, "selectors.exporter: expected label matchers"),
        ({"thresholds": {"queue_backlog_jobs": "many"}}, "thresholds.queue_backlog_jobs: expected a number"),
        ({"selectors": "job"}, "selectors: expected a mapping"),
    ],
)
def test_bad_settings_are_refused_with_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], overrides: dict[str, Any], message: str
) -> None:
    out = tmp_path / "out"
    assert gen.main(["--settings", str(write_overrides(tmp_path, overrides)), "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_filters() -> None:
    assert [gen.in_words(s) for s in (30, 60, 90, 600, 3600, 5400)] == [
        "30 seconds", "1 minute", "1 minute 30 seconds", "10 minutes", "1 hour", "1 hour 30 minutes",
    ]  # fmt: skip
    assert [gen.as_duration(s) for s in (0.5, 1, 900, 5400)] == ["500ms", "1s", "15m", "1h30m"]
    assert gen.as_bytes(16777216) == "16 MiB" and gen.as_bytes(1073741824) == "1 GiB"
    assert gen.parse_duration("1h30m") == 5400 and gen.parse_duration(45) == 45
    with pytest.raises(gen.SettingsError):
        gen.parse_duration("5 minutes")


# ---- keep_firing_for ----

KEEP_FIRING = {name: rule for name, rule in SHIPPED.items() if "keep_firing_for" in rule}


def _minutes(value: str) -> float:
    return gen.parse_duration(value) / 60


def test_alerts_that_flap_by_nature_keep_firing() -> None:
    flapping = {
        name for name in SHIPPED if re.search(r"Latency|Lag|BurnRate|Backlog|5xx|NearMax|TooOld", name)
    }
    flapping -= {"RedisMemoryNearMax"}  # memory use does not swing back and forth
    assert set(KEEP_FIRING) == flapping


@pytest.mark.parametrize("name", sorted(KEEP_FIRING))
def test_keep_firing_for_has_a_promtool_test(name: str) -> None:
    """A test of the alert still firing at T while its own expression is already empty at T, and
    resolved one evaluation later."""
    tests = [
        t
        for path in KEEP_FIRING_TESTS
        for t in yaml.safe_load(path.read_text())["tests"]
        if t["name"].startswith(name + " ")
    ]
    assert len(tests) == 1, f"{name}: no test in {[p.name for p in KEEP_FIRING_TESTS]}"
    test = tests[0]
    cases = sorted(
        (c for c in test["alert_rule_test"] if c["alertname"] == name), key=lambda c: _minutes(c["eval_time"])
    )
    still = [c for c in cases if c["exp_alerts"]][-1]
    resolved = cases[-1]
    assert (
        resolved["exp_alerts"] == [] and _minutes(resolved["eval_time"]) == _minutes(still["eval_time"]) + 1
    )
    cleared = [
        q
        for q in test.get("promql_expr_test", [])
        if q["eval_time"] == still["eval_time"] and not q["exp_samples"]
    ]
    assert [" ".join(q["expr"].split()) for q in cleared] == [" ".join(KEEP_FIRING[name]["expr"].split())]


@pytest.mark.slow
def test_keep_firing_tests_fail_without_keep_firing_for(tmp_path: Path) -> None:
    overrides = {"keep_firing_for": dict.fromkeys(KEEP_FIRING)}
    rules_dir = tmp_path / "rules"
    assert gen.main(["--settings", str(write_overrides(tmp_path, overrides)), "--out", str(rules_dir)]) == 0
    assert "keep_firing_for" not in "".join(p.read_text() for p in rules_dir.glob("*.yml"))
    (rules_dir / "tests").mkdir()
    failed: set[str] = set()
    for path in KEEP_FIRING_TESTS:
        shutil.copy(path, rules_dir / "tests")
        done = promtool("test", "rules", path.name, cwd=rules_dir / "tests")
        assert done.returncode != 0, path.name
        failed |= set(re.findall(r"alertname: (\w+), time", done.stdout + done.stderr))
    assert failed == set(KEEP_FIRING), failed ^ set(KEEP_FIRING)


@pytest.mark.parametrize("name", sorted(KEEP_FIRING))
def test_runbook_says_how_long_the_alert_keeps_firing(name: str) -> None:
    text = (ROOT / "docs" / "runbooks" / f"{name}.md").read_text()
    assert f"keeps firing `{KEEP_FIRING[name]['keep_firing_for']}` after its condition clears" in text
