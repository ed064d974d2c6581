"""`tierwatch demo` sends real traffic: its generator's requests reach the apps through the VIP, the
chain's Prometheus scrapes HAProxy's exporter and the apps (jobs haproxy and app) and the real-traffic
recording rules measure it; Ctrl-C stops the generator with everything else.

And the demo is quiet at rest: once its cache is warm, no alert is pending or firing but Watchdog and
the host alerts (those judge the machine the demo runs on, not the demo). The healthy demo used to
raise RedisCacheHitRatioLow by itself (41 % hits: the exporter's own queue reads counted as misses, and
a cache whose entries expired after 60 s); pending means its condition holds now, so it would fire
once its `for` has passed."""

from __future__ import annotations

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

        wait_for(measured, 90, "the demo's traffic measured by the real-traffic rules", interval=1)
        assert value('cluster_region:tierwatch_app_http_5xx:ratio_rate5m{cluster="web"}') == 0
        warm = 'target:tierwatch_cache_hit:ratio_rate10m{target="redis-a"} > 0.8'
        wait_for(lambda: value(f"count({warm})") == 1, 300, "the demo's cache warm (> 80 % hits)", interval=2)

        def active() -> set[tuple[str, str]]:
            alerts = httpx.get(f"{prometheus}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
            return {(a["labels"]["alertname"], a["state"]) for a in alerts}

        at_rest = active()
        assert ("Watchdog", "firing") in at_rest
        noise = {
            (name, state) for name, state in at_rest if name != "Watchdog" and not name.startswith("Host")
        }
        assert not noise, noise
        stack_dir = Path(config).parents[1]
    finally:
        code = demo.stop(60)
    assert code == 0, "".join(lines)
    assert not stack_dir.exists()
