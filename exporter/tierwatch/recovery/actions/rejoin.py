"""What every rejoin action checks before it demotes a server: the topology is the one the last
audited failover left, plus a server that came back as a primary.

A rejoin (redis_rejoin, pg_rejoin; RedisSplitBrain, PostgresSplitBrain) demotes the *old* primary of
the cluster's last audited failover when it returns as a primary (a restart, a resumed pause, a
healed partition), so that it follows the server that failover promoted. It refuses unless:
- the service has recorded a failover of the cluster (its ``new_primary`` and ``old_primary``, kept in
  the inbox and the etcd ledger, not read back from a log an operator may rotate);
- the promoted server is a live primary now;
- every other live primary is that failover's old primary (anything else, e.g. two primaries and
  neither the promoted one, is not what a rejoin repairs: an operator decides).
Demoting drops what the returning server accepted after the split, as Sentinel's
``+convert-to-slave`` and Patroni's ``pg_rewind`` do; write fencing (min-replicas-to-write,
synchronous commit) keeps those writes unacknowledged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ...clients.addresses import Address, target_address
from ...config import TargetConfig
from .base import ActionContext, Outcome, refuse
from .failover import Seen


@dataclass
class Plan:
    """The server to follow, where it listens, and the returning old primary (None: nothing to do,
    as in a resumed run after the demotion)."""

    new: Seen
    where: Address
    old: Seen | None
    facts: dict[str, Any]


class Observer(Protocol):
    async def observe(self, target: TargetConfig) -> Any: ...


async def observe_and_plan(
    ctx: ActionContext, driver: Observer, word: str
) -> tuple[list[Any], Plan] | Outcome:
    """Observe every target of the cluster (audited), then check the topology (``plan``)."""
    seen = list(await asyncio.gather(*(driver.observe(t) for t in ctx.cluster.targets)))
    ctx.audit("observed", targets={s.name: s.summary() for s in seen})
    checked = await plan(ctx, seen, word)
    return checked if isinstance(checked, Outcome) else (seen, checked)


async def plan(ctx: ActionContext, seen: Sequence[Seen], word: str) -> Plan | Outcome:
    """Check the topology against the last audited failover (see the module docstring)."""
    last = await ctx.last_failover() if ctx.last_failover is not None else None
    ctx.audit("last_failover", found=bool(last), **_named(last))
    if not last:
        return refuse(ctx, f"no recorded failover of cluster {ctx.cluster.name}: nothing to rejoin")
    new_name, old_name = str(last["new_primary"]), last.get("old_primary")
    primaries = [s for s in seen if s.is_primary]
    names = ", ".join(s.name for s in primaries) or "none"
    new = next((s for s in primaries if s.name == new_name), None)
    if new is None:
        why = f"unexpected topology: {new_name}, promoted by the last failover, is not a live {word}"
        return refuse(ctx, f"{why} ({word}s: {names})")
    where = target_address(new.target)
    if where is None:
        return refuse(ctx, f"{new_name} has no TCP address in its URL to follow")
    strays = [s for s in primaries if s.name != new_name]
    unexpected = [s.name for s in strays if s.name != old_name]
    if unexpected:
        why = (
            f"unexpected topology: {', '.join(unexpected)} also a {word}, not {old_name}, "
            f"the old {word} of the last failover"
        )
        return refuse(ctx, why)
    facts = {"new_primary": new_name, "old_primary": old_name}
    return Plan(new, where, strays[0] if strays else None, facts)


def _named(last: dict[str, Any] | None) -> dict[str, Any]:
    if not last:
        return {}
    return {"new_primary": last.get("new_primary"), "old_primary": last.get("old_primary")}


def nothing_to_do(ctx: ActionContext, plan: Plan, word: str) -> Outcome:
    """No second primary: refused (a resumed run verifies instead, see the actions)."""
    return refuse(ctx, f"{plan.new.name} is the only {word}: nothing to rejoin")
