"""The ``service_discovery:`` section: a valid one loads with its defaults and each record's values in
canonical form (given or derived from the target URLs); each mistake is reported as FILE:LINE:
key.path: expectation, all at once, never with the TSIG secret."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tierwatch.config import ConfigError, load_config
from tierwatch.config.service_discovery import derived_value, record_values

SECRET = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0IQ=="
CLUSTERS = [
    {"name": "main-db", "tier": "postgres", "targets": [
        {"name": "pg-1", "region": "primary", "url": "postgresql://tw@db1.example:5433/postgres"},
        {"name": "pg-2", "region": "primary", "url": "postgresql://tw@10.0.0.2/postgres"}]},
    {"name": "web", "tier": "app", "targets": [
        {"name": "web-1", "region": "primary", "url": "http://127.0.0.1:8080/health"},
        {"name": "web-2", "region": "failover", "url": "http://127.0.0.1:8081/health"}]},
    {"name": "edge", "tier": "lb", "targets": [
        {"name": "lb-1", "region": "primary", "url": "http://127.0.0.1:80/"}]},
]  # fmt: skip


def section(key_file: Path, *records: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {
        "clusters": CLUSTERS,
        "service_discovery": {
            "server": "127.0.0.1:5353",
            "zone": "example.test.",
            "key": {"name": "tw-key.", "secret_file": str(key_file)},
            "records": list(records),
            **top,
        },
    }


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "dns.key"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    return path


def problems(write_config: Callable[..., Path], data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write_config(data))
    return info.value.problems


DB_RECORD = {
    "name": "primary.main-db",
    "cluster": "main-db",
    "values": {"pg-2": "0 0 5432 Pg-2.Example.Test."},
}
APP_RECORD = {
    "name": "app",
    "cluster": "web",
    "type": "CNAME",
    "values": {"primary": "lb-a", "failover": "lb-b."},
}


def test_a_valid_section_loads_with_defaults_and_canonical_values(
    write_config: Callable[..., Path], key_file: Path
) -> None:
    loaded = load_config(write_config(section(key_file, DB_RECORD, APP_RECORD)))
    sd = loaded.config.service_discovery
    assert sd is not None
    assert (sd.ttl, sd.timeout, sd.update_timeout, sd.key.algorithm) == (30, 2.0, 10.0, "hmac-sha256")
    assert sd.server_address == ("127.0.0.1", 5353)
    secret = loaded.dns_key_secret()
    assert secret is not None and secret.reveal() == SECRET
    db, app = sd.records
    assert db.fqdn(sd.zone) == "primary.main-db.example.test." and db.type == "SRV"
    clusters = {c.name: c for c in loaded.config.clusters}
    assert record_values(db, clusters["main-db"], sd.zone) == {
        "pg-1": "0 0 5433 db1.example.",  # derived from the URL
        "pg-2": "0 0 5432 pg-2.example.test.",  # given, in canonical form (lower case)
    }
    assert record_values(app, clusters["web"], sd.zone) == {
        "primary": "lb-a.example.test.",
        "failover": "lb-b.",
    }


@pytest.mark.parametrize(
    ("rdtype", "url", "expected"),
    [
        ("A", "redis://10.1.2.3:6380", "10.1.2.3"),
        ("A", "redis://[fd00::1]:6380", None),
        ("AAAA", "redis://[FD00::1]:6380", "fd00::1"),
        ("A", "redis://cache.example:6380", None),
        ("CNAME", "redis://Cache.Example:6380", "cache.example."),
        ("CNAME", "redis://10.1.2.3:6380", None),
        ("SRV", "redis://cache.example", "0 0 6379 cache.example."),
        ("SRV", "postgresql://tw@db.example/postgres", "0 0 5432 db.example."),
        ("SRV", "unix:///run/redis.sock", None),
    ],
)
def test_values_derived_from_a_target_url(rdtype: str, url: str, expected: str | None) -> None:
    tier = "postgres" if url.startswith("postgresql") else "redis"
    assert derived_value(rdtype, url, tier) == expected


def test_each_mistake_is_reported_with_its_line(write_config: Callable[..., Path], key_file: Path) -> None:
    records = [
        {"name": "primary.main-db", "cluster": "main-db"},  # pg-2's URL has an IP: no SRV host name
        {"name": "x.other.zone.", "cluster": "nope"},
        {"name": "lb", "cluster": "edge"},
        {"name": "app", "cluster": "web", "type": "A", "values": {"primary": "not-an-ip", "mars": "1.2.3.4"}},
        {"name": "primary.main-db", "cluster": "main-db", "values": {"pg-1": "x", "pg-2": "0 0 1 a."}},
        {"name": "bad name!", "cluster": "web"},
    ]
    found = problems(
        write_config, section(key_file, *records, ttl=0, timeout="5s", update_timeout="1s", zone="relative")
    )
    text = "\n".join(found)
    assert all(": service_discovery" in p for p in found), found
    assert "service_discovery.ttl: " in text
    assert "service_discovery.zone: expected an absolute DNS name ending with '.'" in text
    assert "service_discovery.records[5].name: expected a DNS name" in text  # an invalid name is not shown
    # the semantic problems are reported once the section itself is valid
    fixed = section(key_file, *records[:5], update_timeout="1s", timeout="5s")
    text = "\n".join(problems(write_config, fixed))
    assert "service_discovery.update_timeout: expected at least the timeout of one exchange" in text
    assert (
        "records[0](primary.main-db).values: target pg-2: its URL gives no SRV data; give it in values"
        in text
    )
    assert "records[1](x.other.zone.).name: expected a name inside the zone example.test." in text
    assert "records[1](x.other.zone.).cluster: no cluster of that name in clusters" in text
    assert "records[2](lb).cluster: expected a redis, postgres or app cluster" in text
    assert "records[3](app).values.primary: expected A record data" in text
    assert "records[3](app).values.mars: no region of that name in cluster web" in text
    assert "records[3](app).values: expected a value for region failover" in text
    assert "records[4](primary.main-db).name: duplicate record primary.main-db.example.test. SRV" in text
    assert "records[4](primary.main-db).values.pg-1: expected SRV record data" in text
    assert "not-an-ip" not in text  # a value is never repeated


def test_the_key_must_be_base64_and_is_never_shown(
    write_config: Callable[..., Path], key_file: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("this is no base64 secret!\n")
    bad.chmod(0o600)
    data = section(bad, DB_RECORD)
    text = "\n".join(problems(write_config, data))
    assert f"service_discovery.key.secret_file: TSIG key file {bad} does not hold base64 text" in text
    assert "no base64 secret" not in text
    missing = section(tmp_path / "nope.key", DB_RECORD)
    assert "cannot read TSIG key file" in "\n".join(problems(write_config, missing))
    algorithm = section(key_file, DB_RECORD)
    algorithm["service_discovery"]["key"]["algorithm"] = "hmac-md5"
    assert "service_discovery.key.algorithm" in "\n".join(problems(write_config, algorithm))
