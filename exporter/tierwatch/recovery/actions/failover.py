"""The failover sequence every engine follows, with its safety rules in one place; a driver per
engine (RedisDriver in redis_failover.py, PgDriver in pg_promote.py) says how to observe, promote,
re-point and verify, as Patroni keeps its rules in one HA loop.

The sequence: observe every target (and meanwhile ask the alert's target whether it answers) →
find the old primary → a resumed run only verifies → the old primary must be really gone → an
election the engine runs itself (Sentinel) is waited for → no other live primary → choose the most
up-to-date eligible replica → a dry run stops here → point of no return → drain the old primary
from the write backend → promote → re-point the other replicas → move the write backend → move the
DNS records (dns_records.py, compare-and-swap) → verify.

Safety rules:
- "Really gone" means the old primary (the alert's ``target``, else the one server the replicas
  follow, else the one primary) fails to answer on ``liveness.ATTEMPTS`` attempts; any answer, even
  an error (bad password, loading, starting up), means "still there": refuse. The attempts run
  while the targets are observed (the alert names the old primary before anything is read). When
  the alert is one of ``DOWN_ALERTS`` (its rule fires only once a majority of the healthy vantage
  points saw that target down for the whole ``for`` window), the attempts overlap: each starts
  ``liveness.ATTEMPT_GAP`` after the previous one started rather than after it timed out, so a
  silent (paused, cut off) primary costs one timeout plus the gap, not a timeout per attempt. The
  attempts keep their number, spacing and timeout; what no longer repeats is a wait the alert's
  window already made many times over, from more than one place. A watcher cut off from a live
  primary gets the same silence on every attempt either way: the witnesses are the guard against
  it, and they are read, and decide, as before.
- Replicas are witnesses, as Sentinel uses them: a replica that still follows the old primary with its
  link up and heard from it within ``witness_max_silence`` sees it alive, so it is only this service
  that cannot reach it (a partition of the watcher, not a dead primary): refuse ("still seen by
  replica X"). A replica that heard from it within the limit is looked at again once the limit
  (and ``WITNESS_RECHECK_MARGIN``) has passed, and refuses only if it still hears from it: an action
  on a short alert window runs before the replicas of a frozen primary have been silent that long,
  and the same alert is not acted on twice.
- Never two primaries: another target that is a live primary (the driver says what counts) → refuse.
- Region: a candidate must be in the old primary's region unless ``ctx.regional`` (the service
  decides, from an allow-list entry ``regional: true``; a regional failover accepts the loss of what
  the other region had not received yet). A regional failover keeps every other rule: it refuses
  while the old primary answers or a replica still sees it, and it never jumps regions while a
  replica of the old primary's region is eligible: that one is chosen (even if a replica of the
  other region is further ahead), since a live, eligible replica means the region is not gone and
  in-region promotion is what the plain alert would do. Only when none is eligible does the
  regional scope apply (docs/failover.md, "Region loss").
- Cascades are kept: only replicas that follow the old primary (or an unreachable server, or
  nothing) are re-pointed at the new primary; a replica that follows another live replica (the
  backup master → backup replica pair) keeps its upstream, and verification checks it follows that
  upstream (``plan_repoint``). A cascade whose head is promoted keeps its replicas as they are.
- A candidate needs a TCP address in its URL: the other replicas are re-pointed at that address.
- The driver's own rules (Redis replica-priority 0 or a sync in progress, PostgreSQL max lag).
- A resumed run (a restart past the point of no return) never promotes again: with exactly one
  primary it re-points the replicas that neither follow it nor cascade from one that does, moves
  the backend and verifies.

Nobody fences the old primary here: before it rejoins it must become a replica of the new one;
Outcome.facts says so (``old_primary_fencing``).
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ...clients.addresses import Address, target_address, target_at
from ...config import TargetConfig
from ..discovery import drain_write_backend, point_write_backend, write_backend_problems
from ..dns_records import publish, with_dns
from .base import Action, ActionContext, Outcome, refuse
from .liveness import ATTEMPTS

POLL = 0.1  # seconds between verification rounds
# a witness is looked at again this long after witness_max_silence: Redis reports the silence in
# whole seconds (``master_last_io_seconds_ago`` 3 may be 3.9 s)
WITNESS_RECHECK_MARGIN = 1.0
# Alerts whose rule fires only when a majority of the healthy vantage points saw the alert's target,
# the primary, down for the whole ``for`` window (rules/redis.rules.yml, rules/postgres.rules.yml):
# their target has already been silent far longer than the liveness attempts wait
DOWN_ALERTS = frozenset(
    {"RedisMasterDown", "RedisPrimaryRegionDown", "PostgresPrimaryDown", "PostgresPrimaryRegionDown"}
)


@dataclass
class Seen:
    """What one target reported, or why it did not; engines add their own fields."""

    target: TargetConfig
    answered: bool = False
    error: str | None = None

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def role(self) -> str:
        """The engine's name for the role it reported ("unreachable" if it did not answer)."""
        raise NotImplementedError

    @property
    def is_primary(self) -> bool:
        raise NotImplementedError

    @property
    def is_replica(self) -> bool:
        raise NotImplementedError

    @property
    def upstream(self) -> Address | None:
        """The address this replica is configured to follow, if it is one."""
        return None

    def details(self) -> dict[str, Any]:
        """What the engine reported beyond the role, for the audit trail (never a secret)."""
        return {}

    def sees(self, primary: Address, max_silence: float) -> str | None:
        """How this replica still sees ``primary`` alive (linked to it, heard from it within
        ``max_silence`` seconds), or None; engines that can tell override it."""
        return None

    def summary(self) -> dict[str, Any]:
        """Role, region, details and error, for the "observed" audit record."""
        out: dict[str, Any] = {"role": self.role, "region": self.target.region, **self.details()}
        if self.error:
            out["error"] = self.error
        return out


S = TypeVar("S", bound=Seen)


@dataclass(frozen=True)
class Ineligible:
    """Why a replica may not be promoted; ``limit`` names the safety limit (for the blocked metric)."""

    why: str
    limit: str | None = None


@dataclass
class Elected:
    """A new primary chosen by the engine's own election (Sentinel), with the facts to report."""

    target: TargetConfig
    facts: dict[str, Any]
    replicas: list[TargetConfig]


@dataclass
class PrimaryState:
    """One look at the new primary during verification."""

    problems: list[str] = field(default_factory=list)
    wrote: bool = False  # the write check was made in this look
    followers: set[str] = field(default_factory=set)  # replicas it lists as streaming from it


class StepFailed(Exception):
    """A step of the sequence failed; ``detail`` is for people, ``error`` for the audit (no secret)."""

    def __init__(self, detail: str, error: str):
        super().__init__(detail)
        self.detail = detail
        self.error = error


class Driver(ABC, Generic[S]):
    """How one engine observes, promotes, re-points and verifies; made per run with its context."""

    primary_word: str  # what the engine calls a primary: "master", "primary"
    primary_words: str
    verify_timeout: float  # seconds for the new topology to settle
    errors: tuple[type[BaseException], ...]  # what the engine's client raises

    def __init__(self, ctx: ActionContext):
        self.ctx = ctx
        self.timeout = ctx.loaded.config.monitor.timeout
        # the alert already shows its target silent for a whole window (DOWN_ALERTS): ``answers``
        # may overlap its attempts (liveness.still_answers)
        self.alert_evidence = (
            ctx.alert.alertname in DOWN_ALERTS
            and ctx.target(ctx.alert.target or "") is not None
            and not ctx.resumed
        )

    @property
    def repoints(self) -> bool:
        """Whether the action re-points the replicas (not when the engine does it, as Sentinel)."""
        return True

    @abstractmethod
    async def observe(self, target: TargetConfig) -> S:
        """What ``target`` reports (monitor credential); never raises for an unreachable target."""

    @abstractmethod
    async def answers(self, target: TargetConfig) -> tuple[bool, str]:
        """Whether ``target`` answers at all (liveness.still_answers, ``overlap`` when
        ``alert_evidence``), and what was seen."""

    @abstractmethod
    def problem(self, exc: BaseException) -> str:
        """A secret-free description of a client error."""

    async def election(self, seen: list[S], old: str) -> Elected | Outcome | None:
        """Wait for the engine's own election where one is in charge: the elected primary, or an
        Outcome (dry run, nobody elected); None when the action chooses and promotes itself."""
        return None

    @abstractmethod
    def live_primary(self, s: S) -> str | None:
        """Why ``s`` (not the old primary) counts as a live primary, or None."""

    @abstractmethod
    def ineligible(self, s: S, replicas: Sequence[S]) -> Ineligible | None:
        """The engine's reason not to promote ``s`` (``replicas``: every candidate), or None."""

    @abstractmethod
    def rank(self, s: S) -> tuple[int, ...]:
        """Higher is more up to date (config order breaks ties)."""

    @abstractmethod
    def position(self, s: S) -> dict[str, Any]:
        """The replication position of ``s`` for the audit trail (and the facts)."""

    @abstractmethod
    async def promote(self, best: S) -> None:
        """Make ``best`` the primary; raise StepFailed."""

    @abstractmethod
    async def repoint(self, new: S, where: Address, replica: S) -> dict[str, Any]:
        """Point ``replica`` at ``new`` (listening at ``where``); extra audit fields. Raises one of
        ``errors`` on failure."""

    @abstractmethod
    async def check_primary(self, new: TargetConfig, write: bool) -> PrimaryState:
        """Is ``new`` a primary (and, if ``write``, does it take a write)? Never raises."""

    @abstractmethod
    async def follows(
        self, replica: TargetConfig, new: TargetConfig, where: Address
    ) -> tuple[str | None, bool]:
        """(problem, paused): None if ``replica`` follows ``new`` at ``where``; paused when it will once
        its replay is resumed."""


class FailoverAction(Action, Generic[S]):
    """An action that runs the failover sequence with its engine's driver."""

    driver: type[Driver[S]]

    async def run(self, ctx: ActionContext) -> Outcome:
        return await run_failover(ctx, self.driver(ctx))


async def run_failover(ctx: ActionContext, driver: Driver[S]) -> Outcome:
    """The failover sequence (see the module docstring)."""
    word = driver.primary_word
    named = ctx.target(ctx.alert.target) if ctx.alert.target and not ctx.resumed else None
    # the alert names the old primary (old_primary picks it first): ask it while observing
    asked = asyncio.ensure_future(driver.answers(named)) if named is not None else None
    try:
        seen = list(await asyncio.gather(*(driver.observe(t) for t in ctx.cluster.targets)))
        observed_at = time.monotonic()
    except BaseException:
        if asked is not None:
            asked.cancel()
        raise
    ctx.audit("observed", targets={s.name: s.summary() for s in seen})
    old = old_primary(ctx, seen)
    if ctx.resumed:
        return await _resume(ctx, driver, seen, old)
    if old is None:
        why = f"cannot tell which target was the {word}"
        return refuse(ctx, f"{why} (no alert target, no replica link)", why)
    old_target = _target(ctx, old)
    assert asked is None or old_target is named
    alive, how = await (asked if asked is not None else driver.answers(old_target))
    ctx.audit(
        f"{word}_checked",
        target=old,
        answers=alive,
        seen=how,
        attempts=ATTEMPTS,
        overlapped=driver.alert_evidence,
    )
    if alive:
        return refuse(ctx, f"{word} {old} still answers", f"{word} {old} still answers ({how})")
    witnesses = _witnesses(ctx, seen, old_target)
    if witnesses:
        # heard from within the limit, maybe only just before it fell silent (an action on a short
        # window runs that soon): a witness must still be hearing from it once the limit has passed
        # (counted from when they were read: the liveness attempts took part of it already)
        limit = ctx.cluster_settings.witness_max_silence + WITNESS_RECHECK_MARGIN
        again = max(0.0, limit - (time.monotonic() - observed_at))
        ctx.audit("witnesses_checked", target=old, seen_by=witnesses, again_in_s=round(again, 3))
        await asyncio.sleep(again)
        fresh = {
            s.name: s for s in await asyncio.gather(*(driver.observe(_target(ctx, n)) for n in witnesses))
        }
        seen = [fresh.get(s.name, s) for s in seen]
        witnesses = _witnesses(ctx, seen, old_target)
    ctx.audit("witnesses_checked", target=old, seen_by=witnesses)
    if witnesses:
        names = ", ".join(witnesses)
        why = "; ".join(f"{name}: {how}" for name, how in witnesses.items())
        return refuse(ctx, f"{word} still seen by replica {names}", f"{word} {old} still seen ({why})")

    elected = await driver.election(seen, old)
    if isinstance(elected, Outcome):
        return elected
    if isinstance(elected, Elected):
        await ctx.point_of_no_return()
        started = time.monotonic()
        await point_write_backend(ctx, elected.target.name)
        dns = await publish(ctx, elected.target.name, old, silent(seen))
        dns_at = time.monotonic() - started
        outcome = await verify(ctx, driver, elected.target, elected.replicas, elected.facts, started)
        return with_dns(outcome, dns, dns_at)

    for other in seen:
        why = driver.live_primary(other) if other.name != old else None
        if why:
            return refuse(
                ctx, f"{word} {other.name} still answers", f"{word} {other.name} still answers ({why})"
            )
    best = choose(ctx, driver, seen, old_target)
    if isinstance(best, Outcome):
        return best
    if ctx.dry_run:
        ctx.audit("would_promote", target=best.name, **driver.position(best))
        return Outcome("succeeded", f"dry run: would promote {best.name}", facts={"would_promote": best.name})

    await ctx.point_of_no_return(decision={"promote": best.name})
    await drain_write_backend(ctx, old)
    started = time.monotonic()
    try:
        await driver.promote(best)
    except StepFailed as exc:
        ctx.audit("promote_failed", target=best.name, error=exc.error)
        return Outcome("failed", exc.detail)
    seconds = round(time.monotonic() - started, 3)
    ctx.audit("promoted", target=best.name, seconds=seconds, **driver.position(best))
    replicas = [s for s in seen if s.is_replica and s.name != best.name]
    where = target_address(best.target)
    assert where is not None  # a candidate without a TCP address is not eligible
    stray, cascade = plan_repoint(ctx, replicas, best, where)
    failed = await _repoint_all(ctx, driver, best, where, stray)
    await point_write_backend(ctx, best.name)
    dns = await publish(ctx, best.name, old, silent(seen))
    dns_at = time.monotonic() - started
    facts = {"new_primary": best.name, "old_primary": old, **driver.position(best)}
    if best.target.region != old_target.region:
        facts["regional"] = {"from": old_target.region, "to": best.target.region}
    facts["old_primary_fencing"] = "required"
    if failed:
        facts["not_repointed"] = sorted(failed)
    if cascade:
        facts["cascaded"] = {name: up.name for name, up in cascade.items()}
    followers = [s.target for s in replicas if s.name not in failed]
    return with_dns(await verify(ctx, driver, best.target, followers, facts, started, cascade), dns, dns_at)


def silent(seen: Sequence[Seen]) -> list[str]:
    """The targets that did not answer when observed."""
    return [s.name for s in seen if not s.answered]


def old_primary(ctx: ActionContext, seen: Sequence[Seen]) -> str | None:
    """The alert's target, else the one target every replica follows, else the one primary."""
    if ctx.alert.target and ctx.target(ctx.alert.target):
        return ctx.alert.target
    upstreams = {s.upstream for s in seen if s.is_replica and s.upstream is not None}
    if len(upstreams) == 1:
        found = target_at(ctx.cluster.targets, *upstreams.pop())
        if found is not None:
            return found.name
    primaries = [s.name for s in seen if s.is_primary]
    return primaries[0] if len(primaries) == 1 else None


def _witnesses(ctx: ActionContext, seen: Sequence[Seen], old: TargetConfig) -> dict[str, str]:
    """The replicas that still see ``old`` alive (name → how), in config order."""
    where = target_address(old)
    if where is None:
        return {}
    limit = ctx.cluster_settings.witness_max_silence
    found = {s.name: s.sees(where, limit) for s in seen if s.is_replica and s.name != old.name}
    return {name: how for name, how in found.items() if how}


def choose(ctx: ActionContext, driver: Driver[S], seen: Sequence[S], old: TargetConfig) -> S | Outcome:
    """The eligible replica the driver ranks highest (config order breaks ties), or the refusal
    (with ``facts["limit"]`` when one safety limit stopped every candidate). Every candidate is
    audited with why it is (not) eligible. A regional failover prefers the old primary's region:
    while one of its replicas is eligible, no replica of another region is."""
    replicas = [s for s in seen if s.is_replica and s.name != old.name]
    ranked: list[tuple[tuple[int, ...], int, S]] = []
    in_scope: list[tuple[str, Ineligible]] = []
    reasons: list[Ineligible | None] = []
    for s in replicas:
        if s.target.region != old.region and not ctx.regional:
            reason: Ineligible | None = Ineligible(f"region {s.target.region} (needs a regional failover)")
        else:
            reason = _ineligible(driver, s, replicas)
            if reason is not None:
                in_scope.append((s.name, reason))
        reasons.append(reason)
    home = any(r is None and s.target.region == old.region for s, r in zip(replicas, reasons, strict=True))
    for index, (s, reason) in enumerate(zip(replicas, reasons, strict=True)):
        if reason is None and home and s.target.region != old.region:
            reason = Ineligible(
                f"region {s.target.region} (an eligible replica of region {old.region} is preferred)"
            )
        why = reason.why if reason else "ok"
        ctx.audit("candidate", target=s.name, region=s.target.region, eligible=why, **driver.position(s))
        if reason is None:
            ranked.append((driver.rank(s), -index, s))
    if ranked:
        best = max(ranked, key=lambda r: (r[0], r[1]))[2]
        ctx.audit("chosen", target=best.name, **driver.position(best))
        return best
    scope = "" if ctx.regional else f" in region {old.region}"
    if not in_scope:
        return refuse(ctx, f"no reachable replica{scope} eligible for promotion")
    reasons = "; ".join(f"{name}: {r.why}" for name, r in in_scope)
    outcome = refuse(ctx, f"no replica{scope} eligible for promotion ({reasons})")
    limits = {r.limit for _, r in in_scope}
    if len(limits) == 1 and None not in limits:
        outcome.facts["limit"] = limits.pop()
    return outcome


def _ineligible(driver: Driver[S], s: S, replicas: Sequence[S]) -> Ineligible | None:
    if target_address(s.target) is None:
        return Ineligible("no TCP address in its URL (the other replicas could not follow it)")
    return driver.ineligible(s, replicas)


def plan_repoint(
    ctx: ActionContext, replicas: Sequence[S], new: S, where: Address
) -> tuple[list[S], dict[str, TargetConfig]]:
    """Which of ``replicas`` (every replica but ``new``, listening at ``where``) to re-point at
    ``new``, and the cascade kept (replica name → the replica it keeps following).

    A replica that already follows ``new`` is left alone. One that follows another live replica (a
    cascade, like the backup master → backup replica pair) keeps its upstream, provided that chain
    reaches ``new`` once the others are re-pointed. Every other replica (following the old primary,
    an unreachable server or nothing) is re-pointed at ``new``. Cascades kept are audited."""
    by_address = {target_address(s.target): s for s in replicas}
    by_address.pop(None, None)
    stray = [s for s in replicas if s.upstream != where and by_address.get(s.upstream) is None]
    reach = {new.name} | {s.name for s in replicas if s.upstream == where} | {s.name for s in stray}
    pending = [s for s in replicas if s.name not in reach]
    kept: dict[str, TargetConfig] = {}
    while True:  # at most len(pending) rounds: each round keeps at least one more
        ready = [s for s in pending if by_address[s.upstream].name in reach]  # type: ignore[index]
        if not ready:
            break
        for s in ready:
            upstream = by_address[s.upstream].target  # type: ignore[index]
            kept[s.name] = upstream
            reach.add(s.name)
            ctx.audit("cascade_kept", target=s.name, upstream=upstream.name, primary=new.name)
        pending = [s for s in pending if s.name not in reach]
    return stray + pending, kept  # pending: a loop of replicas following each other


async def _repoint_all(
    ctx: ActionContext, driver: Driver[S], new: S, where: Address, replicas: Sequence[S]
) -> set[str]:
    """Point each replica at ``new`` (at ``where``); the names it failed on (audited). Stops with
    LeaseLost before any replica once this replica no longer leads (``ctx.still_leading``)."""
    failed: set[str] = set()
    for replica in replicas:
        ctx.still_leading()
        try:
            extra = await driver.repoint(new, where, replica)
        except driver.errors as exc:
            failed.add(replica.name)
            ctx.audit("repoint_failed", target=replica.name, primary=new.name, error=driver.problem(exc))
            continue
        ctx.audit("repointed", target=replica.name, primary=new.name, **extra)
    return failed


async def _resume(ctx: ActionContext, driver: Driver[S], seen: Sequence[S], old: str | None) -> Outcome:
    """After a restart past the point of no return: never promote another server; with exactly one
    primary reachable, re-point the replicas that follow another server, move the backend and verify.
    With none, the interrupted run died between its point of no return and its promotion: finish
    the promotion it recorded (the same server, never a new choice), if the old primary is still
    silent."""
    primaries = [s for s in seen if s.is_primary]
    if not primaries:
        finished = await _finish_recorded_promotion(ctx, driver, seen, old)
        if isinstance(finished, Outcome):
            return finished
        primaries = [finished]
    if len(primaries) != 1:
        names = ", ".join(s.name for s in primaries) or "none"
        ctx.audit("resume_failed", **{driver.primary_words: names})
        return Outcome(
            "failed",
            f"resumed run found {len(primaries)} {driver.primary_words} ({names}); not promoting again",
        )
    new = primaries[0]
    ctx.audit("resumed", primary=new.name)
    replicas = [s for s in seen if s.is_replica and s.name != new.name]
    failed: set[str] = set()
    cascade: dict[str, TargetConfig] = {}
    if driver.repoints:
        where = target_address(new.target)
        if where is None:
            why = f"cannot re-point the replicas at {new.name}: no TCP address in its URL"
            ctx.audit("resume_failed", reason=why)
            return Outcome("failed", why)
        stray, cascade = plan_repoint(ctx, replicas, new, where)
        failed = await _repoint_all(ctx, driver, new, where, stray)
    await point_write_backend(ctx, new.name)
    dns = await publish(ctx, new.name, old, silent(seen))
    facts: dict[str, Any] = {"new_primary": new.name, "old_primary": old, "resumed": True}
    facts["old_primary_fencing"] = "required"
    if failed:
        facts["not_repointed"] = sorted(failed)
    if cascade:
        facts["cascaded"] = {name: up.name for name, up in cascade.items()}
    followers = [s.target for s in replicas if s.name not in failed]
    return with_dns(await verify(ctx, driver, new.target, followers, facts, time.monotonic(), cascade), dns)


async def _finish_recorded_promotion(
    ctx: ActionContext, driver: Driver[S], seen: Sequence[S], old: str | None
) -> S | Outcome:
    """The server the interrupted run recorded at its point of no return, promoted now; or why not
    (the failed Outcome: no record, that server is not a reachable replica, the old primary answers)."""
    word = driver.primary_words
    chosen = (ctx.decision or {}).get("promote")
    best = next((s for s in seen if s.name == chosen), None)
    if best is None or not best.is_replica:
        state = "no promotion recorded" if chosen is None else f"{chosen}: {best.role if best else 'unknown'}"
        ctx.audit("resume_failed", **{word: "none"}, recorded=chosen)
        return Outcome("failed", f"resumed run found 0 {word} ({state}); not promoting again")
    if old is not None and (old_target := ctx.target(old)) is not None:
        alive, how = await driver.answers(old_target)
        if alive:
            ctx.audit("resume_failed", reason="old primary answers again", target=old, seen=how)
            why = f"resumed run: the old {driver.primary_word} {old} answers again ({how})"
            return Outcome("failed", why)
        await drain_write_backend(ctx, old)  # the interrupted run may have died before it did
    started = time.monotonic()
    try:
        await driver.promote(best)
    except StepFailed as exc:
        ctx.audit("promote_failed", target=best.name, error=exc.error, resumed=True)
        return Outcome("failed", exc.detail)
    ctx.audit("promoted", target=best.name, resumed=True, seconds=round(time.monotonic() - started, 3))
    return best


async def verify(
    ctx: ActionContext,
    driver: Driver[S],
    new: TargetConfig,
    replicas: Sequence[TargetConfig],
    facts: dict[str, Any],
    started: float,
    cascade: Mapping[str, TargetConfig] | None = None,
) -> Outcome:
    """Poll until ``new`` is a primary and took a write, each replica follows it (those in
    ``cascade``: the replica they kept following instead) or will once its replay is resumed, and
    the write backend points at it; succeeded with ``facts``, or failed with what is missing after
    ``driver.verify_timeout``."""
    cascade = cascade or {}
    word = driver.primary_word
    where = target_address(new)
    deadline = time.monotonic() + driver.verify_timeout
    written_at: float | None = None
    while True:
        state = await driver.check_primary(new, write=written_at is None)
        problems = list(state.problems)
        if state.wrote:
            written_at = time.monotonic()
            ctx.audit("write_checked", target=new.name, after_s=round(written_at - started, 3))
        pending: list[str] = []
        for replica in replicas:
            upstream = cascade.get(replica.name)
            if upstream is not None:
                problem, paused = await _follows_upstream(driver, replica, upstream)
                if problem:
                    problems.append(problem)
                elif paused:
                    pending.append(replica.name)
                continue
            if replica.name in state.followers:
                continue
            if where is None:
                problems.append(f"{new.name} has no TCP address in its URL")
                break
            problem, paused = await driver.follows(replica, new, where)
            if problem:
                problems.append(problem)
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
        facts["replay_paused"] = pending  # re-pointed; they follow once an operator resumes replay
    ctx.audit("verified", new_primary=new.name, replicas=[r.name for r in replicas], replay_paused=pending)
    detail = f"{new.name} is the {word}, {len(replicas)} replica(s) follow it"
    if pending:
        detail += f" ({', '.join(pending)} once replay is resumed)"
    return Outcome("succeeded", detail, failover=True, facts=facts)


async def _follows_upstream(
    driver: Driver[S], replica: TargetConfig, upstream: TargetConfig
) -> tuple[str | None, bool]:
    """(problem, paused) for a replica kept in a cascade under ``upstream``."""
    address = target_address(upstream)
    if address is None:  # plan_repoint found it by its address: cannot happen
        return f"{upstream.name} has no TCP address in its URL", False
    return await driver.follows(replica, upstream, address)


def _target(ctx: ActionContext, name: str) -> TargetConfig:
    target = ctx.target(name)
    assert target is not None  # old_primary only returns configured targets
    return target
