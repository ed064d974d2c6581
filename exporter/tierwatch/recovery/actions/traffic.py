"""Traffic actions through HAProxy's runtime API on every LB: shift an app region's weight down in
steps (checking the 5xx ratio between steps) and drain it; a regional failover does the same for a
whole region that is down, then moves the app cluster's DNS records to the first other region with
a server UP (dns_records.py). ``set_server_state`` (``tierwatch traffic``) puts traffic back by hand."""

from __future__ import annotations

import asyncio

from ...clients.http import answer_problem
from ...config import LoadedConfig
from ..discovery import LbStat, lb_sockets, lbs_with_backend, run_on_lb
from ..dns_records import publish, with_dns
from .base import Action, ActionContext, Outcome


def backend_counters(views: dict[str, LbStat], backend: str) -> tuple[float, float, dict[str, bool]]:
    """Sum over the LBs read of the backend's responses and 5xx responses, and which servers are UP
    anywhere."""
    total = errors = 0.0
    up: dict[str, bool] = {}
    for view in views.values():
        if view.stat is None:
            continue
        row = view.stat.backend(backend)
        if row is not None:
            responses = row.responses()
            total += sum(responses.values())
            errors += responses["5xx"]
        for server in view.servers(backend).values():
            up[server.name] = up.get(server.name, False) or server.status.startswith("UP")
    return total, errors, up


async def set_servers(loaded: LoadedConfig, backend: str, servers: list[str], command: str) -> list[str]:
    """Run ``set server <backend>/<server> <command>`` on every LB that has ``backend``; returns
    problems (empty when ok)."""
    problems = []
    found = await lbs_with_backend(loaded, backend)
    if not found:
        return [f"no LB has backend {backend}"]
    for lb, view in found.items():
        if view.problem is not None:
            problems.append(f"{lb}: {view.problem}")
            continue
        for server in servers:
            problem = await run_on_lb(view, f"set server {backend}/{server} {command}")
            if problem is not None:
                problems.append(f"{lb}: {server}: {problem}")
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
        views = await lbs_with_backend(ctx.loaded, backend)
        unreadable = [f"{lb}: {v.problem}" for lb, v in views.items() if v.problem is not None]
        if unreadable:
            # moving traffic on some LBs of a pair and not the others would leave them disagreeing
            return Outcome("refused", "not moving traffic: " + "; ".join(unreadable))
        total, errors, up = backend_counters(views, backend)
        receivers = [t.name for t in staying if up.get(t.name)]
        ctx.audit("live_check", backend=backend, receiving_servers_up=receivers)
        if not receivers:
            return Outcome("refused", "no server of the other regions is UP to take the traffic")
        if self.require_region_down:
            timeout = ctx.loaded.config.monitor.timeout
            problems = await asyncio.gather(*(answer_problem(t, timeout) for t in leaving))
            answering = [t.name for t, problem in zip(leaving, problems, strict=True) if problem is None]
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
            new_total, new_errors, _ = backend_counters(await lbs_with_backend(ctx.loaded, backend), backend)
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
        outcome = Outcome(
            "succeeded",
            f"traffic moved off region {region} ({', '.join(names)})",
            failover=self.failover,
            facts={"region": region, "servers": names},
        )
        if not self.failover:  # a gradual shift keeps the names: the region may come back
            return outcome
        serving = next(t.region for t in staying if t.name in receivers)
        outcome.facts["serving_region"] = serving
        return with_dns(outcome, await publish(ctx, serving, region))


class RegionalFailover(ShiftTraffic):
    """A whole region is down: shift every app server's traffic to the other regions."""

    name = "regional_failover"
    failover = True
    require_region_down = True
