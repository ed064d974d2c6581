"""The lab's node_exporter (Debian prometheus-node-exporter): loopback only, serving every node_* series
the host rules and the hosts dashboard read, scraped under the job the rules select, and gone when its
stack closes."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tierwatch_lab.stack import Stack
from tierwatch_lab.stack.node_exporter import node_job, start_node_exporter
from tierwatch_lab.stack.ports import port_open

ROOT = Path(__file__).resolve().parents[2]
NODE_NAME = re.compile(r"\b(node_[a-zA-Z0-9_]+)\{")  # a selector, not prose


def listening_addresses(port: int) -> set[str]:
    """Local IPv4/IPv6 addresses (hex, as /proc/net/tcp* has them) listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def used_node_series() -> set[str]:
    """node_* names in rules/hosts.rules.yml and in the hosts dashboard's queries."""
    names = set(NODE_NAME.findall((ROOT / "rules" / "hosts.rules.yml").read_text()))
    names |= set(NODE_NAME.findall((ROOT / "dashboards" / "hosts.json").read_text()))
    return names


def test_serves_every_series_the_rules_and_dashboard_read_on_loopback_only() -> None:
    with Stack() as stack:
        # as the demo runs it: with a textfile directory (node_textfile_scrape_error comes with it)
        node = start_node_exporter(stack, textfile_dir=stack.directory("textfile"))
        assert listening_addresses(node.port) == {"0100007F"}  # 127.0.0.1, nothing else
        body = httpx.get(node.url, timeout=5).text
        served = {sample.name for family in text_string_to_metric_families(body) for sample in family.samples}
        used = used_node_series()
        assert len(used) >= 10
        assert used <= served, f"not served: {sorted(used - served)}"
        port, process = node.port, node.process
    assert not process.running() and not port_open(port)


def test_scraped_as_the_job_the_host_rules_select() -> None:
    selectors = yaml.safe_load((ROOT / "rules" / "src" / "settings.yml").read_text())["selectors"]
    with Stack() as stack:
        job = node_job(start_node_exporter(stack))
    assert selectors["node"] == f'job="{job.name}"'
    assert f"{{{selectors['node']}" in (ROOT / "rules" / "hosts.rules.yml").read_text()
    compose = yaml.safe_load((ROOT / "deploy" / "compose" / "prometheus.yml").read_text())
    assert job.name in {j["job_name"] for j in compose["scrape_configs"]}
