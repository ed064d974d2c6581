"""`tierwatch demo` sends real traffic: its generator's requests reach the apps through the VIP, the
chain's Prometheus scrapes HAProxy's exporter and the apps (jobs haproxy and app) and the real-traffic
recording rules measure it; Ctrl-C stops the generator with everything else."""

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
        stack_dir = Path(config).parents[1]
    finally:
        code = demo.stop(60)
    assert code == 0, "".join(lines)
    assert not stack_dir.exists()
