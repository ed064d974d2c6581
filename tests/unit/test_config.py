"""Config loading: the DESIGN.md example is accepted; every bad case names file, line, key path and
what was expected; secrets are resolved from files or env and never echoed."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tierwatch.config import ConfigError, load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tierwatch.yml"
SECRET = "s3cr3t-Hunter2-do-not-print"


def base(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "monitor": {"interval": "5s", "timeout": "2s"},
        "clusters": [
            {
                "name": "web",
                "tier": "app",
                "targets": [{"name": "es-1", "region": "primary", "url": "http://127.0.0.1:3001/health"}],
            }
        ],
    }
    data.update(overrides)
    return data


def problems_of(write_config: Callable[..., Path], data: dict[str, Any]) -> list[str]:
    path = write_config(data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    for problem in info.value.problems:
        assert problem.startswith(f"{path}:"), problem
    return info.value.problems


def test_design_example_is_accepted_as_written() -> None:
    loaded = load_config(EXAMPLE, resolve_secrets=False)
    cfg = loaded.config
    assert cfg.monitor.interval == 5.0 and cfg.monitor.timeout == 2.0
    assert cfg.circuit_breaker.failure_threshold == 5 and cfg.circuit_breaker.reset_timeout == 30.0
    assert [c.name for c in cfg.clusters] == ["edge", "web", "cache-main", "main-db"]
    cache = cfg.clusters[2]
    assert cache.sentinel is not None and cache.sentinel.master_name == "cache-main"
    assert [q.kind for q in cache.queues] == ["bullmq", "celery", "rq", "stream", "list"]
    assert cfg.clusters[0].targets[0].stats_socket == "/run/haproxy/lb-1.sock"


def test_design_example_with_its_secret_files_present(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    (tmp_path / "redis").write_text(SECRET + "\n")
    (tmp_path / "pg").write_text("pg-" + SECRET)
    text = text.replace("/run/secrets/", f"{tmp_path}/")
    (tmp_path / "c.yml").write_text(text)
    loaded = load_config(tmp_path / "c.yml")
    redis_secret = loaded.password_for("cache-main")
    assert redis_secret is not None and redis_secret.reveal() == SECRET
    assert SECRET not in repr(redis_secret) and SECRET not in str(redis_secret) and SECRET not in f"{loaded}"


def test_defaults_apply(write_config: Callable[..., Path]) -> None:
    data = base()
    del data["monitor"]
    cfg = load_config(write_config(data)).config
    assert (cfg.monitor.interval, cfg.monitor.timeout) == (5.0, 2.0)
    assert (cfg.circuit_breaker.failure_threshold, cfg.circuit_breaker.reset_timeout) == (5, 30.0)


def test_unknown_key_names_path_line_and_allowed_keys(write_config: Callable[..., Path]) -> None:
    data = base(circuit_breaker={"failure_threshhold": 5})
    [problem] = problems_of(write_config, data)
    assert "circuit_breaker.failure_threshhold: unknown key" in problem
    assert "failure_threshold" in problem and "reset_timeout" in problem
    lines = write_config(data).read_text().splitlines()
    line = next(i for i, text in enumerate(lines, 1) if "failure_threshhold" in text)
    assert f":{line}: circuit_breaker" in problem


def test_wrong_types(write_config: Callable[..., Path]) -> None:
    data = base(circuit_breaker={"failure_threshold": "many", "reset_timeout": "soon"})
    problems = problems_of(write_config, data)
    assert any("circuit_breaker.failure_threshold: input should be a valid integer" in p for p in problems)
    assert any("circuit_breaker.reset_timeout: expected a duration" in p for p in problems)


def test_bad_tier_and_empty_targets(write_config: Callable[..., Path]) -> None:
    data = base(clusters=[{"name": "db", "tier": "postgress", "targets": []}])
    problems = problems_of(write_config, data)
    assert any(
        "clusters[0](db).tier: expected one of 'lb', 'app', 'redis' or 'postgres'" in p for p in problems
    )
    assert any("clusters[0](db).targets: list should have at least 1 item" in p for p in problems)


def test_duplicate_target_names_across_clusters(write_config: Callable[..., Path]) -> None:
    data = base()
    data["clusters"].append(
        {
            "name": "cache",
            "tier": "redis",
            "targets": [{"name": "es-1", "region": "primary", "url": "redis://127.0.0.1:6379"}],
        }
    )
    [problem] = problems_of(write_config, data)
    assert (
        "clusters[1](cache).targets[0](es-1).name: duplicate target name 'es-1' (also in cluster 'web')"
        in problem
    )


def test_timeout_must_be_below_interval(write_config: Callable[..., Path]) -> None:
    [problem] = problems_of(write_config, base(monitor={"interval": "5s", "timeout": "5s"}))
    assert "monitor.timeout: expected a probe timeout below monitor.interval (5s), got 5s" in problem


@pytest.mark.parametrize(
    ("tier", "url", "expected"),
    [
        ("app", "ftp://127.0.0.1/x", "expected a URL with scheme http:// or https://"),
        ("app", "http://127.0.0.1:99999/", "valid port"),
        ("app", "http:///nohost", "expected a URL with a host"),
        ("redis", "http://127.0.0.1:6379", "expected a URL with scheme redis:// or rediss:// or unix://"),
        ("postgres", "mysql://127.0.0.1/db", "postgresql://"),
    ],
)
def test_bad_urls(write_config: Callable[..., Path], tier: str, url: str, expected: str) -> None:
    data = base(clusters=[{"name": "c", "tier": tier, "targets": [{"name": "t", "region": "r", "url": url}]}])
    [problem] = problems_of(write_config, data)
    assert "clusters[0](c).targets[0](t).url:" in problem and expected in problem
    assert url not in problem  # the URL is never echoed: it could carry a credential


def test_password_in_url_is_refused_and_not_echoed(write_config: Callable[..., Path]) -> None:
    url = f"redis://:{SECRET}@127.0.0.1:6379"
    data = base(
        clusters=[{"name": "c", "tier": "redis", "targets": [{"name": "t", "region": "r", "url": url}]}]
    )
    [problem] = problems_of(write_config, data)
    assert "must not contain a password: use the cluster's password_file or password_env" in problem
    assert SECRET not in problem


def test_unreadable_and_empty_password_files(write_config: Callable[..., Path], tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    clusters = [
        {
            "name": "a",
            "tier": "redis",
            "password_file": str(tmp_path / "missing"),
            "targets": [{"name": "t1", "region": "r", "url": "redis://127.0.0.1:1"}],
        },
        {
            "name": "b",
            "tier": "redis",
            "password_file": str(empty),
            "targets": [{"name": "t2", "region": "r", "url": "redis://127.0.0.1:2"}],
        },
    ]
    problems = problems_of(write_config, base(clusters=clusters))
    assert any(
        f"clusters[0](a).password_file: cannot read password file {tmp_path}/missing" in p for p in problems
    )
    assert any(f"clusters[1](b).password_file: password file {empty} is empty" in p for p in problems)


def test_password_env(write_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = {
        "name": "a",
        "tier": "redis",
        "password_env": "TW_TEST_REDIS_PW",
        "targets": [{"name": "t1", "region": "r", "url": "redis://127.0.0.1:1"}],
    }
    path = write_config(base(clusters=[cluster]))
    monkeypatch.delenv("TW_TEST_REDIS_PW", raising=False)
    with pytest.raises(ConfigError, match="environment variable TW_TEST_REDIS_PW is not set or empty"):
        load_config(path)
    monkeypatch.setenv("TW_TEST_REDIS_PW", SECRET)
    secret = load_config(path).password_for("a")
    assert secret is not None and secret.reveal() == SECRET


def test_every_problem_is_listed_at_once(write_config: Callable[..., Path]) -> None:
    data = base(monitor={"interval": "1s", "timeout": "2s"}, colour="blue")
    data["clusters"].append(
        {
            "name": "web",
            "tier": "app",
            "targets": [{"name": "es-2", "region": "primary", "url": "gopher://x"}],
        }
    )
    problems = problems_of(write_config, data)
    joined = "\n".join(problems)
    assert "colour: unknown key" in joined
    assert "monitor.timeout" in joined
    assert "duplicate cluster name 'web'" in joined
    assert "clusters[1](web).targets[0](es-2).url" in joined


def test_options_only_where_they_apply(write_config: Callable[..., Path]) -> None:
    data = base(
        clusters=[
            {
                "name": "web",
                "tier": "app",
                "vip": "http://127.0.0.1:1/",
                "queues": [{"name": "q", "kind": "list"}],
                "targets": [
                    {
                        "name": "es-1",
                        "region": "primary",
                        "url": "http://127.0.0.1:3001/",
                        "stats_socket": "/run/x.sock",
                    }
                ],
            }
        ]
    )
    joined = "\n".join(problems_of(write_config, data))
    assert "clusters[0](web).vip: vip is only valid on a cluster of tier lb" in joined
    assert "clusters[0](web).queues: queues are only valid on a cluster of tier redis" in joined
    assert "stats_socket/stats_url are only valid on lb targets" in joined


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yml"
    path.write_text("monitor:\n  interval: 5s\n clusters: [\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems[0].startswith(f"{path}:3: invalid YAML")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tierwatch", *args], capture_output=True, text=True, timeout=60
    )


def test_check_config_cli(write_config: Callable[..., Path]) -> None:
    good = run_cli("check-config", "--no-secrets", str(EXAMPLE))
    assert good.returncode == 0 and "OK (4 clusters, 16 targets)" in good.stdout
    missing = run_cli("check-config", str(EXAMPLE))
    assert missing.returncode == 1
    assert (
        "clusters[2](cache-main).password_file: cannot read password file /run/secrets/redis"
        in missing.stderr
    )
    bad_path = write_config(base(monitor={"interval": "1s", "timeout": "1s"}))
    bad = run_cli("check-config", str(bad_path))
    assert bad.returncode == 1 and "monitor.timeout" in bad.stderr and "1 problem(s) found" in bad.stderr
    assert run_cli("check-config", "/nonexistent.yml").returncode == 1


@pytest.mark.parametrize("command", ["serve", "check-config"])
def test_help(command: str) -> None:
    result = run_cli(command, "--help")
    assert result.returncode == 0 and "usage: tierwatch" in result.stdout


def test_recovery_example_is_valid() -> None:
    loaded = load_config(EXAMPLE.with_name("recovery.yml"), resolve_secrets=False)
    recovery = loaded.config.recovery
    assert recovery is not None and recovery.allow["RedisMasterDown"].action == "redis_failover"
    assert recovery.clusters["web"].systemd_units["es-1"] == "app@1.service"


def test_recovery_section_problems(write_config: Callable[..., Path]) -> None:
    data = base(
        recovery={
            "auth": {},
            "allow": {"AppInstanceDown": "reboot_everything"},
            "clusters": {"nope": {}, "web": {"restart_commands": {"es-9": ["true"], "es-1": []}}},
        }
    )
    joined = "\n".join(problems_of(write_config, data))
    assert "recovery.allow.AppInstanceDown: expected one of 'redis_failover'" in joined
    data["recovery"]["allow"] = {"AppInstanceDown": "restart_instance"}
    joined = "\n".join(problems_of(write_config, data))
    assert "recovery.auth: expected exactly one of bearer_token_file or basic" in joined
    assert "recovery.clusters.nope: no cluster named 'nope' in clusters" in joined
    assert "recovery.clusters.web.restart_commands.es-9: no target named 'es-9'" in joined
    assert "recovery.clusters.web.restart_commands.es-1: expected a non-empty list" in joined
