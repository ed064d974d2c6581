"""Service discovery through HAProxy: point a write backend at a cluster's new primary.

The backend's servers are named after the cluster's targets; the new primary's server is set
``ready`` and every other server ``maint`` on every LB that has a runtime API socket, so writes go to
the new primary only. Before a replica is promoted, the old primary is drained first (``maint``, its
open sessions shut): a paused old primary that wakes up mid-failover gets no write through an LB.
An LB whose runtime API does not answer, or answers something that is not ``show stat``, is
reported as a problem, never raised.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..clients.haproxy import HAProxyError, Server, ShowStat, parse_show_stat, runtime_command
from ..config import LoadedConfig

if TYPE_CHECKING:
    from .actions.base import ActionContext

__all__ = [
    "LbStat",
    "backend_primary",
    "drain_write_backend",
    "lb_sockets",
    "lbs_with_backend",
    "point_backend_at",
    "point_write_backend",
    "read_lb",
    "run_on_lb",
    "runtime_command",
    "write_backend_problems",
]


@dataclass(frozen=True)
class LbStat:
    """What one LB's runtime API said: its ``show stat``, or (``problem``) why it could not be read."""

    lb: str
    socket: str
    stat: ShowStat | None
    problem: str | None = None

    def servers(self, backend: str) -> dict[str, Server]:
        """The servers of ``backend`` on this LB (empty if it has no such backend or was not read)."""
        return self.stat.servers(backend) if self.stat is not None else {}


def lb_sockets(loaded: LoadedConfig) -> list[tuple[str, str]]:
    """(LB target name, runtime API socket path) of every LB in the config."""
    return [
        (t.name, t.stats_socket)
        for c in loaded.config.clusters
        if c.tier == "lb"
        for t in c.targets
        if t.stats_socket
    ]


async def read_lb(lb: str, socket_path: str) -> LbStat:
    """``show stat`` of one LB; never raises (a problem is a secret-free reason)."""
    try:
        return LbStat(lb, socket_path, parse_show_stat(await runtime_command(socket_path, "show stat")))
    except HAProxyError as exc:
        return LbStat(lb, socket_path, None, f"runtime API answered garbage ({exc})")
    except OSError as exc:
        return LbStat(lb, socket_path, None, f"runtime API unreachable ({type(exc).__name__})")


async def lbs_with_backend(loaded: LoadedConfig, backend: str) -> dict[str, LbStat]:
    """Every LB that has ``backend``, plus every LB whose runtime API could not be read (``problem``
    set: it may have it). LBs known not to have it are left out: one config may hold app LBs and
    write LBs side by side."""
    views = await asyncio.gather(*(read_lb(lb, path) for lb, path in lb_sockets(loaded)))
    return {
        v.lb: v for v in views if v.problem is not None or (v.stat is not None and v.stat.backend(backend))
    }


async def run_on_lb(view: LbStat, line: str) -> str | None:
    """Run a ``set ...`` command on one LB; None when it succeeded (HAProxy prints nothing), else a
    short problem (its output, or why the runtime API did not answer)."""
    try:
        out = (await runtime_command(view.socket, line)).strip()
    except HAProxyError as exc:
        return f"runtime API answered garbage ({exc})"
    except OSError as exc:
        return f"runtime API unreachable ({type(exc).__name__})"
    return out[:120] or None


async def point_backend_at(
    loaded: LoadedConfig, backend: str, primary: str, members: list[str]
) -> dict[str, str]:
    """Make ``primary`` the only ready server of ``backend`` on every LB that has that backend (LBs
    without it are left alone), and close the sessions still open to the others. Returns per-LB
    results ("ok" or a secret-free problem)."""
    results: dict[str, str] = {}
    for lb, view in (await lbs_with_backend(loaded, backend)).items():
        if view.problem is not None:
            results[lb] = view.problem
            continue
        servers = view.servers(backend)
        problems = []
        for member in members:
            if member not in servers:
                problems.append(f"{member}: no such server in {backend}")
                continue
            if member == primary:
                problem = await run_on_lb(view, f"set server {backend}/{member} state ready")
            else:
                problem = await _fence(view, backend, member)
            if problem is not None:
                problems.append(f"{member}: {problem}")
                break
        results[lb] = "; ".join(problems) or "ok"
    return results


async def _fence(view: LbStat, backend: str, member: str) -> str | None:
    """Set ``member`` to maint and shut its open sessions; None, or the problem."""
    problem = await run_on_lb(view, f"set server {backend}/{member} state maint")
    if problem is None:
        # maint only stops new sessions: one open to a paused or cut-off old primary would hold its
        # client until the LB's ``timeout server`` (60 s measured), and write there if it wakes up
        problem = await run_on_lb(view, f"shutdown sessions server {backend}/{member}")
    return problem


async def drain_backend_server(loaded: LoadedConfig, backend: str, member: str) -> dict[str, str]:
    """Take ``member`` out of ``backend`` (maint, open sessions shut) on every LB that has it; the
    other servers are left as they are. Per-LB results ("ok" or a secret-free problem)."""
    results: dict[str, str] = {}
    for lb, view in (await lbs_with_backend(loaded, backend)).items():
        if view.problem is not None:
            results[lb] = view.problem
        elif member not in view.servers(backend):
            results[lb] = f"{member}: no such server in {backend}"
        else:
            problem = await _fence(view, backend, member)
            results[lb] = f"{member}: {problem}" if problem else "ok"
    return results


async def backend_primary(loaded: LoadedConfig, backend: str) -> dict[str, list[str]]:
    """Per LB that has ``backend``, its servers not in maintenance (for verification). Raises
    HAProxyError naming an LB whose runtime API could not be read."""
    found: dict[str, list[str]] = {}
    for lb, view in (await lbs_with_backend(loaded, backend)).items():
        if view.problem is not None:
            raise HAProxyError(f"{lb}: {view.problem}")
        found[lb] = [s.name for s in view.servers(backend).values() if s.state != "maint"]
    return found


async def point_write_backend(ctx: ActionContext, primary: str) -> dict[str, str] | None:
    """Make ``primary`` the only ready server of the cluster's write backend (if one is configured);
    raises LeaseLost instead once this replica no longer leads (``ctx.still_leading``)."""
    backend = ctx.cluster_settings.write_backend
    if not backend:
        return None
    ctx.still_leading()
    members = [t.name for t in ctx.cluster.targets]
    results = await point_backend_at(ctx.loaded, backend, primary, members)
    ctx.audit("write_backend_set", backend=backend, primary=primary, results=results)
    return results


async def drain_write_backend(ctx: ActionContext, old: str) -> dict[str, str] | None:
    """Take the old primary out of the cluster's write backend (if one is configured) before a
    replica is promoted. A paused old primary that wakes between the promotion and the backend's
    move would otherwise take writes from the sessions the LB still holds to it (and from new ones),
    acknowledged while a replica that still follows it confirms them, and lost when it rejoins.
    A problem is audited, not raised: the promotion goes on (the old primary is down by every
    check), and verification reports an LB that was not moved."""
    backend = ctx.cluster_settings.write_backend
    if not backend:
        return None
    ctx.still_leading()
    results = await drain_backend_server(ctx.loaded, backend, old)
    ctx.audit("write_backend_drained", backend=backend, target=old, results=results)
    return results


async def write_backend_problems(ctx: ActionContext, primary: str) -> list[str]:
    """Why the write backend does not (yet) send writes to ``primary`` only; empty if it does."""
    backend = ctx.cluster_settings.write_backend
    if not backend:
        return []
    views = await lbs_with_backend(ctx.loaded, backend)
    if not views:
        return [f"backend {backend}: no LB in the config has this backend (or a runtime API socket)"]
    problems = []
    for lb, view in views.items():
        if view.problem is not None:
            problems.append(f"{lb}: {view.problem}")
            continue
        serving = [s.name for s in view.servers(backend).values() if s.state != "maint"]
        if serving != [primary]:
            problems.append(f"{lb}: {backend} serves {serving}")
    return problems
