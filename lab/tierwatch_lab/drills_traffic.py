"""The ``slow-app`` drill: an app server that passes every health check while it is slow and fails
real requests — what only real-traffic signals can see.

Traffic flows through the VIP (lab/traffic.py); app server es-1 is switched (``ExpressApp.set_fault``)
to delay every real request and answer half of them with a 500, while ``/health`` stays fast and
200. The drill passes when the real-traffic alerts of rules/traffic.rules.yml fire and none of the
probe-based app alerts of rules/app.rules.yml is even pending; then the fault is removed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .demo_stack import DemoStack
from .drill_catalog import SCENARIOS
from .drill_kit import DrillResult
from .stack import StackError, wait_for
from .stack.express import ExpressApp
from .traffic import demo_traffic

SCENARIO = "slow-app"
DESCRIPTION = SCENARIOS[SCENARIO]
FAULTY = "es-1"
DELAY_MS = 1000
ERROR_RATIO = 0.5
RATE = 20.0  # requests/s through the VIP
# (alert, labels it must carry): what users' requests show
EXPECTED = (
    ("AppTraffic5xxRatioHigh", {"cluster": "web", "region": "primary"}),
    ("AppTrafficLatencyHigh", {"cluster": "web", "region": "primary"}),
    ("AppTrafficBurnRateCritical", {"cluster": "web"}),
)
# what the health checks show: none may even be pending
PROBE_BASED = (
    "AppInstanceDown",
    "AppRegionDown",
    "AppProbeLatencyHigh",
    "AppErrorResponsesHigh",
    "AppAvailabilityBurnRateCritical",
    "AppAvailabilityBurnRateTicket",
)
QUIET_AFTER = 10.0  # seconds the probe-based alerts are watched after the last expected one fired


@dataclass
class TrafficDrillResult(DrillResult):
    """A drill result with when each real-traffic alert fired and which probe-based ones showed."""

    fired: dict[str, float] = field(default_factory=dict)
    probe_alerts: list[str] = field(default_factory=list)
    requests: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            **super().as_dict(),
            "fired": {name: round(at - self.failed_at, 3) for name, at in self.fired.items()},
            "probe_alerts": self.probe_alerts,
            "requests": self.requests,
        }


def _active(demo: DemoStack) -> list[dict[str, Any]]:
    assert demo.chain is not None
    return demo.chain.prometheus.alerts()


def _watch(demo: DemoStack, result: TrafficDrillResult, deadline: float) -> None:
    """Poll Prometheus's alerts until every expected one fired and QUIET_AFTER more seconds passed
    (or ``deadline``); note each expected alert's firing time and every active probe-based alert."""
    quiet_until: float | None = None
    while time.time() < deadline and (quiet_until is None or time.time() < quiet_until):
        try:
            active = _active(demo)
        except (StackError, OSError, ValueError):
            active = []
        now = time.time()
        for alert in active:
            labels = alert["labels"]
            name = labels.get("alertname", "")
            if name in PROBE_BASED and labels.get("cluster") == "web":
                seen = f"{name} {alert['state']} ({labels.get('target') or labels.get('region') or 'web'})"
                if seen not in result.probe_alerts:
                    result.probe_alerts.append(seen)
            for expected, wanted in EXPECTED:
                matches = all(labels.get(k) == v for k, v in wanted.items())
                if name == expected and matches and alert["state"] == "firing" and name not in result.fired:
                    result.fired[name] = now
                    where = ", ".join(f"{k}={v}" for k, v in wanted.items())
                    result.add(now, f"alert: {name} firing ({where})")
        if quiet_until is None and len(result.fired) == len(EXPECTED):
            quiet_until = now + QUIET_AFTER
        time.sleep(0.25)


def _measure(demo: DemoStack, result: TrafficDrillResult) -> None:
    """Record what the recording rules measured for the primary region at this moment."""
    assert demo.chain is not None
    prometheus = demo.chain.prometheus
    where = '{cluster="web", region="primary"}'
    queries = {
        "5xx ratio": f"cluster_region:tierwatch_app_http_5xx:ratio_rate5m{where}",
        "p95": f"cluster_region:tierwatch_app_http_duration_seconds:p95_rate5m{where}",
        "es-1 health check": f'max(tierwatch_up{{target="{FAULTY}"}})',
    }
    found = []
    for what, query in queries.items():
        try:
            value = prometheus.value(query)
        except StackError:
            value = None
        found.append(f"{what} {value:.3g}" if value is not None else f"{what} n/a")
    result.add(time.time(), "measured: primary region " + ", ".join(found))


def drill_slow_app(demo: DemoStack, deadline: float) -> TrafficDrillResult:
    """Run the drill on a started demo (see the module's docstring)."""
    assert demo.chain is not None
    app = demo.apps[FAULTY]
    if not isinstance(app, ExpressApp):
        raise StackError("the slow-app drill needs the Express app servers (install node and npm)")
    prometheus = demo.chain.prometheus
    traffic = demo_traffic(demo, RATE).start()
    try:
        wait_for(
            lambda: (prometheus.value('cluster:tierwatch_app_http_requests:rate5m{cluster="web"}') or 0) > 1,
            60,
            "user traffic measured by Prometheus",
        )
        result = TrafficDrillResult(SCENARIO, time.time())
        app.set_fault(DELAY_MS, ERROR_RATIO)
        result.add(
            result.failed_at,
            f"failure: {FAULTY} delays real requests {DELAY_MS} ms and fails {ERROR_RATIO:.0%} of them "
            "(its /health stays 200)",
        )
        _watch(demo, result, deadline)
        _measure(demo, result)
        app.set_fault(0, 0)
        repaired = time.time()
        result.add(repaired, f"repaired: {FAULTY} answers real requests normally again")
        before = traffic.outcomes["2xx"]
        recovered = _wait_until(lambda: traffic.outcomes["2xx"] > before + 20, min(deadline, repaired + 30))
        if recovered:
            result.add(time.time(), "recovered: 20 more requests through the VIP answered 2xx")
    finally:
        traffic.stop()
    result.requests = dict(traffic.outcomes)
    missing = [name for name, _ in EXPECTED if name not in result.fired]
    result.recovered = recovered and not missing and not result.probe_alerts
    problems = [f"did not fire: {', '.join(missing)}"] if missing else []
    problems += (
        [f"probe-based alerts showed: {', '.join(result.probe_alerts)}"] if result.probe_alerts else []
    )
    result.detail = "; ".join(
        problems
        or [f"probe-based alerts stayed silent; requests through the VIP by outcome: {result.requests}"]
    )
    return result


def _wait_until(condition: Any, deadline: float) -> bool:
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False
