"""RedisFailover against real servers: a master with two replicas (ACL user + password), killed with
SIGKILL; an HAProxy write backend; three Sentinels where Sentinel is in charge."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis

from tierwatch.config import LoadedConfig
from tierwatch.config.recovery import ClusterRecovery
from tierwatch.recovery.actions.base import Outcome
from tierwatch.recovery.actions.redis_failover import CHECK_KEY, RedisFailover
from tierwatch.recovery.lease import LeaseLost
from tierwatch_lab.stack import Stack, wait_for
from tierwatch_lab.stack.haproxy import HAProxy
from tierwatch_lab.stack.redis import RedisServer, start_redis, start_sentinels

from action_fixtures import Recorder, lb_cluster, make_context, start_tcp_lb

USER = "tw"
PASSWORD = "redis-test-secret-7f3a"
CLUSTER = "cache-main"
BACKEND = "be_redis_write"
ALERT = {"alertname": "RedisMasterDown", "target": "redis-1"}


def start_trio(stack: Stack) -> list[RedisServer]:
    """redis-1 (master) with replicas redis-2 and redis-3, all behind an ACL user with a password."""
    master = start_redis(stack, "redis-1", password=PASSWORD, username=USER)
    replicas = [
        start_redis(stack, name, replica_of=master, password=PASSWORD, username=USER)
        for name in ("redis-2", "redis-3")
    ]
    return [master, *replicas]


def load(
    make_config: Callable[..., LoadedConfig],
    tmp_path: Path,
    servers: list[RedisServer],
    *,
    lb: HAProxy | None = None,
    sentinels: Sequence[RedisServer] = (),
) -> LoadedConfig:
    secret = tmp_path / "redis.pass"
    secret.write_text(PASSWORD + "\n")
    cluster: dict[str, Any] = {
        "name": CLUSTER,
        "tier": "redis",
        "password_file": str(secret),
        "targets": [{"name": s.name, "region": "main", "url": s.url} for s in servers],
    }
    if sentinels:
        cluster["sentinel"] = {
            "master_name": "mymaster",
            "targets": [{"name": s.name, "region": "main", "url": s.url} for s in sentinels],
        }
    return make_config([cluster] + ([lb_cluster(lb)] if lb else []))


def replication(server: RedisServer) -> dict[str, Any]:
    return server.info("replication")


def fill(server: RedisServer, megabytes: int) -> None:
    """Write about ``megabytes`` MB to ``server`` in 100 kB values."""
    client = server.client()
    pipe = client.pipeline(transaction=False)
    blob = "x" * 100_000
    for i in range(megabytes * 10):
        pipe.set(f"fill:{i}", blob)
    pipe.execute()
    client.close()


def caught_up(master: RedisServer, replica: RedisServer) -> None:
    target = replication(master)["master_repl_offset"]
    wait_for(lambda: replication(replica)["slave_repl_offset"] >= target, 15, f"{replica.name} to catch up")


def lag_then_kill(servers: list[RedisServer], lagging: RedisServer) -> float:
    """Freeze ``lagging``, write ~20 MB (more than socket buffers hold), wait until the other replica
    has it all, SIGKILL the master, unfreeze ``lagging``. Returns the monotonic time of the kill."""
    master = servers[0]
    fresh = next(s for s in servers[1:] if s is not lagging)
    lagging.process.pause()
    fill(master, 20)
    caught_up(master, fresh)
    killed_at = time.monotonic()
    master.process.kill()
    lagging.process.resume()
    wait_for(lambda: replication(lagging)["master_link_status"] == "down", 10, "the frozen replica to notice")
    behind = replication(lagging)["slave_repl_offset"]
    assert behind < replication(fresh)["slave_repl_offset"], "the frozen replica should lag"
    return killed_at


def run(ctx: Any) -> Outcome:
    return asyncio.run(RedisFailover().run(ctx))


def events(recorder: Recorder) -> list[str]:
    return [e["event"] for e in recorder.events]


def assert_follows(replica: RedisServer, master: RedisServer) -> None:
    info = replication(replica)
    assert info["role"] == "slave" and info["master_port"] == master.port
    assert info["master_link_status"] == "up"


def test_failover_promotes_the_most_up_to_date_replica_and_moves_the_backend(
    stack: Stack, make_config: Callable[..., LoadedConfig], tmp_path: Path
) -> None:
    servers = start_trio(stack)
    _master, fresh, lagging = servers
    lb = start_tcp_lb(stack, "lb-1", BACKEND, [(s.name, s.port) for s in servers])
    loaded = load(make_config, tmp_path, servers, lb=lb)
    killed_at = lag_then_kill(servers, lagging)

    ctx, recorder = make_context(loaded, CLUSTER, ALERT, settings=ClusterRecovery(write_backend=BACKEND))
    outcome = run(ctx)
    writable = time.monotonic() - killed_at

    assert outcome.status == "succeeded", (outcome, recorder.text())
    assert outcome.failover
    assert outcome.facts["new_primary"] == "redis-2" and outcome.facts["old_primary"] == "redis-1"
    assert outcome.facts["old_primary_fencing"] == "required"
    assert recorder.point_of_no_return_calls == 1
    assert replication(fresh)["role"] == "master"
    assert_follows(lagging, fresh)
    assert fresh.client().get(CHECK_KEY) is not None  # the action's own write check
    # writes through the LB's write backend land on the new master
    via_lb = redis.Redis(port=lb.port, username=USER, password=PASSWORD, decode_responses=True)
    assert (
        via_lb.set("after-failover", "1")
        and via_lb.execute_command("INFO", "server")["tcp_port"] == fresh.port
    )
    via_lb.close()
    order = events(recorder)
    assert order.index("master_checked") < order.index("chosen") < order.index("promoted")
    assert order.index("promoted") < order.index("repointed") < order.index("verified")
    assert PASSWORD not in recorder.text() and PASSWORD not in repr(outcome)
    write_at = recorder.named("write_checked")[0]["at"]
    print(
        f"\n[redis] kill -> new master accepting writes: {write_at - killed_at:.3f}s "
        f"(REPLICAOF NO ONE -> write {outcome.facts['writable_after_s']:.3f}s); "
        f"whole action incl. verify {writable:.3f}s"
    )


def test_priority_zero_replica_is_never_promoted(
    stack: Stack, make_config: Callable[..., LoadedConfig], tmp_path: Path
) -> None:
    servers = start_trio(stack)
    _master, fresh, lagging = servers
    fresh.client().config_set("replica-priority", 0)
    loaded = load(make_config, tmp_path, servers)
    lag_then_kill(servers, lagging)

    ctx, recorder = make_context(loaded, CLUSTER, ALERT)
    outcome = run(ctx)

    assert outcome.status == "succeeded", (outcome, recorder.text())
    assert outcome.facts["new_primary"] == "redis-3"
    skipped = next(e for e in recorder.named("candidate") if e["target"] == "redis-2")
    assert skipped["eligible"] == "replica-priority 0"
    assert replication(lagging)["role"] == "master"
    assert_follows(fresh, lagging)
    assert lagging.client().set("k", "v")


def server_states(lb: HAProxy) -> list[dict[str, str]]:
    """The write backend's servers as ``show servers state`` lists them, without the seconds since
    their last change (it ticks on its own: comparing it failed once under load in CI)."""
    lines = lb.command(f"show servers state {BACKEND}").splitlines()
    header = next(line for line in lines if line.startswith("# be_id")).split()[1:]
    rows = [
        dict(zip(header, line.split(), strict=True)) for line in lines if len(line.split()) == len(header)
    ]
    for row in rows:
        row.pop("srv_time_since_last_change", None)
    return rows


def test_refuses_while_the_master_answers(
    stack: Stack, make_config: Callable[..., LoadedConfig], tmp_path: Path
) -> None:
    servers = start_trio(stack)
    lb = start_tcp_lb(stack, "lb-1", BACKEND, [(s.name, s.port) for s in servers])
    loaded = load(make_config, tmp_path, servers, lb=lb)
    before = server_states(lb)

    for labels in (ALERT, {"alertname": "RedisMasterDown"}):  # with and without a target label
        ctx, recorder = make_context(loaded, CLUSTER, labels, settings=ClusterRecovery(write_backend=BACKEND))
        outcome = run(ctx)
        assert outcome.status == "refused" and outcome.detail == "master redis-1 still answers"
        assert recorder.named("refused")[0]["reason"].startswith("master redis-1 still answers")
        assert recorder.point_of_no_return_calls == 0
        assert "promoted" not in events(recorder)

    assert replication(servers[0])["role"] == "master"
    for replica in servers[1:]:
        assert_follows(replica, servers[0])
    assert server_states(lb) == before


def test_dry_run_chooses_but_changes_nothing(
    stack: Stack, make_config: Callable[..., LoadedConfig], tmp_path: Path
) -> None:
    servers = start_trio(stack)
    master, fresh, lagging = servers
    loaded = load(make_config, tmp_path, servers)
    lag_then_kill(servers, lagging)

    ctx, recorder = make_context(loaded, CLUSTER, ALERT, dry_run=True)
    outcome = run(ctx)

    assert outcome == Outcome(
        "succeeded", "dry run: would promote redis-2", facts={"would_promote": "redis-2"}
    )
    assert recorder.named("would_promote")[0]["target"] == "redis-2"
    assert recorder.point_of_no_return_calls == 0
    for replica in (fresh, lagging):
        info = replication(replica)
        assert info["role"] == "slave" and info["master_port"] == master.port


def test_resumed_run_does_not_promote_again_but_finishes_the_job(
    stack: Stack, make_config: Callable[..., LoadedConfig], tmp_path: Path
) -> None:
    servers = start_trio(stack)
    master, fresh, other = servers
    lb = start_tcp_lb(stack, "lb-1", BACKEND, [(s.name, s.port) for s in servers])
    loaded = load(make_config, tmp_path, servers, lb=lb)
    master.process.kill()
    fresh.client().execute_command("REPLICAOF", "NO", "ONE")  # the crash came right after promoting

    ctx, recorder = make_context(
        loaded, CLUSTER, ALERT, settings=ClusterRecovery(write_backend=BACKEND), resumed=True
    )
    outcome = run(ctx)

    assert outcome.status == "succeeded", (outcome, recorder.text())
    assert outcome.facts["new_primary"] == "redis-2" and outcome.facts["resumed"] is True
    assert "promoted" not in events(recorder)
    assert [e["target"] for e in recorder.named("repointed")] == ["redis-3"]
    assert_follows(other, fresh)


def test_a_run_interrupted_between_its_point_of_no_return_and_the_promotion_is_finished(
    stack: Stack, make_config: Callable[..., LoadedConfig], tmp_path: Path
) -> None:
    """The leader died after recording its point of no return, before REPLICAOF NO ONE: no master is
    left. The resumed run promotes the replica the interrupted one recorded (never another), once
    the old master is still silent."""
    servers = start_trio(stack)
    master, fresh, other = servers
    lb = start_tcp_lb(stack, "lb-1", BACKEND, [(s.name, s.port) for s in servers])
    loaded = load(make_config, tmp_path, servers, lb=lb)
    master.process.kill()

    ctx, recorder = make_context(
        loaded,
        CLUSTER,
        ALERT,
        settings=ClusterRecovery(write_backend=BACKEND),
        resumed=True,
        decision={"promote": "redis-3"},  # not the one a new choice would take: the recorded one
    )
    outcome = run(ctx)

    assert outcome.status == "succeeded", (outcome, recorder.text())
    assert outcome.facts["new_primary"] == "redis-3" and outcome.facts["resumed"] is True
    assert [e["target"] for e in recorder.named("promoted")] == ["redis-3"]
    assert recorder.point_of_no_return_calls == 0  # a resumed run is past it already
    assert_follows(fresh, other)
    # the interrupted run may have died before draining the old master: the resumed one drains it
    # before promoting, as a first run does (test_action_drain.py)
    order = [e["event"] for e in recorder.events]
    assert order.index("write_backend_drained") < order.index("promoted"), order
    assert recorder.named("write_backend_drained")[0]["target"] == "redis-1"


def test_a_resumed_run_without_a_master_or_a_recorded_choice_promotes_nothing(
    stack: Stack, make_config: Callable[..., LoadedConfig], tmp_path: Path
) -> None:
    servers = start_trio(stack)
    loaded = load(make_config, tmp_path, servers)
    servers[0].process.kill()
    ctx, recorder = make_context(loaded, CLUSTER, ALERT, resumed=True)
    outcome = run(ctx)
    assert outcome.status == "failed" and "0 masters" in outcome.detail, (outcome, recorder.text())
    assert not recorder.named("promoted")
    assert all(replication(s)["role"] == "slave" for s in servers[1:])


def test_the_choice_is_recorded_at_the_point_of_no_return(
    stack: Stack, make_config: Callable[..., LoadedConfig], tmp_path: Path
) -> None:
    servers = start_trio(stack)
    lb = start_tcp_lb(stack, "lb-1", BACKEND, [(s.name, s.port) for s in servers])
    loaded = load(make_config, tmp_path, servers, lb=lb)
    servers[0].process.kill()
    ctx, recorder = make_context(loaded, CLUSTER, ALERT, settings=ClusterRecovery(write_backend=BACKEND))
    outcome = run(ctx)
    assert outcome.status == "succeeded", (outcome, recorder.text())
    assert recorder.decisions == [{"promote": outcome.facts["new_primary"]}]


def test_resumed_run_with_two_masters_fails_without_touching_them(
    stack: Stack, make_config: Callable[..., LoadedConfig], tmp_path: Path
) -> None:
    servers = start_trio(stack)
    loaded = load(make_config, tmp_path, servers)
    servers[1].client().execute_command("REPLICAOF", "NO", "ONE")
    ctx, recorder = make_context(loaded, CLUSTER, ALERT, resumed=True)
    outcome = run(ctx)
    assert outcome.status == "failed" and "2 masters" in outcome.detail
    assert recorder.named("resume_failed") and recorder.point_of_no_return_calls == 0
    assert replication(servers[2])["master_port"] == servers[0].port


def test_sentinel_in_charge_the_action_waits_and_never_issues_replicaof(
    stack: Stack, make_config: Callable[..., LoadedConfig], tmp_path: Path
) -> None:
    servers = start_trio(stack)
    master = servers[0]
    sentinels = start_sentinels(stack, master, down_after_ms=1000, failover_timeout_ms=5000)
    lb = start_tcp_lb(stack, "lb-1", BACKEND, [(s.name, s.port) for s in servers])
    loaded = load(make_config, tmp_path, servers, lb=lb, sentinels=sentinels)
    killed_at = time.monotonic()
    master.process.kill()

    settings = ClusterRecovery(write_backend=BACKEND, sentinel_wait=30)
    ctx, recorder = make_context(loaded, CLUSTER, ALERT, settings=settings)
    outcome = run(ctx)
    elapsed = time.monotonic() - killed_at

    assert outcome.status == "succeeded", (outcome, recorder.text())
    assert outcome.facts["via"] == "sentinel"
    new_name = outcome.facts["new_primary"]
    assert new_name in ("redis-2", "redis-3")
    new = next(s for s in servers if s.name == new_name)
    other = next(s for s in servers[1:] if s is not new)
    assert replication(new)["role"] == "master"
    assert_follows(other, new)
    assert recorder.named("waiting_for_sentinel") and recorder.named("sentinel_elected")
    assert not {"chosen", "promoted", "repointed"} & set(events(recorder))
    for server in servers[1:]:  # Sentinel sends SLAVEOF; the action would have sent REPLICAOF
        stats = server.client().info("commandstats")
        assert "cmdstat_replicaof" not in stats, stats.keys()
    [elected] = recorder.named("sentinel_elected")
    assert elected["votes"] >= 2 and elected["of"] == 3, elected  # a majority of the sentinels agreed
    waited = elected["waited_s"]
    assert waited > 0.5  # it had to wait: Sentinel only acts after down-after-milliseconds
    write_at = recorder.named("write_checked")[0]["at"]
    print(
        f"\n[redis+sentinel] kill -> elected master accepting writes: {write_at - killed_at:.3f}s "
        f"(action waited {waited:.3f}s for Sentinel); whole action incl. verify {elapsed:.3f}s"
    )


def test_sentinel_that_does_not_elect_in_time_fails(
    stack: Stack, make_config: Callable[..., LoadedConfig], tmp_path: Path
) -> None:
    servers = start_trio(stack)
    sentinels = start_sentinels(stack, servers[0], down_after_ms=60000)
    loaded = load(make_config, tmp_path, servers, sentinels=sentinels)
    servers[0].process.kill()
    ctx, recorder = make_context(loaded, CLUSTER, ALERT, settings=ClusterRecovery(sentinel_wait=1.5))
    outcome = run(ctx)
    assert outcome.status == "failed" and "Sentinel elected no new master within 1.5s" in outcome.detail
    assert recorder.point_of_no_return_calls == 0
    for replica in servers[1:]:
        assert replication(replica)["role"] == "slave"


def test_a_replica_of_another_region_is_promoted_only_in_a_regional_failover(
    stack: Stack, make_config: Callable[..., LoadedConfig], tmp_path: Path
) -> None:
    master = start_redis(stack, "redis-1", password=PASSWORD, username=USER)
    dr = start_redis(stack, "redis-dr", replica_of=master, password=PASSWORD, username=USER)
    secret = tmp_path / "redis.pass"
    secret.write_text(PASSWORD + "\n")
    regions = {"redis-1": "main", "redis-dr": "dr"}
    cluster = {
        "name": CLUSTER,
        "tier": "redis",
        "password_file": str(secret),
        "targets": [{"name": s.name, "region": regions[s.name], "url": s.url} for s in (master, dr)],
    }
    loaded = make_config([cluster])
    caught_up(master, dr)
    master.process.kill()

    ctx, recorder = make_context(loaded, CLUSTER, ALERT)
    outcome = run(ctx)
    assert outcome.status == "refused", (outcome, recorder.text())
    assert outcome.detail == "no reachable replica in region main eligible for promotion"
    assert recorder.named("candidate")[0]["eligible"] == "region dr (needs a regional failover)"
    assert recorder.point_of_no_return_calls == 0

    ctx, recorder = make_context(loaded, CLUSTER, ALERT, regional=True)
    outcome = run(ctx)
    assert outcome.status == "succeeded", (outcome, recorder.text())
    assert outcome.facts["new_primary"] == "redis-dr"
    assert replication(dr)["role"] == "master"


def test_a_leader_that_lost_its_lease_past_the_point_of_no_return_stops_before_rerouting(
    stack: Stack, make_config: Callable[..., LoadedConfig], tmp_path: Path
) -> None:
    """A leader paused (or cut off) right after promoting wakes up with its lease gone: the new
    leader has resumed the failover from the ledger. The stale run must not go on re-pointing replicas
    and moving the write backend on what it saw before the pause (the world may have moved on): it
    stops at its next step, and the alert is the new leader's. Found by pausing the leader 15 s on
    its ``promoted`` record in the demo: it re-pointed and moved the backend 7 s after the new leader
    had finished."""
    servers = start_trio(stack)
    master = servers[0]
    lb = start_tcp_lb(stack, "lb-1", BACKEND, [(s.name, s.port) for s in servers])
    loaded = load(make_config, tmp_path, servers, lb=lb)
    master.process.kill()
    ctx, recorder = make_context(loaded, CLUSTER, ALERT, settings=ClusterRecovery(write_backend=BACKEND))

    asked: list[str] = []

    def still_leading() -> None:
        # the lease was held at the point of no return (the recorder's) and when the old master was
        # drained from the write backend, then lost while promoting
        asked.append("asked")
        if len(asked) > 1:
            raise LeaseLost("the lease expired in etcd")

    ctx.still_leading = still_leading
    try:
        run(ctx)
    except LeaseLost:
        pass
    else:
        raise AssertionError(f"the stale run went on: {recorder.text()}")
    [promoted] = [e["target"] for e in recorder.named("promoted")]
    assert not recorder.named("repointed") and not recorder.named("write_backend_set"), recorder.text()
    assert recorder.named("write_backend_drained")[0]["target"] == "redis-1"
    [other] = [s for s in servers[1:] if s.name != promoted]
    assert replication(other)["master_port"] == master.port  # left for the new leader's resumed run
