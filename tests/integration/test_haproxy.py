"""The load-balancer probe against real HAProxy: liveness, backend and server states from the runtime
API (kept-open connection) or the stats page, and which LB of the pair serves the VIP."""

from __future__ import annotations

import asyncio
import io
import urllib.request
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from tierwatch.clients.haproxy import parse_show_stat, server_state
from tierwatch.config import LoadedConfig
from tierwatch.events import EventLog
from tierwatch.metrics import TierwatchCollector
from tierwatch.monitor import Monitor
from tierwatch_lab.stack import Stack, wait_for
from tierwatch_lab.stack.haproxy import HAProxy, start_haproxy, start_vip
from tierwatch_lab.stack.http import start_http_backend

from helpers import metric_value as value


def scrape(monitor: Monitor) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TierwatchCollector(monitor))
    return generate_latest(registry).decode()


def lb_cluster(lbs: list[HAProxy], vip: str | None = None, via: str = "socket") -> dict[str, Any]:
    targets = []
    for lb in lbs:
        target: dict[str, Any] = {"name": lb.name, "region": "primary", "url": lb.url}
        if via == "socket":
            target["stats_socket"] = str(lb.stats_socket)
        targets.append(target)
    cluster: dict[str, Any] = {"name": "edge", "tier": "lb", "targets": targets}
    if vip:
        cluster["vip"] = vip
    return cluster


def test_server_status_normalisation() -> None:
    assert [
        server_state(s) for s in ("UP", "UP 1/2", "DOWN 1/2", "MAINT (via be/x)", "no check", "DRAIN")
    ] == [
        "up",
        "up",
        "down",
        "maint",
        "no_check",
        "drain",
    ]


def test_backend_and_server_states_from_runtime_api(
    stack: Stack, make_config: Callable[..., LoadedConfig]
) -> None:
    apps = [start_http_backend(stack, f"es-{i}") for i in (1, 2)]
    lb = start_haproxy(stack, "lb-1", [(a.name, a.port) for a in apps], check_interval_ms=200)
    monitor = Monitor(make_config([lb_cluster([lb])]), EventLog(stream=io.StringIO()))

    def server_line(name: str) -> str:
        rows = parse_show_stat(lb.command("show stat"))
        return next(r["status"] for r in rows if r["svname"] == name)

    def backend_2xx() -> int:
        rows = parse_show_stat(lb.command("show stat"))
        return int(next(r["hrsp_2xx"] for r in rows if r["pxname"] == "be_app" and r["svname"] == "BACKEND"))

    async def scenario() -> list[str]:
        texts = []
        wait_for(
            lambda: server_line("es-2").startswith("UP") and server_line("es-1") == "UP", 10, "servers UP"
        )
        for _ in range(3):  # traffic through the LB between rounds
            await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"http://127.0.0.1:{lb.port}/x", timeout=5).read()
            )
            await monitor.run_round()
        # HAProxy counts a response when the stream ends, which can be just after the client read it
        await asyncio.to_thread(wait_for, lambda: backend_2xx() == 3, 10, "three 2xx counted")
        await monitor.run_round()
        texts.append(scrape(monitor))
        before = cumulative_connections(lb)
        for _ in range(3):
            await monitor.run_round()
        # steady state: the health check and the runtime API reuse their connections, so the only new
        # connection HAProxy saw is the one that asked for CumConns
        assert cumulative_connections(lb) - before == 1
        apps[1].set_mode("error")
        await asyncio.to_thread(wait_for, lambda: server_line("es-2").startswith("DOWN"), 10, "es-2 DOWN")
        lb.command("set server be_app/es-1 weight 40")
        await monitor.run_round()
        texts.append(scrape(monitor))
        await monitor.close()
        return texts

    healthy, degraded = asyncio.run(scenario())
    assert value(healthy, "tierwatch_up", target="lb-1") == 1
    assert value(healthy, "tierwatch_lb_backend_up", target="lb-1", proxy="be_app") == 1
    assert value(healthy, "tierwatch_lb_backend_active_servers", proxy="be_app") == 2
    assert value(healthy, "tierwatch_lb_server_up", proxy="be_app", server="es-2") == 1
    assert value(healthy, "tierwatch_lb_frontend_responses_total", proxy="fe_web", code="2xx") >= 3
    assert value(healthy, "tierwatch_lb_backend_responses_total", proxy="be_app", code="2xx") == 3
    assert value(degraded, "tierwatch_lb_server_up", proxy="be_app", server="es-2") == 0
    assert value(degraded, "tierwatch_lb_server_status", server="es-2", status="down") == 1
    assert value(degraded, "tierwatch_lb_server_status", server="es-2", status="up") == 0
    assert value(degraded, "tierwatch_lb_backend_active_servers", proxy="be_app") == 1
    assert value(degraded, "tierwatch_lb_server_weight", server="es-1") == 40


def cumulative_connections(lb: HAProxy) -> int:
    info = lb.command("show info")
    return int(next(line for line in info.splitlines() if line.startswith("CumConns:")).split(":")[1])


def test_stats_page_instead_of_socket(stack: Stack, make_config: Callable[..., LoadedConfig]) -> None:
    app = start_http_backend(stack, "es-1")
    lb = start_haproxy(stack, "lb-1", [(app.name, app.port)])
    # the stats page is served by the LB's own frontend on /stats
    cfg = lb.config_path.read_text().replace(
        "  monitor-uri /health\n", "  monitor-uri /health\n  stats enable\n  stats uri /stats\n"
    )
    lb.config_path.write_text(cfg)
    lb.process.stop()
    restarted = start_haproxy_from(stack, lb)
    cluster = lb_cluster([restarted], via="url")
    cluster["targets"][0]["stats_url"] = f"http://127.0.0.1:{restarted.port}/stats"
    monitor = Monitor(make_config([cluster]), EventLog(stream=io.StringIO()))

    async def go() -> str:
        await monitor.run_round()
        await monitor.close()
        return scrape(monitor)

    text = asyncio.run(go())
    assert value(text, "tierwatch_up", target="lb-1") == 1
    assert value(text, "tierwatch_lb_server_up", proxy="be_app", server="es-1") is not None


def start_haproxy_from(stack: Stack, lb: HAProxy) -> HAProxy:
    from tierwatch_lab.stack.ports import port_open

    proc = stack.spawn(f"{lb.name}-restarted", ["haproxy", "-db", "-f", str(lb.config_path)])
    wait_for(lambda: proc.check_alive() or port_open(lb.port), 10, "haproxy restart")
    return HAProxy(lb.name, lb.port, lb.stats_socket, lb.config_path, proc)


def test_vip_tells_which_lb_is_active_and_follows_a_failover(
    stack: Stack, make_config: Callable[..., LoadedConfig]
) -> None:
    app = start_http_backend(stack, "es-1")
    lb1 = start_haproxy(stack, "lb-1", [(app.name, app.port)])
    lb2 = start_haproxy(stack, "lb-2", [(app.name, app.port)])
    vip = start_vip(stack, [lb1, lb2])
    log = io.StringIO()
    monitor = Monitor(
        make_config([lb_cluster([lb1, lb2], vip=vip.url)], failure_threshold=100),
        EventLog("json", stream=log),
    )

    async def scenario() -> list[str]:
        await monitor.run_round()
        before = scrape(monitor)
        lb1.process.kill()
        await monitor.run_round()
        after = scrape(monitor)
        await monitor.close()
        return [before, after]

    before, after = asyncio.run(scenario())
    assert value(before, "tierwatch_role", target="lb-1", role="active") == 1
    assert value(before, "tierwatch_role", target="lb-2", role="standby") == 1
    assert value(before, "tierwatch_lb_vip_up", cluster="edge") == 1
    assert value(before, "tierwatch_lb_vip_identified", cluster="edge") == 1
    assert value(after, "tierwatch_up", target="lb-1") == 0
    assert value(after, "tierwatch_role", target="lb-2", role="active") == 1
    assert value(after, "tierwatch_role", target="lb-1", role="standby") == 1
    assert '"event":"role_changed"' in log.getvalue()
