"""The demo's Express app servers (demo/app) against a real redis-server: health and readiness, RED
metrics from prom-client, BullMQ jobs enqueued and consumed, and a clean stop on SIGTERM."""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tierwatch_lab.stack import Stack, StackError, wait_for
from tierwatch_lab.stack.express import ExpressApp, ensure_app_installed, start_express
from tierwatch_lab.stack.ports import port_open
from tierwatch_lab.stack.redis import RedisServer, start_redis

PASSWORD = "s3cret-for-the-app"


@pytest.fixture
def redis_master(stack: Stack) -> RedisServer:
    return start_redis(stack, "redis-a", password=PASSWORD)


@pytest.fixture
def app(stack: Stack, redis_master: RedisServer) -> ExpressApp:
    return start_express(stack, "es-1", "primary", redis_master.url, redis_password=PASSWORD)


def request(url: str, method: str = "GET", body: dict[str, Any] | None = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def samples(app: ExpressApp) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, text = request(app.metrics_url)
    assert status == 200
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def sample(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, /, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def test_health_is_live_without_redis_and_ready_only_with_it(
    app: ExpressApp, redis_master: RedisServer
) -> None:
    # the app answers /health before its Redis connection is up: wait for it rather than race it
    wait_for(lambda: json.loads(request(app.url)[1])["status"] == "ok", 15, "the app to reach Redis")
    status, body = request(app.url)
    health = json.loads(body)
    assert status == 200
    assert (health["status"], health["name"], health["region"], health["redis"]["status"]) == (
        "ok",
        "es-1",
        "primary",
        "up",
    )
    assert request(f"{app.base_url}/ready")[0] == 200

    redis_master.process.kill()
    status, body = request(app.url)
    assert status == 200  # an app server is not down because Redis is
    assert json.loads(body)["status"] == "degraded"
    assert request(f"{app.base_url}/ready")[0] == 503
    assert request(f"{app.base_url}/jobs", "POST", {"to": "x@example.com"})[0] == 503
    status, body = request(f"{app.base_url}/work")
    assert (status, json.loads(body)["cache"]) == (200, "unavailable")
    assert PASSWORD not in app.process.log_path.read_text()


def test_red_metrics_count_requests_by_route_and_status(app: ExpressApp) -> None:
    for _ in range(3):
        assert request(f"{app.base_url}/work")[0] == 200
    assert request(f"{app.base_url}/no/such/page?id=1")[0] == 404
    found = samples(app)
    assert sample(found, "http_requests_total", method="GET", route="/work", status="200") == 3
    assert sample(found, "http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert (
        sample(found, "http_request_duration_seconds_count", method="GET", route="/work", status="200") == 3
    )
    assert (
        sample(
            found,
            "http_request_duration_seconds_bucket",
            method="GET",
            route="/work",
            status="200",
            le="+Inf",
        )
        == 3
    )
    assert sample(found, "http_request_duration_seconds_sum", method="GET", route="/work", status="200") > 0
    assert sample(found, "app_info", name="es-1", region="primary") == 1
    names = {name for name, _ in found}
    assert {
        "process_cpu_user_seconds_total",
        "nodejs_eventloop_lag_seconds",
        "process_resident_memory_bytes",
    } <= names
    assert not any("/no/such" in value for _, labels in found for _, value in labels)


def test_a_posted_job_is_consumed_by_the_worker(app: ExpressApp, redis_master: RedisServer) -> None:
    client = redis_master.client()
    status, body = request(f"{app.base_url}/jobs", "POST", {"to": "ops@example.com"})
    assert status == 202
    job_id = json.loads(body)["id"]
    assert client.exists("bull:emails:id")

    def drained() -> bool:
        waiting = client.llen("bull:emails:wait") + client.llen("bull:emails:active")
        later = client.zcard("bull:emails:delayed") + client.zcard("bull:emails:prioritized")
        return waiting + later == 0 and client.zscore("bull:emails:completed", job_id) is not None

    wait_for(drained, 10, f"job {job_id} to be completed")
    assert client.hget(f"bull:emails:{job_id}", "returnvalue") is not None
    assert sample(samples(app), "app_jobs_processed_total", queue="emails", status="completed") == 1
    assert sample(samples(app), "http_requests_total", method="POST", route="/jobs", status="202") == 1


def test_sigterm_stops_it_cleanly(app: ExpressApp) -> None:
    popen = app.process.popen
    assert popen is not None
    popen.send_signal(signal.SIGTERM)
    assert popen.wait(10) == 0
    assert not port_open(app.port)
    assert '"msg":"stopped"' in app.process.log_path.read_text()


def test_missing_node_is_named_with_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # neither node nor npm on it
    with pytest.raises(StackError, match=r"node and npm not found: install Node\.js"):
        ensure_app_installed()
