"""Starting the demo stack: :func:`build`, with its options in :class:`DemoOptions`.

The steps, in the order they run (each a function below):

0. with ``DemoOptions.logs``, the log collector and mtail (demo_logs.py), before any server logs;
1. ``_start_redis``: the Redis master, two replicas, the failover region's backup master and its
   replica (a cascade), and the Redis write address (an HAProxy tcp backend);
2. ``_start_web``: the four app servers (``_start_apps``) and the LB pair with the VIP in front of them;
3. ``_start_postgres``: the PostgreSQL primary (archiving with pgBackRest, a first full backup,
   ``DemoOptions.backups``), two synchronous replicas, the DR replica and the PostgreSQL write address;
4. ``_write_secrets``, Sentinels (``DemoOptions.sentinel``), then the chain's configuration: the
   exporter's clusters (``_exporter_clusters``) and the recovery service's section
   (``_recovery_section``);
5. ``_start_chain``: a node exporter, the netns watchers, then the chain (stack/chain.py): exporter(s),
   Prometheus, two Alertmanager peers, the recovery service(s);
6. the backup jobs (demo_backups.py), ``_connect_server_nets`` and ``_summary``.
"""

from __future__ import annotations

import secrets
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import demo_backups, demo_logs
from .demo_backups import BackupSchedule, DemoBackups
from .demo_dns import DemoDns, start_dns
from .demo_stack import (
    ACTION_ALERTS,
    APP_BACKEND,
    APP_REGIONS,
    BACKUP_ALERTS,
    BREAKER_RESET,
    PG_REGIONS,
    PG_WRITE,
    REDIS_REGIONS,
    REDIS_WRITE,
    TRAFFIC_ALERTS,
    WINDOW,
    AppServer,
    DemoLogs,
    DemoStack,
)
from .stack import Stack
from .stack.chain import Chain, ChainTiming, start_chain, write_lb_cluster
from .stack.express import ExpressApp, demo_app_dir, start_express
from .stack.haproxy import HAProxy, start_haproxy, start_vip, start_write_lb
from .stack.http import start_http_backend
from .stack.launch import kill_launched
from .stack.netns import NetnsExporter, start_data_watchers
from .stack.node_exporter import NodeExporter, node_job, start_node_exporter
from .stack.pgbackrest import start_backed_up_primary
from .stack.postgres import (
    LOG_SETTINGS,
    PgServer,
    create_admin_role,
    create_app_role,
    rejoin_commands,
    start_primary,
    start_replica,
)
from .stack.redis import WRITE_FENCING, RedisServer, start_redis, start_sentinels, wait_writes_accepted
from .stack.scrape_targets import traffic_jobs
from .stack.servernet import ServerNet, create_server_net
from .stack.vrrp import VrrpPair, create_vrrp_network, start_vrrp_pair, vrrp_available

APP_ENV = ("HOST", "PORT", "APP_NAME", "REGION", "REDIS_URL", "REDIS_PASSWORD", "NODE_ENV")
ALLOW = {"RedisMasterDown": "redis_failover", "RedisNoMaster": "redis_failover",
         "PostgresPrimaryDown": "pg_promote", "PostgresNoPrimary": "pg_promote",
         "AppInstanceDown": "restart_instance", "AppRegionDown": "regional_failover",
         "LBActiveDown": "restart_instance", "LBStandbyDown": "restart_instance",
         "RedisSplitBrain": "redis_rejoin", "PostgresSplitBrain": "pg_rejoin",
         # regional data failover is opt-in (examples/recovery.yml); the region-loss drill needs it
         "RedisPrimaryRegionDown": {"action": "redis_failover", "regional": True},
         "PostgresPrimaryRegionDown": {"action": "pg_promote", "regional": True}}  # fmt: skip
# commits wait for ANY 1 of the main-region servers (whichever are standbys at the time), so an
# acknowledged write survives the primary's loss
SYNCHRONOUS_STANDBYS = 'ANY 1 ("pg-1", "pg-2", "pg-3")'


@dataclass(frozen=True)
class DemoOptions:
    """How :func:`build` shapes the demo; the defaults are what ``tierwatch demo`` starts.

    ``vrrp``: keepalived VRRP between the LBs in network namespaces (None: when running as root with
    ip netns and keepalived; otherwise a TCP forwarder plays the VIP). ``express``: the Node.js app
    servers of demo/app (None: when node and npm are installed; otherwise a small Python app stands
    in). ``recovery_replicas`` > 1: that many recovery services sharing a lease in etcd;
    ``prometheus_replicas`` 2: a Prometheus pair; ``vantages``: one exporter per vantage point;
    ``netns_watchers``: that many more exporters (vantage ``watcher-N``) watching the data tier, each
    from a network namespace of its own (stack/netns.py; needs root); ``isolable_primaries``: redis-a
    and pg-1 each in a network namespace of their own (stack/servernet.py; the primary-partition
    drill). ``remote_write``: where every Prometheus also sends its samples (URLs or remote_write
    entries); ``replica_labels``: the recovery service's (default: its own); ``timing``: the chain's
    (default: the demo's 5 s window on the action and traffic alerts, docs/failover.md).
    ``backups``: pgBackRest archiving and backups of pg-1, Redis snapshots, the exporter reading
    pgBackRest's report, the heartbeat and scheduled restore tests (demo_backups.py); the drills that
    are not about backups turn it off (drills.build_options). ``dns``: a Knot DNS server with the
    stack's zone, whose records the recovery service moves after a failover and the exporter checks
    (demo_dns.py). ``logs``: every component's log in one collector (rsyslog) and mtail turning it into
    counters, scraped as job ``logs`` (demo_logs.py)."""

    sentinel: bool = False
    timing: ChainTiming | None = None
    vrrp: bool | None = None
    express: bool | None = None
    recovery_replicas: int = 1
    prometheus_replicas: int = 1
    vantages: tuple[str, ...] = ()
    netns_watchers: int = 0
    isolable_primaries: bool = False
    remote_write: Sequence[str | dict[str, Any]] = ()
    replica_labels: Sequence[str] = ()
    backups: bool = True
    dns: bool = True
    logs: bool = True


@dataclass(frozen=True)
class _Web:
    """The app servers and the LB pair in front of them, with each one's restart command."""

    apps: dict[str, AppServer]
    lbs: list[HAProxy]
    vip_url: str
    pair: VrrpPair | None
    restart: dict[str, list[str]]
    express: bool


@dataclass(frozen=True)
class _Postgres:
    """The PostgreSQL servers, their write address and the passwords of the roles made for the kit."""

    servers: dict[str, PgServer]
    write_lb: HAProxy
    admin_password: str
    app_password: str
    backups: DemoBackups | None


def build(stack: Stack, options: DemoOptions | None = None, **settings: Any) -> DemoStack:
    """Start every server of the demo and the chain around them, shaped by ``options`` with
    ``settings`` (fields of :class:`DemoOptions`, e.g. ``build(stack, recovery_replicas=2)``) over it."""
    opts = replace(options or DemoOptions(), **settings)
    stack.on_close(lambda: kill_launched(stack.root / "launched"))
    use_vrrp = vrrp_available() if opts.vrrp is None else opts.vrrp
    use_express = bool(shutil.which("node") and shutil.which("npm")) if opts.express is None else opts.express
    redis_password = secrets.token_urlsafe(16)
    nets = {n: create_server_net(stack) for n in ("redis-a", "pg-1")} if opts.isolable_primaries else {}
    logs = (
        demo_logs.start_logs_for_demo(
            stack, vrrp=use_vrrp, vantages=opts.vantages, recovery_replicas=opts.recovery_replicas
        )
        if opts.logs
        else None
    )
    redis, redis_write = _start_redis(stack, redis_password, nets.get("redis-a"), logs)
    web = _start_web(stack, redis_write, redis_password, use_vrrp, use_express, logs)
    pg = _start_postgres(stack, nets.get("pg-1"), opts.backups, logs)
    secrets_dir = _write_secrets(stack, redis_password, pg)
    sentinels: list[RedisServer] = []
    if opts.sentinel:
        sentinels = start_sentinels(
            stack, redis["redis-a"], n=3, quorum=2, master_name="cache-main", down_after_ms=5000
        )
    clusters = _exporter_clusters(web, redis, pg, secrets_dir, sentinels)
    if pg.backups is not None:
        clusters[2]["backup"] = {"heartbeat_key": demo_backups.HEARTBEAT_KEY}  # cache-main
    recovery = _recovery_section(stack, web, pg, secrets_dir, opts.replica_labels)
    write_lbs = [write_lb_cluster("write-lbs", [redis_write, pg.write_lb])]
    dns = _start_dns(stack, web, redis, pg) if opts.dns else None
    chain, watchers, node = _start_chain(
        stack, opts, clusters, recovery, write_lbs, web, redis, pg, dns, logs
    )
    demo = DemoStack(
        stack,
        web.apps,
        web.lbs,
        web.vip_url,
        redis,
        pg.servers,
        redis_write,
        pg.write_lb,
        redis_password,
        pg.app_password,
        chain,
        sentinels,
        web.pair,
    )
    demo.watchers = watchers
    demo.dns = dns
    demo.logs = logs
    if pg.backups is not None:
        demo.backups = pg.backups
        demo.backup_schedule = _start_backup_jobs(stack, pg.backups, chain)
    _connect_server_nets(nets, demo)
    demo.server_nets = nets
    demo.summary = _summary(demo, web.express, opts.sentinel, node)
    return demo


def _start_redis(
    stack: Stack, password: str, net: ServerNet | None, logs: DemoLogs | None
) -> tuple[dict[str, RedisServer], HAProxy]:
    """redis-a (the master), its replicas b, c and d, e replicating from d; the write address.

    Every server fences writes (WRITE_FENCING): the master accepts writes once a replica has ACKed.
    With ``net`` (isolable_primaries), redis-a runs in that network namespace, still at
    127.0.0.1:<port> for everyone; the replicas announce 127.0.0.1 (their master sees them arrive
    from the namespace's veth address)."""
    fencing = WRITE_FENCING + (("replica-announce-ip 127.0.0.1",) if net else ())
    first: dict[str, Any] = {"extra_config": fencing}
    if net is not None:
        first.update(port=net.expose(), launcher=net.launcher)
        first["extra_config"] = (*fencing, f"bind {' '.join(net.listen)}")
    redis: dict[str, RedisServer] = {"redis-a": start_redis(stack, "redis-a", password=password, **first)}
    for name, upstream in (
        ("redis-b", "redis-a"),
        ("redis-c", "redis-a"),
        ("redis-d", "redis-a"),
        ("redis-e", "redis-d"),
    ):
        redis[name] = start_redis(
            stack, name, password=password, replica_of=redis[upstream], extra_config=fencing
        )
    wait_writes_accepted(redis["redis-a"])
    write_lb = start_write_lb(
        stack,
        "lb-redis-write",
        REDIS_WRITE,
        [(n, s.port) for n, s in redis.items()],
        primary="redis-a",
        log=logs.lb("lb-redis-write") if logs else None,
    )
    return redis, write_lb


def _start_web(
    stack: Stack,
    redis_write: HAProxy,
    redis_password: str,
    use_vrrp: bool,
    use_express: bool,
    logs: DemoLogs | None,
) -> _Web:
    """The app servers and the LB pair: keepalived VRRP between two network namespaces bridged to
    the host (the app servers then listen on the bridge), or a TCP forwarder playing the VIP."""
    net = create_vrrp_network(stack) if use_vrrp else None
    host = net.host_ip if net is not None else "127.0.0.1"
    apps, restart = _start_apps(stack, host, redis_write, redis_password, use_express)
    servers = [(n, a.port) for n, a in apps.items()]
    pair: VrrpPair | None = None
    if net is not None:
        pair = start_vrrp_pair(stack, servers, network=net, logs=logs.lb_targets if logs else None)
        lbs, vip_url = pair.lbs, pair.vip_url
    else:
        lbs = [
            start_haproxy(stack, f"lb-{i}", servers, log=logs.lb(f"lb-{i}") if logs else None) for i in (1, 2)
        ]
        vip_url = start_vip(stack, lbs).url
    restart.update({lb.name: _launcher(stack, lb.name, list(lb.process.argv)) for lb in lbs})
    return _Web(apps, lbs, vip_url, pair, restart, use_express)


def _start_apps(
    stack: Stack, host: str, redis_write: HAProxy, redis_password: str, use_express: bool
) -> tuple[dict[str, AppServer], dict[str, list[str]]]:
    """The app servers of both regions (Express with its job queues in Redis, or the Python
    stand-in), and the restart command of each."""
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
    return apps, restart


def _start_postgres(stack: Stack, net: ServerNet | None, backups: bool, logs: DemoLogs | None) -> _Postgres:
    """pg-1 (the primary, archiving — with pgBackRest into the failover region's repository and a
    first full backup when ``backups``, else by copying; in ``net`` with isolable_primaries), the kit's
    admin role and the app role (and the heartbeat table), replicas pg-2, pg-3 (synchronous
    candidates) and pg-dr; the write address. With ``logs``, every server logs LOG_SETTINGS' way and
    the write address logs its connections."""
    # set on the primary once the standbys stream, or creating the roles would wait for a standby
    # that does not exist yet
    log_settings = LOG_SETTINGS if logs else {}
    sync = {"synchronous_standby_names": SYNCHRONOUS_STANDBYS, **log_settings}
    first: dict[str, Any] = {"settings": dict(log_settings)}
    if net is not None:  # its clients arrive from the veth network
        first = {"port": net.expose(), "launcher": net.launcher, "hba_networks": [net.network],
                 "settings": {"listen_addresses": ",".join(net.listen), **log_settings}}  # fmt: skip
    demo_backups_: DemoBackups | None = None
    if backups:
        repo = stack.directory("region-failover", "pgbackrest", owner="postgres")
        settings = first.pop("settings", None)
        primary, backrest = start_backed_up_primary(
            stack,
            "pg-1",
            stanza=demo_backups.STANZA,
            repo=repo,
            settings=settings,
            full_backup=False,
            **first,
        )
        pg: dict[str, PgServer] = {"pg-1": primary}
        demo_backups.create_heartbeat_table(primary)
        backrest.backup("full")  # after the table: a restore has it even before the next WAL is archived
        demo_backups_ = demo_backups.prepare(stack, backrest)
    else:
        pg = {"pg-1": start_primary(stack, "pg-1", archive=True, **first)}
    admin_password = create_admin_role(pg["pg-1"])
    app_password = create_app_role(pg["pg-1"], "app")
    for name in ("pg-2", "pg-3", "pg-dr"):
        pg[name] = start_replica(stack, pg["pg-1"], name, settings=sync if name != "pg-dr" else log_settings)
    pg["pg-1"].sql(f"ALTER SYSTEM SET synchronous_standby_names = '{SYNCHRONOUS_STANDBYS}'")
    pg["pg-1"].sql("SELECT pg_reload_conf()")
    write_lb = start_write_lb(
        stack,
        "lb-pg-write",
        PG_WRITE,
        [(n, s.port) for n, s in pg.items()],
        primary="pg-1",
        log=logs.lb("lb-pg-write") if logs else None,
    )
    return _Postgres(pg, write_lb, admin_password, app_password, demo_backups_)


def _write_secrets(stack: Stack, redis_password: str, pg: _Postgres) -> Path:
    """The password files the chain reads (mode 0600); returns their directory."""
    secrets_dir = stack.directory("secrets")
    files = {
        "redis": redis_password,
        "pg": pg.servers["pg-1"].monitor_password,
        "pg-admin": pg.admin_password,
    }
    for file_name, value in files.items():
        (secrets_dir / file_name).write_text(value + "\n")
        (secrets_dir / file_name).chmod(0o600)
    return secrets_dir


def _exporter_clusters(
    web: _Web,
    redis: dict[str, RedisServer],
    pg: _Postgres,
    secrets_dir: Path,
    sentinels: list[RedisServer],
) -> list[dict[str, Any]]:
    """The exporter's ``clusters``: edge (the LB pair and its VIP), web, cache-main (with its queues
    and Sentinels, if any) and main-db."""
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
    if sentinels:
        cache["sentinel"] = {
            "master_name": "cache-main",
            "targets": [{"name": s.name, "region": "primary", "url": s.url} for s in sentinels],
        }
    return [
        {
            "name": "edge",
            "tier": "lb",
            "vip": web.vip_url,
            "targets": [
                {"name": lb.name, "region": "primary", "url": lb.url, "stats_socket": str(lb.stats_socket)}
                for lb in web.lbs
            ],
        },
        {
            "name": "web",
            "tier": "app",
            "targets": [{"name": n, "region": APP_REGIONS[n], "url": a.url} for n, a in web.apps.items()],
        },
        cache,
        {
            "name": "main-db",
            "tier": "postgres",
            "password_file": str(secrets_dir / "pg"),
            "backup": _pg_backup_watch(pg),
            "targets": [
                {"name": n, "region": PG_REGIONS[n], "url": s.dsn_without_password}
                for n, s in pg.servers.items()
            ],
        },
    ]


def _pg_backup_watch(pg: _Postgres) -> dict[str, Any]:
    """``main-db``'s ``backup:``: pgBackRest's report and the heartbeat (``backups``); else the base
    backup's freshness from the DR replica's backup_label, renamed by pg_basebackup's clone."""
    if pg.backups is not None:
        return pg.backups.exporter_backup()
    return {"last_backup_file": str(pg.servers["pg-dr"].data_dir / "backup_label.old")}


def _recovery_section(
    stack: Stack, web: _Web, pg: _Postgres, secrets_dir: Path, replica_labels: Sequence[str]
) -> dict[str, Any]:
    """The recovery service's configuration: the allowed actions (ALLOW) and how to act on each
    cluster (write backends, the admin role, rejoin and restart commands)."""
    recovery = {
        "allow": ALLOW, "cooldown": "0s", "action_timeout": "60s",
        "rate_limit": {"max_actions": 10, "per": "1h"},
        "clusters": {
            "cache-main": {"write_backend": REDIS_WRITE, "sentinel_wait": "30s"},
            "main-db": {"write_backend": PG_WRITE, "admin_user": "tierwatch_admin",
                        "admin_password_file": str(secrets_dir / "pg-admin"),
                        "rejoin_commands": {n: rejoin_commands(s, stack) for n, s in pg.servers.items()}},
            "web": {"app_backend": APP_BACKEND, "restart_commands": {n: web.restart[n] for n in web.apps},
                    "weight_steps": [50, 0], "step_interval": "1s"},
            "edge": {"restart_commands": {lb.name: web.restart[lb.name] for lb in web.lbs}},
        },
    }  # fmt: skip
    if replica_labels:
        recovery["replica_labels"] = list(replica_labels)
    return recovery


def _start_chain(
    stack: Stack,
    opts: DemoOptions,
    clusters: list[dict[str, Any]],
    recovery: dict[str, Any],
    write_lbs: list[dict[str, Any]],
    web: _Web,
    redis: dict[str, RedisServer],
    pg: _Postgres,
    dns: DemoDns | None,
    logs: DemoLogs | None,
) -> tuple[Chain, list[NetnsExporter], NodeExporter]:
    """A node exporter for this host, the netns watchers (``opts.netns_watchers``), then the chain
    (with mtail's job ``logs`` when ``logs``):
    an Alertmanager cluster of two gossiping peers, Prometheus sending to both (docs/ha.md), with the
    real-traffic and host scrape jobs; the write LBs known to the recovery service only."""
    timing = opts.timing or ChainTiming(
        for_values=tuple((n, WINDOW) for n in (*ACTION_ALERTS, *TRAFFIC_ALERTS, *BACKUP_ALERTS)),
        breaker_reset=BREAKER_RESET,
    )
    jobs = traffic_jobs(web.lbs, [a for a in web.apps.values() if isinstance(a, ExpressApp)])
    # this host, for the host rules and the hosts dashboard; and the batch jobs' results (textfiles)
    node = start_node_exporter(stack, textfile_dir=pg.backups.textfile_dir if pg.backups else None)
    jobs.append(node_job(node))
    if logs is not None:
        jobs.append(demo_logs.scrape_job(logs))
    ports = {n: s.port for n, s in [*redis.items(), *pg.servers.items()]}
    sections = timing.exporter_sections()
    watchers: list[NetnsExporter] = []
    if opts.netns_watchers:
        watchers = start_data_watchers(stack, clusters, ports, opts.netns_watchers, sections)
    chain = start_chain(
        stack,
        clusters,
        recovery,
        timing,
        recovery_only=write_lbs,
        extra_jobs=jobs,
        alertmanager_peers=2,
        recovery_replicas=opts.recovery_replicas,
        prometheus_replicas=opts.prometheus_replicas,
        vantages=opts.vantages,
        vantage_exporters=[(f"watcher-{i}", w.address) for i, w in enumerate(watchers, start=1)],
        remote_write=opts.remote_write,
        backups=pg.backups.section() if pg.backups else None,
        service_discovery=dns.section() if dns else None,
    )
    return chain, watchers, node


def _start_dns(stack: Stack, web: _Web, redis: dict[str, RedisServer], pg: _Postgres) -> DemoDns:
    """The zone's server, its records naming redis-a, pg-1 and the primary region (demo_dns.py)."""
    return start_dns(
        stack,
        {name: server.port for name, server in redis.items()},
        {name: server.port for name, server in pg.servers.items()},
        {name: (APP_REGIONS[name], app.port) for name, app in web.apps.items()},
        {"redis": "redis-a", "pg": "pg-1", "app": "primary"},
    )


def _start_backup_jobs(stack: Stack, backups: DemoBackups, chain: Chain) -> BackupSchedule:
    """The scheduled backups, snapshots and restore tests, run on the chain's exporter config."""
    return demo_backups.start_schedule(stack, backups, chain.exporter.config)


def _connect_server_nets(nets: dict[str, ServerNet], demo: DemoStack) -> None:
    """Let each server namespace reach every other data server and the write LBs."""
    for net in nets.values():
        servers = [*demo.redis.values(), *demo.pg.values()]
        others = [s.port for s in servers] + [demo.redis_write.port, demo.pg_write.port]
        net.reach([p for p in others if p not in net.exposed])


def _summary(demo: DemoStack, express: bool, sentinel: bool, node: NodeExporter) -> list[str]:
    """What ``tierwatch demo`` prints: every address a user may open."""
    assert demo.chain is not None
    chain, lbs, pair = demo.chain, demo.lbs, demo.vrrp
    vip_kind = (
        f"keepalived VRRP in network namespaces {', '.join(pair.network.namespaces)}"
        if pair
        else "TCP forwarder"
    )
    return [
        f"VIP            {demo.vip_url}  ({vip_kind}; lb-1 {lbs[0].url}, lb-2 {lbs[1].url})",
        f"App servers    {', '.join(f'{n} {a.url}' for n, a in demo.apps.items())}  "
        f"({'Express' if express else 'Python stand-in'})",
        f"Redis writes   redis://127.0.0.1:{demo.redis_write.port}  (master redis-a; replicas b, c; "
        "backup d -> e in the failover region)",
        f"PG writes      postgresql://app@127.0.0.1:{demo.pg_write.port}/postgres  "
        "(primary pg-1; replicas pg-2, pg-3; DR pg-dr)",
        *(["Sentinel       3 sentinels in charge of Redis failover (down-after 5 s)"] if sentinel else []),
        f"Exporter       {chain.exporter.url}/  (status page) and {chain.exporter.url}/metrics",
        f"Prometheus     {chain.prometheus.url}/alerts",
        f"Alertmanager   {chain.alertmanager.url}",
        f"Node exporter  {node.url}  (this host: CPU, memory, disks, file handles; job node)",
        f"Recovery       {chain.recovery.url}/metrics; audit trail {chain.state_dir / 'audit.jsonl'}",
        *(_backup_summary(demo.backups) if demo.backups else []),
        *(_dns_summary(demo.dns) if demo.dns else []),
        *([demo.logs.summary()] if demo.logs else []),
        f"Config         {chain.exporter.config}",
    ]


def _dns_summary(dns: DemoDns) -> list[str]:
    """The summary's line about the zone whose names follow the primaries (demo_dns.py)."""
    knot = dns.knot
    return [
        f"DNS            Knot at {knot.server}, zone {knot.zone}; names that follow the primaries: "
        f"kdig @127.0.0.1 -p {knot.port} primary.main-db.{knot.zone} SRV",
    ]


def _backup_summary(backups: DemoBackups) -> list[str]:
    """The summary's lines about backups (demo_backups.py)."""
    return [
        f"Backups        pgBackRest repository {backups.backrest.repo} (stanza {backups.backrest.stanza}: "
        "full at start, incremental every 2 min); Redis snapshots in "
        f"{backups.redis_dir}; restore tests every 5 min (results {backups.textfile_dir}, audit "
        f"{backups.audit_log})",
    ]


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
