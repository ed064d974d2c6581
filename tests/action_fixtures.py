"""Helpers for the recovery action tests: an ActionContext that records its audit trail, a tcp-mode
HAProxy write backend whose servers are named after the targets, and PostgreSQL clusters with an
admin role for promotion (imported explicitly: ``from action_fixtures import ...``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tierwatch.config import LoadedConfig
from tierwatch.config.recovery import ClusterRecovery, RecoverySettings
from tierwatch.recovery.actions.base import ActionContext, AlertRef
from tierwatch_lab.stack import Stack, wait_for
from tierwatch_lab.stack.haproxy import HAProxy, start_write_lb
from tierwatch_lab.stack.postgres import ADMIN_ROLE, PgServer, create_admin_role, start_primary, start_replica


@dataclass
class Recorder:
    """Collects what an action audits and whether it passed its point of no return."""

    events: list[dict[str, Any]] = field(default_factory=list)
    point_of_no_return_calls: int = 0
    decisions: list[dict[str, Any] | None] = field(default_factory=list)  # recorded at each of them

    def audit(self, event: str, **fields: Any) -> None:
        self.events.append({"event": event, **fields, "at": time.monotonic()})

    async def point_of_no_return(self, decision: dict[str, Any] | None = None) -> None:
        self.point_of_no_return_calls += 1
        self.decisions.append(decision)

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event]

    def text(self) -> str:
        return repr(self.events)


def make_context(
    loaded: LoadedConfig,
    cluster: str,
    labels: dict[str, str],
    *,
    settings: ClusterRecovery | None = None,
    dry_run: bool = False,
    resumed: bool = False,
    regional: bool = False,
    decision: dict[str, Any] | None = None,
) -> tuple[ActionContext, Recorder]:
    """An ActionContext for ``cluster`` as if ``labels`` had come in an alert (``regional``: as the
    service passes it for a failover allowed to leave the old primary's region)."""
    recorder = Recorder()
    recovery = RecoverySettings(clusters={cluster: settings or ClusterRecovery()})
    config = next(c for c in loaded.config.clusters if c.name == cluster)
    alert = AlertRef(
        alertname=labels.get("alertname", "TestAlert"),
        fingerprint="0123456789abcdef",
        starts_at="2024-01-01T00:00:00Z",
        labels=labels,
    )
    ctx = ActionContext(
        loaded=loaded,
        settings=recovery,
        cluster=config,
        alert=alert,
        dry_run=dry_run,
        audit=recorder.audit,
        point_of_no_return=recorder.point_of_no_return,
        resumed=resumed,
        regional=regional,
        decision=decision,
    )
    return ctx, recorder


def start_tcp_lb(stack: Stack, name: str, backend: str, servers: Sequence[tuple[str, int]]) -> HAProxy:
    """An HAProxy with a tcp write backend whose servers are named after the targets."""
    return start_write_lb(stack, name, backend, servers)


def lb_cluster(lb: HAProxy) -> dict[str, Any]:
    """The config entry of an LB cluster holding ``lb`` (so discovery finds its runtime socket)."""
    target = {"name": lb.name, "region": "primary", "url": lb.url, "stats_socket": str(lb.stats_socket)}
    return {"name": f"{lb.name}-pair", "tier": "lb", "targets": [target]}


# --- PostgreSQL ---------------------------------------------------------------------------------


@dataclass
class PgActionCluster:
    """A primary, its replicas, the admin role's password file and the monitor password file."""

    stack: Stack
    servers: dict[str, PgServer]
    admin_password_file: Path
    monitor_password_file: Path

    def region(self, name: str) -> str:
        return "dr" if name.endswith("dr") else "main"

    def cluster_entry(self, name: str = "main-db") -> dict[str, Any]:
        targets = [
            {"name": n, "region": self.region(n), "url": s.dsn_without_password}
            for n, s in self.servers.items()
        ]
        return {
            "name": name,
            "tier": "postgres",
            "targets": targets,
            "password_file": str(self.monitor_password_file),
        }


def start_pg_cluster(stack: Stack, replicas: Sequence[str]) -> PgActionCluster:
    """A primary ``pg-1`` and streaming ``replicas``, plus ``tierwatch_admin``: a SCRAM login over TCP
    allowed only what promotion needs (pg_promote, ALTER SYSTEM of primary_conninfo, reload, a check
    table). The replication passfile also gets an entry for every port, so re-pointed replicas can
    log in to whichever server becomes the primary."""
    primary = start_primary(stack, "pg-1")
    admin_password = create_admin_role(primary, ADMIN_ROLE)
    servers = {"pg-1": primary}
    for name in replicas:
        servers[name] = start_replica(stack, primary, name)
    admin_file = stack.path("secrets", "pg-admin")
    admin_file.write_text(admin_password + "\n")
    monitor_file = stack.path("secrets", "pg-monitor")
    monitor_file.write_text(primary.monitor_password + "\n")
    for secret in (admin_file, monitor_file):
        secret.chmod(0o600)
    return PgActionCluster(stack, servers, admin_file, monitor_file)


def received(replica: PgServer, position: str) -> None:
    """Wait until ``replica`` has received (not necessarily replayed) the WAL up to ``position``."""
    wait_for(
        lambda: replica.scalar("SELECT pg_last_wal_receive_lsn() >= %s::pg_lsn", (position,)),
        30,
        f"{replica.name} to receive {position}",
    )
