"""The old primary's liveness check (real Redis, the product's default 2 s timeout): asked while the
targets are observed; a silent master its down alert names is declared gone within one timeout and
the attempts' gap, not one timeout per attempt; an answer on the last attempt still refuses."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tierwatch.config import LoadedConfig
from tierwatch.config.recovery import ClusterRecovery
from tierwatch.recovery.actions.base import Outcome
from tierwatch.recovery.actions.failover import DOWN_ALERTS
from tierwatch.recovery.actions.liveness import ATTEMPT_GAP, ATTEMPTS
from tierwatch.recovery.actions.pg_promote import PgPromote
from tierwatch.recovery.actions.redis_failover import RedisFailover
from tierwatch_lab.kit import kit_dir
from tierwatch_lab.stack import Stack, wait_for
from tierwatch_lab.stack.redis import RedisServer, start_redis

from action_fixtures import ADMIN_ROLE, Recorder, make_context, start_pg_cluster
from partition_fixtures import Gate, gates

__all__ = ["gates"]  # a fixture: imported to be used by name

PASSWORD = "redis-liveness-secret-5d1e"
TIMEOUT = 2.0  # the product's default monitor.timeout, which the action's reads use
DOWN = {"alertname": "RedisMasterDown", "target": "redis-1"}


def _trio(stack: Stack) -> list[RedisServer]:
    master = start_redis(stack, "redis-1", password=PASSWORD)
    return [
        master,
        *(start_redis(stack, n, replica_of=master, password=PASSWORD) for n in ("redis-2", "redis-3")),
    ]


def _load(make_config: Callable[..., LoadedConfig], tmp_path: Path, urls: dict[str, str]) -> LoadedConfig:
    secret = tmp_path / "redis.pass"
    secret.write_text(PASSWORD + "\n")
    targets = [{"name": name, "region": "main", "url": url} for name, url in urls.items()]
    cluster = {"name": "cache", "tier": "redis", "password_file": str(secret), "targets": targets}
    return make_config([cluster], interval="5s", timeout=f"{TIMEOUT:g}s")


def _timed(ctx: Any) -> tuple[Outcome, float]:
    """Run the action; the outcome and the monotonic time it started."""
    started = time.monotonic()
    return asyncio.run(RedisFailover().run(ctx)), started


def _checked(recorder: Recorder, started: float) -> tuple[dict[str, Any], float]:
    record = recorder.named("master_checked")[0]
    return record, record["at"] - started


def test_a_paused_master_its_down_alert_names_is_gone_after_one_timeout_and_the_gap(
    stack: Stack, make_config: Callable[..., LoadedConfig], tmp_path: Path
) -> None:
    servers = _trio(stack)
    loaded = _load(make_config, tmp_path, {s.name: s.url for s in servers})
    master, replicas = servers[0], servers[1:]
    master.process.pause()
    silence = 3  # witness_max_silence's default: until then the replicas still vouch for it
    for replica in replicas:
        wait_for(
            lambda r=replica: int(r.info("replication").get("master_last_io_seconds_ago", -1)) > silence,
            20,
            f"{replica.name} to stop hearing from the paused master",
        )

    # no down alert: no evidence of a whole window's silence, the attempts wait one after the other
    ctx, recorder = make_context(
        loaded, "cache", {"alertname": "RedisNoMaster", "target": "redis-1"}, dry_run=True
    )
    outcome, started = _timed(ctx)
    assert outcome.status == "succeeded" and outcome.facts["would_promote"] in ("redis-2", "redis-3"), (
        outcome,
        recorder.text(),
    )
    record, after = _checked(recorder, started)
    assert record["answers"] is False and record["overlapped"] is False
    assert after >= ATTEMPTS * TIMEOUT + ATTEMPT_GAP - 0.05, after

    # the down alert: a majority of vantage points saw it silent for the whole window
    ctx, recorder = make_context(loaded, "cache", DOWN)
    outcome, started = _timed(ctx)
    assert outcome.status == "succeeded", (outcome, recorder.text())
    record, after = _checked(recorder, started)
    assert record["answers"] is False and record["overlapped"] is True and record["attempts"] == ATTEMPTS
    # observing (one timeout on the paused master) and the attempts ran at once: one timeout and the
    # gaps, where observe-then-attempts took (1 + ATTEMPTS) timeouts and the gaps (6.3 s)
    assert after <= TIMEOUT + (ATTEMPTS - 1) * ATTEMPT_GAP + 0.7, after
    order = [e["event"] for e in recorder.events]
    assert order.index("observed") < order.index("master_checked") < order.index("witnesses_checked")
    assert order.index("witnesses_checked") < order.index("promoted")
    assert any(r.info("replication")["role"] == "master" for r in replicas)
    master.process.resume()


@pytest.mark.parametrize("alertname", ["RedisMasterDown", "RedisNoMaster"])
def test_a_master_that_answers_only_once_the_last_attempt_has_started_still_refuses(
    stack: Stack,
    make_config: Callable[..., LoadedConfig],
    tmp_path: Path,
    gates: list[Gate],
    alertname: str,
) -> None:
    servers = _trio(stack)
    gate = Gate(servers[0].port)
    gates.append(gate)
    urls = {s.name: s.url for s in servers} | {"redis-1": f"redis://127.0.0.1:{gate.port}"}
    loaded = _load(make_config, tmp_path, urls)
    gate.blackhole()  # silent: the observation and every attempt before the last hear nothing
    last = 1 + ATTEMPTS  # connections through the gate: the observation, then one per attempt
    healed_at: list[int] = []

    def heal_on_the_last_attempt() -> None:
        deadline = time.monotonic() + 30
        while gate.accepted < last and time.monotonic() < deadline:
            time.sleep(0.002)
        healed_at.append(gate.accepted)
        gate.heal()

    healer = threading.Thread(target=heal_on_the_last_attempt, daemon=True)
    healer.start()
    ctx, recorder = make_context(loaded, "cache", {"alertname": alertname, "target": "redis-1"})
    outcome, _ = _timed(ctx)
    healer.join(5)
    assert healed_at == [last], healed_at
    assert outcome.status == "refused" and outcome.detail == "master redis-1 still answers", (
        outcome,
        recorder.text(),
    )
    assert recorder.point_of_no_return_calls == 0
    assert recorder.named("master_checked")[0]["overlapped"] is (alertname in DOWN_ALERTS)
    assert servers[0].info("replication")["role"] == "master"
    assert all(s.info("replication")["role"] == "slave" for s in servers[1:])


def test_the_down_alerts_are_the_rules_that_count_a_majority_of_vantage_points_for_a_window() -> None:
    rules = {
        rule["alert"]: rule
        for path in kit_dir("rules").glob("*.rules.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    for name in DOWN_ALERTS:
        rule = rules[name]
        assert rule.get("for"), name
        # the vantage majority: twice the vantage points that see it down exceed those that watch
        assert "* 2" in rule["expr"] and "count by (vantage)" in rule["expr"], name
        assert 'role="primary"' in rule["expr"] and "target" in rule["expr"], name


def test_a_paused_postgres_primary_its_down_alert_names_is_gone_after_one_timeout_and_the_gap(
    stack: Stack, make_config: Callable[..., LoadedConfig]
) -> None:
    pg = start_pg_cluster(stack, ("pg-2", "pg-3"))
    loaded = make_config([pg.cluster_entry("main-db")], interval="5s", timeout=f"{TIMEOUT:g}s")
    settings = ClusterRecovery(admin_user=ADMIN_ROLE, admin_password_file=str(pg.admin_password_file))
    pg.servers["pg-1"].process.pause()
    silence = settings.witness_max_silence  # until then the replicas still vouch for it
    for name in ("pg-2", "pg-3"):
        wait_for(
            lambda n=name: (
                (
                    pg.servers[n].scalar(
                        "SELECT extract(epoch FROM now() - last_msg_receipt_time) FROM pg_stat_wal_receiver"
                    )
                    or 0
                )
                > silence
            ),
            30,
            f"{name} to stop hearing from the paused primary",
        )
    alert = {"alertname": "PostgresPrimaryDown", "target": "pg-1"}
    ctx, recorder = make_context(loaded, "main-db", alert, settings=settings, dry_run=True)
    started = time.monotonic()
    outcome = asyncio.run(PgPromote().run(ctx))
    assert outcome.status == "succeeded" and outcome.facts["would_promote"] in ("pg-2", "pg-3"), (
        outcome,
        recorder.text(),
    )
    record = recorder.named("primary_checked")[0]
    assert record["answers"] is False and record["overlapped"] is True, record
    assert record["at"] - started <= TIMEOUT + (ATTEMPTS - 1) * ATTEMPT_GAP + 0.7, record["at"] - started
    pg.servers["pg-1"].process.resume()


def test_a_master_paused_just_before_the_action_is_not_vouched_for_by_what_the_replicas_heard_before(
    stack: Stack, make_config: Callable[..., LoadedConfig], tmp_path: Path
) -> None:
    """At a 1 s alert window the action ran 1.5 s after a pause, while the replicas had heard from the
    master within witness_max_silence (3 s): refused as 'still seen', and never tried again while
    the master stayed frozen (bench/patroni_bench.py, chain-1s pause, 2026-12-07). A witness must
    still be hearing from it: the action looks again once its silence would exceed the limit."""
    servers = _trio(stack)
    loaded = _load(make_config, tmp_path, {s.name: s.url for s in servers})
    master, replicas = servers[0], servers[1:]
    for replica in replicas:
        wait_for(
            lambda r=replica: int(r.info("replication").get("master_last_io_seconds_ago", 99)) == 0,
            20,
            f"{replica.name} to hear from the master",
        )
    master.process.pause()
    ctx, recorder = make_context(loaded, "cache", DOWN, dry_run=True)
    outcome, _ = _timed(ctx)
    master.process.resume()
    assert outcome.status == "succeeded" and outcome.facts["would_promote"] in ("redis-2", "redis-3"), (
        outcome,
        recorder.text(),
    )
    first, again = recorder.named("witnesses_checked")
    assert first["seen_by"] and again["seen_by"] == {}, recorder.text()
