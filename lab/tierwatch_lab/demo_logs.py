"""The demo's centralized logging (``DemoOptions.logs``): every component's log in one collector
(stack/rsyslog.py), turned into counters by mtail (stack/mtail.py) with the kit's programs
(logs/mtail/), scraped by Prometheus as job ``logs``.

The collector starts first, knowing every file the demo's servers will write (their names and the
stack's layout fix the paths), so it never restarts: the LBs log through HAProxy's native syslog
(UDP, or the collector's socket for the VRRP LBs in their namespaces); PostgreSQL's and Redis'
stderr/stdout, the apps' JSON lines (also after a restart by the recovery service), the exporter's
and the recovery service's JSON logs and the audit trail are read as files. mtail starts right after
it, while central.log is empty: mtail reads a file it finds at its start from the end, and the
servers' first lines create the zero series the log alerts need (an idle PostgreSQL may write its
next line only minutes later).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .demo_stack import APP_REGIONS, PG_REGIONS, REDIS_REGIONS, DemoLogs
from .kit import kit_dir
from .stack import Stack
from .stack.mtail import logs_job, start_mtail
from .stack.prometheus import ScrapeJob
from .stack.rsyslog import start_collector

EDGE, WRITE_LBS, WEB, CACHE, DB, KIT = "edge", "write-lbs", "web", "cache-main", "main-db", "tierwatch"
PAIR = ("lb-1", "lb-2")
WRITE_LB_NAMES = ("lb-redis-write", "lb-pg-write")
MAX_BYTES = 64 * 1024 * 1024  # central.log and its rotated copy together


def kit_process_names(vantages: Sequence[str], recovery_replicas: int) -> tuple[list[str], list[str]]:
    """The names stack/chain.py gives the exporter(s) and the recovery service(s)."""
    exporters = [f"exporter-{v}" for v in vantages] or ["exporter"]
    recoveries = (
        [f"recovery-{i}" for i in range(recovery_replicas)] if recovery_replicas > 1 else ["recovery"]
    )
    return exporters, recoveries


def start_logs_for_demo(
    stack: Stack,
    *,
    vrrp: bool,
    vantages: Sequence[str] = (),
    recovery_replicas: int = 1,
    progs: Path | None = None,
) -> DemoLogs:
    """Start the collector with every file of the demo registered and a syslog tag for each LB, then
    mtail on its central.log with the kit's programs (or ``progs``)."""
    collector = start_collector(stack, max_bytes=MAX_BYTES)
    logs = DemoLogs(collector)
    log_dir = stack.root / "logs"
    exporters, recoveries = kit_process_names(vantages, recovery_replicas)
    with collector.batch():
        for name in PAIR:
            via = "socket" if vrrp else "udp"
            logs.lb_targets[name] = collector.syslog_target("lb", EDGE, name, "primary", "haproxy", via=via)
        for name in WRITE_LB_NAMES:
            logs.lb_targets[name] = collector.syslog_target("lb", WRITE_LBS, name, "primary", "haproxy")
        for name, region in REDIS_REGIONS.items():
            collector.watch_file(log_dir / f"{name}.log", "redis", CACHE, name, region, "redis")
        for name, region in PG_REGIONS.items():
            collector.watch_file(log_dir / f"{name}.log", "postgres", DB, name, region, "postgres")
            # where pg_ctl logs a server started again after pg_rewind (stack/postgres.rejoin_commands)
            rejoined = stack.root / "pg" / name / "rejoined.log"
            collector.watch_file(rejoined, "postgres", DB, name, region, "postgres")
        for name, region in APP_REGIONS.items():
            for suffix in ("", "-restarted"):  # started by the demo, restarted by the recovery service
                collector.watch_file(log_dir / f"{name}{suffix}.log", "app", WEB, name, region, "app")
        for name in exporters:
            collector.watch_file(log_dir / f"{name}.log", "kit", KIT, name, "-", "exporter")
        for index, name in enumerate(recoveries):
            collector.watch_file(log_dir / f"{name}.log", "kit", KIT, name, "-", "recovery")
            state = stack.root / ("recovery-state" if index == 0 else f"recovery-state-{index}")
            collector.watch_file(state / "audit.jsonl", "kit", KIT, name, "-", "audit")
    logs.mtail = start_mtail(stack, [collector.central], progs or kit_dir("logs/mtail"))
    return logs


def scrape_job(logs: DemoLogs) -> ScrapeJob:
    """Prometheus' job ``logs``: the demo's mtail."""
    assert logs.mtail is not None
    return logs_job(logs.mtail)
