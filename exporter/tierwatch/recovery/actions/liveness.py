"""Is a server really gone? The one check every failover action makes before it acts."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

ATTEMPTS = 2
ATTEMPT_GAP = 0.3  # seconds between the attempts


async def still_answers(
    ask: Callable[[], Awaitable[str]],
    silent: Callable[[BaseException], bool],
    problem: Callable[[BaseException], str],
    errors: tuple[type[BaseException], ...],
) -> tuple[bool, str]:
    """Call ``ask`` up to ATTEMPTS times, ATTEMPT_GAP apart. The server answers if ``ask`` returns, or
    fails with an error that is an answer (``silent`` false: bad password, loading, starting up):
    anything it says means it is there. Returns (answers, what was seen, secret-free)."""
    last = ""
    for attempt in range(ATTEMPTS):
        if attempt:
            await asyncio.sleep(ATTEMPT_GAP)
        try:
            return True, await ask()
        except errors as exc:
            if not silent(exc):
                return True, f"answered with {problem(exc)}"
            last = problem(exc)
    return False, last
