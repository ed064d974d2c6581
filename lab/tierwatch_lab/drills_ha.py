"""Drills of the kit's own redundancy (docs/ha.md): a watcher component dies around a primary's
failure, and the chain must still end in exactly one failover with no acknowledged write lost.

- ``kill-alertmanager-peer``: kill -9 one peer of the demo's Alertmanager cluster, then the Redis
  master: Prometheus still reaches the other peer, which notifies the recovery service.
- ``kill-recovery-leader`` (``-pg``): the demo runs two recovery replicas with a lease in etcd; kill
  the Redis master (the PostgreSQL primary), then kill -9 the recovery leader at a random moment of
  the failover (0 to 8 s later): the other replica takes the lease and finishes (or verifies) it.
- ``etcd-member-loss``: two recovery replicas; (a) the etcd leader member is killed (kill -9) during a
  Redis master failover: the failover happens once; (b) 2 of 3 members are stopped before the next
  master fails: no replica acts and each says so (metric, log, audit ``not_acting``); once quorum is
  back the accepted alert is finished exactly once (an alert resolved meanwhile would not run at all:
  the inbox only claims unresolved alerts).
- ``kill-prometheus-replica``: a Prometheus pair; replica a is killed (kill -9) 0-4 s after the Redis
  master: replica b's copy of the alert alone drives exactly one failover.
- ``stale-dns-leader``: two recovery replicas; the leader is paused (SIGSTOP) right after it moved the
  write backend of a Redis failover, before its DNS step; the other replica resumes the failover and
  moves the record; the woken leader must not move it again (its lease check stops it first, the
  update's prerequisite would stop it second).
- ``kill-exporter-vantage``: two exporters with ``vantage`` a and b; exporter b is killed 0-4 s after
  the Redis master: the quorum rules count the healthy vantage point only, one failover, and the kit's
  ``TierwatchExporterDown`` is pending for the dead exporter (firing after its 5 m ``for``).
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from .demo_stack import DemoStack
from .drill_kit import DrillResult, pg_primaries, redis_masters
from .drills_basic import drill_pg_primary, drill_redis_master
from .stack import wait_for
from .stack.chain import Chain, audit, audit_trail
from .stack.etcd import EtcdCluster
from .stack.process import ManagedProcess
from .stack.tierwatch import TierwatchProcess


def drill_kill_alertmanager_peer(demo: DemoStack, deadline: float) -> DrillResult:
    """Kill the first Alertmanager peer, then run the Redis master drill on what is left."""
    assert demo.chain is not None
    peers = demo.chain.alertmanagers
    if len(peers) < 2:
        raise RuntimeError("the demo runs a single Alertmanager: nothing would take over")
    peers[0].process.kill()
    killed = time.time()
    result = drill_redis_master(demo, deadline)
    result.scenario = "kill-alertmanager-peer"
    result.add(killed, f"watcher: killed Alertmanager peer 1 of {len(peers)}")
    return result


def _leader(recoveries: list[TierwatchProcess]) -> TierwatchProcess | None:
    for replica in recoveries:
        try:
            if "leader (token" in httpx.get(replica.url + "/-/ready", timeout=2).text:
                return replica
        except httpx.HTTPError:
            continue
    return None


def drill_kill_recovery_leader(
    demo: DemoStack,
    deadline: float,
    delay: float | None = None,
    engine: str = "redis",
    at_event: str | None = None,
) -> DrillResult:
    """The Redis master (``engine`` postgres: PostgreSQL primary) drill, with the recovery leader killed
    ``delay`` (default: random 0-8) seconds after the primary, or, given ``at_event``, as soon as its
    audit trail records that step of the failover (``promoted``, ``point_of_no_return``...)."""
    assert demo.chain is not None
    recoveries = demo.chain.recoveries
    if len(recoveries) < 2:
        raise RuntimeError("the demo runs a single recovery service: build it with recovery_replicas=2")
    leader = wait_for(lambda: _leader(recoveries), 30, "a recovery leader")
    primary = (
        demo.redis[redis_masters(demo)[0]].process
        if engine == "redis"
        else demo.pg[pg_primaries(demo)[0]].process
    )
    if at_event is None:
        delay = random.uniform(0, 8) if delay is None else delay
        thread, killed = _during_failure(primary, delay, leader.process.kill)
    else:
        trail = demo.chain.state_dirs[recoveries.index(leader)] / "audit.jsonl"
        thread, killed = _on_audit_event(trail, at_event, leader.process.kill)
    result = (drill_redis_master if engine == "redis" else drill_pg_primary)(demo, deadline)
    thread.join(70)
    result.scenario = "kill-recovery-leader" if engine == "redis" else "kill-recovery-leader-pg"
    at = killed.get("at")
    when = f"on its '{at_event}' record" if at_event else f"{delay:.1f}s after the primary"
    result.add(at, f"watcher: killed the recovery leader {leader.name} (kill -9), {when}")
    for entry in audit(demo.chain):
        if at is not None and entry["ts"] >= at and entry["event"] in ("lease_acquired", "takeover"):
            what = (
                "took the lease"
                if entry["event"] == "lease_acquired"
                else f"took over, resumed {entry.get('resumed')}"
            )
            result.add(entry["ts"], f"watcher: the other replica {what}")
    return result


def count_promotions(chain: Chain, after: float, action: str = "redis_failover") -> int:
    """Failovers of ``action`` since ``after``, from every replica's audit trail: one per alert that
    passed its point of no return or promoted (a new leader's resumed run of that alert is the same
    failover, and a leader killed -9 between its ledger record and its audit flush leaves no
    ``point_of_no_return`` line of its own), plus one for each further server promoted for it."""
    promoted: dict[str, set[str]] = {}
    for entry in audit(chain):
        if entry["ts"] < after or entry.get("action") != action:
            continue
        if entry["event"] in ("point_of_no_return", "promoted"):
            servers = promoted.setdefault(str(entry.get("key")), set())
            if entry["event"] == "promoted":
                servers.add(str(entry.get("target")))
    return sum(max(1, len(servers)) for servers in promoted.values())


def recovered_after(result: DrillResult) -> float | None:
    """Seconds from the failure to the first acknowledged write after it."""
    return next(
        (round(at - result.failed_at, 2) for at, what in result.timeline if what.startswith("recovered:")),
        None,
    )


def _during_failure(
    primary: ManagedProcess, delay: float, fault: Callable[[], None]
) -> tuple[threading.Thread, dict[str, float]]:
    """A thread that runs ``fault`` ``delay`` s after ``primary`` died (waits at most 60 s for that)."""
    done: dict[str, float] = {}

    def run() -> None:
        limit = time.time() + 60
        while primary.running() and time.time() < limit:
            time.sleep(0.02)
        time.sleep(delay)
        done["at"] = time.time()
        fault()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, done


def _on_audit_event(
    trail: Path, event: str, fault: Callable[[], None]
) -> tuple[threading.Thread, dict[str, float]]:
    """A thread that runs ``fault`` as soon as a record of ``event`` is appended to the audit trail
    ``trail`` (polled every 2 ms, for at most 300 s)."""
    done: dict[str, float] = {}
    start = trail.stat().st_size if trail.exists() else 0

    def run() -> None:
        limit = time.time() + 300
        while time.time() < limit:
            if trail.exists():
                with trail.open("rb") as handle:
                    handle.seek(start)
                    for line in handle.read().splitlines():
                        with contextlib.suppress(ValueError):
                            if json.loads(line).get("event") == event:
                                done["at"] = time.time()
                                fault()
                                return
            time.sleep(0.002)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, done


def _until(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll ``condition`` every 0.2 s for at most ``timeout`` s."""
    limit = time.time() + timeout
    while time.time() < limit:
        if condition():
            return True
        time.sleep(0.2)
    return False


def _redis_primary(demo: DemoStack) -> ManagedProcess:
    return demo.redis[redis_masters(demo)[0]].process


def _finish_checks(result: DrillResult, chain: Chain, **figures: Any) -> DrillResult:
    """Record the promotions and recovery time in ``faults`` (the tests' and docs' figures)."""
    promotions = count_promotions(chain, result.failed_at)
    result.faults["ha"] = {
        "promotions": promotions,
        "recovered_s": recovered_after(result),
        "lost": result.lost,
        "acked": result.acked,
        **figures,
    }
    if promotions != 1:
        result.recovered = False
        result.detail = f"{promotions} promotions instead of exactly one"
    return result


def _etcd_leader(etcd: EtcdCluster) -> int:
    """Index of the etcd member that leads the cluster (0 if none answers)."""
    for index, member in enumerate(etcd.members):
        try:
            status = httpx.post(f"{member.url}/v3/maintenance/status", json={}, timeout=2).json()
        except (httpx.HTTPError, ValueError):
            continue
        if status.get("leader") and status.get("leader") == status.get("header", {}).get("member_id"):
            return index
    return 0


def _leader_gauges(recoveries: list[TierwatchProcess]) -> list[float | None]:
    """``tierwatch_recovery_leader`` of every replica (None: not answering)."""
    values: list[float | None] = []
    for replica in recoveries:
        try:
            text = httpx.get(replica.url + "/metrics", timeout=2).text
        except httpx.HTTPError:
            values.append(None)
            continue
        line = next((x for x in text.splitlines() if x.startswith("tierwatch_recovery_leader ")), None)
        values.append(float(line.split()[1]) if line else None)
    return values


def drill_etcd_one_member(demo: DemoStack, deadline: float, delay: float | None = None) -> DrillResult:
    """Kill -9 the etcd leader member ``delay`` (default random 0-6) s after the Redis master; the
    member is started again afterwards (same data) so the cluster is whole for what follows."""
    chain = demo.chain
    assert chain is not None and chain.etcd is not None, "build the demo with recovery_replicas=2"
    etcd = chain.etcd
    index = _etcd_leader(etcd)
    delay = random.uniform(0, 6) if delay is None else delay
    thread, killed = _during_failure(_redis_primary(demo), delay, lambda: etcd.kill_member(index))
    result = drill_redis_master(demo, deadline)
    thread.join(70)
    result.scenario = "etcd-member-loss"
    result.add(
        killed.get("at"),
        f"watcher: killed etcd member {etcd.members[index].name} (its leader), {delay:.1f}s after the master",
    )
    etcd.start_member(index)
    return _finish_checks(result, chain, etcd_member_killed_after_s=round(delay, 2))


def drill_etcd_quorum_loss(demo: DemoStack, deadline: float, hold: float = 10.0) -> DrillResult:
    """Stop 2 of 3 etcd members, wait until no replica leads, kill the Redis master; keep quorum lost
    ``hold`` s after every replica has the alert and says it is not acting (nothing may be promoted
    meanwhile), then start the members again: the alert must be finished exactly once."""
    chain = demo.chain
    assert chain is not None and chain.etcd is not None, "build the demo with recovery_replicas=2"
    etcd, recoveries = chain.etcd, chain.recoveries
    lost_at = time.time()
    stopped = [i for i in range(len(etcd.members)) if i != _etcd_leader(etcd)][:2]
    for index in stopped:
        etcd.stop_member(index)
    # the leader steps down within lease_ttl (10 s by default) of its last renewal
    wait_for(lambda: _leader(recoveries) is None, 30, "every recovery replica stepped down")
    stepped_down = time.time()
    primary = _redis_primary(demo)
    # the drill runs in a thread, the etcd members are started again from this one: a process started
    # from a thread that ends would die with it (PR_SET_PDEATHSIG follows the spawning thread)
    box: dict[str, Any] = {}

    def drill() -> None:
        try:
            box["result"] = drill_redis_master(demo, deadline)
        except BaseException as exc:  # noqa: BLE001 - raised again below
            box["error"] = exc

    runner = threading.Thread(target=drill, daemon=True)
    runner.start()
    seen: dict[str, Any] = {}
    _until(lambda: not primary.running(), 60)
    _until(
        lambda: all(
            any(e["event"] == "not_acting" and e["ts"] >= lost_at for e in audit_trail(chain.state_dirs[i]))
            for i in range(len(recoveries))
        ),
        60,
    )
    seen["not_acting"] = time.time()
    time.sleep(hold)
    seen["leaders"] = _leader_gauges(recoveries)
    seen["promotions"] = count_promotions(chain, lost_at)
    for index in stopped:
        etcd.start_member(index)
    seen["restored"] = time.time()
    runner.join(max(0.0, deadline - time.time()) + 90)
    if "error" in box:
        raise box["error"]
    if "result" not in box:
        raise RuntimeError("the Redis master drill did not end")
    result: DrillResult = box["result"]
    result.scenario = "etcd-member-loss"
    result.add(lost_at, f"watcher: stopped etcd members {', '.join(etcd.members[i].name for i in stopped)}")
    result.add(stepped_down, "watcher: no recovery replica leads any more")
    result.add(seen.get("not_acting"), "watcher: every replica has the alert and audits not_acting")
    result.add(seen.get("restored"), "watcher: etcd quorum restored")
    reasons = sorted(
        {
            str(e.get("reason"))[:80]
            for i in range(len(recoveries))
            for e in audit_trail(chain.state_dirs[i])
            if e["event"] == "not_acting" and e["ts"] >= lost_at
        }
    )
    result = _finish_checks(
        result,
        chain,
        leaders_during_loss=seen.get("leaders"),
        promotions_during_loss=seen.get("promotions"),
        not_acting=reasons,
        quorum_lost_s=round(seen.get("restored", time.time()) - lost_at, 2),
    )
    if seen.get("promotions") != 0 or any(v != 0 for v in seen.get("leaders") or [None]):
        result.recovered = False
        result.detail = f"acted without quorum: {result.faults['ha']}"
    return result


def drill_etcd_member_loss(demo: DemoStack, deadline: float) -> DrillResult:
    """One member lost during a failover, then quorum lost before the next one (both on this demo)."""
    one = drill_etcd_one_member(demo, deadline)
    quorum = drill_etcd_quorum_loss(demo, max(deadline, time.time() + 90))
    for at, what in quorum.timeline:
        one.add(at, f"[quorum loss] {what}")
    one.keep_series_of(quorum)
    one.acked, one.lost = one.acked + quorum.acked, one.lost + quorum.lost
    one.primaries = quorum.primaries
    one.recovered = one.recovered and quorum.recovered
    one.detail = "; ".join(d for d in (one.detail, quorum.detail) if d)
    one.faults = {"one_member": one.faults["ha"], "quorum_loss": quorum.faults["ha"]}
    return one


def drill_kill_prometheus_replica(
    demo: DemoStack, deadline: float, delay: float | None = None
) -> DrillResult:
    """Kill -9 Prometheus replica a ``delay`` (default random 0-4) s after the Redis master."""
    chain = demo.chain
    assert chain is not None
    if len(chain.prometheuses) < 2:
        raise RuntimeError("the demo runs a single Prometheus: build it with prometheus_replicas=2")
    victim = next(p for p in chain.prometheuses if p.process.running())
    delay = random.uniform(0, 4) if delay is None else delay
    thread, killed = _during_failure(_redis_primary(demo), delay, victim.process.kill)
    result = drill_redis_master(demo, deadline)
    thread.join(70)
    result.scenario = "kill-prometheus-replica"
    result.add(
        killed.get("at"), f"watcher: killed a Prometheus replica (kill -9), {delay:.1f}s after the master"
    )
    return _finish_checks(result, chain, prometheus_killed_after_s=round(delay, 2))


def drill_kill_exporter_vantage(demo: DemoStack, deadline: float, delay: float | None = None) -> DrillResult:
    """Kill -9 the last exporter (vantage point) ``delay`` (default random 0-4) s after the Redis
    master; report the kit's TierwatchExporterDown for it on a live Prometheus."""
    chain = demo.chain
    assert chain is not None
    if len(chain.exporters) < 2:
        raise RuntimeError("the demo runs a single exporter: build it with vantages=('a', 'b')")
    victim = chain.exporters[-1]
    delay = random.uniform(0, 4) if delay is None else delay
    thread, killed = _during_failure(_redis_primary(demo), delay, victim.process.kill)
    result = drill_redis_master(demo, deadline)
    thread.join(70)
    result.scenario = "kill-exporter-vantage"
    result.add(
        killed.get("at"), f"watcher: killed exporter {victim.name} (kill -9), {delay:.1f}s after the master"
    )
    prometheus = next(p for p in chain.prometheuses if p.process.running())
    state = prometheus.alert_state("TierwatchExporterDown", instance=victim.address)
    result.add(time.time(), f"watcher: TierwatchExporterDown for {victim.address} is {state}")
    return _finish_checks(result, chain, exporter_killed_after_s=round(delay, 2), exporter_down_alert=state)


def drill_stale_dns_leader(demo: DemoStack, deadline: float) -> DrillResult:
    """The Redis master drill with the recovery leader paused (SIGSTOP) as soon as it has moved the
    write backend, before its DNS step; the other replica takes the lease, resumes the failover and
    moves the record; then the paused one is woken (SIGCONT). It must not move the record again: its
    audit trail shows no ``dns_updating`` after it woke, and the record names the new master."""
    assert demo.chain is not None and demo.dns is not None
    recoveries = demo.chain.recoveries
    if len(recoveries) < 2:
        raise RuntimeError("the demo runs a single recovery service: build it with recovery_replicas=2")
    leader = wait_for(lambda: _leader(recoveries), 30, "a recovery leader")
    index = recoveries.index(leader)
    trail = demo.chain.state_dirs[index] / "audit.jsonl"
    thread, paused = _on_audit_event(trail, "write_backend_set", leader.process.pause)
    try:
        result = drill_redis_master(demo, deadline)
        thread.join(70)
        record = demo.dns.name_of("cache-main")
        others = [d for i, d in enumerate(demo.chain.state_dirs) if i != index]
        moved = _until(
            lambda: any(
                e["event"] in ("dns_updated", "dns_unchanged") and e.get("record") == record
                for d in others
                for e in audit_trail(d)
            ),
            30,
        )
    finally:
        leader.process.resume()
    woke = time.time()
    result.scenario = "stale-dns-leader"
    result.add(
        paused.get("at"), f"watcher: paused the recovery leader {leader.name} after it moved the backend"
    )
    result.add(woke, f"watcher: woke {leader.name} (SIGCONT)")
    time.sleep(5)  # the woken replica's run goes on: its lease check, then whatever it would do
    after = [e for e in audit_trail(demo.chain.state_dirs[index]) if e["ts"] >= woke]
    stale_updates = [e for e in after if e["event"] == "dns_updating"]
    port = demo.dns.resolver("cache-main")()
    masters = redis_masters(demo)
    named = masters and port == demo.redis[masters[0]].port
    result.faults["dns"] = {
        "paused": paused.get("at") is not None,
        "moved_by_other_replica": moved,
        "stale_updates": len(stale_updates),
        "stale_events": sorted({e["event"] for e in after})[:20],
        "record_names_master": bool(named),
    }
    if not (paused.get("at") and moved and not stale_updates and named):
        result.recovered = False
        result.detail = f"stale leader check failed: {result.faults['dns']}"
    return _finish_checks(result, demo.chain)


HA_DRILLS = {
    "kill-alertmanager-peer": drill_kill_alertmanager_peer,
    "kill-recovery-leader": drill_kill_recovery_leader,
    "kill-recovery-leader-pg": lambda demo, deadline: drill_kill_recovery_leader(
        demo, deadline, engine="postgres"
    ),
    "etcd-member-loss": drill_etcd_member_loss,
    "kill-prometheus-replica": drill_kill_prometheus_replica,
    "kill-exporter-vantage": drill_kill_exporter_vantage,
    "stale-dns-leader": drill_stale_dns_leader,
}
