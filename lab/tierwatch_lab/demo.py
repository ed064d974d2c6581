"""``tierwatch demo``: the architecture on one machine, watched and repaired by the whole kit.

Starts, on 127.0.0.1 with the machine's own binaries: an HAProxy pair behind a VIP (a forwarder that
plays VRRP: see stack/tcp_forwarder.py), four app servers in two regions, Redis master + 2 replicas +
a backup master and replica in the failover region (+ 3 Sentinels with ``--sentinel``), PostgreSQL
primary + 2 replicas + a DR replica, write addresses (HAProxy tcp backends) for Redis and PostgreSQL,
and the chain: the exporter, Prometheus with the kit's rules, Alertmanager with the kit's routes and
the recovery service. Ctrl-C stops everything and removes its data.

The demo runs the chain with the fast-failover settings of docs/failover.md (1 s probe, scrape and
evaluation; 5 s ``for`` on the alerts that trigger an action) so the drills finish in seconds.
"""

from __future__ import annotations

import secrets
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .stack import Stack, StackError
from .stack.chain import Chain, ChainTiming, start_chain, write_lb_cluster
from .stack.express import ExpressApp, demo_app_dir, start_express
from .stack.haproxy import HAProxy, start_haproxy, start_vip, start_write_lb
from .stack.http import HttpBackend, start_http_backend
from .stack.launch import kill_launched
from .stack.netns import NetnsExporter, start_data_watchers
from .stack.node_exporter import node_job, start_node_exporter
from .stack.postgres import (
    PgServer,
    create_admin_role,
    create_app_role,
    pg_bin_dir,
    rejoin_commands,
    start_primary,
    start_replica,
)
from .stack.redis import WRITE_FENCING, RedisServer, start_redis, start_sentinels, wait_writes_accepted
from .stack.scrape_targets import traffic_jobs
from .stack.servernet import ServerNet, create_server_net
from .stack.vrrp import VrrpPair, create_vrrp_network, start_vrrp_pair, vrrp_available
from .traffic import TrafficGenerator, demo_traffic

AppServer = ExpressApp | HttpBackend

REQUIRED = {
    "haproxy": "haproxy",
    "redis-server": "redis-server",
    "redis-sentinel": "redis-sentinel",
    "prometheus": "prometheus",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "prometheus-node-exporter": "prometheus-node-exporter",
}
APP_REGIONS = {"es-1": "primary", "es-2": "primary", "es-3": "failover", "es-4": "failover"}
REDIS_REGIONS = {
    "redis-a": "primary",
    "redis-b": "primary",
    "redis-c": "primary",
    "redis-d": "failover",
    "redis-e": "failover",
}
PG_REGIONS = {"pg-1": "primary", "pg-2": "primary", "pg-3": "primary", "pg-dr": "failover"}
APP_ENV = ("HOST", "PORT", "APP_NAME", "REGION", "REDIS_URL", "REDIS_PASSWORD", "NODE_ENV")
REDIS_WRITE, PG_WRITE, APP_BACKEND = "be_redis_write", "be_pg_write", "be_app"
WINDOW = "5s"  # the detection window: `for` of every alert that triggers an action
# the exporter's breaker re-tries a dead target after six probe intervals, the default's ratio (30 s at
# 5 s): a returning old primary is seen within seconds (docs/failover.md, "Returning primaries")
BREAKER_RESET = "6s"
ACTION_ALERTS = (
    "RedisMasterDown",
    "RedisNoMaster",
    "PostgresPrimaryDown",
    "PostgresNoPrimary",
    "AppInstanceDown",
    "AppRegionDown",
    "LBActiveDown",
    "LBStandbyDown",
    "RedisSplitBrain",
    "PostgresSplitBrain",
    "RedisPrimaryRegionDown",
    "PostgresPrimaryRegionDown",
)
# The real-traffic alerts get the same short `for`, so the slow-app drill shows them in seconds (the
# drill checks their probe-based counterparts are never even pending, whatever their `for`).
TRAFFIC_ALERTS = (
    "AppTrafficBurnRateCritical",
    "AppTraffic5xxRatioHigh",
    "AppTrafficLatencyHigh",
    "LBBackendLatencyHigh",
    "LBBackendQueueLatencyHigh",
    "LBBackendRetriesHigh",
)
TRAFFIC_RATE = 10.0  # requests/s the demo sends through the VIP (lab/traffic.py)
ALLOW = {"RedisMasterDown": "redis_failover", "RedisNoMaster": "redis_failover",
         "PostgresPrimaryDown": "pg_promote", "PostgresNoPrimary": "pg_promote",
         "AppInstanceDown": "restart_instance", "AppRegionDown": "regional_failover",
         "LBActiveDown": "restart_instance", "LBStandbyDown": "restart_instance",
         "RedisSplitBrain": "redis_rejoin", "PostgresSplitBrain": "pg_rejoin",
         # regional data failover is opt-in (examples/recovery.yml); the region-loss drill needs it
         "RedisPrimaryRegionDown": {"action": "redis_failover", "regional": True},
         "PostgresPrimaryRegionDown": {"action": "pg_promote", "regional": True}}  # fmt: skip


@dataclass
class DemoStack:
    """Everything the demo started, with what drills need to reach it."""

    stack: Stack
    apps: dict[str, AppServer]
    lbs: list[HAProxy]
    vip_url: str
    redis: dict[str, RedisServer]
    pg: dict[str, PgServer]
    redis_write: HAProxy
    pg_write: HAProxy
    redis_password: str
    pg_app_password: str
    chain: Chain | None = None
    sentinels: list[RedisServer] = field(default_factory=list)
    vrrp: VrrpPair | None = None
    summary: list[str] = field(default_factory=list)
    watchers: list[NetnsExporter] = field(default_factory=list)  # build(netns_watchers=N)
    server_nets: dict[str, ServerNet] = field(default_factory=dict)  # build(isolable_primaries=True)


def missing_packages() -> list[str]:
    """Debian packages the demo needs that are not installed."""
    missing = [package for binary, package in REQUIRED.items() if shutil.which(binary) is None]
    try:
        pg_bin_dir()
    except (FileNotFoundError, StackError):
        missing.append("postgresql")
    return missing


def _launcher(stack: Stack, name: str, argv: list[str], env: dict[str, str] | None = None) -> list[str]:
    """The restart command of a demo server: relaunch ``argv`` detached (stack/launch.py); ``env``
    goes through a file readable by root only, so no secret is on a command line."""
    command = [
        sys.executable,
        "-m",
        "tierwatch_lab.stack.launch",
        "--pidfile",
        str(stack.path("launched", f"{name}.pid")),
        "--log",
        str(stack.path("logs", f"{name}-restarted.log")),
    ]
    if env:
        env_file = stack.path("launched", f"{name}.env")
        env_file.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
        env_file.chmod(0o600)
        command += ["--env-file", str(env_file)]
    return [*command, "--", *argv]


def build(
    stack: Stack,
    *,
    sentinel: bool = False,
    timing: ChainTiming | None = None,
    vrrp: bool | None = None,
    express: bool | None = None,
    recovery_replicas: int = 1,
    prometheus_replicas: int = 1,
    vantages: tuple[str, ...] = (),
    netns_watchers: int = 0,
    isolable_primaries: bool = False,
    remote_write: Sequence[str | dict[str, Any]] = (),
    replica_labels: Sequence[str] = (),
) -> DemoStack:
    """Start every server of the demo and the chain around them.

    ``vrrp``: keepalived VRRP between the LBs in network namespaces (default: when running as root
    with ip netns and keepalived; otherwise a TCP forwarder plays the VIP). ``express``: the Node.js
    app servers of demo/app (default: when node and npm are installed; otherwise a small Python app
    stands in). ``recovery_replicas`` > 1: that many recovery services sharing a lease in etcd;
    ``prometheus_replicas`` 2: a Prometheus pair; ``vantages``: one exporter per vantage point;
    ``netns_watchers``: that many more exporters (vantage ``watcher-N``) watching the data tier, each
    from a network namespace of its own (stack/netns.py; needs root). ``remote_write``: where every
    Prometheus also sends its samples (URLs or remote_write entries); ``replica_labels``: the
    recovery service's (default: its own)."""
    stack.on_close(lambda: kill_launched(stack.root / "launched"))
    use_vrrp = vrrp_available() if vrrp is None else vrrp
    use_express = bool(shutil.which("node") and shutil.which("npm")) if express is None else express
    redis_password = secrets.token_urlsafe(16)
    # every server fences writes (WRITE_FENCING): the master accepts writes once a replica has ACKed
    # isolable_primaries (the primary-partition drill): redis-a and pg-1 each run in a network
    # namespace of its own (stack/servernet.py), still at 127.0.0.1:<port> for everyone; replicas
    # announce 127.0.0.1 (their master sees them arrive from the namespace's veth address)
    nets = {n: create_server_net(stack) for n in ("redis-a", "pg-1")} if isolable_primaries else {}
    server_net = nets.get("redis-a")
    fencing = WRITE_FENCING + (("replica-announce-ip 127.0.0.1",) if server_net else ())
    first: dict[str, Any] = {"extra_config": fencing}
    if server_net is not None:
        first.update(port=server_net.expose(), launcher=server_net.launcher)
        first["extra_config"] = (*fencing, f"bind {' '.join(server_net.listen)}")
    redis: dict[str, RedisServer] = {
        "redis-a": start_redis(stack, "redis-a", password=redis_password, **first)
    }
    for name, upstream in (
        ("redis-b", "redis-a"),
        ("redis-c", "redis-a"),
        ("redis-d", "redis-a"),
        ("redis-e", "redis-d"),
    ):
        redis[name] = start_redis(
            stack, name, password=redis_password, replica_of=redis[upstream], extra_config=fencing
        )
    wait_writes_accepted(redis["redis-a"])
    redis_write = start_write_lb(
        stack, "lb-redis-write", REDIS_WRITE, [(n, s.port) for n, s in redis.items()], primary="redis-a"
    )

    net = create_vrrp_network(stack) if use_vrrp else None
    host = net.host_ip if net is not None else "127.0.0.1"
    apps: dict[str, AppServer] = {}
    restart: dict[str, list[str]] = {}
    for name, region in APP_REGIONS.items():
        if use_express:
            app = start_express(
                stack,
                name,
                region,
                f"redis://127.0.0.1:{redis_write.port}",
                host=host,
                redis_password=redis_password,
            )
            env = {key: value for key, value in (app.process.env or {}).items() if key in APP_ENV}
            restart[name] = _launcher(stack, name, ["node", str(demo_app_dir() / "server.js")], env)
            apps[name] = app
        else:
            backend = start_http_backend(stack, name, host=host)
            restart[name] = _launcher(stack, name, list(backend.process.argv))
            apps[name] = backend
    servers = [(n, a.port) for n, a in apps.items()]
    pair: VrrpPair | None = None
    if net is not None:
        pair = start_vrrp_pair(stack, servers, network=net)
        lbs, vip_url = pair.lbs, pair.vip_url
    else:
        lbs = [start_haproxy(stack, f"lb-{i}", servers) for i in (1, 2)]
        vip_url = start_vip(stack, lbs).url
    restart.update({lb.name: _launcher(stack, lb.name, list(lb.process.argv)) for lb in lbs})

    # commits wait for ANY 1 of the main-region servers (whichever are standbys at the time), so an
    # acknowledged write survives the primary's loss; set once the standbys stream, or creating the
    # roles would wait for a standby that does not exist yet
    sync = {"synchronous_standby_names": 'ANY 1 ("pg-1", "pg-2", "pg-3")'}
    pg_first: dict[str, Any] = {}
    if "pg-1" in nets:  # its clients arrive from the veth network
        pg_net = nets["pg-1"]
        pg_first = {"port": pg_net.expose(), "launcher": pg_net.launcher, "hba_networks": [pg_net.network],
                    "settings": {"listen_addresses": ",".join(pg_net.listen)}}  # fmt: skip
    pg: dict[str, PgServer] = {"pg-1": start_primary(stack, "pg-1", archive=True, **pg_first)}
    admin_password = create_admin_role(pg["pg-1"])
    app_password = create_app_role(pg["pg-1"], "app")
    for name in ("pg-2", "pg-3", "pg-dr"):
        pg[name] = start_replica(stack, pg["pg-1"], name, settings=sync if name != "pg-dr" else None)
    pg["pg-1"].sql(f"ALTER SYSTEM SET synchronous_standby_names = '{sync['synchronous_standby_names']}'")
    pg["pg-1"].sql("SELECT pg_reload_conf()")
    pg_write = start_write_lb(
        stack, "lb-pg-write", PG_WRITE, [(n, s.port) for n, s in pg.items()], primary="pg-1"
    )

    secrets_dir = stack.directory("secrets")
    files = {"redis": redis_password, "pg": pg["pg-1"].monitor_password, "pg-admin": admin_password}
    for file_name, value in files.items():
        (secrets_dir / file_name).write_text(value + "\n")
        (secrets_dir / file_name).chmod(0o600)

    cache: dict[str, Any] = {
        "name": "cache-main",
        "tier": "redis",
        "password_file": str(secrets_dir / "redis"),
        "targets": [{"name": n, "region": REDIS_REGIONS[n], "url": s.url} for n, s in redis.items()],
        "queues": [
            {"name": "emails", "kind": "bullmq"},
            {"name": "jobs", "kind": "list"},
            {"name": "events", "kind": "stream"},
        ],
    }
    sentinels: list[RedisServer] = []
    if sentinel:
        sentinels = start_sentinels(
            stack, redis["redis-a"], n=3, quorum=2, master_name="cache-main", down_after_ms=5000
        )
        cache["sentinel"] = {
            "master_name": "cache-main",
            "targets": [{"name": s.name, "region": "primary", "url": s.url} for s in sentinels],
        }
    clusters = [
        {
            "name": "edge",
            "tier": "lb",
            "vip": vip_url,
            "targets": [
                {"name": lb.name, "region": "primary", "url": lb.url, "stats_socket": str(lb.stats_socket)}
                for lb in lbs
            ],
        },
        {
            "name": "web",
            "tier": "app",
            "targets": [{"name": n, "region": APP_REGIONS[n], "url": a.url} for n, a in apps.items()],
        },
        cache,
        {
            "name": "main-db",
            "tier": "postgres",
            "password_file": str(secrets_dir / "pg"),
            # base-backup freshness: the DR replica was cloned by pg_basebackup (its renamed backup_label)
            "backup": {"last_backup_file": str(pg["pg-dr"].data_dir / "backup_label.old")},
            "targets": [
                {"name": n, "region": PG_REGIONS[n], "url": s.dsn_without_password} for n, s in pg.items()
            ],
        },
    ]
    write_lbs = [write_lb_cluster("write-lbs", [redis_write, pg_write])]
    recovery = {
        "allow": ALLOW, "cooldown": "0s", "action_timeout": "60s",
        "rate_limit": {"max_actions": 10, "per": "1h"},
        "clusters": {
            "cache-main": {"write_backend": REDIS_WRITE, "sentinel_wait": "30s"},
            "main-db": {"write_backend": PG_WRITE, "admin_user": "tierwatch_admin",
                        "admin_password_file": str(secrets_dir / "pg-admin"),
                        "rejoin_commands": {n: rejoin_commands(s, stack) for n, s in pg.items()}},
            "web": {"app_backend": APP_BACKEND, "restart_commands": {n: restart[n] for n in apps},
                    "weight_steps": [50, 0], "step_interval": "1s"},
            "edge": {"restart_commands": {lb.name: restart[lb.name] for lb in lbs}},
        },
    }  # fmt: skip
    if replica_labels:
        recovery["replica_labels"] = list(replica_labels)
    timing = timing or ChainTiming(
        for_values=tuple((n, WINDOW) for n in (*ACTION_ALERTS, *TRAFFIC_ALERTS)), breaker_reset=BREAKER_RESET
    )
    jobs = traffic_jobs(lbs, [a for a in apps.values() if isinstance(a, ExpressApp)])
    node = start_node_exporter(stack)  # this host, for the host rules and the hosts dashboard
    jobs.append(node_job(node))
    ports = {n: s.port for n, s in [*redis.items(), *pg.items()]}
    sections = timing.exporter_sections()
    watchers = start_data_watchers(stack, clusters, ports, netns_watchers, sections) if netns_watchers else []
    chain = start_chain(
        stack,
        clusters,
        recovery,
        timing,
        recovery_only=write_lbs,
        extra_jobs=jobs,
        alertmanager_peers=2,
        recovery_replicas=recovery_replicas,
        prometheus_replicas=prometheus_replicas,
        vantages=vantages,
        vantage_exporters=[(f"watcher-{i}", w.address) for i, w in enumerate(watchers, start=1)],
        remote_write=remote_write,
    )  # an Alertmanager cluster of two gossiping peers, Prometheus sending to both (docs/ha.md)
    demo = DemoStack(
        stack,
        apps,
        lbs,
        vip_url,
        redis,
        pg,
        redis_write,
        pg_write,
        redis_password,
        app_password,
        chain,
        sentinels,
        pair,
    )
    demo.watchers = watchers
    for ns_net in nets.values():  # each namespace reaches every other server and the write LBs
        others = [s.port for s in [*redis.values(), *pg.values()]] + [redis_write.port, pg_write.port]
        ns_net.reach([p for p in others if p not in ns_net.exposed])
    demo.server_nets = nets
    vip_kind = (
        f"keepalived VRRP in network namespaces {', '.join(pair.network.namespaces)}"
        if pair
        else "TCP forwarder"
    )
    demo.summary = [
        f"VIP            {vip_url}  ({vip_kind}; lb-1 {lbs[0].url}, lb-2 {lbs[1].url})",
        f"App servers    {', '.join(f'{n} {a.url}' for n, a in apps.items())}  "
        f"({'Express' if use_express else 'Python stand-in'})",
        f"Redis writes   redis://127.0.0.1:{redis_write.port}  (master redis-a; replicas b, c; "
        "backup d -> e in the failover region)",
        f"PG writes      postgresql://app@127.0.0.1:{pg_write.port}/postgres  "
        "(primary pg-1; replicas pg-2, pg-3; DR pg-dr)",
        *(["Sentinel       3 sentinels in charge of Redis failover (down-after 5 s)"] if sentinel else []),
        f"Exporter       {chain.exporter.url}/  (status page) and {chain.exporter.url}/metrics",
        f"Prometheus     {chain.prometheus.url}/alerts",
        f"Alertmanager   {chain.alertmanager.url}",
        f"Node exporter  {node.url}  (this host: CPU, memory, disks, file handles; job node)",
        f"Recovery       {chain.recovery.url}/metrics; audit trail {chain.state_dir / 'audit.jsonl'}",
        f"Config         {chain.exporter.config}",
    ]
    return demo


def run(sentinel: bool = False, profile: str = "default") -> int:
    """Start the demo (``profile`` ``scale``: lab/demo_scale.py); block until Ctrl-C; stop everything."""
    from .demo_scale import build_scale, missing_scale_packages

    missing = missing_packages() + (missing_scale_packages() if profile == "scale" else [])
    if missing:
        print(
            f"tierwatch demo: missing Debian packages: {' '.join(missing)}\n"
            f"install them with: apt-get install {' '.join(missing)}  (or run ./scripts/setup)",
            file=sys.stderr,
        )
        return 1
    stack = Stack()
    traffic: TrafficGenerator | None = None
    try:
        print("tierwatch demo: starting the stack and the chain (takes ~20 s)...", flush=True)
        scale = build_scale(stack, sentinel=sentinel) if profile == "scale" else None
        demo = scale.demo if scale else build(stack, sentinel=sentinel)
        traffic = demo_traffic(demo, TRAFFIC_RATE).start()
        stack.on_close(traffic.stop)  # also stopped first in `finally`, before the servers
        demo.summary.append(
            f"Traffic        {TRAFFIC_RATE:g} requests/s through the VIP to /work (lab/traffic.py)"
        )
        print(
            "\n".join(
                [
                    "",
                    *demo.summary,
                    "Drills         tierwatch demo drill --help  (each starts a stack of its own)",
                    "Stop           Ctrl-C (stops every process and removes the data)",
                    "",
                ]
            ),
            flush=True,
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    except StackError as exc:
        print(f"tierwatch demo: {exc}", file=sys.stderr)
        return 1
    finally:
        if traffic is not None:
            traffic.stop()
        stack.close()
        print("tierwatch demo: stopped; every process and data directory removed.", flush=True)
    return 0
