"""Self-metrics: the real ``tierwatch serve`` and ``tierwatch recover`` export ``process_*`` and ``python_*``
about their own process (checked against /proc), a file descriptor leak shows up in process_open_fds at
once, and the exporter and recovery dashboards and the kit rules watch these series for both jobs."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tierwatch_lab.stack import Stack, free_port, wait_for
from tierwatch_lab.stack.http import start_http_backend
from tierwatch_lab.stack.tierwatch import TierwatchProcess, start_exporter, start_recovery

from helpers import metric_value
from recovery_fixtures import app_cluster

ROOT = Path(__file__).resolve().parents[2]
IDLE_CONNECTIONS = 20


def _pid(process: TierwatchProcess) -> int:
    assert process.process.popen is not None
    return process.process.popen.pid


def _proc_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _proc_status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{key} not in /proc/{pid}/status")


def _soft_fd_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError(f"no open files limit in /proc/{pid}/limits")


def _scrape(process: TierwatchProcess) -> str:
    response = httpx.get(process.url + "/metrics", timeout=5)
    assert response.status_code == 200
    return response.text


def _started_services(stack: Stack, tmp_path: Path) -> list[TierwatchProcess]:
    backend = start_http_backend(stack, "es-1")
    exporter_config = tmp_path / "tierwatch.yml"
    exporter_config.write_text(
        yaml.safe_dump(
            {
                "monitor": {"interval": "1s", "timeout": "500ms"},
                "clusters": [app_cluster([("es-1", "primary", backend.url)])],
            }
        )
    )
    token = tmp_path / "token"
    token.write_text("self-metrics-Token\n")
    recovery_config = tmp_path / "recovery.yml"
    recovery_config.write_text(
        yaml.safe_dump(
            {
                "clusters": [app_cluster([("es-1", "primary", f"http://127.0.0.1:{free_port()}/")])],
                "recovery": {"state_dir": str(tmp_path / "state"), "auth": {"bearer_token_file": str(token)}},
            }
        )
    )
    return [start_exporter(stack, exporter_config), start_recovery(stack, recovery_config)]


def _open_fds(service: TierwatchProcess) -> float:
    return metric_value(_scrape(service), "process_open_fds") or 0


def _check_own_process(service: TierwatchProcess, spawned: float) -> None:
    pid, name = _pid(service), service.name
    text = _scrape(service)
    # the process's own figures (a scrape is one more socket; RSS moves a little between the reads)
    assert abs((metric_value(text, "process_open_fds") or 0) - _proc_fds(pid)) <= 3, name
    rss = metric_value(text, "process_resident_memory_bytes") or 0
    assert rss == pytest.approx(_proc_status(pid, "VmRSS") * 1024, rel=0.25), name
    assert metric_value(text, "process_max_fds") == _soft_fd_limit(pid), name
    started = metric_value(text, "process_start_time_seconds") or 0
    assert spawned - 2 <= started <= time.time(), name
    assert (metric_value(text, "process_cpu_seconds_total") or 0) > 0, name
    assert metric_value(text, "python_info", implementation="CPython") == 1, name
    assert metric_value(text, "python_gc_collections_total", generation="0") is not None, name

    # a leak of sockets: idle connections that never send a request are open fds until dropped
    base = metric_value(text, "process_open_fds") or 0
    address = ("127.0.0.1", service.port)
    sockets = [socket.create_connection(address, timeout=5) for _ in range(IDLE_CONNECTIONS)]
    try:
        wait_for(lambda: _open_fds(service) >= base + IDLE_CONNECTIONS, 5, f"{name}: more open fds")
    finally:
        for sock in sockets:
            sock.close()
    wait_for(lambda: _open_fds(service) <= base + 3, 10, f"{name}: the fds closed again")
    service.process.check_alive()


def test_both_services_report_their_own_process_and_an_fd_leak_shows_at_once(
    stack: Stack, tmp_path: Path
) -> None:
    spawned = time.time()
    exporter, recovery = _started_services(stack, tmp_path)
    _check_own_process(exporter, spawned)
    _check_own_process(recovery, spawned)


def _dashboard_queries(file: str) -> dict[str, list[str]]:
    data: dict[str, Any] = json.loads((ROOT / "dashboards" / file).read_text())
    return {p["title"]: [t["expr"] for t in p.get("targets", [])] for p in data["panels"] if p.get("targets")}


@pytest.mark.parametrize(
    ("file", "jobs"),
    [("exporter.json", 'job=~"tierwatch|tierwatch-recovery"'), ("recovery.json", 'job="tierwatch-recovery"')],
)
def test_dashboards_show_cpu_memory_fds_and_gc_of_the_kit_processes(file: str, jobs: str) -> None:
    panels = _dashboard_queries(file)
    wanted = {
        "CPU": "process_cpu_seconds_total",
        "Resident memory": "process_resident_memory_bytes",
        "File descriptors in use": "process_max_fds",
        "Garbage collections": "python_gc_collections_total",
    }
    for title, series in wanted.items():
        [expr] = panels[title]
        assert series in expr and jobs in expr, (file, title, expr)
    assert "process_open_fds" in panels["File descriptors in use"][0]


def test_fd_and_memory_growth_alerts_watch_both_services() -> None:
    rules = {
        rule["alert"]: rule
        for group in yaml.safe_load((ROOT / "rules" / "kit.rules.yml").read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    settings = yaml.safe_load((ROOT / "rules" / "src" / "settings.yml").read_text())["selectors"]
    for name, series in (
        ("TierwatchFileDescriptorsRunningOut", "process_open_fds"),
        ("TierwatchMemoryGrowing", "process_resident_memory_bytes"),
    ):
        expr = rules[name]["expr"]
        assert f"predict_linear({series}[1h]" in expr, name
        for selector in (settings["exporter"], settings["recovery"]):
            assert f"up{{{selector}}}" in expr, (name, selector)
        assert (ROOT / "docs" / "runbooks" / f"{name}.md").is_file()
