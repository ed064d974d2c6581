"""Target discovery in the real ``tierwatch serve`` process: a file_sd file's targets are probed and
exported, disappear cleanly when the file drops them, and keep their connection and counters across a
reload (SIGHUP) of the config."""

from __future__ import annotations

import json
import os
from pathlib import Path

from test_reload import backend_stats, events, exporter_config, probes_of, scrape, sighup, write_atomically

from tierwatch.lab.stack import Stack, wait_for
from tierwatch.lab.stack.http import start_http_backend
from tierwatch.lab.stack.tierwatch import start_exporter

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
