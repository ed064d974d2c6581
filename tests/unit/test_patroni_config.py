"""The ``patroni:`` section of a cluster: accepted on a PostgreSQL cluster whose members name its targets
once with http(s) REST API URLs; every other case is a problem naming the key path, never the URL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tierwatch.config import ConfigError, load_config

SECRET = "p4troni-Hunter2-do-not-print"


def config(patroni: dict[str, Any], tier: str = "postgres") -> dict[str, Any]:
    scheme = {"postgres": "postgresql", "redis": "redis", "app": "http"}[tier]
    targets = [
        {"name": f"pg-{i}", "region": "primary", "url": f"{scheme}://tierwatch@127.0.0.1:{5431 + i}/postgres"}
        for i in (1, 2, 3)
    ]
    return {
        "monitor": {"interval": "5s", "timeout": "2s"},
        "clusters": [{"name": "main-db", "tier": tier, "targets": targets, "patroni": patroni}],
    }


def members(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"target": target, "url": url} for target, url in pairs]


GOOD = members(
    ("pg-1", "http://127.0.0.1:8008"), ("pg-2", "https://10.0.0.2:8008"), ("pg-3", "http://db3.internal:8008")
)


def problems(write_config: Callable[..., Path], data: dict[str, Any]) -> list[str]:
    path = write_config(data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    for problem in info.value.problems:
        assert problem.startswith(f"{path}:"), problem
    return info.value.problems


def test_a_patroni_cluster_is_accepted(write_config: Callable[..., Path]) -> None:
    loaded = load_config(write_config(config({"scope": "main-db", "members": GOOD})), resolve_secrets=False)
    patroni = loaded.config.clusters[0].patroni
    assert patroni is not None and patroni.scope == "main-db" and patroni.max_body_bytes == 64 * 1024
    assert [m.target for m in patroni.members] == ["pg-1", "pg-2", "pg-3"]
    assert not patroni.members[1].tls_skip_verify and patroni.members[1].tls_ca_file is None


def test_a_member_naming_no_target(write_config: Callable[..., Path]) -> None:
    data = config({"members": members(("pg-1", "http://127.0.0.1:8008"), ("pg-9", "http://127.0.0.1:8009"))})
    [problem] = problems(write_config, data)
    assert "patroni.members[1]" in problem and "target" in problem
    assert "names no target of cluster 'main-db'" in problem


def test_a_target_with_two_members(write_config: Callable[..., Path]) -> None:
    data = config({"members": members(("pg-1", "http://127.0.0.1:8008"), ("pg-1", "http://127.0.0.1:8009"))})
    [problem] = problems(write_config, data)
    assert "patroni.members[1]" in problem and "target 'pg-1' has two Patroni members" in problem


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ftp://127.0.0.1:8008", "expected a URL with scheme http:// or https://"),
        ("postgresql://127.0.0.1:5432", "expected a URL with scheme http:// or https://"),
        ("http://127.0.0.1:99999", "valid port"),
        ("http:///patroni", "expected a URL with a host"),
        (f"http://admin:{SECRET}@127.0.0.1:8008", "must not contain a password"),
    ],
)
def test_bad_member_urls_are_named_never_echoed(
    write_config: Callable[..., Path], url: str, expected: str
) -> None:
    data = config({"members": members(("pg-1", url))})
    [problem] = problems(write_config, data)
    assert "patroni.members[0]" in problem and ".url" in problem and expected in problem
    assert url not in problem and SECRET not in problem


@pytest.mark.parametrize("tier", ["redis", "app"])
def test_patroni_only_on_a_postgres_cluster(write_config: Callable[..., Path], tier: str) -> None:
    data = config({"members": members(("pg-1", "http://127.0.0.1:8008"))}, tier=tier)
    [problem] = problems(write_config, data)
    assert "clusters[0](main-db).patroni:" in problem
    assert "patroni is only valid on a cluster of tier postgres" in problem


def test_shape_errors(write_config: Callable[..., Path]) -> None:
    [problem] = problems(write_config, config({"members": []}))
    assert "patroni.members:" in problem and "at least 1 item" in problem
    assert problems(write_config, config({"members": GOOD, "max_body_bytes": 100}))  # below 1 KiB
    assert problems(write_config, config({"members": GOOD, "scope": ""}))
    [problem] = problems(write_config, config({"members": GOOD, "leader": "pg-1"}))
    assert "leader" in problem
