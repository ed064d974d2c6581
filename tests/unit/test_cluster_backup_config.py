"""A cluster's ``backup:`` section: the contract's shape is accepted on postgres and redis clusters,
and every misplaced key, empty section, relative path or bad timing is reported as
``FILE:LINE: key.path: expectation`` without repeating the value."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tierwatch.config import ConfigError, load_config
from tierwatch.config.cluster_backup import BackupConfig, PgBackRestWatch

PG_URL = "postgresql://tierwatch@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379"


def cluster(name: str, tier: str, backup: Any, url: str) -> dict[str, Any]:
    return {"name": name, "tier": tier, "backup": backup,
            "targets": [{"name": f"{name}-1", "region": "primary", "url": url}]}  # fmt: skip


def config(*clusters: dict[str, Any]) -> dict[str, Any]:
    return {"monitor": {"interval": "5s", "timeout": "2s"}, "clusters": list(clusters)}


def problems_of(write_config: Callable[..., Path], data: dict[str, Any]) -> list[str]:
    path = write_config(data)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    for problem in caught.value.problems:
        assert problem.startswith(f"{path}:") and problem.split(":")[1].isdigit(), problem
    return caught.value.problems


def test_the_contract_shape_is_accepted(write_config: Callable[..., Path]) -> None:
    pg = {
        "last_backup_file": "/var/backups/pg/latest/backup_label",
        "pgbackrest": {"stanza": "main", "config": "/etc/pgbackrest/pgbackrest.conf",
                       "command": "pgbackrest", "os_user": "postgres", "interval": "1m", "timeout": "30s"},
        "heartbeat_table": "public.tierwatch_heartbeat",
    }  # fmt: skip
    redis = {"heartbeat_key": "tierwatch:heartbeat"}
    loaded = load_config(write_config(config(cluster("db", "postgres", pg, PG_URL),
                                             cluster("cache", "redis", redis, REDIS_URL))))  # fmt: skip
    db, cache = loaded.config.clusters
    assert db.backup is not None and db.backup.pgbackrest is not None
    watch = db.backup.pgbackrest
    assert (watch.interval, watch.timeout, watch.os_user) == (60.0, 30.0, "postgres")
    assert watch.argv == ["pgbackrest", "--config=/etc/pgbackrest/pgbackrest.conf", "--stanza=main"]
    assert db.backup.heartbeat_table_parts == ("public", "tierwatch_heartbeat")
    assert cache.backup == BackupConfig(heartbeat_key="tierwatch:heartbeat")


def test_defaults_and_a_plain_table_name() -> None:
    watch = PgBackRestWatch(stanza="main")
    assert (watch.interval, watch.timeout, watch.config, watch.os_user) == (60.0, 30.0, None, None)
    assert watch.argv == ["pgbackrest", "--stanza=main"]
    assert BackupConfig(heartbeat_table="heartbeat").heartbeat_table_parts == ("heartbeat",)
    assert PgBackRestWatch(stanza="s", command="'/opt/pg backrest/bin/pgbackrest'").argv[0] == (
        "/opt/pg backrest/bin/pgbackrest"
    )


def test_keys_on_the_wrong_tier(write_config: Callable[..., Path]) -> None:
    problems = problems_of(write_config, config(
        cluster("db", "postgres", {"heartbeat_key": "k", "heartbeat_table": "t"}, PG_URL),
        cluster("cache", "redis", {"pgbackrest": {"stanza": "main"}, "heartbeat_table": "t",
                                   "last_backup_file": "/x", "heartbeat_key": "k"}, REDIS_URL),
        cluster("web", "app", {"last_backup_file": "/x"}, "http://127.0.0.1:1/"),
    ))  # fmt: skip
    assert len(problems) == 5, problems
    joined = "\n".join(problems)
    assert "clusters[0](db).backup.heartbeat_key: is only valid on a cluster of tier redis" in joined
    for key in ("last_backup_file", "pgbackrest", "heartbeat_table"):
        assert f"clusters[1](cache).backup.{key}: is only valid on a cluster of tier postgres" in joined
    assert "clusters[2](web).backup: backup is only valid on a cluster of tier redis or postgres" in joined


def test_an_empty_section(write_config: Callable[..., Path]) -> None:
    [pg] = problems_of(write_config, config(cluster("db", "postgres", {}, PG_URL)))
    assert (
        "clusters[0](db).backup: expected at least one of: last_backup_file, pgbackrest, heartbeat_table"
        in pg
    )
    [redis] = problems_of(write_config, config(cluster("cache", "redis", {}, REDIS_URL)))
    assert "clusters[0](cache).backup: expected at least one of: heartbeat_key" in redis


def test_relative_paths_and_a_bad_command_are_not_echoed(write_config: Callable[..., Path]) -> None:
    pgbackrest = {"stanza": "main", "config": "etc/secret-looking.conf", "command": "'unclosed"}
    backup = {"last_backup_file": "backups/secret-looking-latest", "pgbackrest": pgbackrest}
    problems = problems_of(write_config, config(cluster("db", "postgres", backup, PG_URL)))
    joined = "\n".join(problems)
    assert "backup.last_backup_file: expected an absolute path" in joined
    assert "backup.pgbackrest.config: expected an absolute path" in joined
    assert "backup.pgbackrest.command: expected a command" in joined
    assert "secret-looking" not in joined and "unclosed" not in joined


def test_read_timing(write_config: Callable[..., Path]) -> None:
    def timing(**pgbackrest: Any) -> list[str]:
        data = config(cluster("db", "postgres", {"pgbackrest": {"stanza": "main", **pgbackrest}}, PG_URL))
        return problems_of(write_config, data)

    [short] = timing(interval="5s", timeout="2s")
    assert "backup.pgbackrest.interval: expected at least 10s, got 5s" in short
    [slow] = timing(interval="20s", timeout="20s")
    assert "backup.pgbackrest.timeout: expected a timeout below the interval (20s), got 20s" in slow
    [default] = timing(interval="15s")
    assert "got 30s (the default)" in default
    [bad] = timing(interval="soon")
    assert "backup.pgbackrest.interval: expected a duration" in bad


@pytest.mark.parametrize(
    ("backup", "where", "expected"),
    [
        ({"heartbeat_table": "public.tier watch"}, "backup.heartbeat_table", "expected a table name"),
        ({"heartbeat_table": 'x"; DROP TABLE y; --'}, "backup.heartbeat_table", "expected a table name"),
        ({"heartbeat_table": "a.b.c"}, "backup.heartbeat_table", "expected a table name"),
        ({"heartbeat_table": "x" * 64}, "backup.heartbeat_table", "expected a table name"),
        ({"pgbackrest": {"stanza": "../main"}}, "backup.pgbackrest.stanza", "expected a stanza name"),
        ({"pgbackrest": {"stanza": "main", "os_user": "Root Admin"}}, "backup.pgbackrest.os_user",
         "expected a user name"),
        ({"pgbackrest": {"stanza": "main", "repo": "/x"}}, "backup.pgbackrest.repo", "unknown key"),
        ({"pgbackrest": {}}, "backup.pgbackrest.stanza", "required key is missing"),
    ],
)  # fmt: skip
def test_values_are_checked_by_pattern(
    write_config: Callable[..., Path], backup: dict[str, Any], where: str, expected: str
) -> None:
    problems = problems_of(write_config, config(cluster("db", "postgres", backup, PG_URL)))
    assert any(f"{where}: {expected}" in problem for problem in problems), problems
    assert not any("DROP" in problem or "tier watch" in problem for problem in problems)


def test_a_heartbeat_key_must_not_be_empty(write_config: Callable[..., Path]) -> None:
    [problem] = problems_of(write_config, config(cluster("cache", "redis", {"heartbeat_key": ""}, REDIS_URL)))
    assert "clusters[0](cache).backup.heartbeat_key: string should have at least 1 character" in problem


def test_top_tables_is_a_postgres_setting_within_bounds(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text(
        "clusters:\n"
        "  - {name: db, tier: postgres, top_tables: 10, targets: [{name: pg-1, region: a, url: 'postgresql://h/db'}]}\n"
        "  - {name: cache, tier: redis, targets: [{name: r-1, region: a, url: 'redis://h:6379'}]}\n"
    )
    loaded = load_config(path)
    assert [c.top_tables for c in loaded.config.clusters] == [10, 5]
    for cluster, problem in (
        ("{name: cache, tier: redis, top_tables: 3, targets: [{name: r-1, region: a, url: 'redis://h:6379'}]}",
         "top_tables are only valid on a cluster of tier postgres"),
        ("{name: db, tier: postgres, top_tables: 51, targets: [{name: pg-1, region: a, url: 'postgresql://h/db'}]}",
         "less than or equal to 50"),
    ):  # fmt: skip
        path.write_text(f"clusters:\n  - {cluster}\n")
        with pytest.raises(ConfigError) as raised:
            load_config(path)
        assert problem in str(raised.value)
