"""cache_warmup: GET the configured warm-up URLs with bounded concurrency (before traffic returns)."""

from __future__ import annotations

import asyncio

from ...clients.http import HttpClient, HttpFailure, HttpRules, ssl_context
from .base import Action, ActionContext, Outcome

# A warm-up GET only needs the server to build its cache; the answer's body is not needed, and a
# body longer than the cap is left unread (its connection closed), whatever the URL sends.
WARMUP_RULES = HttpRules()


async def warm_up(urls: list[str], concurrency: int, timeout: float) -> tuple[int, int]:
    """GET every URL, at most ``concurrency`` at a time; returns (succeeded, failed). A request
    succeeds when its final answer (after redirects) is 2xx."""
    gate = asyncio.Semaphore(concurrency)
    ok = failed = 0
    client = HttpClient(timeout, ssl_context(None, True), connections=concurrency)

    async def fetch(url: str) -> None:
        nonlocal ok, failed
        async with gate:
            try:
                await client.check(url, WARMUP_RULES)
                good = True
            except HttpFailure:
                good = False
        if good:
            ok += 1
        else:
            failed += 1

    try:
        await asyncio.gather(*(fetch(url) for url in urls))
    finally:
        await client.close()
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
