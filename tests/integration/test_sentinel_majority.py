"""Sentinel's word checked, against real servers and real Sentinels: with Sentinel in charge the
failover follows an election only when a majority of the configured Sentinels name the same member
and that member passes the kit's own rules for a master; otherwise it refuses (limit
``sentinel_unconfirmed``) and a human decides.

The empty member: redis-3 detached (REPLICAOF NO ONE) and flushed, holding 1 key, while redis-2 still
follows the killed master with 1,000 keys and a higher replication offset."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from test_action_redis_failover import (
    ALERT,
    BACKEND,
    CLUSTER,
    assert_follows,
    caught_up,
    load,
    replication,
    run,
    server_states,
    start_trio,
)

from tierwatch.config import LoadedConfig
from tierwatch.config.recovery import ClusterRecovery
from tierwatch.recovery import metrics
from tierwatch.recovery.actions.base import Outcome
from tierwatch_lab.stack import Stack, wait_for
from tierwatch_lab.stack.haproxy import HAProxy
from tierwatch_lab.stack.redis import RedisServer, start_sentinels

from action_fixtures import Recorder, make_context, start_tcp_lb
from redis_fixtures import empty_member, write_keys

KEYS = 1000


def admin_states(lb: HAProxy) -> dict[str, str]:
    """Each write backend server's admin state (ready or maint), from ``show servers state``."""
    return {row["srv_name"]: row["srv_admin_state"] for row in server_states(lb)}


def start_with_empty_member(stack: Stack) -> list[RedisServer]:
    """redis-1 (master), redis-2 (replica, 1,000 keys), redis-3 (empty: detached, 1 key)."""
    servers = start_trio(stack)
    master, full, empty = servers
    empty_member(empty)
    wait_for(lambda: replication(master)["connected_slaves"] == 1, 10, "redis-1 to drop redis-3")
    write_keys(master, KEYS)
    caught_up(master, full)
    assert full.client().dbsize() == KEYS and empty.client().dbsize() == 1
    assert replication(empty)["master_repl_offset"] < replication(full)["slave_repl_offset"]
    return servers


def refuse_run(
    make_config: Callable[..., LoadedConfig],
    tmp_path: Path,
    servers: list[RedisServer],
    sentinels: list[RedisServer],
    lb: HAProxy,
) -> tuple[Outcome, Recorder, float]:
    """Kill redis-1 and run the failover (Sentinel in charge, 2 s wait); (outcome, audit, seconds)."""
    loaded = load(make_config, tmp_path, servers, lb=lb, sentinels=sentinels)
    servers[0].process.kill()
    settings = ClusterRecovery(write_backend=BACKEND, sentinel_wait=2)
    ctx, recorder = make_context(loaded, CLUSTER, ALERT, settings=settings)
    started = time.monotonic()
    outcome = run(ctx)
    return outcome, recorder, time.monotonic() - started


def assert_refused_untouched(
    outcome: Outcome, recorder: Recorder, servers: list[RedisServer], lb: HAProxy, before: dict[str, str]
) -> None:
    """Refused as sentinel_unconfirmed with an audit record; nothing moved, the data kept."""
    _master, full, empty = servers
    assert outcome.status == "refused", (outcome, recorder.text())
    assert outcome.facts["limit"] == "sentinel_unconfirmed" and "sentinel_unconfirmed" in metrics.LIMITS
    assert [e["reason"] for e in recorder.named("refused")] == [outcome.detail]
    assert recorder.named("sentinel_unconfirmed"), recorder.text()
    assert recorder.point_of_no_return_calls == 0
    assert not recorder.named("sentinel_elected") and not recorder.named("write_backend_set")
    assert admin_states(lb) == before and len(before) == 3
    assert replication(full)["role"] == "slave" and full.client().dbsize() == KEYS
    assert empty.client().dbsize() == 1


def test_sentinels_agreeing_on_an_empty_member_are_not_followed(
    stack: Stack, make_config: Callable[..., LoadedConfig], tmp_path: Path
) -> None:
    """All three Sentinels name redis-3 (misconfigured on it): a majority, but redis-3 has no linked
    replica and an offset behind redis-2's, so it is not a master the kit would accept."""
    servers = start_with_empty_member(stack)
    sentinels = start_sentinels(stack, servers[2], down_after_ms=60000)
    lb = start_tcp_lb(stack, "lb-1", BACKEND, [(s.name, s.port) for s in servers])
    before = admin_states(lb)

    outcome, recorder, seconds = refuse_run(make_config, tmp_path, servers, sentinels, lb)

    assert_refused_untouched(outcome, recorder, servers, lb, before)
    assert "redis-3" in outcome.detail and "offset" in outcome.detail and "redis-2" in outcome.detail
    [record] = recorder.named("sentinel_unconfirmed")
    assert record["answers"] == {s.name: f"127.0.0.1:{servers[2].port}" for s in sentinels}
    assert seconds < 10, seconds  # the 2 s wait, then a refusal (no 20 s verification)
    print(f"\n[sentinel majority] refused after {seconds:.3f}s: {outcome.detail}")


def test_one_lying_sentinel_is_not_a_majority(
    stack: Stack, make_config: Callable[..., LoadedConfig], tmp_path: Path
) -> None:
    """Two honest Sentinels (not electing within the wait) still name the dead redis-1; a third,
    configured on the wrong address, names the empty redis-3: one answer of three does not count."""
    servers = start_with_empty_member(stack)
    honest = start_sentinels(stack, servers[0], n=2, down_after_ms=60000)
    liar = start_sentinels(stack, servers[2], n=1, prefix="liar")
    lb = start_tcp_lb(stack, "lb-1", BACKEND, [(s.name, s.port) for s in servers])
    before = admin_states(lb)

    outcome, recorder, seconds = refuse_run(make_config, tmp_path, servers, [*honest, *liar], lb)
    print(f"\n[sentinel liar] refused after {seconds:.3f}s: {outcome.detail}")

    assert_refused_untouched(outcome, recorder, servers, lb, before)
    assert "redis-3 named by 1 of 3 sentinels (2 needed)" in outcome.detail, outcome.detail
    [record] = recorder.named("sentinel_unconfirmed")
    assert record["answers"]["liar-1"] == f"127.0.0.1:{servers[2].port}"
    assert record["answers"]["sentinel-1"] == f"127.0.0.1:{servers[0].port}"


def test_an_unreachable_sentinel_does_not_block_a_majority(
    stack: Stack, make_config: Callable[..., LoadedConfig], tmp_path: Path
) -> None:
    """One of three Sentinels is down: the two others elect and agree, which is a majority."""
    servers = start_trio(stack)
    master = servers[0]
    sentinels = start_sentinels(stack, master, down_after_ms=1000, failover_timeout_ms=5000)
    sentinels[2].process.kill()
    loaded = load(make_config, tmp_path, servers, sentinels=sentinels)
    master.process.kill()

    ctx, recorder = make_context(loaded, CLUSTER, ALERT, settings=ClusterRecovery(sentinel_wait=30))
    outcome = run(ctx)

    assert outcome.status == "succeeded", (outcome, recorder.text())
    [elected] = recorder.named("sentinel_elected")
    assert elected["votes"] == 2 and elected["of"] == 3, elected
    new = next(s for s in servers if s.name == outcome.facts["new_primary"])
    other = next(s for s in servers[1:] if s is not new)
    assert_follows(other, new)
