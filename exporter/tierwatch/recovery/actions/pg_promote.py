"""PostgreSQL promotion: promote the replica holding the most WAL (received or replayed; replayed
breaks ties) once the primary is really gone, re-point the other replicas (ALTER SYSTEM
primary_conninfo + reload) and the write backend, verify.

Safety rules:
- The old primary (the alert's ``target``, else the server the replicas' primary_conninfo names)
  must fail to answer on two connection attempts a few hundred ms apart; any answer, even an error
  (bad password, "starting up"), means "still there". Any target reporting ``pg_is_in_recovery() =
  false`` also means "refuse": never two primaries.
- Candidates are reachable replicas of the old primary's region; the DR replica (another region) only
  when the alert carries ``action="regional_failover"``. A candidate more than ``max_lag_bytes`` of
  replay behind the best received LSN among the replicas is not promoted (refused, ``max_lag``).
- Promotion and re-pointing use the admin credential (``admin_user`` or the URL's user, with
  ``ctx.admin_password()``). Least privilege for that role: EXECUTE on pg_promote and
  pg_reload_conf, ALTER SYSTEM on parameter primary_conninfo, pg_monitor (to read primary_conninfo),
  CREATE on a schema for the write check table.
- Re-pointing keeps each replica's own primary_conninfo (user, passfile or password, TLS settings)
  and only replaces host, port and application_name (= the replica's target name), so no secret
  passes through the action; conninfo strings are never audited. PostgreSQL 13+ applies a changed
  primary_conninfo on reload, and recovery_target_timeline defaults to 'latest', so the replicas
  follow the new timeline.

Promotion speed: a replica whose primary just vanished retries streaming every
``wal_retrieve_retry_interval`` and only then notices the promotion request; with the default 5 s,
pg_promote issued right after the crash can stall ~5 s. The stack (tierwatch.lab.stack.postgres) sets
it to 200 ms; deployments should set it low on replicas too (docs: ``wal_retrieve_retry_interval``).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ...config import Secret, TargetConfig
from ...probes.postgres import classify_pg_error
from ..discovery import point_write_backend, write_backend_problems
from .base import Action, ActionContext, Outcome, refuse
from .liveness import ATTEMPTS, still_answers

APPLICATION_NAME = "tierwatch-recovery"
PROMOTE_WAIT = 30  # seconds pg_promote may take
VERIFY_TIMEOUT = 30.0  # seconds for the re-pointed replicas to stream from the new primary
POLL = 0.1
CHECK_TABLE = "tierwatch_recovery_check"

OBSERVE_SQL = """
SELECT pg_is_in_recovery(),
       pg_last_wal_replay_lsn()::text,
       pg_last_wal_receive_lsn()::text,
       CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END,
       (SELECT status FROM pg_stat_wal_receiver),
       (SELECT sender_port FROM pg_stat_wal_receiver),
       current_setting('primary_conninfo')
"""


def lsn(text: str | None) -> int | None:
    """``'16/B374D848'`` as a byte position."""
    if not text:
        return None
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


def endpoint(conninfo: str) -> tuple[str, int] | None:
    """(host, port) named by a conninfo string or URL; None if it names none."""
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return None
    host = str(params.get("hostaddr") or params.get("host") or "")
    if not host or host.startswith("/"):
        return None
    return ("127.0.0.1" if host == "localhost" else host), int(params.get("port") or 5432)


async def connect(
    target: TargetConfig, password: Secret | None, timeout: float, user: str | None = None
) -> psycopg.AsyncConnection[Any]:
    """An autocommit connection to one target with a short connect timeout (libpq's minimum is 2 s)."""
    seconds = max(2, math.ceil(timeout))
    kwargs: dict[str, Any] = {
        "autocommit": True,
        "connect_timeout": seconds,
        "application_name": APPLICATION_NAME,
    }
    if user:
        kwargs["user"] = user
    if password is not None:
        kwargs["password"] = password.reveal()
    return await asyncio.wait_for(psycopg.AsyncConnection.connect(target.url, **kwargs), seconds + 1)


async def fetch(conn: psycopg.AsyncConnection[Any], query: Any, params: Any = None) -> list[tuple[Any, ...]]:
    """Run one statement; its rows (empty if none)."""
    cur = await conn.execute(query, params)
    return await cur.fetchall() if cur.description else []


def silent(exc: BaseException) -> bool:
    """True if ``exc`` means the server gave no answer at all (refused, timed out)."""
    if isinstance(exc, TimeoutError | OSError):
        return True
    return isinstance(exc, psycopg.Error) and classify_pg_error(exc) in ("refused", "timeout")


def problem(exc: BaseException) -> str:
    """A secret-free description of an error (class and SQLSTATE, never the message)."""
    state = getattr(exc, "sqlstate", None)
    return f"{type(exc).__name__}{f' ({state})' if state else ''}"


@dataclass
class Seen:
    """What one server reported, or why it did not."""

    target: TargetConfig
    answered: bool = False
    error: str | None = None
    in_recovery: bool | None = None
    replay: int | None = None
    receive: int | None = None
    paused: bool | None = None
    receiver: str | None = None
    sender_port: int | None = None  # where the WAL receiver is connected now
    upstream: tuple[str, int] | None = None
    conninfo: str = ""  # may hold a password: never audited

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def role(self) -> str:
        if self.in_recovery is None:
            return "unreachable" if not self.answered else "unknown"
        return "replica" if self.in_recovery else "primary"

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "region": self.target.region}
        if self.in_recovery:
            out.update(replay=self.replay, receive=self.receive, paused=self.paused, receiver=self.receiver)
            if self.upstream:
                out["upstream"] = "{}:{}".format(*self.upstream)
        if self.error:
            out["error"] = self.error
        return out


async def observe(target: TargetConfig, password: Secret | None, timeout: float) -> Seen:
    """Role, WAL positions and upstream of one server (monitor credential)."""
    seen = Seen(target)
    try:
        async with await connect(target, password, timeout) as conn:
            seen.answered = True
            row = (await fetch(conn, OBSERVE_SQL))[0]
    except (psycopg.Error, OSError, TimeoutError) as exc:
        seen.answered = not silent(exc)
        seen.error = problem(exc)
        return seen
    seen.in_recovery = bool(row[0])
    seen.replay, seen.receive = lsn(row[1]), lsn(row[2])
    seen.paused, seen.receiver, seen.sender_port, seen.conninfo = row[3], row[4], row[5], row[6] or ""
    seen.upstream = endpoint(seen.conninfo) if seen.conninfo else None
    return seen


async def answers(target: TargetConfig, password: Secret | None, timeout: float) -> tuple[bool, str]:
    """Whether the server answers at all (see liveness.still_answers); and what was seen."""

    async def ask() -> str:
        async with await connect(target, password, timeout) as conn:
            recovery = (await fetch(conn, "SELECT pg_is_in_recovery()"))[0][0]
        return "in recovery" if recovery else "primary"

    return await still_answers(ask, silent, problem, (psycopg.Error, OSError, TimeoutError))


class PgPromote(Action):
    """Promote the best PostgreSQL replica, re-point the others and the writes, verify."""

    name = "pg_promote"

    async def run(self, ctx: ActionContext) -> Outcome:
        timeout = ctx.loaded.config.monitor.timeout
        seen = list(await asyncio.gather(*(observe(t, ctx.password, timeout) for t in ctx.cluster.targets)))
        ctx.audit("observed", targets={s.name: s.summary() for s in seen})
        old = self._old_primary(ctx, seen)
        if ctx.resumed:
            return await self._resume(ctx, seen, old)
        if old is None:
            return refuse(
                ctx,
                "cannot tell which target was the primary (no alert target, no upstream)",
                "cannot tell which target was the primary",
            )
        alive, how = await answers(self._target(ctx, old), ctx.password, timeout)
        ctx.audit("primary_checked", target=old, answers=alive, seen=how, attempts=ATTEMPTS)
        if alive:
            return refuse(ctx, f"primary {old} still answers", f"primary {old} still answers ({how})")
        for other in seen:
            if other.role == "primary":
                return refuse(
                    ctx,
                    f"primary {other.name} still answers",
                    f"primary {other.name} still answers (not in recovery)",
                )
        best, why = self._choose(ctx, seen, old)
        if best is None:
            return refuse(ctx, why)
        if ctx.dry_run:
            ctx.audit("would_promote", target=best.name, replay=best.replay)
            return Outcome(
                "succeeded", f"dry run: would promote {best.name}", facts={"would_promote": best.name}
            )

        await ctx.point_of_no_return()
        started = time.monotonic()
        try:
            async with await self._admin(ctx, best.target) as conn:
                done = (
                    await asyncio.wait_for(
                        fetch(conn, "SELECT pg_promote(wait => true, wait_seconds => %s)", (PROMOTE_WAIT,)),
                        PROMOTE_WAIT + 5,
                    )
                )[0][0]
        except (psycopg.Error, OSError, TimeoutError) as exc:
            ctx.audit("promote_failed", target=best.name, error=problem(exc))
            return Outcome("failed", f"pg_promote on {best.name} failed ({problem(exc)})")
        if not done:
            ctx.audit("promote_failed", target=best.name, error=f"not finished within {PROMOTE_WAIT}s")
            return Outcome("failed", f"pg_promote on {best.name} did not finish within {PROMOTE_WAIT}s")
        ctx.audit(
            "promoted", target=best.name, replay=best.replay, seconds=round(time.monotonic() - started, 3)
        )
        others = [s for s in seen if s.role == "replica" and s.name != best.name]
        failed = await self._repoint(ctx, best, others)
        await point_write_backend(ctx, best.name)
        facts = {"new_primary": best.name, "old_primary": old, "replay_lsn": best.replay}
        facts["old_primary_fencing"] = "required"
        repointed = [s.target for s in others if s.name not in failed]
        return await self._verified(ctx, best.target, repointed, facts, started)

    def _target(self, ctx: ActionContext, name: str) -> TargetConfig:
        target = ctx.target(name)
        assert target is not None
        return target

    def _old_primary(self, ctx: ActionContext, seen: list[Seen]) -> str | None:
        """The alert's target, else the one target the replicas stream from, else the one primary."""
        if ctx.alert.target and ctx.target(ctx.alert.target):
            return ctx.alert.target
        upstreams = {s.upstream for s in seen if s.role == "replica" and s.upstream}
        named = {t.name for t in ctx.cluster.targets if endpoint(t.url) in upstreams}
        if len(upstreams) == 1 and len(named) == 1:
            return named.pop()
        primaries = [s.name for s in seen if s.role == "primary"]
        return primaries[0] if len(primaries) == 1 else None

    def _choose(self, ctx: ActionContext, seen: list[Seen], old: str) -> tuple[Seen | None, str]:
        """The eligible replica holding the most WAL, or why none. Promotion first replays everything a
        replica has received, so the WAL it ends with is max(received, replayed): ranking on that
        loses nothing a replica already has (a synchronously committed write included); more replayed
        WAL breaks ties (a faster promotion), then config order."""
        region = self._target(ctx, old).region
        regional = ctx.alert.labels.get("action") == "regional_failover"
        replicas = [s for s in seen if s.role == "replica" and s.name != old and s.replay is not None]
        best_received = max((max(s.receive or 0, s.replay or 0) for s in replicas), default=0)
        limit = ctx.cluster_settings.max_lag_bytes
        ranked: list[tuple[int, int, int, Seen]] = []
        in_region = 0
        for index, s in enumerate(replicas):
            lag = best_received - (s.replay or 0)
            if s.target.region != region and not regional:
                why = f"region {s.target.region} (needs a regional_failover alert)"
            else:
                in_region += 1
                why = "ok" if lag <= limit else f"max_lag: {lag} bytes behind (limit {limit})"
            ctx.audit(
                "candidate",
                target=s.name,
                region=s.target.region,
                replay=s.replay,
                lag_bytes=lag,
                eligible=why,
            )
            if why == "ok":
                ranked.append((max(s.receive or 0, s.replay or 0), s.replay or 0, -index, s))
        if not ranked:
            if in_region:
                return None, f"max_lag: no replica within {limit} bytes of the best received WAL"
            return None, f"no reachable replica in region {region} eligible for promotion"
        best = max(ranked, key=lambda r: (r[0], r[1], r[2]))[3]
        ctx.audit("chosen", target=best.name, replay=best.replay)
        return best, "ok"

    async def _admin(self, ctx: ActionContext, target: TargetConfig) -> psycopg.AsyncConnection[Any]:
        user = ctx.cluster_settings.admin_user
        return await connect(target, ctx.admin_password(), ctx.loaded.config.monitor.timeout, user=user)

    async def _repoint(self, ctx: ActionContext, new: Seen, replicas: list[Seen]) -> set[str]:
        """Point each replica's primary_conninfo at ``new`` and reload; the names it failed on."""
        host, port = endpoint(new.target.url) or ("127.0.0.1", 5432)
        failed: set[str] = set()
        for replica in replicas:
            base = replica.conninfo or new.conninfo  # the new primary's own, if the replica has none
            params = {k: v for k, v in conninfo_to_dict(base).items() if k != "hostaddr"}
            params.update(host=host, port=str(port), application_name=replica.name)
            statement = sql.SQL("ALTER SYSTEM SET primary_conninfo = {}").format(
                sql.Literal(make_conninfo(**params))
            )
            try:
                async with await self._admin(ctx, replica.target) as conn:
                    await conn.execute(statement)
                    await conn.execute("SELECT pg_reload_conf()")
            except (psycopg.Error, OSError, TimeoutError) as exc:
                failed.add(replica.name)
                ctx.audit("repoint_failed", target=replica.name, primary=new.name, error=problem(exc))
                continue
            ctx.audit("repointed", target=replica.name, primary=new.name, host=host, port=port)
            if replica.paused:
                ctx.audit("replay_paused", target=replica.name, note="follows the new timeline once resumed")
        return failed

    async def _resume(self, ctx: ActionContext, seen: list[Seen], old: str | None) -> Outcome:
        """After a restart past the point of no return: never promote again; with exactly one primary
        reachable, re-point the replicas that follow another server and move the backend."""
        primaries = [s for s in seen if s.role == "primary"]
        if len(primaries) != 1:
            names = ", ".join(s.name for s in primaries) or "none"
            ctx.audit("resume_failed", primaries=names)
            return Outcome(
                "failed", f"resumed run found {len(primaries)} primaries ({names}); not promoting again"
            )
        new = primaries[0]
        ctx.audit("resumed", primary=new.name)
        replicas = [s for s in seen if s.role == "replica"]
        stray = [s for s in replicas if s.upstream != endpoint(new.target.url)]
        failed = await self._repoint(ctx, new, stray)
        await point_write_backend(ctx, new.name)
        facts = {
            "new_primary": new.name,
            "old_primary": old,
            "resumed": True,
            "old_primary_fencing": "required",
        }
        repointed = [s.target for s in replicas if s.name not in failed]
        return await self._verified(ctx, new.target, repointed, facts, time.monotonic())

    async def _verified(
        self,
        ctx: ActionContext,
        new: TargetConfig,
        replicas: list[TargetConfig],
        facts: dict[str, Any],
        started: float,
    ) -> Outcome:
        """Poll until the new primary is out of recovery and takes a write, each replica streams from
        it (listed in its pg_stat_replication, or its WAL receiver connected to the new port; with
        replay paused: its primary_conninfo names it) and the write backend points at it."""
        deadline = time.monotonic() + VERIFY_TIMEOUT
        written_at: float | None = None
        pending: list[str] = []
        while True:
            problems: list[str] = []
            streaming: set[str] = set()
            try:
                async with await self._admin(ctx, new) as conn:
                    if (await fetch(conn, "SELECT pg_is_in_recovery()"))[0][0]:
                        problems.append(f"{new.name} is still in recovery")
                    elif written_at is None:
                        await self._write_check(conn)
                        written_at = time.monotonic()
                        ctx.audit("write_checked", target=new.name, after_s=round(written_at - started, 3))
                    rows = await fetch(
                        conn, "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'"
                    )
                    streaming = {r[0] for r in rows}
            except (psycopg.Error, OSError, TimeoutError) as exc:
                problems.append(f"{new.name}: {problem(exc)}")
            pending = []
            for replica in replicas:
                if replica.name not in streaming:
                    follows, paused = await self._follows(ctx, replica, new)
                    if not follows:
                        problems.append(f"{replica.name} does not stream from {new.name}")
                    elif paused:
                        pending.append(replica.name)
            problems += await write_backend_problems(ctx, new.name)
            if not problems or time.monotonic() >= deadline:
                break
            await asyncio.sleep(POLL)
        if problems:
            ctx.audit("verify_failed", problems=problems)
            return Outcome("failed", "not verified: " + "; ".join(problems), failover=True, facts=facts)
        if written_at is not None:
            facts["writable_after_s"] = round(written_at - started, 3)
        if pending:
            facts["replay_paused"] = pending  # re-pointed; they stream once an operator resumes replay
        ctx.audit(
            "verified", new_primary=new.name, replicas=[r.name for r in replicas], replay_paused=pending
        )
        detail = f"{new.name} is the primary, {len(replicas)} replica(s) follow it"
        if pending:
            detail += f" ({', '.join(pending)} once replay is resumed)"
        return Outcome("succeeded", detail, failover=True, facts=facts)

    async def _write_check(self, conn: psycopg.AsyncConnection[Any]) -> None:
        table = sql.Identifier(CHECK_TABLE)
        await conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (id int PRIMARY KEY, checked_at timestamptz NOT NULL)"
            ).format(table)
        )
        await conn.execute(
            sql.SQL(
                "INSERT INTO {} VALUES (1, now())"
                " ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at"
            ).format(table)
        )

    async def _follows(
        self, ctx: ActionContext, replica: TargetConfig, new: TargetConfig
    ) -> tuple[bool, bool]:
        """(follows, paused): whether ``replica``'s WAL receiver is connected to ``new``, or, with
        replay paused (the receiver only restarts once replay resumes), its primary_conninfo names
        ``new``; and whether it is that paused case."""
        want = endpoint(new.url)
        s = await observe(replica, ctx.password, ctx.loaded.config.monitor.timeout)
        if want is not None and s.sender_port == want[1]:
            return True, False
        paused = bool(s.paused and s.upstream == want)
        return paused, paused
