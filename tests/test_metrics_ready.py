"""/metrics is served from a ready body: each target's lines are rendered when its state changes, a
scrape only joins them, and the result is exactly what prometheus_client renders from the collector."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from tierwatch import metrics
from tierwatch.config import LoadedConfig
from tierwatch.events import EventLog
from tierwatch.lab.stack import Stack
from tierwatch.lab.stack.http import start_http_backend
from tierwatch.lab.stack.redis import start_redis
from tierwatch.metrics import ReadyExposition, TierwatchCollector
from tierwatch.monitor import Monitor

ACCEPTS = (
    "",
    "text/plain;version=0.0.4",
    "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
)


def reference(monitor: Monitor, accept: str) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TierwatchCollector(monitor))
    encoder, _ = choose_encoder(accept)
    return encoder(registry)


def test_ready_body_equals_the_collector_rendering_round_after_round(
    stack: Stack, make_config: Callable[..., LoadedConfig]
) -> None:
    primary = start_redis(stack, "redis-a")
    replica = start_redis(stack, "redis-b", replica_of=primary)
    web = start_http_backend(stack, "web-1")
    loaded = make_config(
        [
            {
                "name": "cache",
                "tier": "redis",
                "targets": [{"name": s.name, "region": "primary", "url": s.url} for s in (primary, replica)],
                "queues": [{"name": "jobs", "kind": "list"}],
            },
            {
                "name": "web",
                "tier": "app",
                "targets": [
                    {"name": "web-1", "region": "primary", "url": web.url},
                    {"name": "web-gone", "region": "failover", "url": "http://127.0.0.1:9/health"},
                ],
            },
        ]
    )
    monitor = Monitor(loaded, EventLog(stream=io.StringIO()))
    exposition = ReadyExposition(monitor)
    encoders = [choose_encoder(accept) for accept in ACCEPTS]
    before = [exposition.body(*pair) for pair in encoders]
    assert before == [reference(monitor, accept) for accept in ACCEPTS]

    async def rounds() -> list[list[bytes]]:
        bodies = []
        for _ in range(3):
            await monitor.run_round()
            bodies.append([exposition.body(*pair) for pair in encoders])
        await monitor.close()
        return bodies

    for bodies in asyncio.run(rounds())[-1:]:
        assert bodies == [reference(monitor, accept) for accept in ACCEPTS]
    text = bodies[0].decode()
    assert 'tierwatch_replication_lag_bytes{cluster="cache",region="primary",target="redis-b"' in text
    assert 'tierwatch_up{cluster="web",region="failover",target="web-gone",tier="app"} 0.0' in text
    assert bodies[2].endswith(b"# EOF\n")


def test_a_scrape_renders_no_target(
    make_config: Callable[..., LoadedConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = make_config(
        [
            {
                "name": "web",
                "tier": "app",
                "targets": [{"name": "a", "region": "p", "url": "http://127.0.0.1:9/"}],
            }
        ]
    )
    monitor = Monitor(loaded, EventLog(stream=io.StringIO()))
    exposition = ReadyExposition(monitor)

    def no_render(state: object) -> dict[str, str]:
        raise AssertionError("rendered a target on the scrape path")

    monkeypatch.setattr(metrics, "render_target", no_render)
    monitor.version += 1
    body = exposition.body(*choose_encoder(""))
    assert b'tierwatch_up{cluster="web",region="p",target="a",tier="app"} 0.0' in body
    with pytest.raises(AssertionError):
        exposition.refresh(monitor.states[0])
