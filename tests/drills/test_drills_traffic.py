"""The slow-app drill against the demo stack (Express apps, HAProxy with its Prometheus exporter, the
whole chain with the demo's 5 s window): the real-traffic alerts fire, the probe-based ones are never
even pending, and the app answers normally again once the fault is removed."""

from __future__ import annotations

import pytest

from tierwatch_lab.drills import run_drill
from tierwatch_lab.drills_traffic import EXPECTED, TrafficDrillResult
from tierwatch_lab.stack import Stack

pytestmark = pytest.mark.slow


def test_slow_app_fires_traffic_alerts_and_not_probe_alerts(stack: Stack) -> None:
    result = run_drill("slow-app", stack=stack, timeout=120)
    report = result.render()
    print("\n" + report)
    assert isinstance(result, TrafficDrillResult)
    assert set(result.fired) == {name for name, _ in EXPECTED}, report
    assert result.probe_alerts == [], report
    assert result.recovered, report
    events = [what for _, what in result.timeline]
    assert events[0].startswith("failure:"), report
    assert any(what.startswith("repaired:") for what in events), report
    assert events[-1].startswith("recovered:"), report
    assert result.requests.get("5xx", 0) > 0 and result.requests.get("2xx", 0) > 0, report
    # every alert fired within the drill's bounds, after the failure
    assert all(0 < at - result.failed_at < 120 for at in result.fired.values()), report
