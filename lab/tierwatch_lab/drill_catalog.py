"""The drills' names and what each does, in the order ``tierwatch demo drill --help`` lists them.

Data only, like the product's action_catalog.py: the registry (drills.py) maps these names to the
drill functions, and a result (drill_kit.DrillResult) renders its scenario's description from here,
so the modules that write drills need not import the registry that imports them.
"""

from __future__ import annotations

SCENARIOS = {
    # drills_basic.py
    "redis-master": "kill the Redis master (SIGKILL)",
    "pg-primary": "kill the PostgreSQL primary (SIGKILL of the postmaster)",
    "app-instance": "kill app server es-1",
    "active-lb": "kill the active load balancer (lb-1)",
    "region": "lose the whole primary region's app servers (es-1, es-2)",
    # drills_traffic.py
    "slow-app": "app server es-1 passes its health checks but is slow and fails half the real requests",
    # drills_faults.py
    "redis-pause": "SIGSTOP the Redis master longer than the detection window, then SIGCONT",
    "pg-pause": "SIGSTOP all processes of the PostgreSQL primary beyond the detection window, then SIGCONT",
    "old-primary-return": "kill the Redis master and the PostgreSQL primary, restart both after the failover",
    "watcher-partition": "cut one vantage point's watcher (network namespace) off from both primaries",
    # drills_ha.py
    "kill-alertmanager-peer": "kill -9 an Alertmanager peer, then the Redis master (drills_ha.py)",
    "kill-recovery-leader": "kill the Redis master, then kill -9 the recovery leader (drills_ha.py)",
    "kill-recovery-leader-pg": "kill the PostgreSQL primary, then kill -9 the recovery leader",
    "etcd-member-loss": "kill an etcd member during a Redis failover, then lose etcd quorum",
    "kill-prometheus-replica": "kill the Redis master, then kill -9 one Prometheus of the pair",
    "kill-exporter-vantage": "kill the Redis master, then kill -9 one of two exporters (vantages)",
    "stale-dns-leader": "kill the Redis master, pause the recovery leader before its DNS step, wake it after "
    "the other replica moved the record",
    # drills_patroni.py (a stack of its own: etcd, Patroni, a write LB and the chain)
    "pg-primary-patroni": "kill the node of the Patroni leader (Patroni and PostgreSQL, SIGKILL); Patroni "
    "elects, the chain moves the writes",
    # drills_region.py
    "region-loss": (
        "lose the whole primary region with its data tier: SIGKILL of es-1, es-2, redis-a/b/c, pg-1/2/3 "
        "and the primary vantage's exporter; the LB pair, the write LBs and the chain stay (drills_region.py)"
    ),
    # drills_partition.py
    "primary-partition": "cut the Redis master, then the PostgreSQL primary, off with some of their clients "
    "(network namespaces)",
    # drills_backup.py
    "bad-write": "DELETE without WHERE while the app writes; point-in-time recovery to just before it "
    "into a new instance (tierwatch pitr)",
    "backup-corruption": "flip one byte in a file of the newest backup; the next restore test must fail "
    "and page",
    "wal-gap": "remove one archived WAL segment from the repository; the gap must page before any restore",
}
