"""The demo app's fault switch (demo/app/server.js, for the slow-app drill): real requests get slow
and fail while /health, /ready and /metrics stay fine; the metrics keep the route template; the
admin endpoint wants its bearer token and refuses bad values."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tierwatch_lab.stack import Stack
from tierwatch_lab.stack.express import ExpressApp, start_express
from tierwatch_lab.stack.redis import start_redis


@pytest.fixture
def app(stack: Stack) -> ExpressApp:
    redis = start_redis(stack, "redis-a")
    return start_express(stack, "es-1", "primary", redis.url)


def call(url: str, method: str = "GET", body: Any = None, token: str | None = None) -> tuple[int, float]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    started = time.monotonic()
    try:
        req = urllib.request.Request(url, data, headers, method=method)
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()
            return r.status, time.monotonic() - started
    except urllib.error.HTTPError as exc:
        return exc.code, time.monotonic() - started


def counts(app: ExpressApp) -> dict[tuple[str, str], float]:
    with urllib.request.urlopen(app.metrics_url, timeout=5) as resp:
        text = resp.read().decode()
    return {
        (s.labels["route"], s.labels["status"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "http_requests_total"
    }


def test_real_requests_slow_and_failing_while_health_stays_fine(app: ExpressApp) -> None:
    assert call(f"{app.base_url}/work")[0] == 200
    assert app.set_fault(delay_ms=300, error_ratio=1) == {"delay_ms": 300, "error_ratio": 1}
    status, took = call(f"{app.base_url}/work")
    assert status == 500 and took >= 0.3
    assert call(f"{app.base_url}/jobs", "POST", {})[0] == 500
    for path in ("/health", "/metrics"):
        status, took = call(f"{app.base_url}{path}")
        assert status == 200 and took < 0.3, path
    found = counts(app)
    assert found[("/work", "500")] == 1 and found[("/jobs", "500")] == 1 and found[("/work", "200")] == 1
    app.set_fault(delay_ms=0, error_ratio=0.5)
    statuses = [call(f"{app.base_url}/work")[0] for _ in range(60)]
    assert 10 <= statuses.count(500) <= 50 and statuses.count(200) + statuses.count(500) == 60
    app.set_fault()
    assert all(call(f"{app.base_url}/work")[0] == 200 for _ in range(5))


def test_admin_endpoint_wants_its_token_and_good_values(app: ExpressApp) -> None:
    url = f"{app.base_url}/admin/fault"
    assert call(url)[0] == 401
    assert call(url, "PUT", {"error_ratio": 1}, token="wrong")[0] == 401
    assert call(url, "PUT", {"error_ratio": 1}, token=app.admin_token + "x")[0] == 401
    for bad in ({"error_ratio": 2}, {"delay_ms": -1}, {"delay_ms": 20000}, {"delay_ms": "soon"}):
        assert call(url, "PUT", bad, token=app.admin_token)[0] == 400, bad
    assert call(url, token=app.admin_token)[0] == 200
    assert call(f"{app.base_url}/work")[0] == 200  # nothing changed
