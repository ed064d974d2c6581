"""Is a server really gone? The one check every failover action makes before it acts."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

ATTEMPTS = 2
ATTEMPT_GAP = 0.3  # seconds between the attempts (between their starts when they overlap)


async def still_answers(
    ask: Callable[[], Awaitable[str]],
    silent: Callable[[BaseException], bool],
    problem: Callable[[BaseException], str],
    errors: tuple[type[BaseException], ...],
    *,
    overlap: bool = False,
) -> tuple[bool, str]:
    """Call ``ask`` up to ATTEMPTS times, ATTEMPT_GAP apart. The server answers if ``ask`` returns, or
    fails with an error that is an answer (``silent`` false: bad password, loading, starting up):
    anything it says means it is there. Returns (answers, what was seen, secret-free).

    ``overlap``: each attempt starts ATTEMPT_GAP after the previous one started instead of after it
    failed, so a silent server costs one timeout plus the gaps rather than a timeout per attempt.
    Only for a server the alert already shows silent for its whole window (failover.DOWN_ALERTS):
    the attempts are as many, as far apart and as patient, they only no longer queue behind each
    other's timeouts."""
    if overlap:
        return await _overlapping(ask, silent, problem, errors)
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


async def _overlapping(
    ask: Callable[[], Awaitable[str]],
    silent: Callable[[BaseException], bool],
    problem: Callable[[BaseException], str],
    errors: tuple[type[BaseException], ...],
) -> tuple[bool, str]:
    """The attempts started ATTEMPT_GAP apart, each waiting its own timeout; the first answer wins,
    silence needs every attempt silent."""

    async def attempt(index: int) -> tuple[bool, str]:
        await asyncio.sleep(index * ATTEMPT_GAP)
        try:
            return True, await ask()
        except errors as exc:
            if not silent(exc):
                return True, f"answered with {problem(exc)}"
            return False, problem(exc)

    tasks = [asyncio.ensure_future(attempt(i)) for i in range(ATTEMPTS)]
    try:
        for done in asyncio.as_completed(tasks):
            alive, seen = await done
            if alive:
                return True, seen
        return False, (await tasks[-1])[1]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
