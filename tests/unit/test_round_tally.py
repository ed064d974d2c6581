"""The monitor's round tally: a round ends when its last job does, once every job of the interval
started, and its end schedules no work per job (at 10,000 targets a callback per finished job at the
interval's end held the event loop, and a /metrics answer, for a few hundred ms)."""

from __future__ import annotations

import asyncio
from typing import Any

from tierwatch.monitor import _RoundTally


def tally_and_ends() -> tuple[_RoundTally, list[tuple[float, bool]], asyncio.Event, set[Any]]:
    ends: list[tuple[float, bool]] = []
    stop = asyncio.Event()
    running: set[Any] = set()
    return (
        _RoundTally(lambda started, overran: ends.append((started, overran)), stop, running),
        ends,
        stop,
        running,
    )


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


def test_the_round_ends_with_its_last_job_once_sealed() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        tally, ends, _, running = tally_and_ends()
        jobs = [loop.create_future() for _ in range(3)]
        for job in jobs:
            tally.add(job)
        assert running == set(jobs)
        jobs[0].set_result(None)
        jobs[1].set_result(None)
        await settle()
        assert ends == [] and running == {jobs[2]}
        tally.seal(12.5, True)
        assert ends == []  # one job still running
        jobs[2].set_result(None)
        await settle()
        assert ends == [(12.5, True)]
        assert running == set()

    asyncio.run(scenario())


def test_a_round_whose_jobs_all_finished_ends_at_seal_and_an_empty_one_too() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        tally, ends, _, _ = tally_and_ends()
        job = loop.create_future()
        tally.add(job)
        job.set_exception(RuntimeError("a failed job still ends"))
        await settle()
        tally.seal(1.0, False)
        assert ends == [(1.0, False)]
        job.exception()
        empty, empty_ends, _, _ = tally_and_ends()
        empty.seal(2.0, True)  # every slot skipped
        assert empty_ends == [(2.0, True)]
        assert empty.launched == 0

    asyncio.run(scenario())


def test_no_round_ends_after_stop() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        tally, ends, stop, running = tally_and_ends()
        job = loop.create_future()
        tally.add(job)
        tally.seal(1.0, False)
        stop.set()
        job.cancel()
        await settle()
        assert ends == []
        assert running == set()

    asyncio.run(scenario())


def test_sealing_schedules_nothing_per_finished_job() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        tally, ends, _, _ = tally_and_ends()
        jobs = [loop.create_future() for _ in range(1000)]
        for job in jobs:
            tally.add(job)
            job.set_result(None)
        await settle()
        scheduled: list[Any] = []
        call_soon = loop.call_soon

        def counting(*args: Any, **kwargs: Any) -> Any:
            scheduled.append(args[0])
            return call_soon(*args, **kwargs)

        loop.call_soon = counting  # type: ignore[method-assign]
        try:
            tally.seal(3.0, False)
        finally:
            del loop.call_soon
        assert ends == [(3.0, False)]
        assert scheduled == []

    asyncio.run(scenario())
