"""Service discovery through HAProxy: point a write backend at a cluster's new primary.

The backend's servers are named after the cluster's targets; the new primary's server is set
``ready`` and every other server ``maint`` on every LB that has a runtime API socket, so writes go to
the new primary only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import LoadedConfig
from ..probes.haproxy import RuntimeApi, parse_show_stat

if TYPE_CHECKING:
    from .actions.base import ActionContext


def lb_sockets(loaded: LoadedConfig) -> list[tuple[str, str]]:
    """(LB target name, runtime API socket path) of every LB in the config."""
    return [
        (t.name, t.stats_socket)
        for c in loaded.config.clusters
        if c.tier == "lb"
        for t in c.targets
        if t.stats_socket
    ]


async def runtime_command(socket_path: str, line: str) -> str:
    """Run one runtime API command on an LB and return its output."""
    api = RuntimeApi(socket_path)
    try:
        return await api.command(line)
    finally:
        await api.close()


async def lbs_with_backend(loaded: LoadedConfig, backend: str) -> dict[str, dict[str, str]]:
    """Per LB that has ``backend``: its socket path under key "", and each server's status (an LB
    whose runtime API does not answer is listed with key "!" set). LBs without it are left out:
    one config may hold app LBs and write LBs side by side."""
    found: dict[str, dict[str, str]] = {}
    for lb, path in lb_sockets(loaded):
        try:
            rows = list(parse_show_stat(await runtime_command(path, "show stat")))
        except (OSError, ValueError):
            found[lb] = {"": path, "!": "unreachable"}
            continue
        servers = {
            r["svname"]: r.get("status", "")
            for r in rows
            if r.get("pxname") == backend and r.get("type") == "2"
        }
        if servers:
            found[lb] = {"": path, **servers}
    return found


async def point_backend_at(
    loaded: LoadedConfig, backend: str, primary: str, members: list[str]
) -> dict[str, str]:
    """Make ``primary`` the only ready server of ``backend`` on every LB that has that backend (LBs
    without it are left alone). Returns per-LB results ("ok" or a secret-free problem)."""
    results: dict[str, str] = {}
    for lb, servers in (await lbs_with_backend(loaded, backend)).items():
        if servers.get("!"):
            results[lb] = servers["!"]
            continue
        problems = []
        for member in members:
            if member not in servers:
                problems.append(f"{member}: no such server in {backend}")
                continue
            state = "ready" if member == primary else "maint"
            try:
                await runtime_command(servers[""], f"set server {backend}/{member} state {state}")
            except OSError as exc:
                problems.append(type(exc).__name__)
                break
        results[lb] = "; ".join(problems) or "ok"
    return results


async def backend_primary(loaded: LoadedConfig, backend: str) -> dict[str, list[str]]:
    """Per LB that has ``backend``, its servers not in maintenance (for verification)."""
    found: dict[str, list[str]] = {}
    for lb, servers in (await lbs_with_backend(loaded, backend)).items():
        if servers.get("!"):
            raise OSError(f"{lb} unreachable")
        found[lb] = [name for name, status in servers.items() if name and not status.startswith("MAINT")]
    return found


async def point_write_backend(ctx: ActionContext, primary: str) -> dict[str, str] | None:
    """Make ``primary`` the only ready server of the cluster's write backend (if one is configured)."""
    backend = ctx.cluster_settings.write_backend
    if not backend:
        return None
    members = [t.name for t in ctx.cluster.targets]
    results = await point_backend_at(ctx.loaded, backend, primary, members)
    ctx.audit("write_backend_set", backend=backend, primary=primary, results=results)
    return results


async def write_backend_problems(ctx: ActionContext, primary: str) -> list[str]:
    """Why the write backend does not (yet) send writes to ``primary`` only; empty if it does."""
    backend = ctx.cluster_settings.write_backend
    if not backend:
        return []
    try:
        found = await backend_primary(ctx.loaded, backend)
    except (OSError, ValueError) as exc:
        return [f"backend {backend}: {type(exc).__name__}"]
    if not found:
        return [f"backend {backend}: no LB in the config has this backend (or a runtime API socket)"]
    return [f"{lb}: {backend} serves {servers}" for lb, servers in found.items() if servers != [primary]]
