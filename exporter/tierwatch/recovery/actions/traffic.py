"""Traffic actions through HAProxy's runtime API on every LB: shift an app region's weight down in
steps (checking the 5xx ratio between steps) and drain it; a regional failover does the same for a
whole region that is down. ``set_server_state`` (``tierwatch traffic``) puts traffic back by hand."""

from __future__ import annotations

import asyncio

from ...config import LoadedConfig
from ...probes.haproxy import parse_show_stat
from ..discovery import lb_sockets, lbs_with_backend, runtime_command
from .base import Action, ActionContext, Outcome
from .restart import answers


async def backend_counters(loaded: LoadedConfig, backend: str) -> tuple[float, float, dict[str, bool]]:
    """Sum over LBs of the backend's responses and 5xx responses, and which servers are UP anywhere."""
    total = errors = 0.0
    up: dict[str, bool] = {}
    for servers in (await lbs_with_backend(loaded, backend)).values():
        if servers.get("!"):
            continue
        for row in parse_show_stat(await runtime_command(servers[""], "show stat")):
            if row.get("pxname") != backend:
                continue
            if row.get("type") == "1":
                counts = [
                    float(row.get(f"hrsp_{c}") or 0) for c in ("1xx", "2xx", "3xx", "4xx", "5xx", "other")
                ]
                total += sum(counts)
                errors += counts[4]
            elif row.get("type") == "2":
                name = row.get("svname", "")
                up[name] = up.get(name, False) or row.get("status", "").startswith("UP")
    return total, errors, up


async def set_servers(loaded: LoadedConfig, backend: str, servers: list[str], command: str) -> list[str]:
    """Run ``set server <backend>/<server> <command>`` on every LB that has ``backend``; returns
    problems (empty when ok)."""
    problems = []
    found = await lbs_with_backend(loaded, backend)
    if not found:
        return [f"no LB has backend {backend}"]
    for lb, known in found.items():
        if known.get("!"):
            problems.append(f"{lb}: runtime API unreachable")
            continue
        for server in servers:
            out = (await runtime_command(known[""], f"set server {backend}/{server} {command}")).strip()
            if out:
                problems.append(f"{lb}: {server}: {out[:120]}")
    return problems


SERVER_COMMANDS = {
    "enable": ("state ready", "weight 100%"),
    "drain": ("state drain",),
    "disable": ("state maint",),
}


async def set_server_state(
    loaded: LoadedConfig, backend: str, servers: list[str], operation: str
) -> list[str]:
    """``enable`` (ready, weight 100%), ``drain`` (no new sessions) or ``disable`` (maintenance) app
    servers on every LB that has ``backend``; returns problems (empty when ok). ``tierwatch traffic``
    uses it to put traffic back after a shift or a regional failover."""
    problems: list[str] = []
    for command in SERVER_COMMANDS[operation]:
        problems += await set_servers(loaded, backend, servers, command)
    return problems


class ShiftTraffic(Action):
    """Move traffic away from the alert's region gradually (weights in steps), then drain it."""

    name = "shift_traffic"
    failover = False
    require_region_down = False

    async def run(self, ctx: ActionContext) -> Outcome:
        region = ctx.alert.region
        if not region:
            return Outcome("refused", "alert carries no region label")
        leaving = [t for t in ctx.cluster.targets if t.region == region]
        staying = [t for t in ctx.cluster.targets if t.region != region]
        if not leaving or not staying:
            return Outcome("refused", f"region {region} is not one of several regions of this cluster")
        backend = ctx.cluster_settings.app_backend
        if not lb_sockets(ctx.loaded):
            return Outcome("refused", "no LB with a stats_socket in the config")
        total, errors, up = await backend_counters(ctx.loaded, backend)
        receivers = [t.name for t in staying if up.get(t.name)]
        ctx.audit("live_check", backend=backend, receiving_servers_up=receivers)
        if not receivers:
            return Outcome("refused", "no server of the other regions is UP to take the traffic")
        if self.require_region_down:
            answering = [t.name for t in leaving if await answers(t.url)]
            ctx.audit("live_check", region=region, answering=answering)
            if len(answering) == len(leaving):
                return Outcome("refused", f"every server of region {region} answers; not failing over")
        names = [t.name for t in leaving]
        steps = ctx.cluster_settings.weight_steps
        if ctx.dry_run:
            return Outcome("succeeded", f"dry run: would step weights of {names} through {steps}%")
        await ctx.point_of_no_return()
        for weight in steps:
            problems = await set_servers(ctx.loaded, backend, names, f"weight {weight}%")
            if problems:
                return Outcome("failed", "; ".join(problems))
            await asyncio.sleep(ctx.cluster_settings.step_interval)
            new_total, new_errors, _ = await backend_counters(ctx.loaded, backend)
            served = new_total - total
            ratio = (new_errors - errors) / served if served > 0 else 0.0
            ctx.audit("step", weight_percent=weight, responses=served, error_ratio=round(ratio, 4))
            if ratio > ctx.cluster_settings.max_error_ratio:
                await set_servers(ctx.loaded, backend, names, "weight 100%")
                return Outcome("failed", f"5xx ratio {ratio:.1%} above budget at {weight}%; weights restored")
            total, errors = new_total, new_errors
        if steps and steps[-1] == 0:
            problems = await set_servers(ctx.loaded, backend, names, "state drain")
            if problems:
                return Outcome("failed", "; ".join(problems))
        return Outcome(
            "succeeded",
            f"traffic moved off region {region} ({', '.join(names)})",
            failover=self.failover,
            facts={"region": region, "servers": names},
        )


class RegionalFailover(ShiftTraffic):
    """A whole region is down: shift every app server's traffic to the other regions."""

    name = "regional_failover"
    failover = True
    require_region_down = True
