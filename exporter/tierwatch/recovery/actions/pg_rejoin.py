"""pg_rejoin: a returning old PostgreSQL primary becomes a standby of the one the last audited
failover promoted, as Patroni does with ``use_pg_rewind``: stop it cleanly, ``pg_rewind`` it against
the new primary (``-R`` writes standby.signal and primary_conninfo), start it. The three steps are the
target's configured argument lists (``recovery.clusters.<name>.rejoin_commands.<target>``, no shell;
``{primary_host}``/``{primary_port}``: the new primary's address). Before the rewind the new primary
is checkpointed (the admin role needs pg_checkpoint), as Patroni does. Checks: rejoin.py. Verified:
it streams from the new primary, which lists it as streaming (its application_name is its target
name, as the failover's re-pointing sets it) and is the only primary.

pg_rewind needs ``wal_log_hints = on`` (or data checksums) on the old primary, and a role on the new
primary allowed pg_ls_dir, pg_stat_file and pg_read_binary_file (a superuser, or those grants).
A resumed run (the service restarted past the point of no return) verifies; if the old primary
does not answer at all it runs the steps again (a second pg_rewind of a rewound cluster is a no-op).

Under Patroni (``patroni:`` on the cluster) it refuses at once, with an audit line: Patroni rewinds
(or re-clones) and restarts its own members, and a second hand stopping or rewinding a data
directory Patroni manages would fight it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ...clients import postgres as client
from ...clients.addresses import Address
from ...config import TargetConfig
from ...config.recovery import RejoinCommands
from .base import Action, ActionContext, Outcome, refuse
from .failover import POLL
from .pg_promote import PgDriver, follow_check
from .rejoin import Plan, nothing_to_do, observe_and_plan
from .restart import run_command

VERIFY_TIMEOUT = 60.0
CHECKPOINT_WAIT = 60  # seconds


def fill(argv: list[str], where: Address) -> list[str]:
    """``argv`` with the new primary's host and port in place of the two placeholders."""
    return [a.replace("{primary_host}", where[0]).replace("{primary_port}", str(where[1])) for a in argv]


class PgRejoin(Action):
    name = "pg_rejoin"

    async def run(self, ctx: ActionContext) -> Outcome:
        if ctx.cluster.patroni is not None:
            return refuse(
                ctx,
                f"Patroni is in charge of cluster {ctx.cluster.name}: it rewinds its own members",
                f"Patroni is in charge of cluster {ctx.cluster.name} (scope {ctx.cluster.patroni.scope}): "
                "it rewinds and restarts a returning old primary itself; pg_rejoin never stops or "
                "rewinds a Patroni member",
            )
        driver = PgDriver(ctx)
        observed = await observe_and_plan(ctx, driver, "primary")
        if isinstance(observed, Outcome):
            return observed
        seen, checked = observed
        old_name = str(checked.facts.get("old_primary") or "")
        if checked.old is None:
            if not ctx.resumed:
                return nothing_to_do(ctx, checked, "primary")
            old_seen = next((s for s in seen if s.name == old_name), None)
            if old_seen is None or old_seen.answered:
                return await _verify(ctx, driver, checked, old_name, time.monotonic())
        commands = ctx.cluster_settings.rejoin_commands.get(old_name)
        if commands is None:
            return refuse(ctx, f"no rejoin commands configured for {old_name}")
        if ctx.dry_run:
            ctx.audit("would_rejoin", target=old_name, primary=checked.new.name)
            return Outcome("succeeded", f"dry run: would rewind {old_name} and start it as a standby")
        await ctx.point_of_no_return()
        started = time.monotonic()
        problem = await _checkpoint(driver, checked.new.target)
        ctx.audit("checkpointed", target=checked.new.name, error=problem)
        if problem:
            return Outcome("failed", f"CHECKPOINT on {checked.new.name} failed ({problem})")
        failed = await _steps(ctx, commands, checked.where, old_name, tolerate_stop=ctx.resumed)
        if failed is not None:
            return failed
        return await _verify(ctx, driver, checked, old_name, started)


async def _checkpoint(driver: PgDriver, new: TargetConfig) -> str | None:
    """CHECKPOINT on the new primary, so its control file shows the new timeline (pg_rewind reads
    it; right after a promotion it may still show the old one and report "no rewind required")."""
    try:
        async with await driver.connect_admin(new) as conn:
            await client.fetch(conn, "CHECKPOINT", timeout=CHECKPOINT_WAIT)
    except driver.errors as exc:
        return driver.problem(exc)
    return None


async def _steps(
    ctx: ActionContext, commands: RejoinCommands, where: Address, name: str, *, tolerate_stop: bool
) -> Outcome | None:
    """Stop, rewind, start; the failed Outcome of the first step that fails, else None. Stops with
    LeaseLost before a step once this replica no longer leads (``ctx.still_leading``): two leaders
    rewinding one data directory at once would corrupt it."""
    timeout = max(1.0, ctx.settings.action_timeout / 3)
    for step, argv in (("stop", commands.stop), ("rewind", commands.rewind), ("start", commands.start)):
        ctx.still_leading()
        started = time.monotonic()
        code, last_line = await run_command(fill(argv, where), timeout)
        seconds = round(time.monotonic() - started, 3)
        ctx.audit(
            "command_finished", target=name, step=step, exit_code=code, output=last_line, seconds=seconds
        )
        if code != 0 and not (step == "stop" and tolerate_stop):
            return Outcome("failed", f"{step} command of {name} exited {code}")
    return None


async def _verify(ctx: ActionContext, driver: PgDriver, checked: Plan, name: str, started: float) -> Outcome:
    """Poll until ``name`` streams from the new primary and the new primary is the only primary."""
    target = ctx.target(name)
    assert target is not None  # plan() only names configured targets
    deadline = time.monotonic() + VERIFY_TIMEOUT
    while True:
        problems: list[str] = []
        problem, _ = follow_check(await driver.observe(target), checked.new.target, checked.where)
        if problem:
            problems.append(problem)
        state = await driver.check_primary(checked.new.target, write=False)
        problems += state.problems
        if name not in state.followers:
            problems.append(f"{checked.new.name} does not list {name} as streaming")
        seen = await asyncio.gather(*(driver.observe(t) for t in ctx.cluster.targets))
        primaries = [s.name for s in seen if s.is_primary]
        if primaries != [checked.new.name]:
            problems.append(f"primaries: {', '.join(primaries) or 'none'}")
        if not problems or time.monotonic() >= deadline:
            break
        await asyncio.sleep(POLL)
    facts: dict[str, Any] = {
        **checked.facts,
        "rejoined": [name],
        "seconds": round(time.monotonic() - started, 3),
    }
    if problems:
        ctx.audit("verify_failed", problems=problems)
        return Outcome("failed", "not verified: " + "; ".join(problems), facts=facts)
    ctx.audit("verified", primary=checked.new.name, standby=name)
    return Outcome("succeeded", f"{name} streams from {checked.new.name}", facts=facts)
