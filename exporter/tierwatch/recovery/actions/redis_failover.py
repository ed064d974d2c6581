"""Redis failover: promote the most up-to-date replica once the master is really gone (or wait for
Sentinel where it is in charge), re-point the other replicas and the write backend, and verify.

Safety rules:
- "Really gone" means the last known master (the alert's ``target``, else the server the replicas
  point to) fails PING on two attempts a few hundred ms apart. Any answer, even an error (LOADING,
  BUSY, a refused password), counts as "still there": the action then refuses.
- Without Sentinel, another target that is a master with linked replicas also means "refuse": a
  failover already happened (or the replicas are fine as they are).
- With Sentinel the action never issues REPLICAOF: it waits for Sentinel's election and then only
  moves the write backend.
- A dry run observes and chooses but changes nothing; a resumed run never promotes again, it verifies
  there is a single master and re-applies the re-pointing and the backend update.

The old master is fenced by nobody here: before it rejoins it must be re-pointed at the new master
(``REPLICAOF``); Outcome.facts says so (``old_primary_fencing``).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ...config import Secret, TargetConfig
from ..discovery import point_write_backend, write_backend_problems
from .base import Action, ActionContext, Outcome, refuse
from .liveness import ATTEMPTS, still_answers

CLIENT_NAME = "tierwatch-recovery"
CHECK_KEY = "tierwatch:recovery:check"
VERIFY_TIMEOUT = 20.0  # seconds for the new topology to settle (replica links up, backend moved)
POLL = 0.1


def redis_client(target: TargetConfig, password: Secret | None, timeout: float) -> aioredis.Redis:
    """A short-timeout, no-retry client for one target (ACL user from the URL, password given)."""
    extra: dict[str, Any] = {}
    if target.url.startswith("rediss://"):
        if target.tls_skip_verify:
            extra.update(ssl_cert_reqs="none", ssl_check_hostname=False)
        if target.tls_ca_file:
            extra["ssl_ca_certs"] = target.tls_ca_file
    return aioredis.Redis.from_url(
        target.url,
        password=password.reveal() if password else None,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        decode_responses=True,
        protocol=2,
        retry=Retry(NoBackoff(), 0),
        client_name=CLIENT_NAME,
        health_check_interval=0,
        **extra,
    )


def silent(exc: BaseException) -> bool:
    """True if ``exc`` means the server gave no answer at all (refused, reset, timed out)."""
    if isinstance(exc, AuthenticationError | BusyLoadingError):
        return False  # the server is there and talking
    return isinstance(exc, RedisConnectionError | RedisTimeoutError | TimeoutError | OSError)


def problem(exc: BaseException) -> str:
    """A secret-free description of a client error."""
    return type(exc).__name__


def address(target: TargetConfig) -> tuple[str, int] | None:
    """(host, port) of a TCP target, ``localhost`` normalised; None for a unix socket."""
    parts = urlsplit(target.url)
    if not parts.hostname:
        return None
    return normal_host(parts.hostname), parts.port or 6379


def normal_host(host: str) -> str:
    return "127.0.0.1" if host in ("localhost", "::ffff:127.0.0.1") else host


@dataclass
class Seen:
    """What one target reported (INFO replication), or why it did not."""

    target: TargetConfig
    info: dict[str, Any] | None = None
    answered: bool = False
    error: str | None = None
    priority: int | None = None

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def role(self) -> str:
        if self.info is not None:
            return str(self.info.get("role", "unknown"))
        return "unreachable" if not self.answered else "unknown"

    @property
    def offset(self) -> int:
        info = self.info or {}
        key = "slave_repl_offset" if self.role == "slave" else "master_repl_offset"
        return int(info.get(key, -1))

    @property
    def master(self) -> tuple[str, int] | None:
        info = self.info or {}
        if self.role != "slave" or "master_host" not in info:
            return None
        return normal_host(str(info["master_host"])), int(info["master_port"])

    @property
    def linked_replicas(self) -> int:
        """Replicas this master lists as online."""
        info = self.info or {}
        return sum(
            1
            for key, value in info.items()
            if key.startswith("slave") and isinstance(value, dict) and value.get("state") == "online"
        )

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role}
        if self.info is not None:
            out["offset"] = self.offset
        if self.master is not None:
            out["master"] = "{}:{}".format(*self.master)
            out["link"] = (self.info or {}).get("master_link_status")
        if self.priority is not None:
            out["priority"] = self.priority
        if self.error:
            out["error"] = self.error
        return out


async def observe(target: TargetConfig, password: Secret | None, timeout: float) -> Seen:
    """INFO replication (and the replica priority) of one target."""
    seen = Seen(target)
    try:
        async with redis_client(target, password, timeout) as client:
            seen.info = await client.info("replication")
            seen.answered = True
            if seen.role == "slave":
                seen.priority = await _priority(client, seen.info)
    except (RedisError, OSError) as exc:
        seen.answered = not silent(exc)
        seen.error = problem(exc)
    return seen


async def _priority(client: aioredis.Redis, info: dict[str, Any]) -> int | None:
    try:
        reply = await client.config_get("replica-priority")
        if "replica-priority" in reply:
            return int(reply["replica-priority"])
    except ResponseError:  # CONFIG not allowed to this user: INFO has it too
        pass
    value = info.get("slave_priority")
    return int(value) if value is not None else None


async def answers_ping(target: TargetConfig, password: Secret | None, timeout: float) -> tuple[bool, str]:
    """Whether the server answers at all (see liveness.still_answers); and what was seen."""

    async def ping() -> str:
        async with redis_client(target, password, timeout) as client:
            await client.ping()
        return "PONG"

    return await still_answers(ping, silent, problem, (RedisError, OSError))


class RedisFailover(Action):
    """Promote the best Redis replica (or let Sentinel do it), re-point replicas and writes, verify."""

    name = "redis_failover"

    async def run(self, ctx: ActionContext) -> Outcome:
        timeout = ctx.loaded.config.monitor.timeout
        password = ctx.password
        seen = list(await asyncio.gather(*(observe(t, password, timeout) for t in ctx.cluster.targets)))
        by_name = {s.name: s for s in seen}
        ctx.audit("observed", targets={s.name: s.summary() for s in seen})
        old = self._last_master(ctx, seen)
        if ctx.resumed:
            return await self._resume(ctx, seen, old)
        if old is None:
            return refuse(
                ctx,
                "cannot tell which target was the master (no alert target, no replica link)",
                "cannot tell which target was the master",
            )
        alive, how = await answers_ping(by_name[old].target, password, timeout)
        ctx.audit("master_checked", target=old, answers=alive, seen=how, attempts=ATTEMPTS)
        if alive:
            return refuse(ctx, f"master {old} still answers", f"master {old} still answers ({how})")
        if ctx.cluster.sentinel is not None:
            return await self._via_sentinel(ctx, seen, old)
        for other in seen:
            if other.name != old and other.role == "master" and other.linked_replicas:
                reason = f"master {other.name} still answers ({other.linked_replicas} linked replicas)"
                return refuse(ctx, f"master {other.name} still answers", reason)
        best = self._choose(ctx, seen, old)
        if best is None:
            return refuse(
                ctx,
                "no reachable replica eligible for promotion (priority 0 or syncing)",
                "no eligible replica",
            )
        if ctx.dry_run:
            ctx.audit("would_promote", target=best.name, offset=best.offset)
            return Outcome(
                "succeeded", f"dry run: would promote {best.name}", facts={"would_promote": best.name}
            )

        await ctx.point_of_no_return()
        started = time.monotonic()
        try:
            async with redis_client(best.target, password, timeout) as client:
                await client.execute_command("REPLICAOF", "NO", "ONE")
        except (RedisError, OSError) as exc:
            ctx.audit("promote_failed", target=best.name, error=problem(exc))
            return Outcome("failed", f"REPLICAOF NO ONE on {best.name} failed ({problem(exc)})")
        ctx.audit("promoted", target=best.name, offset=best.offset)
        replicas = [s.target for s in seen if s.role == "slave" and s.name != best.name]
        failed = await self._repoint(ctx, best.target, replicas)
        await point_write_backend(ctx, best.name)
        facts = {
            "new_primary": best.name,
            "old_primary": old,
            "offset": best.offset,
            "old_primary_fencing": "required",
        }
        return await self._verified(
            ctx, best.target, [r for r in replicas if r.name not in failed], facts, started
        )

    def _last_master(self, ctx: ActionContext, seen: list[Seen]) -> str | None:
        """The alert's target, else the one target the replicas point to, else the one master."""
        if ctx.alert.target and ctx.target(ctx.alert.target):
            return ctx.alert.target
        pointed = {s.master for s in seen if s.master is not None}
        named = {t.name for t in ctx.cluster.targets if address(t) in pointed}
        if len(pointed) == 1 and len(named) == 1:
            return named.pop()
        masters = [s.name for s in seen if s.role == "master"]
        return masters[0] if len(masters) == 1 else None

    def _choose(self, ctx: ActionContext, seen: list[Seen], old: str) -> Seen | None:
        """The reachable replica with the highest offset (config order breaks ties), skipping
        replica-priority 0 and replicas still loading a full sync."""
        candidates = []
        for index, s in enumerate(seen):
            if s.name == old or s.role != "slave":
                continue
            syncing = str((s.info or {}).get("master_sync_in_progress", "0")) == "1"
            eligible = s.priority != 0 and not syncing
            why = "ok" if eligible else ("replica-priority 0" if s.priority == 0 else "sync in progress")
            ctx.audit("candidate", target=s.name, offset=s.offset, priority=s.priority, eligible=why)
            if eligible:
                candidates.append((s.offset, -index, s))
        if not candidates:
            return None
        best = max(candidates, key=lambda c: (c[0], c[1]))[2]
        ctx.audit("chosen", target=best.name, offset=best.offset)
        return best

    async def _repoint(self, ctx: ActionContext, new: TargetConfig, replicas: list[TargetConfig]) -> set[str]:
        """REPLICAOF <new> on each replica; the names it failed on."""
        host, port = address(new) or ("", 0)
        timeout = ctx.loaded.config.monitor.timeout
        failed: set[str] = set()
        for replica in replicas:
            try:
                async with redis_client(replica, ctx.password, timeout) as client:
                    await client.execute_command("REPLICAOF", host, port)
                ctx.audit("repointed", target=replica.name, master=new.name)
            except (RedisError, OSError) as exc:
                failed.add(replica.name)
                ctx.audit("repoint_failed", target=replica.name, master=new.name, error=problem(exc))
        return failed

    async def _via_sentinel(self, ctx: ActionContext, seen: list[Seen], old: str) -> Outcome:
        """Wait for Sentinel to elect a new master, then move the write backend and verify."""
        sentinel = ctx.cluster.sentinel
        assert sentinel is not None
        old_address = address(ctx.target(old))  # type: ignore[arg-type]
        wait = ctx.cluster_settings.sentinel_wait
        ctx.audit("waiting_for_sentinel", master_name=sentinel.master_name, wait_s=wait)
        started = time.monotonic()
        deadline = started + (0 if ctx.dry_run else wait)
        new: TargetConfig | None = None
        reported: set[tuple[str, int]] = set()
        while new is None:
            reported = await self._sentinel_addresses(ctx)
            for candidate in ctx.cluster.targets:
                where = address(candidate)
                if where in reported and where != old_address:
                    info = await observe(candidate, ctx.password, ctx.loaded.config.monitor.timeout)
                    if info.role == "master":
                        new = candidate
                        break
            if new is None:
                if time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.25)
        if ctx.dry_run:
            now = new.name if new else "no new master yet"
            ctx.audit("would_wait_for_sentinel", elected=now)
            return Outcome(
                "succeeded", f"dry run: Sentinel is in charge ({now}); would move the write backend"
            )
        if new is None:
            unknown = sorted("{}:{}".format(*a) for a in reported if a != old_address)
            why = f"Sentinel elected no new master within {wait:g}s"
            if unknown:
                why += f" (sentinels report {', '.join(unknown)}, not a master among the targets)"
            ctx.audit("sentinel_timeout", reason=why)
            return Outcome("failed", why)
        ctx.audit("sentinel_elected", target=new.name, waited_s=round(time.monotonic() - started, 3))
        await ctx.point_of_no_return()
        await point_write_backend(ctx, new.name)
        replicas = [s.target for s in seen if s.name not in (old, new.name) and s.answered]
        facts = {
            "new_primary": new.name,
            "old_primary": old,
            "via": "sentinel",
            "old_primary_fencing": "sentinel",
        }
        return await self._verified(ctx, new, replicas, facts, started)

    async def _sentinel_addresses(self, ctx: ActionContext) -> set[tuple[str, int]]:
        """The master addresses the reachable sentinels report."""
        sentinel = ctx.cluster.sentinel
        assert sentinel is not None
        timeout = ctx.loaded.config.monitor.timeout

        async def ask(target: TargetConfig) -> tuple[str, int] | None:
            for password in (ctx.password, None):
                try:
                    async with redis_client(target, password, timeout) as client:
                        reply = await client.execute_command(
                            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", sentinel.master_name
                        )
                    return (normal_host(str(reply[0])), int(reply[1])) if reply else None
                except AuthenticationError as exc:
                    if password is None or "without any password" not in str(exc):
                        return None  # a sentinel without requirepass refuses AUTH: retry without
                except (RedisError, OSError):
                    return None
            return None

        found = await asyncio.gather(*(ask(t) for t in sentinel.targets))
        return {a for a in found if a is not None}

    async def _resume(self, ctx: ActionContext, seen: list[Seen], old: str | None) -> Outcome:
        """After a restart past the point of no return: never promote again; check that exactly one
        reachable target is a master, re-point the rest at it and move the backend (idempotent)."""
        masters = [s for s in seen if s.role == "master"]
        if len(masters) != 1:
            names = ", ".join(s.name for s in masters) or "none"
            ctx.audit("resume_failed", masters=names)
            return Outcome(
                "failed", f"resumed run found {len(masters)} masters ({names}); not promoting again"
            )
        new = masters[0].target
        ctx.audit("resumed", master=new.name)
        if ctx.cluster.sentinel is None:
            stray = [s.target for s in seen if s.role == "slave" and s.master != address(new)]
            await self._repoint(ctx, new, stray)
        await point_write_backend(ctx, new.name)
        replicas = [s.target for s in seen if s.role == "slave"]
        facts = {
            "new_primary": new.name,
            "old_primary": old,
            "resumed": True,
            "old_primary_fencing": "required",
        }
        return await self._verified(ctx, new, replicas, facts, time.monotonic())

    async def _verified(
        self,
        ctx: ActionContext,
        new: TargetConfig,
        replicas: list[TargetConfig],
        facts: dict[str, Any],
        started: float,
    ) -> Outcome:
        """Poll until the new master is a master and takes a write, each replica is linked to it and
        the write backend points at it; succeeded with ``facts``, or failed with what is missing."""
        timeout = ctx.loaded.config.monitor.timeout
        deadline = time.monotonic() + VERIFY_TIMEOUT
        want = address(new)
        problems: list[str] = []
        writable_at: float | None = None
        while True:
            problems = []
            try:
                async with redis_client(new, ctx.password, timeout) as client:
                    role = (await client.info("replication")).get("role")
                    if role != "master":
                        problems.append(f"{new.name} reports role {role}")
                    elif writable_at is None:
                        await client.set(CHECK_KEY, str(time.time()), ex=60)
                        writable_at = time.monotonic()
                        ctx.audit("write_checked", target=new.name, after_s=round(writable_at - started, 3))
            except (RedisError, OSError) as exc:
                problems.append(f"{new.name}: {problem(exc)}")
            for replica in replicas:
                s = await observe(replica, ctx.password, timeout)
                link = (s.info or {}).get("master_link_status")
                if s.master != want or link != "up":
                    problems.append(f"{replica.name}: master {s.summary().get('master')} link {link}")
            problems += await write_backend_problems(ctx, new.name)
            if not problems or time.monotonic() >= deadline:
                break
            await asyncio.sleep(POLL)
        if problems:
            ctx.audit("verify_failed", problems=problems)
            return Outcome("failed", "not verified: " + "; ".join(problems), failover=True, facts=facts)
        if writable_at is not None:
            facts["writable_after_s"] = round(writable_at - started, 3)
        ctx.audit("verified", new_primary=new.name, replicas=[r.name for r in replicas])
        detail = f"{new.name} is the master, {len(replicas)} replica(s) follow it"
        return Outcome("succeeded", detail, failover=True, facts=facts)
