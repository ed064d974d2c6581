"""Redis failover: the failover sequence (failover.py) with REPLICAOF, or, where Sentinel is in
charge, waiting for Sentinel's own election.

Redis rules on top of the sequence's:
- A replica linked to the old master that heard from it within ``witness_max_silence`` (Redis's
  ``master_last_io_seconds_ago``) is a witness that it is alive: refuse. Masters ping their replicas
  every ``repl-ping-replica-period`` (10 s by default): set it below ``witness_max_silence`` (1 s)
  for an idle link to count as a witness.
- Another target counts as a live master only with linked replicas (a replica restarted without its
  config comes back as an empty master with none: that is not a failover that already happened).
- A replica with replica-priority 0, or still loading a full sync, is never promoted; the highest
  replication offset wins.
- With Sentinel the action never issues REPLICAOF: it waits (``sentinel_wait``) for Sentinel to elect
  a master among the targets, then only moves the write backend and verifies. Sentinel picks the
  region, not the action.
- Sentinel's word is checked: its election counts only when a majority of the configured sentinels
  (an unreachable one votes for nobody) name the same target and that target is a master the kit
  accepts (linked replicas, or an offset at least the best replica's); else the action refuses
  (limit ``sentinel_unconfirmed``). One lying or misconfigured Sentinel, or an elected member that
  lost its data, does not move the writes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from ...clients import redis as client
from ...clients.addresses import Address, normal_host, show, target_address
from ...config import TargetConfig
from .base import Outcome, refuse
from .failover import Driver, Elected, FailoverAction, Ineligible, PrimaryState, Seen, StepFailed
from .liveness import still_answers

CLIENT_NAME = "tierwatch-recovery"
CHECK_KEY = "tierwatch:recovery:check"
SENTINEL_POLL = 0.25  # seconds between asking the sentinels
SENTINEL_UNCONFIRMED = "sentinel_unconfirmed"  # the blocked limit: Sentinel's choice not confirmed


@dataclass
class RedisSeen(Seen):
    """INFO replication (and the replica priority) of one target."""

    info: dict[str, Any] | None = None
    priority: int | None = None

    @property
    def role(self) -> str:
        if self.info is not None:
            return str(self.info.get("role", "unknown"))
        return "unreachable" if not self.answered else "unknown"

    @property
    def is_primary(self) -> bool:
        return self.role == "master"

    @property
    def is_replica(self) -> bool:
        return self.role == "slave"

    @property
    def offset(self) -> int:
        info = self.info or {}
        return int(info.get("slave_repl_offset" if self.is_replica else "master_repl_offset", -1))

    @property
    def upstream(self) -> Address | None:
        info = self.info or {}
        if not self.is_replica or "master_host" not in info:
            return None
        return normal_host(str(info["master_host"])), int(info["master_port"])

    @property
    def link(self) -> str | None:
        return (self.info or {}).get("master_link_status")

    @property
    def linked_replicas(self) -> int:
        """Replicas this master lists as online."""
        info = self.info or {}
        return sum(
            1
            for key, value in info.items()
            if key.startswith("slave") and isinstance(value, dict) and value.get("state") == "online"
        )

    def sees(self, primary: Address, max_silence: float) -> str | None:
        """Linked to ``primary`` (link up) and heard from it within ``max_silence`` seconds."""
        last_io = (self.info or {}).get("master_last_io_seconds_ago")
        if self.upstream != primary or self.link != "up" or last_io is None:
            return None
        if not 0 <= int(last_io) <= max_silence:
            return None
        return f"link up, last I/O {int(last_io)}s ago"

    def details(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.info is not None:
            out["offset"] = self.offset
        if self.upstream is not None:
            out.update(master=show(self.upstream), link=self.link)
        if self.priority is not None:
            out["priority"] = self.priority
        return out


class RedisDriver(Driver[RedisSeen]):
    """REPLICAOF-based promotion and re-pointing; Sentinel's election where it is in charge."""

    primary_word = "master"
    primary_words = "masters"
    verify_timeout = 20.0
    errors = client.ERRORS

    def _client(self, target: TargetConfig) -> aioredis.Redis:
        return client.redis_client(target, self.ctx.password, self.timeout, client_name=CLIENT_NAME)

    @property
    def repoints(self) -> bool:
        return self.ctx.cluster.sentinel is None

    def problem(self, exc: BaseException) -> str:
        return client.problem(exc)

    async def observe(self, target: TargetConfig) -> RedisSeen:
        seen = RedisSeen(target)
        try:
            async with self._client(target) as conn:
                seen.info = await conn.info("replication")
                seen.answered = True
                if seen.is_replica:
                    seen.priority = await _priority(conn, seen.info)
        except self.errors as exc:
            seen.answered = not client.silent(exc)
            seen.error = client.problem(exc)
        return seen

    async def answers(self, target: TargetConfig) -> tuple[bool, str]:
        async def ping() -> str:
            async with self._client(target) as conn:
                await conn.ping()
            return "PONG"

        return await still_answers(
            ping, client.silent, client.problem, self.errors, overlap=self.alert_evidence
        )

    def live_primary(self, s: RedisSeen) -> str | None:
        return f"{s.linked_replicas} linked replicas" if s.is_primary and s.linked_replicas else None

    def ineligible(self, s: RedisSeen, replicas: Sequence[RedisSeen]) -> Ineligible | None:
        if s.priority == 0:
            return Ineligible("replica-priority 0")
        if str((s.info or {}).get("master_sync_in_progress", "0")) == "1":
            return Ineligible("sync in progress")
        return None

    def rank(self, s: RedisSeen) -> tuple[int, ...]:
        return (s.offset,)

    def position(self, s: RedisSeen) -> dict[str, Any]:
        return {"offset": s.offset}

    async def promote(self, best: RedisSeen) -> None:
        try:
            async with self._client(best.target) as conn:
                await conn.execute_command("REPLICAOF", "NO", "ONE")
        except self.errors as exc:
            raise StepFailed(
                f"REPLICAOF NO ONE on {best.name} failed ({self.problem(exc)})", self.problem(exc)
            ) from None

    async def repoint(self, new: RedisSeen, where: Address, replica: RedisSeen) -> dict[str, Any]:
        async with self._client(replica.target) as conn:
            await conn.execute_command("REPLICAOF", *where)
        return {}

    async def check_primary(self, new: TargetConfig, write: bool) -> PrimaryState:
        state = PrimaryState()
        try:
            async with self._client(new) as conn:
                role = (await conn.info("replication")).get("role")
                if role != "master":
                    state.problems.append(f"{new.name} reports role {role}")
                elif write:
                    await conn.set(CHECK_KEY, str(time.time()), ex=60)
                    state.wrote = True
        except self.errors as exc:
            state.problems.append(f"{new.name}: {self.problem(exc)}")
        return state

    async def follows(
        self, replica: TargetConfig, new: TargetConfig, where: Address
    ) -> tuple[str | None, bool]:
        s = await self.observe(replica)
        if s.upstream == where and s.link == "up":
            return None, False
        master = show(s.upstream) if s.upstream else None
        return f"{replica.name}: master {master} link {s.link}", False

    async def election(self, seen: list[RedisSeen], old: str) -> Elected | Outcome | None:
        """With Sentinel in charge: wait for it to elect a master among the targets. An election
        counts only when a majority of the configured sentinels name the same target and that target
        is a master the kit would accept (``_vouched``); else, once ``sentinel_wait`` is over, refuse
        (limit ``sentinel_unconfirmed``): a human decides."""
        sentinel = self.ctx.cluster.sentinel
        if sentinel is None:
            return None
        old_address = target_address(self.ctx.target(old))  # type: ignore[arg-type]
        wait = self.ctx.cluster_settings.sentinel_wait
        needed = len(sentinel.targets) // 2 + 1
        self.ctx.audit("waiting_for_sentinel", master_name=sentinel.master_name, wait_s=wait, needed=needed)
        started = time.monotonic()
        deadline = started + (0 if self.ctx.dry_run else wait)
        while True:
            answers = await self._sentinel_answers()
            new, votes, doubts = await self._confirmed(answers, old_address, needed, seen)
            if new is not None or time.monotonic() >= deadline:
                break
            await asyncio.sleep(SENTINEL_POLL)
        if self.ctx.dry_run:
            now = new[0].name if new else "no confirmed new master yet"
            self.ctx.audit("would_wait_for_sentinel", elected=now, unconfirmed=doubts)
            return Outcome(
                "succeeded", f"dry run: Sentinel is in charge ({now}); would move the write backend"
            )
        if new is None:
            return self._not_elected(answers, old_address, wait, doubts)
        target, evidence = new
        self.ctx.audit(
            "sentinel_elected",
            target=target.name,
            votes=votes,
            of=len(sentinel.targets),
            evidence=evidence,
            waited_s=round(time.monotonic() - started, 3),
        )
        replicas = [s.target for s in seen if s.name not in (old, target.name) and s.answered]
        facts = {
            "new_primary": target.name,
            "old_primary": old,
            "via": "sentinel",
            "old_primary_fencing": "sentinel",
        }
        return Elected(target, facts, replicas)

    async def _confirmed(
        self,
        answers: dict[str, Address | None],
        old_address: Address | None,
        needed: int,
        seen: Sequence[RedisSeen],
    ) -> tuple[tuple[TargetConfig, str] | None, int, dict[str, str]]:
        """The target a majority of sentinels name and the kit accepts, with the evidence; its votes;
        and why each other target named (not the old master) does not count."""
        doubts: dict[str, str] = {}
        for candidate in self.ctx.cluster.targets:
            where = target_address(candidate)
            votes = sum(1 for a in answers.values() if a is not None and a == where)
            if not votes or where == old_address:
                continue
            named = f"named by {votes} of {len(answers)} sentinels"
            if votes < needed:
                doubts[candidate.name] = f"{named} ({needed} needed)"
                continue
            # a majority names at most one target: observe only that one
            s = await self.observe(candidate)
            evidence, why = _vouched(s, seen) if s.is_primary else (None, f"reports role {s.role}")
            if evidence is None:
                doubts[candidate.name] = f"{named} but {why}"
                continue
            return (candidate, evidence), votes, doubts
        return None, 0, doubts

    def _not_elected(
        self,
        answers: dict[str, Address | None],
        old_address: Address | None,
        wait: float,
        doubts: dict[str, str],
    ) -> Outcome:
        """No confirmed election within ``wait``: refuse if sentinels named a target the check did
        not confirm (limit ``sentinel_unconfirmed``), else fail as Sentinel elected nobody."""
        if doubts:
            named = "; ".join(f"{name} {why}" for name, why in doubts.items())
            detail = f"Sentinel's choice not confirmed within {wait:g}s: {named}"
            self.ctx.audit(
                "sentinel_unconfirmed",
                answers={name: show(a) if a else "no answer" for name, a in answers.items()},
                unconfirmed=doubts,
            )
            outcome = refuse(self.ctx, detail)
            outcome.facts["limit"] = SENTINEL_UNCONFIRMED
            return outcome
        unknown = sorted({show(a) for a in answers.values() if a is not None and a != old_address})
        why = f"Sentinel elected no new master within {wait:g}s"
        if unknown:
            why += f" (sentinels report {', '.join(unknown)}, not a master among the targets)"
        self.ctx.audit("sentinel_timeout", reason=why)
        return Outcome("failed", why)

    async def _sentinel_answers(self) -> dict[str, Address | None]:
        """The master address each configured sentinel reports (None: no answer), asked at once."""
        sentinel = self.ctx.cluster.sentinel
        assert sentinel is not None

        async def ask(target: TargetConfig) -> Address | None:
            try:
                reply = await client.command_trying_without_password(
                    target,
                    self.ctx.password,
                    self.timeout,
                    "SENTINEL",
                    "GET-MASTER-ADDR-BY-NAME",
                    sentinel.master_name,
                    client_name=CLIENT_NAME,
                )
            except self.errors:
                return None
            return (normal_host(str(reply[0])), int(reply[1])) if reply else None

        found = await asyncio.gather(*(ask(t) for t in sentinel.targets))
        return {t.name: a for t, a in zip(sentinel.targets, found, strict=True)}


def _vouched(s: RedisSeen, seen: Sequence[RedisSeen]) -> tuple[str | None, str]:
    """(evidence, why not): a master the kit accepts has linked replicas, or a replication offset at
    least that of the best replica observed before the election (a member that lost its data has
    neither)."""
    if s.linked_replicas:
        return f"{s.linked_replicas} linked replicas", ""
    replicas = [r for r in seen if r.is_replica and r.name != s.name]
    best = max(replicas, key=lambda r: r.offset, default=None)
    if best is None or s.offset >= best.offset:
        return f"offset {s.offset} at least the best replica's", ""
    return None, f"has no linked replica and offset {s.offset}, behind replica {best.name} ({best.offset})"


async def _priority(conn: aioredis.Redis, info: dict[str, Any]) -> int | None:
    try:
        reply = await conn.config_get("replica-priority")
        if "replica-priority" in reply:
            return int(reply["replica-priority"])
    except ResponseError:  # CONFIG not allowed to this user: INFO has it too
        pass
    value = info.get("slave_priority")
    return int(value) if value is not None else None


class RedisFailover(FailoverAction[RedisSeen]):
    """Promote the best Redis replica (or let Sentinel do it), re-point replicas and writes, verify."""

    name = "redis_failover"
    driver = RedisDriver
