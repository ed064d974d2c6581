"""keepalived VRRP between two real HAProxy LBs in network namespaces, in front of the real Express
apps: the VIP is served by lb-1, moves to lb-2 when lb-1's HAProxy dies, tierwatch's LB probe sees
the role change, and nothing of the network is left afterwards. Runs as root (the CI does)."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import time
import urllib.request
from collections.abc import Callable

from prometheus_client import CollectorRegistry, generate_latest

from tierwatch.config import LoadedConfig
from tierwatch.events import EventLog
from tierwatch.metrics import TierwatchCollector
from tierwatch.monitor import Monitor
from tierwatch.probes.haproxy import parse_show_stat
from tierwatch_lab.stack import Stack, wait_for
from tierwatch_lab.stack.express import start_express
from tierwatch_lab.stack.redis import start_redis
from tierwatch_lab.stack.vrrp import VrrpPair, create_vrrp_network, start_vrrp_pair, vrrp_missing

from helpers import metric_value as value


def served_by(url: str, timeout: float = 1.0) -> tuple[str, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.headers["X-Served-By"], resp.read()


def test_vrrp_can_run_here() -> None:
    missing = vrrp_missing()
    assert not missing, "the VRRP pair cannot run on this machine; missing: " + "; ".join(missing)


def scrape(monitor: Monitor) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TierwatchCollector(monitor))
    return generate_latest(registry).decode()


def monitor_for(pair: VrrpPair, make_config: Callable[..., LoadedConfig]) -> Monitor:
    targets = [
        {"name": lb.name, "region": "primary", "url": lb.url, "stats_socket": str(lb.stats_socket)}
        for lb in pair.lbs
    ]
    cluster = {"name": "edge", "tier": "lb", "vip": pair.vip_url, "targets": targets}
    return Monitor(make_config([cluster], failure_threshold=100), EventLog(stream=io.StringIO()))


def test_vip_moves_to_lb2_when_lb1_haproxy_dies(make_config: Callable[..., LoadedConfig]) -> None:
    assert not vrrp_missing(), f"VRRP needs: {vrrp_missing()}"
    with Stack() as stack:
        net = create_vrrp_network(stack)
        redis = start_redis(stack, "redis-a")
        apps = [start_express(stack, f"es-{i}", "primary", redis.url, host=net.host_ip) for i in (1, 2)]
        pair = start_vrrp_pair(stack, [(a.name, a.port) for a in apps], network=net, check_interval_ms=200)
        lb1, lb2 = pair.lbs
        assert (lb1.url, lb2.url) == (
            f"http://{net.lb_ip(1)}:8080/health",
            f"http://{net.lb_ip(2)}:8080/health",
        )
        assert pair.holders() == ["lb-1"]

        # the stats sockets are files in the stack dir, reachable from here; the apps are up behind both LBs
        def backends_up() -> bool:
            rows = [r for lb in pair.lbs for r in parse_show_stat(lb.command("show stat"))]
            return sum(r["status"] == "UP" for r in rows if r["svname"] in ("es-1", "es-2")) == 4

        wait_for(backends_up, 10, "es-1 and es-2 UP in both LBs")
        who, body = served_by(pair.vip_url.replace("/health", "/work"))
        assert who == "lb-1"
        assert json.loads(body)["name"] in ("es-1", "es-2")  # through HAProxy to the app on the bridge

        monitor = monitor_for(pair, make_config)
        asyncio.run(monitor.run_round())
        before = scrape(monitor)

        lb1.process.kill()
        killed = time.monotonic()

        def lb2_serves() -> bool:
            return served_by(pair.vip_url, timeout=0.5)[0] == "lb-2"

        wait_for(lb2_serves, 15, "the VIP to be served by lb-2")
        failover = time.monotonic() - killed
        assert pair.active() == "lb-2"
        assert served_by(pair.vip_url.replace("/health", "/work"))[0] == "lb-2"

        async def after_round() -> str:
            await monitor.run_round()
            await monitor.close()
            return scrape(monitor)

        after = asyncio.run(after_round())
        print(f"VIP failover after killing lb-1's HAProxy: {failover:.2f}s")
        assert failover < 10
    assert value(before, "tierwatch_role", target="lb-1", role="active") == 1
    assert value(before, "tierwatch_lb_vip_up", cluster="edge") == 1
    assert value(after, "tierwatch_up", target="lb-1") == 0
    assert value(after, "tierwatch_role", target="lb-2", role="active") == 1
    assert value(after, "tierwatch_role", target="lb-1", role="standby") == 1

    # the stack closed: no namespace, veth or bridge of ours is left
    assert net.leftovers() == []
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert net.suffix not in namespaces
    assert net.suffix not in links
