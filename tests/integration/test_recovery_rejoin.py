"""The rejoin through the real recovery service (`tierwatch recover`, default cooldown): a
RedisMasterDown runs the failover, which the service audits; the old master restarts; a
RedisSplitBrain delivered three times by two Alertmanager peers runs redis_rejoin once, which reads
the last failover from the service's own audit trail and demotes the returning master."""

from __future__ import annotations

from pathlib import Path

from tierwatch_lab.stack import Stack, wait_for
from tierwatch_lab.stack.redis import RedisServer, start_redis

from recovery_fixtures import alert, payload, start_recovery

PASSWORD = "redis-service-rejoin-3b7c"
LABELS = {"tier": "redis", "cluster": "cache", "severity": "critical"}


def role(server: RedisServer) -> str:
    return str(server.info("replication")["role"])


def test_failover_then_split_brain_rejoins_the_old_master_once(stack: Stack, tmp_path: Path) -> None:
    master = start_redis(stack, "redis-1", password=PASSWORD)
    replicas = [start_redis(stack, n, replica_of=master, password=PASSWORD) for n in ("redis-2", "redis-3")]
    servers = [master, *replicas]
    secret = tmp_path / "redis.pass"
    secret.write_text(PASSWORD + "\n")
    cluster = {
        "name": "cache",
        "tier": "redis",
        "password_file": str(secret),
        "targets": [{"name": s.name, "region": "main", "url": s.url} for s in servers],
    }
    allow = {"RedisMasterDown": "redis_failover", "RedisSplitBrain": "redis_rejoin"}
    service = start_recovery(stack, [cluster], {"allow": allow})

    master.process.kill()
    down = {**LABELS, "target": "redis-1", "region": "main", "action": "redis_failover"}
    assert service.post(payload(alert("RedisMasterDown", down))).status_code == 200
    [failover] = service.wait_outcome(1)
    assert failover["outcome"] == "succeeded", service.audit()
    # the facts are audited just after the outcome, by the same writer: wait for them too
    [facts] = wait_for(lambda: service.events("facts"), 10, "the failover's facts audited")
    new = next(s for s in replicas if s.name == facts["new_primary"])

    master.process.start()
    wait_for(lambda: role(master) == "master", 15, "redis-1 back as a master")
    split = alert("RedisSplitBrain", {**LABELS, "action": "redis_rejoin"})
    for sender in ("Alertmanager peer-a", "Alertmanager peer-b", "Alertmanager peer-a"):
        assert service.post(payload(split), headers={"User-Agent": sender}).status_code == 200
    outcomes = service.wait_outcome(2)
    rejoin = [o for o in outcomes if o.get("action") == "redis_rejoin"]
    assert [o["outcome"] for o in rejoin] == ["succeeded"], service.audit()
    info = master.info("replication")
    assert (info["role"], info["master_port"], info["master_link_status"]) == ("slave", new.port, "up")
    assert [s.name for s in servers if role(s) == "master"] == [new.name]
    assert len([e for e in service.events("action_started") if e.get("action") == "redis_rejoin"]) == 1
    assert len(service.events("alert_duplicate")) == 2
    assert PASSWORD not in (service.state_dir / "audit.jsonl").read_text()
    service.stop()
