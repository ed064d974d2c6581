"""/metrics is served from a ready body: each target's lines are rendered when its state changes, a
scrape only joins them, and the result is exactly what prometheus_client renders from the collector."""

from __future__ import annotations

import asyncio
import io
import math
import random
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString

from tierwatch import metrics
from tierwatch.config import LoadedConfig
from tierwatch.events import EventLog
from tierwatch.metric_catalog import QUEUE_LENGTH
from tierwatch.metrics import ReadyExposition, TierwatchCollector
from tierwatch.monitor import Monitor, TargetState
from tierwatch.probes.base import Sample
from tierwatch.probes.http import HTTP_CONTENT_LENGTH as HTTP_SIZE
from tierwatch.probes.http import HTTP_STATUS
from tierwatch_lab.stack import Stack
from tierwatch_lab.stack.http import start_http_backend
from tierwatch_lab.stack.redis import start_redis

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

    def no_render(state: object, prefixes: object = None, options: object = None) -> dict[str, str]:
        raise AssertionError("rendered a target on the scrape path")

    monkeypatch.setattr(metrics, "render_target", no_render)
    monitor.version += 1
    body = exposition.body(*choose_encoder(""))
    assert b'tierwatch_up{cluster="web",region="p",target="a",tier="app"} 0.0' in body
    exposition.refresh(monitor.states[0])  # nothing a reader sees changed: not rendered again
    monitor.states[0].up = True
    with pytest.raises(AssertionError):
        exposition.refresh(monitor.states[0])


@pytest.mark.parametrize("opt_in", [False, True], ids=["default", "opt-in-series"])
def test_cached_label_text_stays_byte_identical_as_values_change(
    make_config: Callable[..., LoadedConfig], opt_in: bool
) -> None:
    """Re-renders from the cached label text, after every kind of change a probe can make, equal the
    collector's rendering: escaped label values, counters past 1e6, NaN/Inf, roles and breaker states;
    with the default settings and with every opt-in family turned on."""
    settings = {"probe_duration_histogram": opt_in, "http_response_size": opt_in}
    loaded = make_config(
        [
            {"name": "cache", "tier": "redis", "targets": [
                {"name": "r-1", "region": "primary", "url": "redis://127.0.0.1:9"},
                {"name": "r-2", "region": "failover", "url": "redis://127.0.0.1:9"}]},
            {"name": "web", "tier": "app", "targets": [
                {"name": "w-1", "region": "primary", "url": "http://127.0.0.1:9/"}]},
        ],
        metrics=settings,
    )  # fmt: skip
    monitor = Monitor(loaded, EventLog(stream=io.StringIO()))
    exposition = ReadyExposition(monitor)
    encoders = [choose_encoder(accept) for accept in ACCEPTS]
    odd_queue = 'we"ird\\queue\nname'
    steps: list[Callable[[TargetState], None]] = [
        lambda s: setattr(s, "up", True),
        lambda s: setattr(s, "last_probe", 1764571928.123456),
        lambda s: s.observe_duration(0.0042),
        lambda s: setattr(s, "role", "primary" if s.info.tier == "redis" else None),
        lambda s: s.failures.__setitem__("timeout", 1_234_567),
        lambda s: setattr(s.breaker, "state", "open"),
        lambda s: setattr(s, "samples", [Sample(QUEUE_LENGTH, (odd_queue, "waiting"), 3.0)]),
        lambda s: setattr(s, "samples", [Sample(QUEUE_LENGTH, (odd_queue, "waiting"), float("nan"))]),
        lambda s: setattr(
            s,
            "samples",
            [
                Sample(QUEUE_LENGTH, ("q", "active"), 7),
                Sample(HTTP_STATUS, (), 2e6),
                Sample(HTTP_SIZE, (), 12),
            ],
        ),
        lambda s: setattr(s, "role", "replica" if s.info.tier == "redis" else None),
        lambda s: s.failures.__setitem__("timeout", 0),
        lambda s: setattr(s.breaker, "state", "half_open"),
        lambda s: [s.observe_duration(d) for d in (0.5, 20.0, float("inf"))],
        lambda s: setattr(s, "up", False),
    ]
    texts = []
    for step in steps:
        for state in monitor.states:
            step(state)
            exposition.refresh(state)
        monitor.version += 1
        assert [exposition.body(*pair) for pair in encoders] == [reference(monitor, a) for a in ACCEPTS]
        texts.append(exposition.body(*encoders[0]).decode())
    assert 'queue="we\\"ird\\\\queue\\nname"' in texts[6]
    text = texts[-1]
    assert 'tierwatch_probe_failures_total{cluster="cache",reason="timeout",region="primary"' in text
    assert (
        'tierwatch_role{cluster="cache",region="failover",role="replica",target="r-2",tier="redis"} 1.0'
        in text
    )
    assert ("tierwatch_probe_duration_seconds_bucket{" in text) is opt_in
    assert ("tierwatch_http_response_size_bytes{" in text) is opt_in
    assert 'tierwatch_probe_last_duration_seconds{cluster="web",region="primary",target="w-1"' in text
    assert 'tierwatch_probes_total{cluster="web",region="primary",target="w-1",tier="app"} 4.0' in text
    assert (
        'tierwatch_cluster_probe_duration_seconds_count{cluster="cache",region="primary",tier="redis"}'
        in text
    )
    # an HTTP probe never fails for "auth": no such series for an app server, unlike Redis
    assert 'reason="auth",region="primary",target="w-1"' not in text
    assert 'reason="auth",region="primary",target="r-1"' in text


def test_a_reload_turning_the_histogram_on_renders_every_target_again(
    make_config: Callable[..., LoadedConfig],
) -> None:
    web = [{"name": "w-1", "region": "primary", "url": "http://127.0.0.1:9/"}]
    clusters = [{"name": "web", "tier": "app", "targets": web}]
    monitor = Monitor(make_config(clusters), EventLog(stream=io.StringIO()))
    exposition = ReadyExposition(monitor)
    monitor.states[0].observe_duration(0.003)
    exposition.refresh(monitor.states[0])
    encoder = choose_encoder("")
    assert b"tierwatch_probe_duration_seconds_bucket" not in exposition.body(*encoder)
    asyncio.run(monitor.apply(make_config(clusters, metrics={"probe_duration_histogram": True})))
    body = exposition.body(*encoder)
    assert body == reference(monitor, "")
    assert b'tierwatch_probe_duration_seconds_bucket{cluster="web",le="0.005",region="primary"' in body


def test_value_shortcuts_write_what_prometheus_client_writes() -> None:
    """The render's fast paths for counters, durations and Unix times equal ``floatToGoString``."""
    rng = random.Random(17)
    special = [0.0, 1e6, 1_000_000.5, -1_234_567.5, 1764571928.0, 1e17, 5e-324, 999_999.9999, 2e6]
    special += [math.inf, -math.inf, math.nan, 0, 7, 999_999, 1_000_000, -3]
    values = (
        special + [rng.uniform(1e6, 2e9) for _ in range(2000)] + [rng.uniform(-1e7, 1e6) for _ in range(2000)]
    )
    for value in values:
        assert metrics._value(value) == floatToGoString(value), value
        if isinstance(value, float):
            assert metrics._timestamp(value) == floatToGoString(value), value
