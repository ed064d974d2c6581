"""Target discovery in the real ``tierwatch serve`` process: a file_sd file's targets are probed and
exported, disappear cleanly when the file drops them, and keep their connection and counters across a
reload (SIGHUP) of the config; DNS A records (a real dnsmasq) likewise, a vanished name's target
dropped with its series and its connection."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_discovery import Dnsmasq
from test_reload import backend_stats, events, exporter_config, probes_of, scrape, sighup, write_atomically

from tierwatch_lab.stack import Stack, wait_for
from tierwatch_lab.stack.http import start_http_backend
from tierwatch_lab.stack.tierwatch import TierwatchProcess, start_exporter

from helpers import metric_value


def write_targets(path: Path, groups: list[dict[str, object]]) -> None:
    scratch = path.with_suffix(".tmp")
    scratch.write_text(json.dumps(groups))
    os.replace(scratch, path)


def test_file_sd_targets_are_probed_dropped_and_kept_across_a_reload(stack: Stack, tmp_path: Path) -> None:
    static, found = start_http_backend(stack, "static"), start_http_backend(stack, "found")
    sd_file = tmp_path / "web.json"
    write_targets(
        sd_file,
        [{"targets": [f"127.0.0.1:{found.port}"], "labels": {"target": "es-found", "region": "failover"}}],
    )
    cluster = {
        "name": "web",
        "tier": "app",
        "targets": [{"name": "es-static", "region": "primary", "url": static.url}],
        "discovery": [{"file_sd": {"files": [str(sd_file)], "refresh_interval": "200ms", "path": "/health"}}],
    }
    config = tmp_path / "tierwatch.yml"
    write_atomically(config, exporter_config(cluster))
    exporter = start_exporter(stack, config)

    wait_for(lambda: probes_of(exporter, "es-found") >= 2, 20, "the discovered target to be probed")
    text = scrape(exporter)
    assert metric_value(text, "tierwatch_up", target="es-found", region="failover", cluster="web") == 1
    assert metric_value(text, "tierwatch_discovery_targets", cluster="web", source="file_sd") == 1
    connections = backend_stats(found)["connections"]

    # a reload of the config keeps the discovered target: same connection, counters go on
    before = probes_of(exporter, "es-found")
    sighup(exporter)
    wait_for(lambda: events(exporter, "config_reloaded"), 20, "the reload")
    wait_for(lambda: probes_of(exporter, "es-found") >= before + 2, 20, "probes after the reload")
    assert backend_stats(found)["connections"] == connections + 1  # + the /_stats request itself
    assert events(exporter, "config_reloaded")[-1]["removed"] == 0

    # the file drops it: its series go, the static target stays
    write_targets(sd_file, [])
    wait_for(lambda: "es-found" not in scrape(exporter), 20, "the dropped target's series to go")
    text = scrape(exporter)
    assert metric_value(text, "tierwatch_up", target="es-static") == 1
    assert metric_value(text, "tierwatch_discovery_targets", cluster="web", source="file_sd") == 0


def connections_of(process: TierwatchProcess, port: int) -> int:
    """Established TCP connections ``process`` holds to 127.0.0.1:``port`` (its fds' socket inodes)."""
    assert process.process.popen is not None
    fd_dir = f"/proc/{process.process.popen.pid}/fd"
    inodes = set()
    for fd in os.listdir(fd_dir):
        try:
            link = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    peer = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return sum(1 for row in rows if row[2] == peer and row[3] == "01" and row[9] in inodes)


@pytest.fixture
def dnsmasq(stack: Stack) -> Dnsmasq:
    return Dnsmasq(stack)


def test_dns_a_records_are_probed_and_a_vanished_name_is_dropped_cleanly(
    stack: Stack, tmp_path: Path, dnsmasq: Dnsmasq
) -> None:
    a, b = start_http_backend(stack, "dns-a"), start_http_backend(stack, "dns-b")
    dnsmasq.start("host-record=a.web.test,127.0.0.1", "host-record=b.web.test,127.0.0.1")

    def entry(name: str, port: int) -> dict[str, object]:
        return {
            "dns_sd": {
                "names": [name],
                "type": "A",
                "port": port,
                "region": "primary",
                "path": "/health",
                "refresh_interval": "200ms",
                "nameservers": [f"127.0.0.1:{dnsmasq.port}"],
            }
        }

    cluster = {
        "name": "web",
        "tier": "app",
        "discovery": [entry("a.web.test", a.port), entry("b.web.test", b.port)],
    }
    config = tmp_path / "tierwatch.yml"
    write_atomically(config, exporter_config(cluster))
    exporter = start_exporter(stack, config)
    name_a, name_b = f"web-127.0.0.1-{a.port}", f"web-127.0.0.1-{b.port}"
    wait_for(lambda: probes_of(exporter, name_b) >= 2 and probes_of(exporter, name_a) >= 2, 20, "both probed")
    text = scrape(exporter)
    assert metric_value(text, "tierwatch_up", target=name_b, cluster="web", region="primary") == 1
    assert metric_value(text, "tierwatch_discovery_targets", cluster="web", source="dns_sd") == 2
    assert connections_of(exporter, b.port) == 1  # one kept-alive connection per target

    dnsmasq.restart("host-record=a.web.test,127.0.0.1")  # b.web.test is gone: NXDOMAIN
    wait_for(lambda: name_b not in scrape(exporter), 20, "the vanished name's series to go")
    wait_for(lambda: connections_of(exporter, b.port) == 0, 10, "its connection to be closed")
    before = probes_of(exporter, name_a)
    wait_for(lambda: probes_of(exporter, name_a) >= before + 2, 10, "the other target still probed")
    assert metric_value(scrape(exporter), "tierwatch_discovery_targets", cluster="web", source="dns_sd") == 1
    assert connections_of(exporter, b.port) == 0
    assert not events(exporter, "probe_close_failed")
    exporter.process.check_alive()
