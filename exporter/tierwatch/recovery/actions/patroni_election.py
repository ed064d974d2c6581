"""PostgreSQL under Patroni: the failover sequence waits for Patroni's own election and never promotes,
re-points, rewinds or demotes (PgDriver.election calls :func:`patroni_election`).

The rule an election must pass before the write backend and the DNS records move:
- every configured Patroni member is asked at once, each round, for ``/cluster`` (who holds the
  leader key) and ``/patroni`` (its own role and state), bounded by the monitor timeout and
  ``patroni.max_body_bytes``; an unreachable member, or one reporting another ``scope``, votes for
  nobody;
- a majority of the configured members (not of those that answer) must name the same leader, and
  that leader must map to a target of the cluster (by its PostgreSQL host and port in ``/cluster``,
  else by its member name) other than the old primary;
- that target's own member must report role primary, state running;
- the kit's own PostgreSQL check must find it out of recovery, with a WAL position
  (``pg_current_wal_lsn``) at least the most any other replica had received before the election
  (a member that came back empty, or a leader behind a replica, does not move the writes).

A majority of members reporting the cluster paused (maintenance mode: Patroni does not fail over)
refuses at once (limit ``patroni_paused``). Without a confirmed election within ``patroni_wait``
the action refuses (limit ``patroni_unconfirmed``), auditing what each member said. A dry run asks
once and says what it would do.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...clients import patroni as rest
from ...clients import postgres as client
from ...clients.addresses import normal_host, target_at
from ...config import PatroniConfig, PatroniMember, TargetConfig
from .base import Outcome, refuse
from .failover import Elected

if TYPE_CHECKING:
    from .pg_promote import PgDriver, PgSeen

PATRONI_POLL = 0.5  # seconds between two rounds of asking the members
PATRONI_UNCONFIRMED = "patroni_unconfirmed"  # the blocked limit: no election the kit could confirm
PATRONI_PAUSED = "patroni_paused"  # the blocked limit: maintenance mode, Patroni will not fail over

CHECK_SQL = """
SELECT pg_is_in_recovery(),
       CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END
"""


@dataclass
class Word:
    """What one configured member said in one round (``leader``: the target its /cluster names)."""

    member: PatroniMember
    status: rest.PatroniStatus | None = None
    leader: str | None = None
    paused: bool = False
    error: str | None = None

    def said(self) -> str:
        """A short, secret-free account for the audit trail."""
        if self.error:
            return f"no answer ({self.error})"
        parts = [f"leader {self.leader or 'none'}"]
        if self.status is not None:
            parts.append(f"itself {self.status.role}/{self.status.state}")
        if self.paused:
            parts.append("paused")
        return ", ".join(parts)


async def patroni_election(driver: PgDriver, seen: list[PgSeen], old: str) -> Elected | Outcome:
    """Wait for Patroni to elect a leader the kit confirms (see the module docstring)."""
    ctx = driver.ctx
    patroni = ctx.cluster.patroni
    assert patroni is not None
    wait = ctx.cluster_settings.patroni_wait
    needed = len(patroni.members) // 2 + 1
    ctx.audit("waiting_for_patroni", scope=patroni.scope, wait_s=wait, needed=needed, of=len(patroni.members))
    started = time.monotonic()
    deadline = started + (0 if ctx.dry_run else wait)
    while True:
        words = await _ask_all(driver, patroni)
        paused = [w.member.target for w in words if w.paused]
        if len(paused) >= needed:
            return _paused(driver, words, paused)
        new, votes, doubts = await _confirmed(driver, words, old, needed, seen)
        if new is not None or time.monotonic() >= deadline:
            break
        await asyncio.sleep(PATRONI_POLL)
    answers = {w.member.target: w.said() for w in words}
    if ctx.dry_run:
        now = new[0].name if new else "no confirmed new leader yet"
        ctx.audit("would_wait_for_patroni", elected=now, answers=answers, unconfirmed=doubts)
        return Outcome("succeeded", f"dry run: Patroni is in charge ({now}); would move the write backend")
    if new is None:
        why = "; ".join(f"{name} {doubt}" for name, doubt in doubts.items()) or "no member named a new leader"
        ctx.audit("patroni_unconfirmed", answers=answers, unconfirmed=doubts, waited_s=round(wait, 3))
        outcome = refuse(ctx, f"Patroni's election not confirmed within {wait:g}s: {why}")
        outcome.facts["limit"] = PATRONI_UNCONFIRMED
        return outcome
    target, evidence = new
    ctx.audit(
        "patroni_elected",
        target=target.name,
        votes=votes,
        of=len(patroni.members),
        evidence=evidence,
        waited_s=round(time.monotonic() - started, 3),
        answers=answers,
        unconfirmed=doubts,
    )
    managed = {m.target for m in patroni.members}
    replicas = [
        s.target for s in seen if s.name in managed and s.name not in (old, target.name) and s.answered
    ]
    facts: dict[str, Any] = {
        "new_primary": target.name,
        "old_primary": old,
        "via": "patroni",
        "old_primary_fencing": "patroni",
    }
    unmanaged = [t.name for t in ctx.cluster.targets if t.name not in managed]
    if unmanaged:
        facts["not_managed_by_patroni"] = unmanaged  # nobody re-points these: not verified
    return Elected(target, facts, replicas)


def _paused(driver: PgDriver, words: Sequence[Word], paused: list[str]) -> Outcome:
    """Maintenance mode: Patroni fails nothing over, and neither does the kit."""
    answers = {w.member.target: w.said() for w in words}
    driver.ctx.audit("patroni_paused", paused_by=paused, answers=answers)
    outcome = refuse(
        driver.ctx,
        f"Patroni cluster paused (maintenance mode, said by {', '.join(paused)}): "
        "Patroni will not fail over and neither will the recovery service",
    )
    outcome.facts["limit"] = PATRONI_PAUSED
    return outcome


async def _ask_all(driver: PgDriver, patroni: PatroniConfig) -> list[Word]:
    """Every configured member's word, asked at once."""
    return list(await asyncio.gather(*(_ask(driver, patroni, m) for m in patroni.members)))


async def _ask(driver: PgDriver, patroni: PatroniConfig, member: PatroniMember) -> Word:
    word = Word(member)
    timeout, limit = driver.timeout, patroni.max_body_bytes
    status, view = await asyncio.gather(
        rest.read_status(member, timeout, limit),
        rest.read_cluster(member, timeout, limit),
        return_exceptions=True,
    )
    for answer in (status, view):
        if isinstance(answer, rest.PatroniError):
            word.error = str(answer)
            return word
        if isinstance(answer, BaseException):
            raise answer
    assert isinstance(status, rest.PatroniStatus) and isinstance(view, rest.ClusterView)
    scopes = {s for s in (status.scope, view.scope) if s is not None}
    if patroni.scope is not None and scopes - {patroni.scope}:
        word.error = f"reports scope {', '.join(sorted(scopes))}, not {patroni.scope}"
        return word
    word.status = status
    word.paused = bool(view.paused or status.paused)
    word.leader = _leader_target(driver, view)
    return word


def _leader_target(driver: PgDriver, view: rest.ClusterView) -> str | None:
    """The target the leader of ``view`` runs, found by its PostgreSQL host and port, else the
    leader's member name as it is (None: no leader)."""
    if not view.leader:
        return None
    targets = driver.ctx.cluster.targets
    entry = next((m for m in view.members if m.name == view.leader), None)
    if entry is not None and entry.host and entry.port:
        found = target_at(targets, normal_host(entry.host), int(entry.port))
        if found is not None:
            return found.name
    return view.leader


async def _confirmed(
    driver: PgDriver, words: Sequence[Word], old: str, needed: int, seen: Sequence[PgSeen]
) -> tuple[tuple[TargetConfig, str] | None, int, dict[str, str]]:
    """The leader a majority names and the kit confirms, with the evidence; its votes; and why each
    other leader named (not the old primary) does not count."""
    doubts: dict[str, str] = {}
    patroni = driver.ctx.cluster.patroni
    managed = {m.target for m in patroni.members} if patroni else set()
    votes = Counter(w.leader for w in words if w.leader is not None)
    of = len(words)
    for leader, count in votes.items():
        if leader == old:
            continue
        named = f"named leader by {count} of {of} members"
        target = driver.ctx.target(leader)
        if target is None or leader not in managed:
            doubts[leader] = f"{named} but is no Patroni-managed target of the cluster"
            continue
        if count < needed:
            doubts[leader] = f"{named} ({needed} needed)"
            continue
        own = next((w for w in words if w.member.target == leader), None)
        if own is None or own.status is None:
            doubts[leader] = f"{named} but its own member does not answer"
            continue
        if own.status.role != "primary" or own.status.state != "running":
            doubts[leader] = f"{named} but its member reports {own.status.role}/{own.status.state}"
            continue
        evidence, why = await _vouched(driver, target, seen, old)
        if evidence is None:
            doubts[leader] = f"{named} but {why}"
            continue
        return (target, evidence), count, doubts
    return None, 0, doubts


async def _vouched(
    driver: PgDriver, target: TargetConfig, seen: Sequence[PgSeen], old: str
) -> tuple[str | None, str]:
    """(evidence, why not) from the kit's own PostgreSQL check of the elected ``target``: out of
    recovery, WAL position at least the most any other replica had received before the election."""
    from .pg_promote import lsn

    try:
        async with await driver.connect_monitor(target) as conn:
            row = (await client.fetch(conn, CHECK_SQL, timeout=driver.seconds))[0]
    except driver.errors as exc:
        return None, f"the kit's own check failed ({driver.problem(exc)})"
    if row[0]:
        return None, "is still in recovery (the kit's own check)"
    position = lsn(row[1]) or 0
    others = [s for s in seen if s.is_replica and s.name not in (target.name, old)]
    best = max(others, key=lambda s: s.received, default=None)
    if best is not None and position < best.received:
        return None, f"WAL position {position} is behind replica {best.name} ({best.received})"
    return f"out of recovery, WAL position {position} at least every other replica's", ""
