"""restart_instance: restart a dead app server or LB with a configured command, then wait for it to
answer again. The command is an argument list from the config (no shell); the alert only chooses which
configured target, and an unknown target is refused."""

from __future__ import annotations

import asyncio
import time

import httpx

from .base import Action, ActionContext, Outcome


async def answers(url: str, timeout: float = 1.0) -> bool:
    """True if a GET of ``url`` returns 2xx/3xx within ``timeout``."""
    try:
        async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:
            response = await client.get(url)
        return 200 <= response.status_code < 400
    except httpx.HTTPError:
        return False


async def run_command(argv: list[str], timeout: float) -> tuple[int, str]:
    """Run ``argv`` without a shell; returns (exit code, last output line, truncated)."""
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
        proc.kill()
        await proc.wait()
        return -1, "timed out"
    lines = out.decode(errors="replace").strip().splitlines()
    return proc.returncode or 0, (lines[-1][:200] if lines else "")


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
            if await answers(target.url):
                ctx.audit("live_check", target=target.name, answers=True)
                return Outcome("refused", f"{target.name} answers; not restarting")
            ctx.audit("live_check", target=target.name, answers=False)
            if ctx.dry_run:
                return Outcome("succeeded", f"dry run: would run the restart command of {target.name}")
            await ctx.point_of_no_return()
            code, last_line = await run_command(argv, timeout=max(1.0, ctx.settings.action_timeout / 2))
            ctx.audit("command_finished", target=target.name, exit_code=code, output=last_line)
            if code != 0:
                return Outcome("failed", f"restart command of {target.name} exited {code}")
        deadline = started + ctx.settings.action_timeout
        while time.monotonic() < deadline:
            if await answers(target.url):
                return Outcome(
                    "succeeded",
                    f"{target.name} restarted and answers",
                    facts={"seconds": round(time.monotonic() - started, 3)},
                )
            await asyncio.sleep(0.2)
        return Outcome("failed", f"{target.name} did not answer after its restart")
