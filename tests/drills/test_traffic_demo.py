"""`tierwatch demo` sends real traffic: its generator's requests reach the apps through the VIP, the
chain's Prometheus scrapes HAProxy's exporter and the apps (jobs haproxy and app) and the real-traffic
recording rules measure it; Ctrl-C stops the generator with everything else.

And the demo is quiet at rest: once its cache is warm, no alert is pending or firing but Watchdog and
the host alerts (those judge the machine the demo runs on, not the demo). The healthy demo used to
raise RedisCacheHitRatioLow by itself (41 % hits: the exporter's own queue reads counted as misses, and
a cache whose entries expired after 60 s); pending means its condition holds now, so it would fire
once its `for` has passed.

While the cache warms, RedisCacheHitRatioLow is pending (the request rate passes 1/s before the hit
ratio passes 80 %; `for: 15m` keeps it from firing). The alerts are read once the ratio has stayed
above 80 % for 30 s and every rule group has evaluated since: an alerting group that last ran just
before the recording rule crossed still shows that warm-up pending state."""

from __future__ import annotations

import re
import time
from datetime import datetime
from pathlib import Path

import httpx

from tierwatch_lab.stack import wait_for

from helpers import CliProcess


def test_demo_traffic_reaches_the_real_traffic_rules() -> None:
    demo = CliProcess("demo")
    printed, lines = demo.printed, demo.lines
    try:
        prometheus = wait_for(
            lambda: printed(r"Prometheus\s+(http://\S+?)/alerts"), 180, "Prometheus address"
        )
        config = wait_for(lambda: printed(r"Config\s+(\S+)"), 5, "demo config")
        rate = wait_for(lambda: printed(r"Traffic\s+(\S+) requests/s"), 5, "the traffic line")
        assert float(rate) == 10

        def value(query: str) -> float:
            result = httpx.get(f"{prometheus}/api/v1/query", params={"query": query}, timeout=5).json()
            samples = result["data"]["result"]
            return sum(float(s["value"][1]) for s in samples)

        def measured() -> bool:
            return (
                value('cluster:tierwatch_app_http_requests:rate5m{cluster="web"}') > 1
                and value('cluster_proxy:tierwatch_haproxy_backend_requests:rate5m{proxy="be_app"}') > 1
                and value('count(up{job=~"haproxy|app"} == 1)') == 6
            )

        def value_by_target(query: str) -> dict[str, str]:
            result = httpx.get(f"{prometheus}/api/v1/query", params={"query": query}, timeout=5).json()
            return {r["metric"].get("target", ""): r["value"][1] for r in result["data"]["result"]}

        wait_for(measured, 90, "the demo's traffic measured by the real-traffic rules", interval=1)
        assert value('cluster_region:tierwatch_app_http_5xx:ratio_rate5m{cluster="web"}') == 0
        # the 10-minute ratio climbs slowly past 80 % (it levels out near 85 % in 2026-12-08 runs) and
        # wobbles by half a point: warm means above 80 % for 30 s, not one sample above it (a run
        # read 79.75 % right after one at 80.1 %)
        warm = 'min_over_time(target:tierwatch_cache_hit:ratio_rate10m{target="redis-a"}[30s]) > 0.8'
        wait_for(
            lambda: value(f"count({warm})") == 1, 330, "the demo's cache warm (> 80 % for 30 s)", interval=2
        )
        warm_seen = time.time()

        def evaluated_since_warm() -> bool:
            groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
            return all(_timestamp(g["lastEvaluation"]) > warm_seen for g in groups)

        wait_for(evaluated_since_warm, 30, "every rule group evaluated after the cache was warm", interval=1)

        alerts = httpx.get(f"{prometheus}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
        assert ("Watchdog", "firing") in {(a["labels"]["alertname"], a["state"]) for a in alerts}
        noise = [
            {**a["labels"], "state": a["state"], "activeAt": a.get("activeAt"), "value": a.get("value")}
            for a in alerts
            if a["labels"]["alertname"] != "Watchdog" and not a["labels"]["alertname"].startswith("Host")
        ]
        ratios = value_by_target("target:tierwatch_cache_hit:ratio_rate10m")
        assert not noise, (noise, ratios, time.time())
        stack_dir = Path(config).parents[1]
    finally:
        code = demo.stop(60)
    assert code == 0, "".join(lines)
    assert not stack_dir.exists()


def _timestamp(rfc3339: str) -> float:
    """Prometheus's lastEvaluation (RFC 3339, up to nanoseconds, any offset) as seconds since the epoch."""
    match = re.fullmatch(r"([^.]+?)(\.\d+)?(Z|[+-]\d\d:\d\d)", rfc3339)
    assert match, rfc3339
    whole, fraction, offset = match.groups()
    stamp = datetime.fromisoformat(whole + ("+00:00" if offset == "Z" else offset))
    return stamp.timestamp() + float(fraction or 0)
