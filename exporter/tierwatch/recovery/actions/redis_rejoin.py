"""redis_rejoin: a returning old Redis master becomes a replica of the one the last audited
failover promoted (REPLICAOF), as Sentinel's ``+convert-to-slave``; its own replicas are re-pointed
at the new master too. Checks: rejoin.py. Verified: it and its replicas are linked to the new master
and the new master is the only master."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ...clients.addresses import show, target_address
from .base import Action, ActionContext, Outcome
from .failover import POLL
from .redis_failover import RedisDriver, RedisSeen
from .rejoin import Plan, nothing_to_do, observe_and_plan

VERIFY_TIMEOUT = 30.0


class RedisRejoin(Action):
    name = "redis_rejoin"

    async def run(self, ctx: ActionContext) -> Outcome:
        driver = RedisDriver(ctx)
        observed = await observe_and_plan(ctx, driver, "master")
        if isinstance(observed, Outcome):
            return observed
        seen, checked = observed
        old = checked.old
        if old is None:
            if not ctx.resumed:
                return nothing_to_do(ctx, checked, "master")
            return await _verify(ctx, driver, checked, [], time.monotonic())
        assert isinstance(old, RedisSeen)
        old_where = target_address(old.target)
        followers = [s for s in seen if s.is_replica and old_where and s.upstream == old_where]
        if ctx.dry_run:
            ctx.audit("would_rejoin", target=old.name, master=checked.new.name)
            return Outcome("succeeded", f"dry run: would make {old.name} a replica of {checked.new.name}")
        await ctx.point_of_no_return()
        started = time.monotonic()
        for server in (old, *followers):
            ctx.still_leading()  # a leader that lost its lease leaves the rest to the new one
            try:
                await driver.repoint(checked.new, checked.where, server)  # type: ignore[arg-type]
            except driver.errors as exc:
                ctx.audit("repoint_failed", target=server.name, error=driver.problem(exc))
                return Outcome("failed", f"REPLICAOF on {server.name} failed ({driver.problem(exc)})")
            ctx.audit("repointed", target=server.name, primary=checked.new.name, host=show(checked.where))
        return await _verify(ctx, driver, checked, [s.name for s in followers], started)


async def _verify(
    ctx: ActionContext, driver: RedisDriver, checked: Plan, followers: list[str], started: float
) -> Outcome:
    """Poll until the old master and its former replicas follow the new master, and it is the only master."""
    names = [n for n in (checked.facts.get("old_primary"), *followers) if n]
    deadline = time.monotonic() + VERIFY_TIMEOUT
    while True:
        problems: list[str] = []
        for name in names:
            target = ctx.target(name)
            assert target is not None
            problem, _ = await driver.follows(target, checked.new.target, checked.where)
            if problem:
                problems.append(problem)
        seen = await asyncio.gather(*(driver.observe(t) for t in ctx.cluster.targets))
        masters = [s.name for s in seen if s.is_primary]
        if masters != [checked.new.name]:
            problems.append(f"masters: {', '.join(masters) or 'none'}")
        if not problems or time.monotonic() >= deadline:
            break
        await asyncio.sleep(POLL)
    facts: dict[str, Any] = {
        **checked.facts,
        "rejoined": names,
        "seconds": round(time.monotonic() - started, 3),
    }
    if problems:
        ctx.audit("verify_failed", problems=problems)
        return Outcome("failed", "not verified: " + "; ".join(problems), facts=facts)
    ctx.audit("verified", master=checked.new.name, replicas=names)
    return Outcome("succeeded", f"{', '.join(names)} follow {checked.new.name}", facts=facts)
