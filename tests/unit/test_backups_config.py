"""The ``backups:`` section: a valid one loads with its defaults; each mistake is reported as
FILE:LINE: key.path: expectation, all at once, and never with the value that was wrong."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tierwatch.config import ConfigError, load_config

CLUSTERS = [
    {"name": "main-db", "tier": "postgres",
     "targets": [{"name": "pg-1", "region": "primary", "url": "postgresql://tierwatch@127.0.0.1:5432/postgres"}]},
    {"name": "cache-main", "tier": "redis",
     "targets": [{"name": "r-1", "region": "primary", "url": "redis://127.0.0.1:6379"}]},
]  # fmt: skip
SECRET = "hunter2-Sup3r-S3cret"


def backups(*sets: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {
        "clusters": CLUSTERS,
        "backups": {
            "textfile_dir": "/var/lib/prometheus/node-exporter",
            "scratch_dir": "/var/tmp/tierwatch-restore",
            "audit_log": "/var/lib/tierwatch/backups-audit.jsonl",
            "sets": list(sets),
            **top,
        },
    }


PG_SET = {
    "name": "main-db",
    "cluster": "main-db",
    "pgbackrest": {"stanza": "main", "config": "/etc/pgbackrest/pgbackrest.conf", "os_user": "postgres"},
    "verify": [{"name": "orders", "query": "SELECT count(*) FROM orders", "min": 1}],
    "heartbeat_table": "public.tierwatch_heartbeat",
    "timeout": "30m",
}
REDIS_SET = {
    "name": "cache-main",
    "cluster": "cache-main",
    "redis": {"directory": "/var/backups/redis/cache-main", "keep": 7},
    "verify_keys": ["some:key"],
    "heartbeat_key": "tierwatch:heartbeat",
}


def problems(write_config: Callable[..., Path], data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write_config(data))
    return info.value.problems


def test_the_contract_example_loads_with_defaults(write_config: Callable[..., Path]) -> None:
    redis_defaults = {**REDIS_SET, "redis": {"directory": "/var/backups/redis/c"}}
    loaded = load_config(write_config(backups(PG_SET, redis_defaults)))
    settings = loaded.config.backups
    assert settings is not None
    pg, redis = settings.sets
    assert pg.tier == "postgres" and pg.timeout == 1800 and pg.database == "postgres"
    assert (
        pg.pgbackrest is not None
        and pg.pgbackrest.command == "pgbackrest"
        and pg.pgbackrest.pg_bin_dir is None
    )
    assert redis.tier == "redis" and redis.redis is not None and redis.redis.keep == 7
    assert redis.timeout == 1800 and redis.min_keys is None


def test_paths_must_be_absolute(write_config: Callable[..., Path]) -> None:
    found = problems(write_config, backups(PG_SET, scratch_dir="tmp/restore", audit_log=""))
    assert any(":" in p and "backups.scratch_dir: expected an absolute path" in p for p in found)
    assert any("backups.audit_log: expected an absolute path" in p for p in found)


def test_each_set_has_exactly_one_source_and_a_cluster_of_its_tier(write_config: Callable[..., Path]) -> None:
    both = {**PG_SET, "name": "both", "redis": {"directory": "/x"}}
    neither = {"name": "neither", "cluster": "main-db"}
    wrong_tier = {**REDIS_SET, "cluster": "main-db"}
    unknown = {**PG_SET, "name": "other", "cluster": "nope"}
    found = problems(write_config, backups(both, neither, wrong_tier, unknown))
    text = "\n".join(found)
    assert "backups.sets[0](both): expected exactly one of pgbackrest or redis" in text
    assert "backups.sets[1](neither): expected exactly one of pgbackrest or redis" in text
    assert "backups.sets[2](cache-main).cluster: expected a cluster of tier redis" in text
    assert "backups.sets[3](other).cluster: no cluster of that name in clusters" in text
    assert len(found) == 4


def test_names_are_unique_and_keys_fit_the_source(write_config: Callable[..., Path]) -> None:
    redis_keys_on_pg = {**PG_SET, "verify_keys": [SECRET], "heartbeat_key": SECRET}
    pg_keys_on_redis = {
        **REDIS_SET,
        "name": "main-db",
        "heartbeat_table": "public.hb",
        "verify": PG_SET["verify"],
    }
    found = problems(write_config, backups(redis_keys_on_pg, pg_keys_on_redis))
    text = "\n".join(found)
    assert "sets[0](main-db).verify_keys: is only valid on a set with redis" in text
    assert "sets[0](main-db).heartbeat_key: is only valid on a set with redis" in text
    assert "sets[1](main-db).heartbeat_table: is only valid on a set with pgbackrest" in text
    assert "sets[1](main-db).verify: is only valid on a set with pgbackrest" in text
    assert "sets[1](main-db).name: duplicate backup set name 'main-db'" in text
    assert SECRET not in text


@pytest.mark.parametrize(
    ("change", "where", "expected"),
    [
        ({"verify": [{"name": "q", "query": "SELECT 1", "min": 5, "max": 1}]}, "verify[0](q)", "min <= max"),
        ({"verify": [{"name": "q", "query": "SELECT 1", "equals": 1, "min": 0}]}, "verify[0](q)", "either"),
        ({"heartbeat_table": "x; DROP TABLE " + SECRET}, "heartbeat_table", "expected a table name"),
        ({"pgbackrest": {"stanza": "main", "os_user": SECRET}}, "pgbackrest.os_user", "expected a user name"),
        ({"pgbackrest": {"stanza": "main", "pg_bin_dir": "bin"}}, "pgbackrest.pg_bin_dir", "absolute path"),
        ({"pgbackrest": {"stanza": "main", "password": SECRET}}, "pgbackrest.password", "unknown key"),
        ({"timeout": SECRET}, "timeout", "expected a duration"),
        ({"min_free_bytes": -1}, "min_free_bytes", "greater than or equal to 0"),
    ],
)  # fmt: skip
def test_bad_values_are_named_never_echoed(
    write_config: Callable[..., Path], change: dict[str, Any], where: str, expected: str
) -> None:
    found = problems(write_config, backups({**PG_SET, **change}))
    assert len(found) == 1, found
    (problem,) = found
    assert f"backups.sets[0](main-db).{where}: " in problem and expected in problem, problem
    assert problem.split(":")[1].isdigit()  # FILE:LINE
    assert SECRET not in problem


def test_duplicate_verify_names_and_empty_sets(write_config: Callable[..., Path]) -> None:
    twice = {**PG_SET, "verify": [PG_SET["verify"][0], PG_SET["verify"][0]]}
    assert any(
        "verify[1](orders).name: duplicate verify name 'orders'" in p
        for p in problems(write_config, backups(twice))
    )
    assert any(
        "backups.sets: list should have at least 1 item" in p for p in problems(write_config, backups())
    )
    assert any("backups.scratch_dir: expected a directory of its own" in p
               for p in problems(write_config, backups(PG_SET, scratch_dir="/")))  # fmt: skip
