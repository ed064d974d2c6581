"""restart_instance: restart a dead app server or LB with a configured command, then wait for it to
answer again. The command is an argument list from the config (no shell); the alert only chooses which
configured target, and an unknown target is refused."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

from ...clients.http import answer_problem
from ...config import TargetConfig
from .base import Action, ActionContext, Outcome


async def live_check(ctx: ActionContext, target: TargetConfig) -> str | None:
    """None if ``target`` answers as the exporter would count it up (its TLS options, expect_status,
    expect_body, bounded reads, within the monitor's probe timeout), else what was seen instead."""
    return await answer_problem(target, ctx.loaded.config.monitor.timeout)


async def run_command(argv: list[str], timeout: float) -> tuple[int, str]:
    """Run ``argv`` without a shell, in its own process group; returns (exit code, last output line,
    truncated), or (-1, 'timed out'). On timeout or cancellation the whole process group is killed
    (the command and every child it left in it), so nothing it started outlives it unless it
    deliberately left the group (a daemon it started)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        await _kill_group(proc)
        return -1, "timed out"
    except asyncio.CancelledError:
        await _kill_group(proc)
        raise
    lines = out.decode(errors="replace").strip().splitlines()
    return proc.returncode or 0, (lines[-1][:200] if lines else "")


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the process group led by ``proc`` and reap ``proc`` (bounded: never hangs a shutdown)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(TimeoutError, asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(proc.wait()), 2.0)


class RestartInstance(Action):
    name = "restart_instance"

    async def run(self, ctx: ActionContext) -> Outcome:
        target_name = ctx.alert.target
        target = ctx.target(target_name) if target_name else None
        if target is None:
            return Outcome("refused", "alert names no target of this cluster")
        settings = ctx.cluster_settings
        argv = settings.restart_commands.get(target.name)
        if argv is None and target.name in settings.systemd_units:
            argv = ["systemctl", "restart", settings.systemd_units[target.name]]
        if argv is None:
            return Outcome("refused", f"no restart command configured for {target.name}")
        started = time.monotonic()
        if ctx.resumed:
            # the command already ran before the service restarted: verify, do not run it twice
            ctx.audit("resumed_verify_only", target=target.name)
        else:
            problem = await live_check(ctx, target)
            if problem is None:
                ctx.audit("live_check", target=target.name, answers=True)
                return Outcome("refused", f"{target.name} answers; not restarting")
            ctx.audit("live_check", target=target.name, answers=False, seen=problem)
            if ctx.dry_run:
                return Outcome("succeeded", f"dry run: would run the restart command of {target.name}")
            await ctx.point_of_no_return()
            try:
                code, last_line = await run_command(argv, timeout=max(1.0, ctx.settings.action_timeout / 2))
            except asyncio.CancelledError:
                ctx.audit("command_finished", target=target.name, exit_code=None, output="killed")
                raise
            ctx.audit("command_finished", target=target.name, exit_code=code, output=last_line)
            if code != 0:
                return Outcome("failed", f"restart command of {target.name} exited {code}")
        deadline = started + ctx.settings.action_timeout
        while time.monotonic() < deadline:
            if await live_check(ctx, target) is None:
                return Outcome(
                    "succeeded",
                    f"{target.name} restarted and answers",
                    facts={"seconds": round(time.monotonic() - started, 3)},
                )
            await asyncio.sleep(0.2)
        return Outcome("failed", f"{target.name} did not answer after its restart")
