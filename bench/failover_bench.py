"""Failover benchmark: time from a killed primary to writes accepted again, and acknowledged writes
lost, for the tierwatch chain (exporter -> Prometheus -> Alertmanager -> recovery service) side by
side with redis-sentinel on the same machine, at the same detection window; and for PostgreSQL.

Each run builds a fresh cluster (Redis: a master and two replicas behind a write LB, or under three
Sentinels; PostgreSQL: a primary, two synchronous-quorum replicas, a write LB), runs a writer, kills
the primary with SIGKILL, and measures until a write is acknowledged again:

- Redis: a write is acknowledged when SET succeeded and ``WAIT 1`` confirmed a replica has it;
  Sentinel's writer asks the Sentinels for the master's address, the chain's writer goes through the
  write LB the recovery service moves.
- PostgreSQL: a write is acknowledged when its commit returned (ANY 1 synchronous replica).

The detection window is Sentinel's ``down-after-milliseconds`` and the alert's ``for`` in the chain.

``--fault pause`` (Redis only) SIGSTOPs the master instead, and SIGCONTs it once writes are
acknowledged again; ``--fault return`` kills it and starts it again (same config: it comes back as a
master) once writes are acknowledged again; ``--fault partition`` runs the master in a network
namespace of its own and cuts it off (silent drops both ways), then heals the cut once writes are
acknowledged again. Then also measured: how long until the old master is a
replica of the new one (Sentinel's ``+convert-to-slave``; the chain's RedisSplitBrain ->
``redis_rejoin``) and how many masters are left.

Sentinel and the chain run by turns; each run records the load average before it, and the chain's
runs the seconds from the fault to each step of the recovery service's audit trail (``steps``).

Run: ``python bench/failover_bench.py [--runs 3] [--windows 5,1] [--fault kill,pause,return,partition]
[--output bench/results/failover-{fault}-{date}.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from tierwatch_lab.drill_kit import NO_RETRY, PgWrites, RedisWrites, Writer
from tierwatch_lab.stack import Stack, wait_for
from tierwatch_lab.stack.chain import ChainTiming, audit, redis_cluster, start_chain, write_lb_cluster
from tierwatch_lab.stack.haproxy import HAProxy, start_write_lb
from tierwatch_lab.stack.postgres import (
    PgServer,
    create_admin_role,
    create_app_role,
    start_primary,
    start_replica,
)
from tierwatch_lab.stack.redis import RedisServer, start_redis, start_sentinels
from tierwatch_lab.stack.servernet import ServerNet, create_server_net

PASSWORD = "bench-redis-pw"


class SentinelWrites:
    """SET + WAIT 1 on the master the Sentinels name (what a Sentinel-aware client does)."""

    def __init__(self, sentinels: list[RedisServer]):
        self.sentinels = sentinels
        self.client: redis.Redis | None = None

    def __call__(self, n: int) -> bool:
        try:
            if self.client is None:
                host, port = self._master()
                self.client = redis.Redis(
                    host=host,
                    port=port,
                    password=PASSWORD,
                    socket_timeout=0.5,
                    socket_connect_timeout=0.5,
                    retry=NO_RETRY,
                )
                if self.client.info("replication")["role"] != "master":
                    raise redis.ConnectionError("not the master yet")
            self.client.set(f"bench:{n}", n)
            return int(self.client.execute_command("WAIT", 1, 250)) >= 1
        except redis.RedisError:
            if self.client is not None:
                self.client.close()
            self.client = None
            return False

    def _master(self) -> tuple[str, int]:
        for sentinel in self.sentinels:
            try:
                host, port = sentinel.client(socket_timeout=0.5).execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "bench"
                )
                return str(host), int(port)
            except redis.RedisError:
                continue
        raise redis.ConnectionError("no sentinel answered")


def _timing(window: float) -> ChainTiming:
    cadence = "500ms" if window >= 2 else "250ms"
    breaker_reset = "3s" if window >= 2 else "1500ms"  # six probe intervals, the default's ratio
    value = f"{int(window * 1000)}ms"
    alerts = (
        "RedisMasterDown",
        "RedisNoMaster",
        "PostgresPrimaryDown",
        "PostgresNoPrimary",
        "RedisSplitBrain",
    )
    return ChainTiming(
        probe_interval=cadence,
        probe_timeout="200ms",
        scrape_interval=cadence,
        evaluation_interval=cadence,
        for_values=tuple((a, value) for a in alerts),
        breaker_reset=breaker_reset,
    )


def _measure(
    writer: Writer, kill: Callable[[], None], recovered: Callable[[float], bool], timeout: float = 60
) -> dict[str, Any]:
    writer.start()
    wait_for(lambda: len(writer.acked) > 20, 30, "writes flowing")
    killed = time.time()
    kill()
    ok = False
    deadline = killed + timeout
    while time.time() < deadline:
        if recovered(killed) and writer.first_ack_after(killed) is not None:
            ok = True
            break
        time.sleep(0.02)
    time.sleep(0.5)
    writer.stop()
    first = writer.first_ack_after(killed)
    return {"recovered": ok, "seconds": round(first - killed, 3) if first else None, "killed_at": killed}


def _fault(servers: list[RedisServer], fault: str, net: ServerNet | None) -> Callable[[], None]:
    if fault == "partition":
        assert net is not None
        return net.cut
    return servers[0].process.pause if fault == "pause" else servers[0].process.kill


REJOIN_TIMEOUT = 90.0  # seconds (the chain's exporter re-tries a target its breaker opened every 30 s)


def _rejoin(servers: list[RedisServer], fault: str, result: dict[str, Any], net: ServerNet | None) -> None:
    """After a pause (a kill, a partition): resume (start again, heal) the old master and measure until
    it is a linked replica (``REJOIN_TIMEOUT`` at most), and for how long meanwhile two targets
    reported the master role (``two_masters_s``; sampled every 0.1 s, monotonic clock)."""
    if fault == "kill":
        return
    old = servers[0]
    if fault == "pause":
        old.process.resume()
    elif fault == "partition":
        assert net is not None
        net.heal()
    else:
        old.process.start()
    resumed = last = time.monotonic()
    deadline = resumed + REJOIN_TIMEOUT
    two = 0.0
    result["rejoined_s"] = None
    while time.monotonic() < deadline:
        many = len(masters(servers)) > 1
        now = time.monotonic()
        two += (now - last) if many else 0.0
        last = now
        try:
            info = old.client(socket_timeout=0.5).info("replication")
            if info["role"] == "slave" and info.get("master_link_status") == "up":
                result["rejoined_s"] = round(time.monotonic() - resumed, 3)
                break
        except redis.RedisError:
            pass
        time.sleep(0.1)
    result["two_masters_s"] = round(two, 2)


def redis_servers(stack: Stack, fault: str = "kill") -> tuple[list[RedisServer], ServerNet | None]:
    """A master and two replicas; for ``partition`` the master runs in a network namespace of its own
    (stack/servernet.py: still at 127.0.0.1:<port> for everyone, and it reaches the replicas there)."""
    if fault != "partition":
        master = start_redis(stack, "redis-a", password=PASSWORD)
        replicas = [
            start_redis(stack, n, password=PASSWORD, replica_of=master) for n in ("redis-b", "redis-c")
        ]
        return [master, *replicas], None
    net = create_server_net(stack)
    master = start_redis(
        stack,
        "redis-a",
        password=PASSWORD,
        port=net.expose(),
        launcher=net.launcher,
        extra_config=(f"bind {' '.join(net.listen)}",),
    )
    announce = ("replica-announce-ip 127.0.0.1",)  # the master sees them come from the veth's address
    replicas = [
        start_redis(stack, n, password=PASSWORD, replica_of=master, extra_config=announce)
        for n in ("redis-b", "redis-c")
    ]
    net.reach([r.port for r in replicas])
    return [master, *replicas], net


def masters(servers: list[RedisServer]) -> list[str]:
    found = []
    for server in servers:
        try:
            if server.client(socket_timeout=0.5).info("replication")["role"] == "master":
                found.append(server.name)
        except redis.RedisError:
            continue
    return found


def lost_keys(server: RedisServer, acked: list[tuple[int, float]], prefix: str) -> int:
    client = server.client()
    keys = [f"{prefix}:{n}" for n, _ in acked]
    present = sum(int(client.exists(*keys[i : i + 500])) for i in range(0, len(keys), 500))
    return len(keys) - present


def run_chain_redis(window: float, fault: str = "kill") -> dict[str, Any]:
    with Stack() as stack:
        servers, net = redis_servers(stack, fault)
        lb = start_write_lb(
            stack, "lb-write", "be_redis_write", [(s.name, s.port) for s in servers], primary="redis-a"
        )
        secret = stack.path("chain-secrets", "redis")
        secret.write_text(PASSWORD)
        clusters = [redis_cluster("cache", servers, secret)]
        write_lb = [write_lb_cluster("write", [lb])]
        recovery = {
            "allow": {
                "RedisMasterDown": "redis_failover",
                "RedisNoMaster": "redis_failover",
                "RedisSplitBrain": "redis_rejoin",
            },
            "clusters": {"cache": {"write_backend": "be_redis_write"}},
        }
        chain = start_chain(stack, clusters, recovery, _timing(window), recovery_only=write_lb)
        wait_for(chain.prometheus.targets_up, 30, "scraping")
        wait_for(lambda: chain.prometheus.value('min(tierwatch_up{tier="redis"})') == 1, 30, "targets up")
        writer = Writer(RedisWrites(lb.port, PASSWORD))
        result = _measure(
            writer,
            _fault(servers, fault, net),
            lambda _t: bool([m for m in masters(servers) if m != "redis-a"]),
        )
        _rejoin(servers, fault, result, net)
        live = masters(servers)
        result["primaries"] = len(live)
        result["lost"] = (
            lost_keys(next(s for s in servers if s.name == live[0]), writer.acked, "drill") if live else None
        )
        result["acked"] = len(writer.acked)
        result["steps"] = steps(audit(chain), result["killed_at"])
        result["alert_at"] = result["steps"].get("alert_accepted")
        result.pop("killed_at")
        return result


def steps(entries: list[dict[str, Any]], fault_at: float) -> dict[str, float]:
    """Seconds from the fault to the first audit record of each step (where the action's time goes)."""
    found: dict[str, float] = {}
    for entry in entries:
        if entry["ts"] >= fault_at:
            found.setdefault(entry["event"], round(entry["ts"] - fault_at, 3))
    return found


def run_sentinel(window: float, fault: str = "kill") -> dict[str, Any]:
    with Stack() as stack:
        servers, net = redis_servers(stack, fault)
        sentinels = start_sentinels(
            stack,
            servers[0],
            n=3,
            quorum=2,
            master_name="bench",
            down_after_ms=int(window * 1000),
            failover_timeout_ms=10000,
        )
        writer = Writer(SentinelWrites(sentinels))
        result = _measure(
            writer,
            _fault(servers, fault, net),
            lambda _t: bool([m for m in masters(servers) if m != "redis-a"]),
        )
        _rejoin(servers, fault, result, net)
        result.pop("killed_at")
        live = masters(servers)
        result["primaries"] = len(live)
        result["lost"] = (
            lost_keys(next(s for s in servers if s.name == live[0]), writer.acked, "bench") if live else None
        )
        result["acked"] = len(writer.acked)
        return result


@dataclass
class PgTrio:
    """A primary and two synchronous (``ANY 1``) replicas behind a write LB, the chain's config entry."""

    servers: dict[str, PgServer]
    app_password: str
    lb: HAProxy
    clusters: list[dict[str, Any]]


def start_pg_trio(stack: Stack, net: ServerNet | None = None) -> PgTrio:
    """The PostgreSQL topology both failover benches use (this one and patroni_bench.py's chain).
    With ``net``, pg-1 runs in its network namespace (as demo_build.py puts it there for the
    primary-partition drill): its clients arrive from the veth network, and it reaches the replicas
    and the write LB at 127.0.0.1."""
    sync = {"synchronous_standby_names": 'ANY 1 ("pg-1", "pg-2", "pg-3")'}
    if net is None:
        primary = start_primary(stack, "pg-1")
    else:
        primary = start_primary(
            stack,
            "pg-1",
            port=net.expose(),
            launcher=net.launcher,
            hba_networks=[net.network],
            settings={"listen_addresses": ",".join(net.listen)},
        )
    admin = create_admin_role(primary)
    app = create_app_role(primary, "app")
    servers = {
        "pg-1": primary,
        **{n: start_replica(stack, primary, n, settings=sync) for n in ("pg-2", "pg-3")},
    }
    primary.sql(f"ALTER SYSTEM SET synchronous_standby_names = '{sync['synchronous_standby_names']}'")
    primary.sql("SELECT pg_reload_conf()")
    primary.sql("CREATE TABLE drill_writes (id bigint PRIMARY KEY, at timestamptz DEFAULT now())")
    primary.sql("GRANT INSERT, SELECT ON drill_writes TO app")
    lb = start_write_lb(
        stack, "lb-write", "be_pg_write", [(n, s.port) for n, s in servers.items()], primary="pg-1"
    )
    if net is not None:
        net.reach([servers["pg-2"].port, servers["pg-3"].port, lb.port])
    for name, value in {"pg": primary.monitor_password, "pg-admin": admin}.items():
        path = stack.path("chain-secrets", name)
        path.write_text(value)
        path.chmod(0o600)
    clusters = [
        {
            "name": "db",
            "tier": "postgres",
            "password_file": str(stack.path("chain-secrets", "pg")),
            "targets": [
                {"name": n, "region": "primary", "url": s.dsn_without_password} for n, s in servers.items()
            ],
        }
    ]
    return PgTrio(servers, app, lb, clusters)


def run_chain_pg(window: float) -> dict[str, Any]:
    with Stack() as stack:
        trio = start_pg_trio(stack)
        servers, app, lb, clusters = trio.servers, trio.app_password, trio.lb, trio.clusters
        primary = servers["pg-1"]
        write_lb = [write_lb_cluster("write", [lb])]
        recovery = {
            "allow": {"PostgresPrimaryDown": "pg_promote", "PostgresNoPrimary": "pg_promote"},
            "clusters": {
                "db": {
                    "write_backend": "be_pg_write",
                    "admin_user": "tierwatch_admin",
                    "admin_password_file": str(stack.path("chain-secrets", "pg-admin")),
                }
            },
        }
        chain = start_chain(stack, clusters, recovery, _timing(window), recovery_only=write_lb)
        wait_for(chain.prometheus.targets_up, 30, "scraping")
        wait_for(lambda: chain.prometheus.value('min(tierwatch_up{tier="postgres"})') == 1, 30, "targets up")
        writer = Writer(PgWrites(lb.port, app))

        def promoted(_t: float) -> bool:
            return any(not s.in_recovery() for n, s in servers.items() if n != "pg-1" and _alive(s))

        result = _measure(writer, primary.process.kill, promoted)
        live = [n for n, s in servers.items() if n != "pg-1" and _alive(s) and not s.in_recovery()]
        result["primaries"] = len(live)
        if live:
            ids = {row[0] for row in servers[live[0]].sql("SELECT id FROM drill_writes")}
            result["lost"] = len({n for n, _ in writer.acked} - ids)
        result["acked"] = len(writer.acked)
        entries = audit(chain)
        accepted = next((e["ts"] for e in entries if e["event"] == "alert_accepted"), None)
        result["alert_at"] = round(accepted - result.pop("killed_at"), 3) if accepted else None
        return result


def _alive(server: Any) -> bool:
    try:
        server.in_recovery()
        return True
    except Exception:  # noqa: BLE001 - a dead server is simply not alive
        return False


def summarize(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    seconds = [r["seconds"] for r in runs if r["seconds"] is not None]
    return {
        "scenario": name,
        "runs": len(runs),
        "recovered": sum(1 for r in runs if r["recovered"]),
        "median_s": round(statistics.median(seconds), 2) if seconds else None,
        "min_s": round(min(seconds), 2) if seconds else None,
        "max_s": round(max(seconds), 2) if seconds else None,
        "lost_acked_writes": sum(r.get("lost") or 0 for r in runs),
        "max_primaries": max((r["primaries"] for r in runs), default=0),
        **(
            {
                "rejoined_s": [r.get("rejoined_s") for r in runs],
                "two_masters_s": [r.get("two_masters_s") for r in runs],
            }
            if any("rejoined_s" in r for r in runs)
            else {}
        ),
        "load": [r["load"] for r in runs],
        "raw": runs,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--windows", default="5,1", help="detection windows in seconds, comma separated")
    parser.add_argument("--skip-pg", action="store_true")
    parser.add_argument(
        "--fault",
        default="kill",
        help="what happens to the master: kill, pause, return, partition; several comma separated",
    )
    parser.add_argument(
        "--output",
        default=str(Path(__file__).parent / "results" / "failover-{fault}-{date}.json"),
        help="result file; {fault} and {date} are filled in (one file per fault)",
    )
    args = parser.parse_args()
    windows = [float(w) for w in args.windows.split(",")]
    faults = args.fault.split(",")
    unknown = set(faults) - {"kill", "pause", "return", "partition"}
    if unknown:
        parser.error(f"unknown fault {', '.join(sorted(unknown))}")
    for fault in faults:
        output = Path(args.output.format(fault=fault, date=time.strftime("%Y-%m-%d", time.gmtime())))
        _bench_fault(fault, windows, args.runs, args.skip_pg, output)
    return 0


def _bench_fault(fault: str, windows: list[float], runs: int, skip_pg: bool, output: Path) -> None:
    """Sentinel and the chain, run by turns (so a change of the machine's load falls on both)."""
    summaries = []
    for window in windows:
        tools = (("sentinel", run_sentinel), ("tierwatch-chain", run_chain_redis))
        found: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in tools}
        for _ in range(runs):
            for name, fn in tools:
                found[name].append(_loaded(fn, window, fault))
        for name, _ in tools:
            summaries.append(summarize(f"redis {name} {fault} window={window:g}s", found[name]))
            print(_line(summaries[-1]), flush=True)
    if not skip_pg and fault == "kill":
        pg = [_loaded(lambda w, _f: run_chain_pg(w), 5.0, fault) for _ in range(runs)]
        summaries.append(summarize("postgres tierwatch-chain window=5s", pg))
        print(_line(summaries[-1]), flush=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(
        json.dumps(
            {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "results": summaries}, indent=2
        )
        + "\n"
    )
    print(f"written to {output}", file=sys.stderr)


def _loaded(fn: Callable[[float, str], dict[str, Any]], window: float, fault: str) -> dict[str, Any]:
    """One run, with the load average (1, 5, 15 min) before it."""
    load = [round(x, 2) for x in os.getloadavg()]
    return {**fn(window, fault), "load": load}


def _line(summary: dict[str, Any]) -> str:
    return (
        f"{summary['scenario']:<42} recovered {summary['recovered']}/{summary['runs']}  "
        f"median {summary['median_s']}s  max {summary['max_s']}s  "
        f"lost acked writes {summary['lost_acked_writes']}  max primaries {summary['max_primaries']}"
        + (
            f"  old master a replica after {summary['rejoined_s']}s, two masters {summary['two_masters_s']}s"
            if "rejoined_s" in summary
            else ""
        )
    )


if __name__ == "__main__":
    sys.exit(main())
