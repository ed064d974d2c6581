"""cache_warmup: GET the configured warm-up URLs with bounded concurrency (before traffic returns)."""

from __future__ import annotations

import asyncio

import httpx

from .base import Action, ActionContext, Outcome


async def warm_up(urls: list[str], concurrency: int, timeout: float) -> tuple[int, int]:
    """GET every URL, at most ``concurrency`` at a time; returns (succeeded, failed)."""
    gate = asyncio.Semaphore(concurrency)
    ok = failed = 0

    async def fetch(client: httpx.AsyncClient, url: str) -> None:
        nonlocal ok, failed
        async with gate:
            try:
                response = await client.get(url)
                good = 200 <= response.status_code < 400
            except httpx.HTTPError:
                good = False
        if good:
            ok += 1
        else:
            failed += 1

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False) as client:
        await asyncio.gather(*(fetch(client, url) for url in urls))
    return ok, failed


class CacheWarmup(Action):
    name = "cache_warmup"

    async def run(self, ctx: ActionContext) -> Outcome:
        settings = ctx.cluster_settings
        if not settings.warmup_urls:
            return Outcome("refused", "no warmup_urls configured for this cluster")
        if ctx.dry_run:
            return Outcome("succeeded", f"dry run: would fetch {len(settings.warmup_urls)} warm-up URLs")
        await ctx.point_of_no_return()
        ok, failed = await warm_up(settings.warmup_urls, settings.warmup_concurrency, timeout=10.0)
        ctx.audit("warmup_finished", succeeded=ok, failed=failed)
        if failed:
            return Outcome("failed", f"{failed} of {ok + failed} warm-up requests failed")
        return Outcome("succeeded", f"{ok} warm-up requests succeeded")
