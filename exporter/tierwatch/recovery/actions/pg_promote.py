"""PostgreSQL promotion: the failover sequence (failover.py) with ``pg_promote()`` and re-pointing
the other replicas (ALTER SYSTEM primary_conninfo + reload).

PostgreSQL rules on top of the sequence's:
- A replica whose WAL receiver streams from the old primary and got a message from it within
  ``witness_max_silence`` (``pg_stat_wal_receiver.last_msg_receipt_time``) is a witness that it is
  alive: refuse. An idle sender only sends a keepalive every ``wal_sender_timeout`` / 2; the
  receiver's replies every ``wal_receiver_status_interval`` do not refresh it.
- Any other target out of recovery (``pg_is_in_recovery() = false``) is a live primary: refuse.
- The replica holding the most WAL wins: promotion first replays everything a replica has received,
  so it ends with max(received, replayed); more replayed WAL breaks ties (a faster promotion). A
  candidate more than ``max_lag_bytes`` of replay behind the best received WAL among the replicas is
  not promoted (limit ``max_lag``).
- Promotion and re-pointing use the admin credential (``admin_user`` or the URL's user, with
  ``ctx.admin_password()``). Least privilege for that role: EXECUTE on pg_promote and
  pg_reload_conf, ALTER SYSTEM on parameter primary_conninfo, pg_monitor (to read primary_conninfo),
  CREATE on a schema for the write check table.
- Re-pointing keeps each replica's own primary_conninfo (user, passfile or password, TLS settings)
  and only replaces host, port and application_name (= the replica's target name), so no secret
  passes through the action; conninfo strings are never audited. PostgreSQL 13+ applies a changed
  primary_conninfo on reload, and recovery_target_timeline defaults to 'latest', so the replicas
  follow the new timeline.
- A replica follows the new primary when its WAL receiver is connected to the new primary's host
  and port (or the new primary lists it as streaming); with replay paused, when its
  primary_conninfo names that host and port.

Under Patroni (``patroni:`` on the cluster) the action never promotes, re-points, rewinds or demotes:
``election`` waits for Patroni's own election and the kit confirms it (patroni_election.py), then
the sequence only moves the write backend and the DNS records and verifies.

Promotion speed: a replica whose primary just vanished retries streaming every
``wal_retrieve_retry_interval`` and only then notices the promotion request; with the default 5 s,
pg_promote issued right after the crash can stall ~5 s. Set it low (e.g. 200 ms) on the replicas
(docs/operations.md, "PostgreSQL promotion speed").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ...clients import postgres as client
from ...clients.addresses import Address, normal_host, show
from ...config import TargetConfig
from .base import Outcome
from .failover import Driver, Elected, FailoverAction, Ineligible, PrimaryState, Seen, StepFailed
from .liveness import still_answers
from .patroni_election import patroni_election

APPLICATION_NAME = "tierwatch-recovery"
PROMOTE_WAIT = 30  # seconds pg_promote may take
CHECK_TABLE = "tierwatch_recovery_check"

OBSERVE_SQL = """
SELECT pg_is_in_recovery(),
       pg_last_wal_replay_lsn()::text,
       pg_last_wal_receive_lsn()::text,
       CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END,
       (SELECT status FROM pg_stat_wal_receiver),
       (SELECT sender_host FROM pg_stat_wal_receiver),
       (SELECT sender_port FROM pg_stat_wal_receiver),
       current_setting('primary_conninfo'),
       (SELECT extract(epoch FROM now() - last_msg_receipt_time)::float8 FROM pg_stat_wal_receiver)
"""


def lsn(text: str | None) -> int | None:
    """``'16/B374D848'`` as a byte position."""
    if not text:
        return None
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


def sender_address(host: str | None, port: int | None) -> Address | None:
    """Where a WAL receiver is connected (pg_stat_wal_receiver), host normalised; None over a unix
    socket or when not connected."""
    if not host or host.startswith("/") or port is None:
        return None
    return normal_host(host), int(port)


@dataclass
class PgSeen(Seen):
    """Role, WAL positions and upstream of one server."""

    in_recovery: bool | None = None
    replay: int | None = None
    receive: int | None = None
    paused: bool | None = None
    receiver: str | None = None
    sender: Address | None = None  # where the WAL receiver is connected now
    configured: Address | None = None  # where primary_conninfo points
    conninfo: str = ""  # may hold a password: never audited
    silence: float | None = None  # seconds since the WAL receiver last heard from its sender

    @property
    def role(self) -> str:
        if self.in_recovery is None:
            return "unreachable" if not self.answered else "unknown"
        return "replica" if self.in_recovery else "primary"

    @property
    def is_primary(self) -> bool:
        return self.in_recovery is False

    @property
    def is_replica(self) -> bool:
        return self.in_recovery is True

    @property
    def upstream(self) -> Address | None:
        return self.configured if self.is_replica else None

    def sees(self, primary: Address, max_silence: float) -> str | None:
        """Streaming from ``primary`` and heard from it within ``max_silence`` seconds."""
        if self.sender != primary or self.receiver != "streaming" or self.silence is None:
            return None
        if self.silence > max_silence:
            return None
        return f"streaming, last message {self.silence:.1f}s ago"

    @property
    def received(self) -> int:
        """The WAL it ends with once promoted: everything received is replayed first."""
        return max(self.receive or 0, self.replay or 0)

    def details(self) -> dict[str, Any]:
        if not self.in_recovery:
            return {}
        out = {
            "replay": self.replay,
            "receive": self.receive,
            "paused": self.paused,
            "receiver": self.receiver,
        }
        return {**out, "upstream": show(self.upstream)} if self.upstream else out


class PgDriver(Driver[PgSeen]):
    """pg_promote() and primary_conninfo re-pointing; Patroni's election where it is in charge."""

    primary_word = "primary"
    primary_words = "primaries"
    verify_timeout = 30.0
    errors = client.ERRORS

    @property
    def seconds(self) -> int:
        """The bound on one statement (libpq's connect timeout has a 2 s minimum; so does this)."""
        return client.statement_seconds(self.timeout)

    async def _connect(self, target: TargetConfig, *, admin: bool = False) -> psycopg.AsyncConnection[Any]:
        if admin:
            password, user = self.ctx.admin_password(), self.ctx.cluster_settings.admin_user
        else:
            password, user = self.ctx.password, None
        return await client.connect(
            target, password, self.timeout, application_name=APPLICATION_NAME, user=user
        )

    def problem(self, exc: BaseException) -> str:
        return client.problem(exc)

    @property
    def repoints(self) -> bool:
        return self.ctx.cluster.patroni is None

    async def election(self, seen: list[PgSeen], old: str) -> Elected | Outcome | None:
        """With Patroni in charge: wait for its election and confirm it (patroni_election.py)."""
        if self.ctx.cluster.patroni is None:
            return None
        return await patroni_election(self, seen, old)

    async def connect_monitor(self, target: TargetConfig) -> psycopg.AsyncConnection[Any]:
        """A connection with the monitoring credential (for the checks that change nothing)."""
        return await self._connect(target)

    async def connect_admin(self, target: TargetConfig) -> psycopg.AsyncConnection[Any]:
        """A connection with the admin credential (for the steps that change a server)."""
        return await self._connect(target, admin=True)

    async def observe(self, target: TargetConfig) -> PgSeen:
        seen = PgSeen(target)
        try:
            async with await self._connect(target) as conn:
                seen.answered = True
                row = (await client.fetch(conn, OBSERVE_SQL, timeout=self.seconds))[0]
        except self.errors as exc:
            seen.answered = seen.answered or not client.silent(exc)
            seen.error = client.problem(exc)
            return seen
        seen.in_recovery = bool(row[0])
        seen.replay, seen.receive = lsn(row[1]), lsn(row[2])
        seen.paused, seen.receiver = row[3], row[4]
        seen.sender = sender_address(row[5], row[6])
        seen.conninfo = row[7] or ""
        seen.configured = client.conninfo_address(seen.conninfo) if seen.conninfo else None
        seen.silence = row[8]
        return seen

    async def answers(self, target: TargetConfig) -> tuple[bool, str]:
        async def ask() -> str:
            async with await self._connect(target) as conn:
                recovery = (await client.fetch(conn, "SELECT pg_is_in_recovery()", timeout=self.seconds))[0][
                    0
                ]
            return "in recovery" if recovery else "primary"

        return await still_answers(
            ask, client.silent, client.problem, self.errors, overlap=self.alert_evidence
        )

    def live_primary(self, s: PgSeen) -> str | None:
        return "not in recovery" if s.is_primary else None

    def ineligible(self, s: PgSeen, replicas: Sequence[PgSeen]) -> Ineligible | None:
        if s.replay is None:
            return Ineligible("has replayed no WAL")
        limit = self.ctx.cluster_settings.max_lag_bytes
        lag = max(r.received for r in replicas) - s.replay
        if lag > limit:
            return Ineligible(f"max_lag: {lag} bytes behind (limit {limit})", limit="max_lag")
        return None

    def rank(self, s: PgSeen) -> tuple[int, ...]:
        return (s.received, s.replay or 0)

    def position(self, s: PgSeen) -> dict[str, Any]:
        return {"replay": s.replay, "receive": s.receive}

    async def promote(self, best: PgSeen) -> None:
        if self.ctx.cluster.patroni is not None:  # a resumed run must not promote beside Patroni either
            self.ctx.audit("promote_refused", target=best.name, reason="Patroni is in charge")
            raise StepFailed(f"not promoting {best.name}: Patroni is in charge of this cluster", "patroni")
        query = "SELECT pg_promote(wait => true, wait_seconds => %s)"
        try:
            async with await self._connect(best.target, admin=True) as conn:
                rows = await client.fetch(conn, query, (PROMOTE_WAIT,), timeout=PROMOTE_WAIT + 5)
        except self.errors as exc:
            raise StepFailed(
                f"pg_promote on {best.name} failed ({self.problem(exc)})", self.problem(exc)
            ) from None
        if not rows[0][0]:
            raise StepFailed(
                f"pg_promote on {best.name} did not finish within {PROMOTE_WAIT}s",
                f"not finished within {PROMOTE_WAIT}s",
            )

    async def repoint(self, new: PgSeen, where: Address, replica: PgSeen) -> dict[str, Any]:
        base = replica.conninfo or new.conninfo  # the new primary's own, if the replica has none
        params = {k: v for k, v in conninfo_to_dict(base).items() if k != "hostaddr"}
        params.update(host=where[0], port=str(where[1]), application_name=replica.name)
        statement = sql.SQL("ALTER SYSTEM SET primary_conninfo = {}").format(
            sql.Literal(make_conninfo(**params))
        )
        async with await self._connect(replica.target, admin=True) as conn:
            await client.fetch(conn, statement, timeout=self.seconds)
            await client.fetch(conn, "SELECT pg_reload_conf()", timeout=self.seconds)
        if replica.paused:
            self.ctx.audit("replay_paused", target=replica.name, note="follows the new timeline once resumed")
        return {"host": where[0], "port": where[1]}

    async def check_primary(self, new: TargetConfig, write: bool) -> PrimaryState:
        state = PrimaryState()
        try:
            async with await self._connect(new, admin=True) as conn:
                if (await client.fetch(conn, "SELECT pg_is_in_recovery()", timeout=self.seconds))[0][0]:
                    state.problems.append(f"{new.name} is still in recovery")
                elif write:
                    await self._write_check(conn)
                    state.wrote = True
                rows = await client.fetch(
                    conn,
                    "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'",
                    timeout=self.seconds,
                )
                state.followers = {r[0] for r in rows}
        except self.errors as exc:
            state.problems.append(f"{new.name}: {self.problem(exc)}")
        return state

    async def _write_check(self, conn: psycopg.AsyncConnection[Any]) -> None:
        table = sql.Identifier(CHECK_TABLE)
        create = "CREATE TABLE IF NOT EXISTS {} (id int PRIMARY KEY, checked_at timestamptz NOT NULL)"
        upsert = (
            "INSERT INTO {} VALUES (1, now()) ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at"
        )
        await client.fetch(conn, sql.SQL(create).format(table), timeout=self.seconds)
        await client.fetch(conn, sql.SQL(upsert).format(table), timeout=self.seconds)

    async def follows(
        self, replica: TargetConfig, new: TargetConfig, where: Address
    ) -> tuple[str | None, bool]:
        return follow_check(await self.observe(replica), new, where)


def follow_check(s: PgSeen, new: TargetConfig, where: Address) -> tuple[str | None, bool]:
    """(problem, paused) for replica ``s`` and the new primary at ``where``: its WAL receiver is
    connected to that host and port; or, with replay paused (the receiver only restarts once replay
    resumes), its primary_conninfo names them."""
    if s.sender == where:
        return None, False
    if s.paused and s.configured == where:
        return None, True
    now = f" (its WAL receiver is connected to {show(s.sender)})" if s.sender else ""
    return f"{s.name} does not stream from {new.name}{now}", False


class PgPromote(FailoverAction[PgSeen]):
    """Promote the best PostgreSQL replica, re-point the others and the writes, verify."""

    name = "pg_promote"
    driver = PgDriver
