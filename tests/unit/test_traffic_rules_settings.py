"""The real-traffic rules follow their settings: the haproxy and app job selectors, the user routes,
the traffic-present threshold (in the traffic-based alerts and in the probe-based burn-rate alerts'
`unless`), and promtool accepts what is generated from overrides."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "tierwatch_rules_generate_traffic", ROOT / "rules" / "generate.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


gen = _generator()


def selectors(text: str, metric_prefix: str) -> list[str]:
    return re.findall(rf"\b{metric_prefix}\w*\{{([^}}]*)\}}", text)


def test_selectors_and_threshold_come_from_the_settings(tmp_path: Path) -> None:
    overrides = {
        "selectors": {
            "haproxy": 'job="edge-lbs"',
            "app": 'job="web", env="prod"',
            "app_user_routes": 'route!="/ping"',
        },
        "thresholds": {"traffic_min_requests_per_second": 7},
    }
    path = tmp_path / "mine.yml"
    path.write_text(yaml.safe_dump(overrides))
    out = tmp_path / "rules"
    assert gen.main(["--settings", str(path), "--out", str(out)]) == 0
    traffic = (out / "traffic.rules.yml").read_text()
    haproxy, app = selectors(traffic, "haproxy_"), selectors(traffic, "http_request")
    assert len(haproxy) >= 10 and all(s.startswith('job="edge-lbs"') for s in haproxy)
    assert len(app) >= 10 and all(s.startswith('job="web", env="prod", route!="/ping"') for s in app)
    assert 'job="haproxy"' not in traffic and 'job="app"' not in traffic
    assert traffic.count("cluster:tierwatch_app_http_requests:rate5m > 7") == 2  # both burn-rate alerts
    probe = (out / "app.rules.yml").read_text()
    assert probe.count("unless on (tier, cluster) (cluster:tierwatch_app_http_requests:rate5m > 7)") == 2
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is needed"
    done = subprocess.run(
        [promtool, "check", "rules", str(out / "traffic.rules.yml")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_bad_selector_is_refused_with_its_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yml"
    path.write_text(yaml.safe_dump({"selectors": {"haproxy": "job=haproxy"}}))
    with pytest.raises(gen.SettingsError, match=r"selectors\.haproxy"):
        gen.load_settings(path)
