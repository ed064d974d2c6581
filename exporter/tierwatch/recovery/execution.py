"""Running one claimed alert: the policy's checks in order (allow-list → cluster known → tier → done by
a peer? → settle, superseded? → per-cluster lock → rate limit + cooldown with a run reserved) → the
action (re-checks live state, point of no return, verifies) → outcome, with an audit record of every
decision and the action's metrics.

At the point of no return every record so far is on disk and, with replicas, the run is in the
leadership's ledger under the term it started in. An action that cannot pass it (the audit trail or the
inbox cannot be written, the term ended) goes back to the queue with its reservation released; past
it, an interrupted action stays running in the inbox, to be resumed verify-only.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..config import ClusterConfig, LoadedConfig, RecoverySettings
from ..config.service_discovery import record_label
from ..events import EventLog
from . import metrics as m
from .actions import ActionContext, AlertRef, load_action
from .audit import AuditUnavailable
from .inbox import InboxAlert, InboxUnavailable
from .leadership import Leadership, LeaseLost
from .live import Current
from .policy import Policy
from .self_metrics import RecoveryMetrics
from .stores import StateStores
from .worker import Runs


class Execution:
    """Runs claimed alerts (``run_alert``, started by the worker)."""

    def __init__(
        self,
        current: Current,
        stores: StateStores,
        metrics: RecoveryMetrics,
        events: EventLog,
        leadership: Leadership,
        policy: Policy,
        runs: Runs,
    ):
        self.current, self.metrics, self.events = current, metrics, events
        self.inbox, self.audit = stores.inbox, stores.audit
        self.leadership, self.policy, self.runs = leadership, policy, runs

    async def run_alert(self, alert: InboxAlert, resumed: bool) -> None:
        """Run one claimed alert to its outcome (``resumed``: verify-only, it was past its point of no
        return)."""
        # the settings at the start: a reload meanwhile does not change an action under way
        live = self.current()
        settings, loaded = live.settings, live.loaded
        labels = alert.labels
        cluster_name = labels.get("cluster", "")
        cluster = live.clusters.get(cluster_name)
        action_name = self.policy.allowed_action(alert, settings)
        tier = labels.get("tier") or (cluster.tier if cluster else "")
        base = {
            "alert": alert.alertname,
            "key": alert.key,
            "cluster": cluster_name,
            "target": labels.get("target"),
        }

        async def finish(
            outcome: str,
            detail: str,
            action: str | None = action_name,
            failover: dict[str, Any] | None = None,
        ) -> None:
            await asyncio.to_thread(self.inbox.finish, alert.key, outcome, detail)
            self.audit.record("outcome", **base, action=action, outcome=outcome, detail=detail)
            await self.leadership.finished(alert, outcome, failover)
            if action is not None and cluster is not None:
                self.metrics.actions.labels(tier, cluster_name, action, outcome).inc()
            await self.audit.flush()

        async def refuse(limit: str, detail: str, action: str) -> None:
            self.policy.blocked(tier, cluster_name, action, limit, base)
            await asyncio.to_thread(self.inbox.finish, alert.key, "refused", detail)

        if action_name is None:
            await refuse(
                "not_allowed", "alert not in the allow-list for this action", labels.get("action", "none")
            )
            return
        if cluster is None:
            await finish("refused", "alert names no configured cluster")
            return
        if not self.policy.acts_on(action_name, cluster):  # a mislabelled alert: the catalogue's tiers
            await refuse("not_allowed", f"{action_name} does not act on {cluster.tier} clusters", action_name)
            return
        try:
            if not resumed and (done := await self.leadership.handled_elsewhere(alert)):
                await asyncio.to_thread(self.inbox.finish, alert.key, "handled_by_peer", done)
                self.audit.record("handled_by_peer", **base, detail=done)
                return
            if not resumed and await self.policy.superseded(alert, cluster_name, action_name, settings):
                await refuse(
                    "superseded", "superseded by a regional failover of the same region", action_name
                )
                return

            def waiting() -> None:
                self.audit.record("waiting_for_cluster_lock", **base, action=action_name)

            async with self.policy.cluster_lock(cluster_name, waiting):
                if not resumed:
                    blocked = await self.policy.reserve(alert, cluster_name, action_name, settings)
                    if blocked is not None:
                        await refuse(*blocked, action_name)
                        return
                await self._act(alert, cluster, tier, base, action_name, resumed, finish, settings, loaded)
        except (AuditUnavailable, InboxUnavailable) as exc:
            running = self.runs.get(alert.key)
            if running is not None and running.past_ponr:
                # acted, but its end could not be kept: the inbox still says running past the point of
                # no return, so the next start (or leader) resumes it verify-only, never runs it again
                self.audit.record("outcome_not_recorded", **base, action=action_name, reason=str(exc))
                self.events.emit("outcome_not_recorded", "error", alert=alert.alertname, reason=str(exc))
            else:  # before the point of no return: nothing was done, the alert waits for the disk
                with contextlib.suppress(InboxUnavailable):
                    await asyncio.to_thread(self.inbox.requeue, alert.key)
                self.audit.record("action_deferred", **base, action=action_name, reason=str(exc))
                self.events.emit("action_deferred", "error", alert=alert.alertname, reason=str(exc))
        except LeaseLost as exc:  # this replica no longer leads: the alert is the new leader's to run (from
            # the start before the point of no return; past it, resumed from the ledger)
            try:
                await asyncio.sleep(1.0)  # back off: etcd may be failing fast, this alert is claimed again
            finally:
                # also when the worker, seeing the lost lease too, cancels this task meanwhile: an
                # alert left "running" would be lost (synchronous, so a cancellation cannot skip it);
                # on a refusing disk it stays running here, made pending again at the next start
                with contextlib.suppress(InboxUnavailable):
                    self.inbox.requeue(alert.key)
                self.audit.record(
                    "action_stopped", **base, action=action_name, reason="lease_lost", detail=str(exc)
                )
                self.events.emit("action_stopped", "warning", alert=alert.alertname, reason="lease_lost")
        except asyncio.CancelledError:
            running = self.runs.get(alert.key)
            if running is not None and running.shutdown:
                await self._interrupted(alert, base, action_name, running.past_ponr, running.reason)
            else:
                with contextlib.suppress(InboxUnavailable):  # else left running: requeued at the next start
                    await asyncio.to_thread(self.inbox.release, alert.key)
                    await finish("cancelled", "alert resolved before the point of no return")

    async def _act(
        self,
        alert: InboxAlert,
        cluster: ClusterConfig,
        tier: str,
        base: dict[str, Any],
        action_name: str,
        resumed: bool,
        finish: Callable[..., Awaitable[None]],
        settings: RecoverySettings,
        loaded: LoadedConfig,
    ) -> None:
        """Run the action under the cluster lock with a reserved run; keep the run if it changed
        something (or would have, in a dry run), give it back otherwise."""
        cluster_name = cluster.name
        self.audit.record(
            "action_started", **base, action=action_name, resumed=resumed, dry_run=settings.dry_run
        )
        started = time.monotonic()
        try:
            ctx = self._context(alert, cluster, resumed, base, action_name, settings, loaded)
            async with asyncio.timeout(settings.action_timeout):
                outcome = await load_action(action_name).run(ctx)
        except TimeoutError:
            await self._settle_run(alert.key, changed=False)
            await finish("timed_out", f"no result within {settings.action_timeout:g}s")
            return
        except Exception as exc:  # noqa: BLE001 - an action bug must be recorded, not crash the worker
            await self._settle_run(alert.key, changed=False)
            await finish("failed", f"action raised {type(exc).__name__}")
            self.events.emit(
                "action_crashed", "error", action=action_name, error=type(exc).__name__, where=_where(exc)
            )
            return
        finally:
            self.metrics.duration.labels(tier, cluster_name, action_name).set(time.monotonic() - started)
        result = "dry_run" if settings.dry_run and outcome.status == "succeeded" else outcome.status
        await self._settle_run(alert.key, changed=result == "dry_run")
        failover: dict[str, Any] | None = None
        if promoted := outcome.facts.get("new_primary"):  # what a later rejoin follows (kept in the
            # inbox: the audit log may be rotated)
            failover = {"new_primary": str(promoted), "old_primary": outcome.facts.get("old_primary")}
            await asyncio.to_thread(self.inbox.record_failover, alert.key, cluster_name, **failover)
        await finish(result, outcome.detail, failover=failover)
        limit = outcome.facts.get("limit")
        if outcome.status == "refused" and limit in m.LIMITS:
            self.policy.blocked(tier, cluster_name, action_name, limit, base)
        if outcome.facts:
            self.audit.record("facts", **{**base, "action": action_name, **outcome.facts})
        for record, dns_result in outcome.facts.get("dns", {}).items():
            self.metrics.dns_updates.labels(tier, cluster_name, record_label(record), dns_result).inc()
        if outcome.failover and result == "succeeded":
            self.metrics.failovers.labels(tier, cluster_name, action_name).inc()
            self.metrics.last_failover.labels(tier, cluster_name).set(time.time())
            self.events.emit("failover", cluster=cluster_name, action=action_name, detail=outcome.detail)

    async def _settle_run(self, key: str, changed: bool) -> None:
        """A run past its point of no return is already counted; before it, keep it only if
        ``changed`` (a dry run's would-be action), else give it back."""
        running = self.runs.get(key)
        if running is not None and running.past_ponr:
            return
        await asyncio.to_thread(self.inbox.keep if changed else self.inbox.release, key)

    async def _interrupted(
        self, alert: InboxAlert, base: dict[str, Any], action: str, past_ponr: bool, reason: str = "shutdown"
    ) -> None:
        """The service is stopping: before the point of no return the alert goes back to the queue
        (its reservation released); past it, it stays running in the inbox, to be resumed."""
        if not past_ponr:
            await asyncio.to_thread(self.inbox.requeue, alert.key)
        self.audit.record(
            "action_interrupted",
            **base,
            action=action,
            reason=reason,
            then="resume_verify_only" if past_ponr else "run_again",
        )

    def _context(
        self,
        alert: InboxAlert,
        cluster: ClusterConfig,
        resumed: bool,
        base: dict[str, Any],
        action: str,
        settings: RecoverySettings,
        loaded: LoadedConfig,
    ) -> ActionContext:
        fencing = self.leadership.fencing_token  # the term this action runs under

        def still_leading() -> None:
            self.leadership.check(fencing)

        async def point_of_no_return(decision: dict[str, Any] | None = None) -> None:
            # every record so far on disk, or nothing irreversible: raises AuditUnavailable
            await self.audit.require()
            # fenced: raises LeaseLost (nothing done) unless still that term
            await self.leadership.point_of_no_return(alert, cluster.name, action, fencing, decision)
            self.runs.passed_point_of_no_return(alert.key)
            await asyncio.to_thread(self.inbox.mark_point_of_no_return, alert.key, decision)
            extra = {"decision": decision} if decision else {}
            self.audit.record("point_of_no_return", **base, action=action, **extra)
            await self.audit.flush()  # on disk before anything irreversible

        def audit(event: str, **fields: Any) -> None:
            self.audit.record(event, **{**base, "action": action, **fields})

        ref = AlertRef(alert.alertname, alert.fingerprint, alert.starts_at, dict(alert.labels))
        return ActionContext(
            loaded,
            settings,
            cluster,
            ref,
            settings.dry_run,
            audit,
            point_of_no_return,
            resumed,
            decision=alert.decision if resumed else None,
            regional=self.policy.regional(alert.alertname, settings),
            fencing_token=fencing,
            still_leading=still_leading,
            last_failover=lambda: asyncio.to_thread(self.inbox.last_failover, cluster.name),
        )


def _where(exc: BaseException) -> str:
    """file:line of the innermost frame of an exception (no message: it could hold a secret)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f"{tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}" if tb else "?"
