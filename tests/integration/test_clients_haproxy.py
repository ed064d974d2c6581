"""The shared HAProxy client against real HAProxy: the typed ``show stat`` view, discovery reporting
(never raising) an LB that answers garbage, and the LB probe stopping its runtime API call before the
connection under it is reset."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest
from hostile_peers import garbage_runtime_api

from tierwatch.clients.haproxy import HAProxyError, RuntimeApi, parse_show_stat
from tierwatch.config import LoadedConfig
from tierwatch.config.recovery import ClusterRecovery
from tierwatch.probes.base import ProbeFailure, TargetInfo, classify_failure
from tierwatch.probes.haproxy import HAProxyProbe
from tierwatch.recovery.discovery import point_write_backend, write_backend_problems
from tierwatch_lab.stack import Stack, free_port, wait_for
from tierwatch_lab.stack.haproxy import start_haproxy
from tierwatch_lab.stack.http import start_http_backend

from action_fixtures import make_context, start_tcp_lb


def test_show_stat_typed_view_from_a_real_haproxy(stack: Stack) -> None:
    apps = [start_http_backend(stack, f"es-{i}") for i in (1, 2)]
    lb = start_haproxy(stack, "lb-1", [(a.name, a.port) for a in apps], check_interval_ms=200)
    lb.command("set server be_app/es-1 weight 40")
    lb.command("set server be_app/es-2 state maint")

    async def read() -> Any:
        api = RuntimeApi(str(lb.stats_socket))
        try:
            first = await api.show_stat()
            second = await api.show_stat()  # the same kept-open connection
            return first, second
        finally:
            await api.close()

    def servers() -> Any:
        return asyncio.run(read())[1].servers("be_app")

    wait_for(lambda: servers()["es-1"].status == "UP", 10, "es-1 UP")
    stat, _ = asyncio.run(read())
    es1, es2 = stat.servers("be_app")["es-1"], stat.servers("be_app")["es-2"]
    assert (es1.backend, es1.name, es1.state, es1.weight) == ("be_app", "es-1", "up", 40.0)
    assert es2.state == "maint" and es2.status.startswith("MAINT")
    backend = stat.backend("be_app")
    assert backend is not None and backend.kind == "backend" and backend.up
    assert set(backend.responses()) == {"1xx", "2xx", "3xx", "4xx", "5xx", "other"}
    assert stat.backend("fe_web") is None and stat.servers("nope") == {}
    assert {r.kind for r in stat if r.proxy == "fe_web"} == {"frontend"}
    assert next(r for r in stat if r.name == "es-1")["svname"] == "es-1"  # raw columns stay readable


def test_garbage_is_a_client_error() -> None:
    with pytest.raises(HAProxyError):
        parse_show_stat("this is not,the stats,you are looking for\n")
    with pytest.raises(HAProxyError):
        parse_show_stat("# a,b,c\n1,2,3\n")  # a CSV, but not show stat's


def write_lb_config(make_config: Callable[..., LoadedConfig], lbs: list[tuple[str, str]]) -> LoadedConfig:
    targets = [
        {"name": name, "region": "primary", "url": f"http://127.0.0.1:{free_port()}/", "stats_socket": sock}
        for name, sock in lbs
    ]
    db = {
        "name": "cache",
        "tier": "redis",
        "targets": [
            {"name": n, "region": "primary", "url": f"redis://127.0.0.1:{free_port()}"} for n in ("x", "y")
        ],
    }
    return make_config([{"name": "write-lbs", "tier": "lb", "targets": targets}, db])


def test_discovery_reports_an_lb_answering_garbage_instead_of_crashing(
    stack: Stack, make_config: Callable[..., LoadedConfig]
) -> None:
    good = start_tcp_lb(stack, "lb-good", "be_write", [("x", free_port()), ("y", free_port())])
    with garbage_runtime_api(stack.path("garbage.sock")) as garbage:
        loaded = write_lb_config(make_config, [("lb-good", str(good.stats_socket)), ("lb-odd", str(garbage))])
        ctx, recorder = make_context(loaded, "cache", {}, settings=ClusterRecovery(write_backend="be_write"))
        results = asyncio.run(point_write_backend(ctx, "x"))
        problems = asyncio.run(write_backend_problems(ctx, "x"))
    assert results is not None and results["lb-good"] == "ok"
    assert results["lb-odd"].startswith("runtime API answered garbage")
    assert recorder.named("write_backend_set")[0]["results"] == results
    assert problems == [f"lb-odd: {results['lb-odd']}"]
    assert parse_show_stat(good.command("show stat")).servers("be_write")["y"].state == "maint"


def test_probe_stops_its_stats_call_before_the_connection_is_reset(
    stack: Stack, make_config: Callable[..., LoadedConfig]
) -> None:
    """The health check fails at once (refused) while ``show stat`` waits on a frozen HAProxy: the
    probe must not return with the runtime API call still running on the connection it resets."""
    app = start_http_backend(stack, "es-1")
    lb = start_haproxy(stack, "lb-1", [(app.name, app.port)])
    refused = f"http://127.0.0.1:{free_port()}/health"
    target = {"name": "lb-1", "region": "primary", "url": refused, "stats_socket": str(lb.stats_socket)}
    loaded = make_config([{"name": "edge", "tier": "lb", "targets": [target]}])
    cluster = loaded.config.clusters[0]
    probe = HAProxyProbe(TargetInfo("lb", cluster, cluster.targets[0], None, 3.0))

    async def scenario() -> tuple[str, list[asyncio.Task[Any]]]:
        try:
            with pytest.raises(Exception) as failure:
                await probe.probe()
            still_running = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            await probe.reset()
            return classify_failure(failure.value), still_running
        finally:
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

    lb.process.pause()
    try:
        reason, still_running = asyncio.run(scenario())
    finally:
        lb.process.resume()
    assert reason == "refused"
    assert still_running == [], still_running


def test_lb_probe_reports_garbage_stats_as_protocol(
    stack: Stack, make_config: Callable[..., LoadedConfig]
) -> None:
    lb = start_haproxy(stack, "lb-1", [("es-1", free_port())])
    with garbage_runtime_api(stack.path("garbage.sock")) as garbage:
        target: dict[str, Any] = {"name": "lb-1", "region": "p", "url": lb.url, "stats_socket": str(garbage)}
        loaded = make_config([{"name": "edge", "tier": "lb", "targets": [target]}])
        cluster = loaded.config.clusters[0]
        probe = HAProxyProbe(TargetInfo("lb", cluster, cluster.targets[0], None, 3.0))

        async def scenario() -> str:
            try:
                with pytest.raises(ProbeFailure) as failure:
                    await probe.probe()
                return failure.value.reason
            finally:
                await probe.close()

        assert asyncio.run(scenario()) == "protocol"


def test_runtime_api_reopens_a_kept_open_connection_haproxy_closed(stack: Stack) -> None:
    """HAProxy closes CLI connections when it restarts or reloads, and an idle one after its ``stats
    timeout`` (10 s by default): the next command must reconnect, not fail the probe."""
    lb = start_haproxy(stack, "lb-1", [("es-1", free_port())])

    async def command(api: RuntimeApi) -> str:
        return (await api.show_stat()).rows[0].proxy

    api = RuntimeApi(str(lb.stats_socket))
    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(command(api)) == "fe_web"
        lb.process.stop()
        lb.stats_socket.unlink(missing_ok=True)
        proc = stack.spawn("lb-1-again", ["haproxy", "-db", "-f", str(lb.config_path)])
        wait_for(lambda: proc.check_alive() or lb.stats_socket.exists(), 10, "haproxy restarted")
        assert loop.run_until_complete(command(api)) == "fe_web"
    finally:
        loop.run_until_complete(api.close())
        loop.close()


def test_moving_the_write_backend_closes_the_sessions_still_open_to_the_old_primary(
    stack: Stack, make_config: Callable[..., LoadedConfig]
) -> None:
    """A client's session to a paused old primary stayed open through the LB until HAProxy's
    ``timeout server`` (60 s of stuck writes after a PostgreSQL pause, bench/patroni_bench.py,
    2026-12-07): moving the backend must cut it, so the client reconnects to the new primary."""
    holders = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    accepted: list[socket.socket] = []

    def hold(server: socket.socket) -> None:  # accepts and never answers, like a paused server
        with contextlib.suppress(OSError):
            accepted.append(server.accept()[0])

    for server in holders:
        threading.Thread(target=hold, args=(server,), daemon=True).start()
    ports = [s.getsockname()[1] for s in holders]
    lb = start_tcp_lb(stack, "lb-w", "be_write", [("x", ports[0]), ("y", ports[1])])
    lb.command("set server be_write/y state maint")
    loaded = write_lb_config(make_config, [("lb-w", str(lb.stats_socket))])
    client = socket.create_connection(("127.0.0.1", lb.port), timeout=5)
    try:
        client.sendall(b"a write")
        wait_for(lambda: len(accepted) == 1, 10, "the session to reach x")
        ctx, recorder = make_context(loaded, "cache", {}, settings=ClusterRecovery(write_backend="be_write"))
        results = asyncio.run(point_write_backend(ctx, "y"))
        assert results == {"lb-w": "ok"}, results
        client.settimeout(5)
        try:
            closed = client.recv(1) == b""
        except ConnectionResetError:
            closed = True
        except TimeoutError:
            closed = False
        assert closed, "the session to the old primary is still open through the LB"
        assert recorder.named("write_backend_set")[0]["results"] == results
    finally:
        client.close()
        for s in [*accepted, *holders]:
            s.close()
