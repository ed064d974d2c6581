"""What the demo is made of: the started servers (:class:`DemoStack`) and the names and settings its
builder (demo_build.py), the scale profile (demo_scale.py), the traffic generator and the drills share.

A leaf of the lab's demo modules: it imports only stack/, so every module that needs the shape of a
demo can import it without importing the code that starts one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .demo_backups import BackupSchedule, DemoBackups
from .demo_dns import DemoDns
from .stack import Stack
from .stack.chain import Chain
from .stack.express import ExpressApp
from .stack.haproxy import HAProxy
from .stack.http import HttpBackend
from .stack.mtail import MtailServer
from .stack.netns import NetnsExporter
from .stack.postgres import PgServer
from .stack.redis import RedisServer
from .stack.rsyslog import LogCollector, SyslogTarget
from .stack.servernet import ServerNet
from .stack.vrrp import VrrpPair

AppServer = ExpressApp | HttpBackend

APP_REGIONS = {"es-1": "primary", "es-2": "primary", "es-3": "failover", "es-4": "failover"}
REDIS_REGIONS = {
    "redis-a": "primary",
    "redis-b": "primary",
    "redis-c": "primary",
    "redis-d": "failover",
    "redis-e": "failover",
}
PG_REGIONS = {"pg-1": "primary", "pg-2": "primary", "pg-3": "primary", "pg-dr": "failover"}
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
# The backup alerts the backup drills wait for get it too (drills_backup.py): by default they wait
# minutes, which is right for a repository but too long for a drill.
BACKUP_ALERTS = ("PostgresWalArchiveGap", "RestoreTestFailed", "PostgresBackupFailed", "RedisBackupFailed")


@dataclass
class DemoLogs:
    """The demo's collector, the LBs' syslog targets and (once started) mtail."""

    collector: LogCollector
    lb_targets: dict[str, SyslogTarget] = field(default_factory=dict)
    mtail: MtailServer | None = None

    def lb(self, name: str) -> SyslogTarget:
        """Where LB ``name`` sends its request log."""
        return self.lb_targets[name]

    def summary(self) -> str:
        """The ``tierwatch demo`` line about the logs."""
        metrics = f"; mtail {self.mtail.url}/metrics (job logs)" if self.mtail else ""
        return f"Logs           every component's log in {self.collector.central}{metrics}"


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
    watchers: list[NetnsExporter] = field(default_factory=list)  # DemoOptions.netns_watchers
    server_nets: dict[str, ServerNet] = field(default_factory=dict)  # DemoOptions.isolable_primaries
    backups: DemoBackups | None = None  # DemoOptions.backups
    backup_schedule: BackupSchedule | None = None
    dns: DemoDns | None = None  # DemoOptions.dns
    logs: DemoLogs | None = None  # DemoOptions.logs (demo_logs.py)
