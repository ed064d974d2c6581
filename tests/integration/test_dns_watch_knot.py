"""The exporter's service-discovery check against a real Knot DNS (tierwatch_lab.stack.knot), real
Redis servers and real HTTP app servers, through a real ``tierwatch serve``: a record that names the
live primary (or a region with an app server up) reads 1; changed by hand to another target, 0; the
monitor seeing that target become the primary, 1 again; the app region losing its server, 0; the DNS
server stopped, ``up 0`` with no verdict, and back once it answers. The log names records, never a
value or the key."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tierwatch_lab.stack import Stack, wait_for
from tierwatch_lab.stack.http import start_http_backend
from tierwatch_lab.stack.knot import start_knot
from tierwatch_lab.stack.redis import start_redis, wait_replica_linked
from tierwatch_lab.stack.tierwatch import start_exporter

from helpers import metric_value

pytestmark = pytest.mark.skipif(shutil.which("knotd", path="/usr/sbin:/usr/bin") is None,
                                reason="knotd (Debian package knot) not installed")  # fmt: skip

ZONE = "tierwatch.test."
NODE = "node.tierwatch.test."
CACHE = {"cluster": "cache", "record": "primary.cache.tierwatch.test", "type": "SRV"}
ALIAS = {"cluster": "cache", "record": "alias.cache.tierwatch.test", "type": "CNAME"}
APP = {"cluster": "web", "record": "app.tierwatch.test", "type": "SRV"}


def test_the_exporter_checks_records_on_a_real_dns_server(stack: Stack, tmp_path: Path) -> None:
    redis_a = start_redis(stack, "redis-a")
    redis_b = start_redis(stack, "redis-b", replica_of=redis_a)
    web_1 = start_http_backend(stack, "web-1")
    web_3 = start_http_backend(stack, "web-3")
    srv = {"redis-a": f"0 0 {redis_a.port} {NODE}", "redis-b": f"0 0 {redis_b.port} {NODE}"}
    app = {"primary": f"0 0 {web_1.port} {NODE}", "failover": f"0 0 {web_3.port} {NODE}"}
    knot = start_knot(
        stack,
        zone=ZONE,
        ttl=5,
        records=[
            f"primary.cache 5 IN SRV {srv['redis-a']}",
            "alias.cache 5 IN CNAME a.tierwatch.test.",
            f"app 5 IN SRV {app['primary']}",
        ],
    )
    config: dict[str, Any] = {
        "monitor": {"interval": "1s", "timeout": "800ms"},
        "clusters": [
            {"name": "cache", "tier": "redis", "targets": [
                {"name": "redis-a", "region": "primary", "url": redis_a.url},
                {"name": "redis-b", "region": "primary", "url": redis_b.url}]},
            {"name": "web", "tier": "app", "targets": [
                {"name": "web-1", "region": "primary", "url": web_1.url},
                {"name": "web-3", "region": "failover", "url": web_3.url}]},
        ],
        "service_discovery": {
            "server": knot.server,
            "zone": ZONE,
            "key": {"name": knot.key_name, "algorithm": knot.key_algorithm,
                    "secret_file": str(knot.key_file)},
            "ttl": 5,
            "timeout": "500ms",
            "records": [
                {"name": "primary.cache", "cluster": "cache", "type": "SRV", "values": srv},
                # written in capitals: the server's answer is lower case
                {"name": "alias.cache", "cluster": "cache", "type": "CNAME",
                 "values": {"redis-a": "A.Tierwatch.Test.", "redis-b": "b.tierwatch.test."}},
                {"name": "app", "cluster": "web", "type": "SRV", "values": app},
            ],
        },
    }  # fmt: skip
    path = tmp_path / "tierwatch.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    exporter = start_exporter(stack, path)

    def scrape() -> str:
        return httpx.get(f"{exporter.url}/metrics", timeout=5).text

    def when(what: str, *expected: tuple[str, dict[str, str], float | None]) -> str:
        """The first scrape where each (metric suffix, labels, value) holds (value None: absent)."""

        def met() -> str | None:
            text = scrape()
            for name, labels, value in expected:
                if metric_value(text, f"tierwatch_dns_record_{name}", **labels) != value:
                    return None
            return text

        return wait_for(met, 20, what)

    # every record names the live primary / a region with an app server up
    text = when("the records to match", ("matches", CACHE, 1), ("matches", ALIAS, 1), ("matches", APP, 1))
    for labels in (CACHE, ALIAS, APP):
        assert metric_value(text, "tierwatch_dns_record_up", **labels) == 1
        assert metric_value(text, "tierwatch_dns_record_ttl_seconds", **labels) == 5
        assert metric_value(text, "tierwatch_dns_record_last_check_timestamp_seconds", **labels) is not None
    assert metric_value(text, "tierwatch_dns_record_matches", tier="redis", **CACHE) == 1

    # by hand, the record is pointed at the replica: stale
    knot.set_rrset("primary.cache", "SRV", [srv["redis-b"]])
    when("the changed record to read as stale", ("matches", CACHE, 0), ("matches", APP, 1))

    # redis-b becomes the master (redis-a its replica): the record is right again
    redis_b.client().replicaof("NO", "ONE")
    redis_a.client().replicaof(redis_b.host, redis_b.port)
    wait_replica_linked(redis_a)
    when("the record to follow the new master", ("matches", CACHE, 1), ("matches", ALIAS, 0))

    # the primary region's only app server fails its health check: the app record names a dead region
    web_1.set_mode("error")
    when("the app record to read as stale", ("matches", APP, 0))
    web_1.set_mode("healthy")
    when("the app record to match again", ("matches", APP, 1))

    # the DNS server stops: no answer, no verdict
    knot.stop()
    text = when(
        "the records to read as unanswered", ("up", CACHE, 0), ("up", APP, 0), ("matches", CACHE, None)
    )
    assert metric_value(text, "tierwatch_dns_record_matches", **APP) is None
    assert metric_value(text, "tierwatch_dns_record_ttl_seconds", **CACHE) == 5
    knot.start()
    when("the server to answer again", ("up", CACHE, 1), ("matches", CACHE, 1), ("matches", APP, 1))

    log = exporter.process.log_path.read_text()
    lines = [line for line in log.splitlines() if " dns_record_" in line]
    events = [(line.split()[2], line) for line in lines]
    assert any(
        e == "dns_record_mismatch" and "record=primary.cache.tierwatch.test" in line for e, line in events
    )
    assert any(e == "dns_record_check_failed" and "failure=unavailable" in line for e, line in events)
    assert any(e == "dns_record_check_recovered" for e, _ in events)
    secret = knot.key_file.read_text().strip()
    for value in (secret, str(knot.key_file), str(redis_a.port), str(redis_b.port), NODE.rstrip(".")):
        assert value not in "\n".join(lines)
