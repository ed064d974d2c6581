"""The one worker loop of the recovery service, alone or as one of its replicas: while its Leadership
(leadership.py) holds a term, claim the next pending alert from the inbox and start its action; when a
term ends, stop every action before its point of no return (they go back to the inbox) and take over
again at the next term.

On stop, actions before their point of no return are interrupted and go back to the queue (they run
again after a restart); the others get SHUTDOWN_GRACE seconds, then are interrupted too and resumed
(verify-only) after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .audit import AuditTrail
from .inbox import Inbox, InboxAlert
from .leadership import Leadership

# on SIGTERM, how long an action past its point of no return may go on before it is interrupted (it is
# resumed, verify-only, after the restart)
SHUTDOWN_GRACE = 5.0
IDLE_WAIT = 0.5  # how long the worker sleeps when there is nothing to claim


@dataclass
class Run:
    """An action under way for one alert."""

    task: asyncio.Task[None]
    past_ponr: bool = False
    shutdown: bool = False  # cancelled because the service stops (not because the alert resolved)
    reason: str = "shutdown"  # or lease_lost: this replica may no longer act


class Runs:
    """The actions under way, by alert key."""

    def __init__(self) -> None:
        self._runs: dict[str, Run] = {}

    def get(self, key: str) -> Run | None:
        return self._runs.get(key)

    def keys(self) -> set[str]:
        return set(self._runs)

    def add(self, key: str, task: asyncio.Task[None], past_ponr: bool) -> None:
        """Track ``task`` until it ends."""
        self._runs[key] = Run(task, past_ponr=past_ponr)
        task.add_done_callback(lambda _t: self._runs.pop(key, None))

    def passed_point_of_no_return(self, key: str) -> None:
        run = self._runs.get(key)
        if run is not None:
            run.past_ponr = True

    def cancel_before_point_of_no_return(self, key: str) -> None:
        """Cancel the alert's action (it resolved) unless it has passed its point of no return."""
        run = self._runs.get(key)
        if run is not None and not run.past_ponr:
            run.task.cancel()

    def stop_before_point_of_no_return(self, reason: str) -> None:
        """Interrupt every action not past its point of no return (back to the inbox)."""
        for run in list(self._runs.values()):
            if not run.past_ponr:
                run.shutdown, run.reason = True, reason
                run.task.cancel()

    async def stop(self, grace: float) -> None:
        """Interrupt every action: those before their point of no return at once, the others after
        ``grace`` seconds."""
        for run in list(self._runs.values()):
            if not run.past_ponr:
                run.shutdown = True
                run.task.cancel()
        tasks = [r.task for r in self._runs.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        for run in list(self._runs.values()):
            if not run.shutdown:  # past the point of no return and not done within the grace
                run.shutdown = True
                run.task.cancel()
        tasks = [r.task for r in self._runs.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE)


class Worker:
    """Claims pending alerts and starts their actions (``execute``) while ``leadership`` leads."""

    def __init__(
        self,
        leadership: Leadership,
        inbox: Inbox,
        audit: AuditTrail,
        runs: Runs,
        claim: Callable[[], Awaitable[InboxAlert | None]],
        execute: Callable[[InboxAlert, bool], Awaitable[None]],
        action_timeout: Callable[[], float],
    ):
        self.leadership, self.inbox, self.audit, self.runs = leadership, inbox, audit, runs
        self.claim, self.execute, self.action_timeout = claim, execute, action_timeout
        self.ready = False  # the inbox's leftovers are dealt with: the loop runs
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Look at the inbox now (a notification came in, the config was reloaded)."""
        self._wake.set()

    def start(self, alert: InboxAlert, resumed: bool) -> asyncio.Task[None]:
        """Run ``alert``'s action in a task of its own (``resumed``: verify-only, past its point of no
        return)."""
        task = asyncio.create_task(self.execute(alert, resumed))
        self.runs.add(alert.key, task, past_ponr=resumed)
        return task

    def _resume(self, alert: InboxAlert) -> None:
        self.audit.record("alert_resumed", alert=alert.alertname, key=alert.key)
        self.start(alert, resumed=True)

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the leadership and run pending alerts until ``stop``."""
        keeping = asyncio.create_task(self.leadership.keep(stop))
        try:
            leftovers = await asyncio.to_thread(self.inbox.interrupted)
            for alert in self.leadership.resume_at_start(leftovers):
                self._resume(alert)
            self.ready = True
            leading: int | None = None  # the term this worker took over in
            while not stop.is_set():
                term = self.leadership.term
                if leading is not None and term != leading:
                    # lost, or lost and won again between two looks: another replica may have acted
                    # meanwhile, so whatever runs stops before its point of no return and a new
                    # takeover reads the ledger again
                    leading = None
                    self.runs.stop_before_point_of_no_return("lease_lost")
                if term is not None and leading is None:
                    resumes = await self.leadership.take_over(self.runs.keys())
                    if resumes is not None:
                        leading = term
                        for alert in resumes:
                            self._resume(alert)
                if leading is not None:
                    alert = await self.claim()
                    if alert is not None:
                        self.start(alert, resumed=False)
                        continue
                else:
                    await self.leadership.not_acting(await asyncio.to_thread(self.inbox.pending_count))
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), IDLE_WAIT)
        finally:
            await self.runs.stop(min(SHUTDOWN_GRACE, self.action_timeout()))
            await self.audit.flush()
            stop.set()
            await keeping
