"""Patroni's view of a PostgreSQL target it manages, read beside the PostgreSQL probe.

The PostgreSQL probe of a target named by a ``patroni.members`` entry runs one GET /patroni
(clients/patroni.py) concurrently with its own query, under the same deadline. The client keeps its
connection alive where the server allows it; Patroni's REST API (4.1) answers HTTP/1.0 and closes
every connection, so against a real Patroni each read opens one.
A failed read never fails the PostgreSQL probe: it is ``tierwatch_patroni_up 0`` and one count of
``tierwatch_patroni_read_failures_total{reason}``. When the PostgreSQL probe fails, the target's
series (these with them) are absent as for any down target.

Roles and states are enum gauges over bounded sets (DESIGN.md): Patroni's own strings never become
label values.
"""

from __future__ import annotations

import asyncio

from ..clients.patroni import PatroniClient, PatroniError, PatroniStatus
from ..config import PatroniConfig, PatroniMember
from ..metric_catalog import metric
from .base import Sample

S = "patroni"
ROLES: tuple[str, ...] = ("primary", "replica", "standby_leader", "other")
# Patroni's PostgresqlState values folded into a bounded set: "restarting" and "starting after custom
# bootstrap" are starting; "start failed", "restart failed", "stop failed", "initdb failed", "custom
# bootstrap failed" are failed; initialising, custom bootstrap and creating a replica are bootstrapping.
STATES: tuple[str, ...] = (
    "running",
    "starting",
    "stopping",
    "stopped",
    "crashed",
    "failed",
    "bootstrapping",
    "other",
)
_STATE_OF = {
    "running": "running",
    "starting": "starting",
    "restarting": "starting",
    "starting after custom bootstrap": "starting",
    "stopping": "stopping",
    "stopped": "stopped",
    "crashed": "crashed",
    "initializing new cluster": "bootstrapping",
    "running custom bootstrap script": "bootstrapping",
    "creating replica": "bootstrapping",
}
FAILURE_REASONS: tuple[str, ...] = ("timeout", "refused", "protocol", "error", "scope")

UP = metric(
    "tierwatch_patroni_up",
    "gauge",
    "1 if the target's Patroni REST API answered GET /patroni with a valid document of the configured "
    "scope at the last PostgreSQL probe, else 0.",
    section=S,
)
READ_FAILURES = metric(
    "tierwatch_patroni_read_failures_total",
    "counter",
    "Failed reads of the target's Patroni REST API by reason (timeout, refused, protocol, error, scope: "
    "the member reported another scope than the config's); a reason appears once it has happened.",
    ("reason",),
    section=S,
)
ROLE = metric(
    "tierwatch_patroni_role",
    "gauge",
    "1 for the role Patroni reports for the member (primary, replica, standby_leader, other; Patroni "
    "3's master counts as primary).",
    ("role",),
    section=S,
)
STATE = metric(
    "tierwatch_patroni_state",
    "gauge",
    "1 for the PostgreSQL state Patroni reports (running, starting, stopping, stopped, crashed, failed, "
    "bootstrapping, other).",
    ("state",),
    section=S,
)
TIMELINE = metric(
    "tierwatch_patroni_timeline",
    "gauge",
    "PostgreSQL timeline as Patroni reports it (absent while PostgreSQL is not running).",
    section=S,
)
PAUSED = metric(
    "tierwatch_patroni_paused",
    "gauge",
    "1 if the cluster is in maintenance mode (patronictl pause): Patroni neither fails over nor restarts.",
    section=S,
)
CLUSTER_UNLOCKED = metric(
    "tierwatch_patroni_cluster_unlocked",
    "gauge",
    "1 if, as this member sees the DCS, no member holds the leader lock.",
    section=S,
)
FAILOVER_DISABLED = metric(
    "tierwatch_patroni_failover_disabled",
    "gauge",
    "1 if the member may not be promoted (tag nofailover, or failover_priority 0).",
    section=S,
)
STREAMING = metric(
    "tierwatch_patroni_streaming",
    "gauge",
    "1 if Patroni reports the member's replication state as streaming (0 on a primary).",
    section=S,
)
PENDING_RESTART = metric(
    "tierwatch_patroni_pending_restart",
    "gauge",
    "1 if a changed setting waits for a PostgreSQL restart.",
    section=S,
)
WAL_POSITION = metric(
    "tierwatch_patroni_wal_position_bytes",
    "gauge",
    "WAL position as Patroni reports it, in bytes: a primary's flush position, a replica's furthest "
    "received or replayed position (absent while unknown).",
    section=S,
)
DCS_LAST_SEEN = metric(
    "tierwatch_patroni_dcs_last_seen_timestamp_seconds",
    "gauge",
    "Unix time the member last reached its DCS (etcd, Consul, ...), as Patroni reports it.",
    section=S,
)
# up, role (4), state (8), timeline, paused, unlocked, failover_disabled, streaming, pending_restart,
# wal position, dcs_last_seen: a running member with no failed read so far
SERIES_PER_MEMBER = 1 + len(ROLES) + len(STATES) + 8


def member_for(patroni: PatroniConfig | None, target: str) -> PatroniMember | None:
    """The Patroni member managing ``target``, if the cluster has one."""
    if patroni is None:
        return None
    return next((m for m in patroni.members if m.target == target), None)


def status_samples(status: PatroniStatus) -> list[Sample]:
    """The samples of one good read (``up`` included)."""
    role = status.role if status.role in ROLES else "other"
    state = _STATE_OF.get(status.state, "failed" if status.state.endswith(" failed") else "other")
    samples = [Sample(UP, (), 1.0)]
    samples += [Sample(ROLE, (r,), 1.0 if r == role else 0.0) for r in ROLES]
    samples += [Sample(STATE, (s,), 1.0 if s == state else 0.0) for s in STATES]
    flags = (
        (PAUSED, status.paused),
        (CLUSTER_UNLOCKED, status.cluster_unlocked),
        (FAILOVER_DISABLED, status.failover_disabled),
        (STREAMING, status.replication_state == "streaming"),
        (PENDING_RESTART, status.pending_restart),
    )
    samples += [Sample(spec, (), 1.0 if flag else 0.0) for spec, flag in flags]
    for spec, value in (
        (TIMELINE, status.timeline),
        (WAL_POSITION, status.wal_position),
        (DCS_LAST_SEEN, status.dcs_last_seen),
    ):
        if value is not None:
            samples.append(Sample(spec, (), float(value)))
    return samples


class PatroniReader:
    """GET /patroni of one member, one client per member; never raises but on cancellation."""

    def __init__(self, member: PatroniMember, config: PatroniConfig):
        self._client = PatroniClient(member, config.max_body_bytes)
        self._scope = config.scope
        self._failures: dict[str, int] = {}

    async def read(self, deadline: float) -> list[Sample]:
        """The samples of one read ending by ``deadline`` (an instant of the loop's clock)."""
        reason: str | None = None
        try:
            async with asyncio.timeout_at(deadline):
                status = await self._client.status(None)
        except TimeoutError:
            reason = "timeout"
        except PatroniError as exc:
            reason = exc.reason if exc.reason in FAILURE_REASONS else "error"
        else:
            if self._scope is not None and status.scope != self._scope:
                reason = "scope"
        if reason is not None:
            self._failures[reason] = self._failures.get(reason, 0) + 1
            if reason != "scope":
                await self._client.close()  # the next read starts on a clean connection
            samples = [Sample(UP, (), 0.0)]
        else:
            samples = status_samples(status)
        samples += [Sample(READ_FAILURES, (r,), float(n)) for r, n in self._failures.items()]
        return samples

    async def close(self) -> None:
        await self._client.close()
