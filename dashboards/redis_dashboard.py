"""The Redis dashboard: the replication group and its Sentinels."""

from __future__ import annotations

from .dsl import OK_FAIL, UP_DOWN, C, Dashboard, Row, T, live_primaries, q, rate, role_panel, sel, stat, ts

RT = ('tier="redis"', T)

REDIS = Dashboard(
    file="redis.json",
    uid="tierwatch-redis",
    title="tierwatch / Redis",
    description="The Redis replication group and its Sentinels: roles, replication, cache hit ratio, "
    "memory, clients and commands.",
    tiers="redis|sentinel",
    rows=(
        Row(
            "Topology",
            (
                role_panel(
                    "Redis servers",
                    "redis",
                    "primary",
                    "replica",
                    ("RedisMasterDown", "RedisNoMaster", "RedisPrimaryRegionDown"),
                    width=10,
                    height=5,
                ),
                live_primaries(
                    'tier="redis"', "Masters", ("RedisNoMaster", "RedisSplitBrain"), width=4, height=5
                ),
                stat(
                    "Healthy replicas",
                    "Replicas up with their master link up, against the configured count.",
                    "none",
                    q(
                        sel("cluster:tierwatch_replicas_healthy:count", 'tier="redis"', C),
                        "{{cluster}} healthy",
                    ),
                    q(
                        sel("cluster:tierwatch_replicas_expected:count", 'tier="redis"', C),
                        "{{cluster}} expected",
                    ),
                    alerts=("RedisReplicasMissing",),
                    width=5,
                    height=5,
                ),
                stat(
                    "Sentinel quorum",
                    "1 when a Sentinel says enough Sentinels are reachable to fail the master over.",
                    "none",
                    q(sel("tierwatch_sentinel_quorum_reachable", 'tier="sentinel"', T), "{{target}}"),
                    alerts=("RedisSentinelQuorumLost",),
                    mappings=OK_FAIL,
                    width=5,
                    height=5,
                ),
            ),
        ),
        Row(
            "Replication",
            (
                ts(
                    "Replication lag",
                    "Bytes of replication stream each replica is behind its master.",
                    "bytes",
                    q(sel("tierwatch_replication_lag_bytes", *RT), "{{target}}"),
                    alerts=("RedisReplicationLagHigh",),
                ),
                stat(
                    "Replica links",
                    "On each replica: whether its link to its master is up.",
                    "none",
                    q(sel("tierwatch_redis_master_link_up", *RT), "{{target}}"),
                    alerts=("RedisReplicaLinkDown", "RedisReplicaLinkFlapping"),
                    mappings=UP_DOWN,
                ),
                ts(
                    "Connected replicas",
                    "Replicas connected to each server (INFO connected_slaves).",
                    "short",
                    q(sel("tierwatch_redis_connected_replicas", *RT), "{{target}}"),
                ),
                ts(
                    "Write fencing",
                    "On each master: replicas within min-replicas-max-lag (good) against "
                    "min-replicas-to-write (needed; absent where CONFIG GET is denied), and whether "
                    "fencing is on at all.",
                    "short",
                    q(sel("tierwatch_redis_min_replicas_good", *RT), "{{target}} good"),
                    q(sel("tierwatch_redis_min_replicas_to_write", *RT), "{{target}} needed"),
                    q(sel("tierwatch_redis_write_fencing", *RT), "{{target}} fencing on"),
                    alerts=("RedisWriteFencingOff", "RedisWriteFencingUnmet"),
                ),
            ),
        ),
        Row(
            "Cache and load",
            (
                ts(
                    "Cache hit ratio",
                    "Keyspace hits / lookups over 10 minutes (target:tierwatch_cache_hit:ratio_rate10m).",
                    "percentunit",
                    q(sel("target:tierwatch_cache_hit:ratio_rate10m", *RT), "{{target}}"),
                    alerts=("RedisCacheHitRatioLow", "RedisCacheColdAfterFailover"),
                ),
                ts(
                    "Commands",
                    "Commands processed per second.",
                    "ops",
                    q(rate("tierwatch_redis_commands_processed_total", *RT), "{{target}}"),
                ),
                ts(
                    "Evicted and expired keys",
                    "Keys evicted (maxmemory reached) and expired per second.",
                    "ops",
                    q(rate("tierwatch_redis_evicted_keys_total", *RT), "{{target}} evicted"),
                    q(rate("tierwatch_redis_expired_keys_total", *RT), "{{target}} expired"),
                    alerts=("RedisEvictions",),
                ),
                ts(
                    "Memory used",
                    "Memory allocated by Redis; the limit is maxmemory (0 = none).",
                    "bytes",
                    q(sel("tierwatch_redis_memory_used_bytes", *RT), "{{target}}"),
                    alerts=("RedisMemoryNearMax",),
                ),
                ts(
                    "Clients",
                    "Client connections and clients blocked in a blocking call.",
                    "short",
                    q(sel("tierwatch_redis_connected_clients", *RT), "{{target}} connected"),
                    q(sel("tierwatch_redis_blocked_clients", *RT), "{{target}} blocked"),
                    alerts=("RedisClientsNearMax",),
                ),
                ts(
                    "Rejected connections",
                    "Connections rejected per second because maxclients was reached.",
                    "cps",
                    q(rate("tierwatch_redis_rejected_connections_total", *RT), "{{target}}"),
                    alerts=("RedisRejectedConnections",),
                ),
            ),
        ),
        Row(
            "Persistence",
            (
                stat(
                    "Last RDB save and AOF write / rewrite",
                    "Result of each server's last RDB snapshot, and of its last AOF write and rewrite "
                    "where AOF is on (INFO persistence).",
                    "none",
                    q(sel("tierwatch_redis_rdb_last_bgsave_ok", *RT), "{{target}} RDB save"),
                    q(sel("tierwatch_redis_aof_last_write_ok", *RT), "{{target}} AOF write"),
                    q(sel("tierwatch_redis_aof_last_rewrite_ok", *RT), "{{target}} AOF rewrite"),
                    alerts=("RedisRdbSaveFailed", "RedisAofWriteFailed", "RedisAofRewriteFailed"),
                    mappings=OK_FAIL,
                    width=12,
                ),
                ts(
                    "Since the last RDB save",
                    "Age of each server's last successful snapshot, where snapshots are configured "
                    "(CONFIG GET save); writes since then are lost by a restart without AOF.",
                    "s",
                    q(
                        f"time() - {sel('tierwatch_redis_rdb_last_save_timestamp_seconds', *RT)}",
                        "{{target}}",
                    ),
                    alerts=("RedisRdbSaveStale",),
                    width=12,
                ),
            ),
        ),
        Row(
            "Memory and restarts",
            (
                ts(
                    "Fragmentation",
                    "Resident memory over used memory (mem_fragmentation_ratio): above 1.5 with much "
                    "memory held unused, the allocator keeps what Redis freed.",
                    "none",
                    q(sel("tierwatch_redis_memory_fragmentation_ratio", *RT), "{{target}}"),
                    alerts=("RedisMemoryFragmentationHigh",),
                    width=12,
                ),
                stat(
                    "Uptime",
                    "Seconds since each server started; a drop is a restart.",
                    "s",
                    q(sel("tierwatch_redis_uptime_seconds", *RT), "{{target}}"),
                    alerts=("RedisRestarted",),
                    thresholds=((None, "orange"), (900.0, "green")),
                    width=12,
                ),
            ),
        ),
    ),
)
