"""``tierwatch recover``: receives Alertmanager webhooks, records them durably, and runs the allowed
recovery action of each firing alert once, under safety limits, with an audit trail of every decision.

Flow: POST /webhook → authenticate → size limit → validate → Inbox.record (SQLite, fsynced) → 200.
A worker claims pending alerts from the inbox and runs them: allow-list → cluster known → (settle,
superseded?) → per-cluster lock → rate limit + cooldown checked and a run reserved in one step →
action (re-checks live state, point of no return, verifies) → outcome. The reservation counts from
the point of no return; an attempt that ends before it gives it back.

Nothing here blocks the event loop on the disk: inbox writes run in a thread, audit records are
written by the audit's own thread.

Nothing runs without its audit record: while the trail (or the inbox) cannot be written (a full disk),
the webhook answers 503 so that Alertmanager retries, /ready says why, no alert is claimed, and an
action that reaches its point of no return goes back to the queue with its reservation released. All
of it resumes by itself once the disk takes writes again.

SIGHUP and ``POST /-/reload`` (authenticated like the webhook) re-read the config: clusters, allow-list,
limits, per-cluster settings and secrets (a rotated token) apply to the next alert; an action under way
keeps the settings it started with. ``state_dir``, ``listen`` and ``tls`` files cannot change live.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
)
from prometheus_client.exposition import choose_encoder

from ..action_catalog import ACTION_TIERS, INSTANCE_ACTIONS
from ..config import ClusterConfig, ConfigError, LoadedConfig, RecoverySettings, load_config
from ..events import EventLog
from ..http_server import (
    ConnectionGuard,
    Receive,
    Scope,
    Send,
    apply_log_settings,
    header,
    install_reload_signal,
    log_reload_problems,
    renew_certificate,
    respond,
    serve_app,
)
from ..metric_catalog import MetricSpec
from ..web_config import BasicAuthChecker, TlsServerConfig, WebConfig, basic_credentials
from . import metrics as m
from .actions import ACTION_CLASSES, ActionContext, AlertRef, load_action
from .audit import AuditTrail, AuditUnavailable, RateLimitedAudit
from .auth import Authenticator
from .inbox import Inbox, InboxAlert, InboxUnavailable
from .lease import LeaseLost
from .replicas import Replicas, ha_fields, replica_status, run_replica_worker
from .webhook import PayloadError, parse_payload

# on SIGTERM, how long an action past its point of no return may go on before it is interrupted (it is
# resumed, verify-only, after the restart)
SHUTDOWN_GRACE = 5.0
AUDIT_ENTRIES = 200  # what GET /audit returns


def _counter(spec: MetricSpec, registry: CollectorRegistry) -> Counter:
    return Counter(spec.name.removesuffix("_total"), spec.help, list(spec.all_labels), registry=registry)


def _gauge(spec: MetricSpec, registry: CollectorRegistry) -> Gauge:
    return Gauge(spec.name, spec.help, list(spec.all_labels), registry=registry)


@dataclass
class _Running:
    task: asyncio.Task[None]
    past_ponr: bool = False
    shutdown: bool = False  # cancelled because the service stops (not because the alert resolved)
    reason: str = "shutdown"  # or lease_lost: this replica may no longer act


NOTIFICATION_RESULTS = (
    "accepted",
    "duplicate",
    "stale",
    "resolved",
    "unauthorized",
    "invalid",
    "too_large",
    "timed_out",
    "unavailable",
)


@dataclass
class RecoveryMetrics:
    """The service's own metrics, named from the catalogue (docs/metrics.md)."""

    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))

    def __post_init__(self) -> None:
        r = self.registry
        for standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):  # process_*, python_*
            r.register(standard)
        self.actions = _counter(m.ACTIONS_TOTAL, r)
        self.blocked = _counter(m.BLOCKED_TOTAL, r)
        self.failovers = _counter(m.FAILOVERS_TOTAL, r)
        self.last_failover = _gauge(m.LAST_FAILOVER, r)
        self.notifications = _counter(m.NOTIFICATIONS_TOTAL, r)
        self.pending = _gauge(m.INBOX_PENDING, r)
        self.duration = _gauge(m.ACTION_DURATION, r)
        self.truncated = _counter(m.TRUNCATED_ALERTS, r)
        self.dropped = _counter(m.CONNECTIONS_DROPPED, r)
        self.reload_ok = _gauge(m.CONFIG_RELOAD_SUCCESSFUL, r)
        self.reload_time = _gauge(m.CONFIG_RELOAD_TIME, r)
        self.writable = _gauge(m.STATE_WRITABLE, r)
        self.store_failures = _counter(m.STATE_FAILURES_TOTAL, r)
        for store in ("audit", "inbox"):
            self.writable.labels(store).set(1)
            self.store_failures.labels(store)
        self.reload_ok.set(1)
        self.reload_time.set(time.time())
        for result in NOTIFICATION_RESULTS:
            self.notifications.labels(result)
        for reason in ("read_timeout", "evicted", "over_limit"):
            self.dropped.labels(reason)

    def create_series(self, clusters: list[ClusterConfig], actions: set[str]) -> None:
        """Create every action/outcome and limit series at 0, so increase() sees the first event."""
        for cluster in clusters:
            for action in sorted(actions):
                if cluster.tier not in m.ACTION_TIERS.get(action, ()):
                    continue
                for outcome in m.OUTCOMES:
                    self.actions.labels(cluster.tier, cluster.name, action, outcome)
                for limit in m.LIMITS:
                    self.blocked.labels(cluster.tier, cluster.name, action, limit)
                self.failovers.labels(cluster.tier, cluster.name, action)


class RecoveryService:
    """The webhook receiver, the durable inbox and the action worker."""

    def __init__(self, loaded: LoadedConfig, settings: RecoverySettings, events: EventLog | None = None):
        self.loaded = loaded
        self.settings = settings
        self.events = events or EventLog.from_settings(loaded.config.log)
        state_dir = Path(settings.state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        self.auth = Authenticator.from_settings(settings.auth, loaded.auth_secret())  # read at load time
        self.inbox = Inbox(state_dir / "inbox.sqlite3", tuple(settings.replica_labels))
        self.metrics = RecoveryMetrics()
        self.audit = AuditTrail(state_dir / "audit.jsonl", self._audit_health)
        self.rejections = RateLimitedAudit(self.audit)
        self.metrics.create_series(loaded.config.clusters, settings.allowed_actions())
        self.ha = (
            Replicas(settings.ha, self.inbox, self.audit, self.events, self.metrics.registry)
            if settings.ha
            else None
        )
        self.clusters: dict[str, ClusterConfig] = {c.name: c for c in loaded.config.clusters}
        self._locks: dict[str, asyncio.Lock] = {}
        self._running: dict[str, _Running] = {}
        self._wake = asyncio.Event()
        self.inbox_problem: str | None = None  # the inbox's last write failed (cleared by one that works)
        self.ready = False
        # what a reload may not change or must keep (set by run_recovery)
        self.listen: str | None = None  # the address served, unless --listen fixed it
        self.forced_dry_run = False  # --dry-run
        self.web: WebConfig | None = None
        self.guard: ConnectionGuard | None = None
        self._reload_lock = asyncio.Lock()

    def _audit_health(self, problem: str | None) -> None:
        """The audit trail stopped (problem) or started again (None) being writable (called from the
        audit's writer thread)."""
        self._store_health("audit", problem)

    def _store_health(self, store: str, problem: str | None) -> None:
        """One log line and the metrics each way when a store stops or starts being writable."""
        self.metrics.writable.labels(store).set(0 if problem else 1)
        if problem:
            self.metrics.store_failures.labels(store).inc()
            self.events.emit(f"{store}_unwritable", "error", reason=problem, then="webhooks answered 503")
        else:
            self.events.emit(f"{store}_writable", "info")

    def _inbox_failed(self, exc: InboxUnavailable) -> None:
        if self.inbox_problem is None:
            self.inbox_problem = str(exc)
            self._store_health("inbox", self.inbox_problem)

    def _inbox_ok(self) -> None:
        if self.inbox_problem is not None:
            self.inbox_problem = None
            self._store_health("inbox", None)

    @property
    def state_problem(self) -> str | None:
        """Why nothing may be recorded or run now (a store that cannot be written), or None."""
        if self.audit.problem is not None:
            return f"audit trail not writable ({self.audit.problem})"
        return self.inbox_problem

    def _unavailable(self, why: str) -> tuple[int, dict[str, Any]]:
        """503: nothing recorded that could be acted on; Alertmanager retries."""
        self.metrics.notifications.labels("unavailable").inc()
        return 503, {"error": f"not recorded, try again: {why}"}

    # --- webhook -----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path in ("/webhook", "/api/v1/alerts") and method == "POST":
            status, body = await self._webhook(scope, receive)
            extra = [("www-authenticate", f'{self.auth.scheme} realm="tierwatch"')] if status == 401 else []
            await respond(send, status, json.dumps(body) + "\n", "application/json", extra)
        elif path == "/metrics" and method == "GET":
            self.metrics.pending.set(await asyncio.to_thread(self.inbox.pending_count))
            encoder, content_type = choose_encoder(header(scope, "accept") or "")
            await respond(send, 200, encoder(self.metrics.registry), content_type)
        elif path == "/health" and method == "GET":
            await respond(send, 200, "ok\n")
        elif path in ("/ready", "/-/ready") and method == "GET":
            problem = self.state_problem
            if problem is not None:
                await respond(send, 503, f"not ready: {problem}\n")
            else:
                status = replica_status(self.ha) if self.ready else "starting\n"
                await respond(send, 200 if self.ready else 503, status)
        elif path == "/audit" and method == "GET":
            if not self.auth.check(header(scope, "authorization")):
                await respond(send, 401, '{"error": "unauthorized"}\n', "application/json")
                return
            try:
                entries = await asyncio.to_thread(self.audit.tail, AUDIT_ENTRIES)
            except OSError as exc:
                body = json.dumps({"error": f"audit trail unreadable ({exc.errno})"}) + "\n"
                await respond(send, 503, body, "application/json")
                return
            await respond(send, 200, json.dumps(entries) + "\n", "application/json")
        elif path == "/-/reload" and method == "POST":
            if not self.auth.check(header(scope, "authorization")):
                extra = [("www-authenticate", f'{self.auth.scheme} realm="tierwatch"')]
                await respond(send, 401, '{"error": "unauthorized"}\n', "application/json", extra)
                return
            problems = await self.reload("http")
            if problems:
                body = {"status": "not reloaded, the previous config keeps running", "problems": problems}
                await respond(send, 500, json.dumps(body) + "\n", "application/json")
            else:
                await respond(send, 200, '{"status": "reloaded"}\n', "application/json")
        elif path == "/-/reload":
            await respond(send, 405, "method not allowed: POST to reload\n", headers=[("allow", "POST")])
        elif path in ("/webhook", "/metrics", "/health", "/ready", "/audit"):
            await respond(send, 405, "method not allowed\n")
        else:
            await respond(send, 404, "not found\n")

    async def _webhook(self, scope: Scope, receive: Receive) -> tuple[int, dict[str, Any]]:
        if not self.auth.check(header(scope, "authorization")):
            # counted always, audited at most once per interval: a flood must not fill the disk
            self.metrics.notifications.labels("unauthorized").inc()
            self.rejections.record("notification_rejected", "unauthorized")
            return 401, {"error": "unauthorized"}
        if self.audit.problem is not None:  # at once: not after a stall, and before the inbox
            return self._unavailable(f"audit trail not writable ({self.audit.problem})")
        limit = self.settings.max_body_bytes
        declared = header(scope, "content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return self._too_large(limit)
        body = bytearray()
        try:
            async with asyncio.timeout(self.settings.read_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":  # gone mid-body (or evicted): nothing to parse
                        return 400, {"error": "connection closed before the body was complete"}
                    body += message.get("body", b"")
                    if len(body) > limit:
                        return self._too_large(limit)
                    if not message.get("more_body"):
                        break
        except TimeoutError:
            self.metrics.notifications.labels("timed_out").inc()
            self.rejections.record("notification_rejected", "timed_out")
            return 408, {"error": f"body not received within {self.settings.read_timeout:g}s"}
        try:
            # in a thread: recomputing every fingerprint of a 1 MiB body takes about 0.1 s of CPU
            payload = await asyncio.to_thread(parse_payload, bytes(body))
        except PayloadError as exc:
            # a valid token does not make a flood of bad bodies worth one record each
            self.metrics.notifications.labels("invalid").inc()
            self.rejections.record("notification_rejected", "invalid", detail=str(exc))
            return exc.status, {"error": str(exc)}
        try:
            deliveries = await asyncio.to_thread(self.inbox.record, payload)
        except InboxUnavailable as exc:
            self._inbox_failed(exc)
            self.rejections.record("notification_rejected", "unavailable", detail=str(exc))
            return self._unavailable(str(exc))
        self._inbox_ok()
        if payload.truncatedAlerts:
            self.metrics.truncated.inc(payload.truncatedAlerts)
            self.audit.record("alerts_truncated", count=payload.truncatedAlerts, receiver=payload.receiver)
        sender = header(scope, "user-agent") or "unknown"
        for delivery in deliveries:
            self.metrics.notifications.labels(
                delivery.result if delivery.result != "ignored" else "resolved"
            ).inc()
            extra = {"same_incident_as": delivery.same_incident} if delivery.same_incident else {}
            self.audit.record(
                f"alert_{delivery.result}",
                alert=delivery.alertname,
                key=delivery.key,
                receiver=payload.receiver,
                sender=sender[:80],
                **extra,
            )
            running = self._running.get(delivery.key)
            if delivery.cancel_running and running is not None and not running.past_ponr:
                running.task.cancel()
        self._wake.set()
        if not await self.audit.flush():  # acknowledged means audited too
            # the inbox has it (a retry is a duplicate); no action is claimed until the trail is back
            return self._unavailable(f"audit trail not writable ({self.audit.problem or 'flush timed out'})")
        counts: dict[str, int] = {}
        for delivery in deliveries:
            counts[delivery.result] = counts.get(delivery.result, 0) + 1
        return 200, {"status": "recorded", **counts}

    def _too_large(self, limit: int) -> tuple[int, dict[str, Any]]:
        self.metrics.notifications.labels("too_large").inc()
        self.rejections.record("notification_rejected", "too_large", limit_bytes=limit)
        return 413, {"error": f"body larger than {limit} bytes"}

    # --- worker ------------------------------------------------------------------------------------

    async def run_worker(self, stop: asyncio.Event) -> None:
        """Run pending alerts until ``stop``. On stop, actions before their point of no return are
        interrupted and go back to the queue (they run again after a restart); the others get
        SHUTDOWN_GRACE seconds, then are interrupted too and resumed (verify-only) after a restart.
        With ``recovery.ha``, only while holding the lease (replicas.py)."""
        if self.ha is not None:
            await run_replica_worker(self, stop)
            return
        for alert in await asyncio.to_thread(self.inbox.interrupted):
            self.audit.record("alert_resumed", alert=alert.alertname, key=alert.key)
            self._start(alert, resumed=True)
        self.ready = True
        while not stop.is_set():
            alert = await self.claim_next()
            if alert is not None:
                self._start(alert, resumed=False)
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.5)
        await self._stop_running()

    async def claim_next(self) -> InboxAlert | None:
        """The next pending alert to run, or None: none waits, or nothing may run now because the
        audit trail or the inbox cannot be written (it stays pending)."""
        if self.audit.problem is not None:
            return None
        try:
            if self.inbox_problem is not None:  # nothing else writes it while webhooks are refused
                await asyncio.to_thread(self.inbox.probe_write)
                self._inbox_ok()
            return await asyncio.to_thread(self.inbox.claim_next)
        except InboxUnavailable as exc:
            self._inbox_failed(exc)
            return None

    def stop_before_point_of_no_return(self, reason: str) -> None:
        """Interrupt every action not past its point of no return (back to the inbox)."""
        for running in list(self._running.values()):
            if not running.past_ponr:
                running.shutdown, running.reason = True, reason
                running.task.cancel()

    async def _stop_running(self) -> None:
        for running in list(self._running.values()):
            if not running.past_ponr:
                running.shutdown = True
                running.task.cancel()
        tasks = [r.task for r in self._running.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=min(SHUTDOWN_GRACE, self.settings.action_timeout))
        for running in list(self._running.values()):
            if not running.shutdown:  # past the point of no return and not done within the grace
                running.shutdown = True
                running.task.cancel()
        tasks = [r.task for r in self._running.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE)
        await self.audit.flush()

    def _start(self, alert: InboxAlert, resumed: bool) -> None:
        task = asyncio.create_task(self._run_alert(alert, resumed))
        self._running[alert.key] = _Running(task, past_ponr=resumed)
        task.add_done_callback(lambda _t, key=alert.key: self._running.pop(key, None))

    async def _run_alert(self, alert: InboxAlert, resumed: bool) -> None:
        # the settings at the start: a reload meanwhile does not change an action under way
        settings, loaded = self.settings, self.loaded
        labels = alert.labels
        cluster_name = labels.get("cluster", "")
        cluster = self.clusters.get(cluster_name)
        allowed = settings.allowed(alert.alertname)
        action_name = allowed.action if allowed else None
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
            if self.ha is not None:
                await self.ha.finished(alert, outcome, failover)
            if action is not None and cluster is not None:
                self.metrics.actions.labels(tier, cluster_name, action, outcome).inc()
            await self.audit.flush()

        async def refuse(limit: str, detail: str, action: str) -> None:
            self._blocked(tier, cluster_name, action, limit, base)
            await asyncio.to_thread(self.inbox.finish, alert.key, "refused", detail)

        if action_name is None or labels.get("action", action_name) != action_name:
            await refuse(
                "not_allowed", "alert not in the allow-list for this action", labels.get("action", "none")
            )
            return
        if cluster is None:
            await finish("refused", "alert names no configured cluster")
            return
        if cluster.tier not in ACTION_TIERS[action_name]:  # a mislabelled alert: the catalogue's tiers
            await refuse("not_allowed", f"{action_name} does not act on {cluster.tier} clusters", action_name)
            return
        try:
            if self.ha is not None and not resumed and (done := await self.ha.handled_elsewhere(alert)):
                await asyncio.to_thread(self.inbox.finish, alert.key, "handled_by_peer", done)
                self.audit.record("handled_by_peer", **base, detail=done)
                return
            supersedable = (
                action_name in INSTANCE_ACTIONS and "regional_failover" in settings.allowed_actions()
            )
            if supersedable and not resumed and await self._superseded(alert, cluster_name, settings):
                await refuse(
                    "superseded", "superseded by a regional failover of the same region", action_name
                )
                return
            lock = self._locks.setdefault(cluster_name, asyncio.Lock())
            if lock.locked():
                self.audit.record("waiting_for_cluster_lock", **base, action=action_name)
            async with lock:
                if not resumed:
                    limits = settings.rate_limit
                    blocked = await asyncio.to_thread(
                        self.inbox.reserve,
                        alert.key,
                        cluster_name,
                        action_name,
                        limits.max_actions,
                        limits.per,
                        settings.cooldown,
                    )
                    if blocked is not None:
                        why = (
                            "rate limit reached"
                            if blocked == "rate_limit"
                            else "in cooldown after the previous run"
                        )
                        await refuse(blocked, why, action_name)
                        return
                await self._act(alert, cluster, tier, base, action_name, resumed, finish, settings, loaded)
        except (AuditUnavailable, InboxUnavailable) as exc:
            running = self._running.get(alert.key)
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
            running = self._running.get(alert.key)
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
            self._blocked(tier, cluster_name, action_name, limit, base)
        if outcome.facts:
            self.audit.record("facts", **{**base, "action": action_name, **outcome.facts})
        if outcome.failover and result == "succeeded":
            self.metrics.failovers.labels(tier, cluster_name, action_name).inc()
            self.metrics.last_failover.labels(tier, cluster_name).set(time.time())
            self.events.emit("failover", cluster=cluster_name, action=action_name, detail=outcome.detail)

    async def _settle_run(self, key: str, changed: bool) -> None:
        """A run past its point of no return is already counted; before it, keep it only if
        ``changed`` (a dry run's would-be action), else give it back."""
        running = self._running.get(key)
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

    async def _superseded(self, alert: InboxAlert, cluster: str, settings: RecoverySettings) -> bool:
        """Wait ``settle`` seconds, then: is a regional failover of this alert's region on its way?"""
        if settings.settle > 0:
            await asyncio.sleep(settings.settle)
        window = max(settings.cooldown, 600.0)
        region = alert.labels.get("region")
        return self.inbox.active_with(cluster, "regional_failover", region, window)

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
        fencing = self.ha.token if self.ha is not None else None  # the lease this action runs under

        def still_leading() -> None:
            if self.ha is not None and self.ha.token != fencing:
                raise LeaseLost(self.ha.lease.problem or f"the lease of token {fencing} is no longer held")

        async def point_of_no_return(decision: dict[str, Any] | None = None) -> None:
            # every record so far on disk, or nothing irreversible: raises AuditUnavailable
            await self.audit.require()
            if self.ha is not None:  # fenced: raises LeaseLost (nothing done) unless still that lease
                await self.ha.point_of_no_return(alert, cluster.name, action, fencing, decision)
            running = self._running.get(alert.key)
            if running is not None:
                running.past_ponr = True
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
            regional=self._regional(alert.alertname, settings),
            fencing_token=fencing,
            still_leading=still_leading,
            last_failover=lambda: asyncio.to_thread(self.inbox.last_failover, cluster.name),
        )

    @staticmethod
    def _regional(alertname: str, settings: RecoverySettings) -> bool:
        """Whether the allow-list lets this alert's failover promote outside the old primary's region."""
        allowed = settings.allowed(alertname)
        return bool(allowed and allowed.regional)

    def _blocked(self, tier: str, cluster: str, action: str, limit: str, base: dict[str, Any]) -> None:
        self.audit.record("blocked", **base, action=action, limit=limit)
        self.metrics.blocked.labels(tier, cluster, action, limit).inc()

    # --- reload ------------------------------------------------------------------------------------

    async def reload(self, source: str) -> list[str]:
        """Re-read the config file (``source``: sighup or http) with the same loader as at start and
        run it from the next alert on; returns the problems that refused it ([] on success). A refused
        reload changes nothing."""
        self.audit.reopen()  # SIGHUP after a log rotation: write to the file the path names now
        async with self._reload_lock:
            path = self.loaded.path
            try:
                loaded = await asyncio.to_thread(load_config, path)
            except ConfigError as exc:
                problems = exc.problems
            else:
                problems = await self._reload_problems(loaded)
            if problems:
                self.metrics.reload_ok.set(0)
                log_reload_problems(self.events, source, problems)
                self.audit.record("config_reload_failed", source=source, problems=len(problems))
                return problems
            settings = loaded.config.recovery
            assert settings is not None  # checked by _reload_problems
            if self.forced_dry_run:
                settings = settings.model_copy(update={"dry_run": True})
            self.auth = Authenticator.from_settings(settings.auth, loaded.auth_secret())
            self.loaded, self.settings = loaded, settings
            self.clusters = {c.name: c for c in loaded.config.clusters}
            self.inbox.replica_labels = tuple(settings.replica_labels)
            self.metrics.create_series(loaded.config.clusters, settings.allowed_actions())
            if self.guard is not None:
                self.guard.read_timeout = settings.read_timeout
                self.guard.limit = ConnectionGuard(settings.read_timeout, settings.max_connections).limit
            apply_log_settings(self.events, loaded.config.log.format, loaded.config.log.level)
            self.metrics.reload_ok.set(1)
            self.metrics.reload_time.set(time.time())
            self.audit.record(
                "config_reloaded",
                source=source,
                clusters=len(self.clusters),
                allowed=len(settings.allow),
                dry_run=settings.dry_run,
            )
            self.events.emit("config_reloaded", source=source, config=str(path), clusters=len(self.clusters))
            self._wake.set()
            return []

    async def _reload_problems(self, loaded: LoadedConfig) -> list[str]:
        """Why ``loaded`` cannot replace the running config live (after the loader's own checks)."""
        path, new = loaded.path, loaded.config.recovery
        if new is None:
            return [f"{path}: recovery: required by tierwatch recover; the section is gone"]
        old = self.settings
        problems = []
        unknown = sorted(new.allowed_actions() - set(ACTION_CLASSES))
        if unknown:
            problems.append(f"{path}: recovery.allow: unknown actions {', '.join(unknown)}")
        restart = "cannot change without a restart"
        if new.state_dir != old.state_dir:
            problems.append(f"{path}: recovery.state_dir: {restart} (the inbox and audit trail are open)")
        if self.listen is not None and new.listen != self.listen:
            problems.append(f"{path}: recovery.listen: {restart} (serving on {self.listen})")
        if new.ha != old.ha:
            problems.append(f"{path}: recovery.ha: {restart} (the lease is held with the old settings)")
        if new.tls != old.tls:
            problems.append(
                f"{path}: recovery.tls: {restart} (a renewed certificate in the same files is loaded)"
            )
        if problems:
            return problems
        auth = Authenticator.from_settings(new.auth, loaded.auth_secret())
        if self.web is not None and self.web.users and not await _web_accepts(self.web, auth):
            return [
                f"{path}: recovery.auth: {self.web.source} has basic_auth_users, so recovery.auth must be "
                "basic auth with a user and password that basic_auth_users accepts"
            ]
        renewed = await asyncio.to_thread(renew_certificate, self.web)
        return [renewed] if renewed else []

    def on_connection_dropped(self, reason: str) -> None:
        """Count a connection the HTTP guard closed (slow or surplus client)."""
        self.metrics.dropped.labels(reason).inc()

    def close(self) -> None:
        self.rejections.close("notification_rejected")
        self.inbox.close()
        self.audit.close()


def _where(exc: BaseException) -> str:
    """file:line of the innermost frame of an exception (no message: it could hold a secret)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f"{tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}" if tb else "?"


async def web_for_recovery(
    settings: RecoverySettings, web: WebConfig | None, auth: Authenticator
) -> WebConfig | None:
    """The web config the service runs with: ``--web.config.file``'s, plus ``recovery.tls`` (a
    shorthand for its ``tls_server_config`` with a certificate and key only; setting both is an error).
    With ``basic_auth_users``, the webhook's ``recovery.auth`` must be basic auth with a user and
    password the web config accepts: both read the one Authorization header (README "TLS and basic auth")."""
    if settings.tls is not None:
        if web is not None and web.tls is not None:
            raise ValueError(f"recovery.tls and tls_server_config in {web.source} are both set: keep one")
        files = TlsServerConfig(Path(settings.tls.cert_file), Path(settings.tls.key_file))
        tls = WebConfig.from_tls("recovery.tls", files)
        web = dataclasses.replace(web, tls=tls.tls, context=tls.context) if web is not None else tls
    if web is not None and web.users and not await _web_accepts(web, auth):
        raise ValueError(
            f"{web.source} has basic_auth_users, so recovery.auth must be basic auth with a user and "
            "password that basic_auth_users accepts (both read the one Authorization header)"
        )
    return web


async def _web_accepts(web: WebConfig, auth: Authenticator) -> bool:
    """Whether the web config's basic auth lets the webhook's credential through."""
    credentials = basic_credentials(f"{auth.scheme} {auth.expected.decode()}")
    checker = BasicAuthChecker(web.users)
    return credentials is not None and await asyncio.to_thread(checker.check_now, *credentials)


async def run_recovery(
    loaded: LoadedConfig, listen: str | None = None, dry_run: bool | None = None, web: WebConfig | None = None
) -> None:
    """Serve the recovery service until SIGTERM/SIGINT; ``web`` (``--web.config.file``) adds TLS and
    basic auth in front of every path."""
    settings = loaded.config.recovery
    if settings is None:
        raise ValueError(f"{loaded.path}: no recovery: section")
    if dry_run:
        settings = settings.model_copy(update={"dry_run": True})
    unknown = sorted(settings.allowed_actions() - set(ACTION_CLASSES))
    if unknown:
        raise ValueError(f"unknown actions {unknown}")
    service = RecoveryService(loaded, settings)
    stop = asyncio.Event()
    address = listen or settings.listen
    try:
        web = await web_for_recovery(settings, web, service.auth)
    except ValueError:
        service.close()
        raise
    service.listen = None if listen else address
    service.forced_dry_run = bool(dry_run)
    service.web = web

    def refused(path: str) -> None:  # by the web config's basic auth, before recovery.auth is asked
        if path in ("/webhook", "/api/v1/alerts"):
            service.metrics.notifications.labels("unauthorized").inc()
            service.rejections.record("notification_rejected", "unauthorized")

    service.events.emit(
        "recovery_started",
        listen=address,
        dry_run=settings.dry_run,
        state_dir=settings.state_dir,
        **ha_fields(service.ha),
    )
    guard = service.guard = ConnectionGuard(
        settings.read_timeout, settings.max_connections, service.on_connection_dropped
    )
    remove_reload_signal = install_reload_signal(lambda: service.reload("sighup"))
    worker = asyncio.create_task(service.run_worker(stop))
    try:
        await serve_app(service, address, stop, guard, web=web, on_unauthorized=refused)
    finally:
        remove_reload_signal()
        stop.set()
        await worker
        service.close()
        service.events.emit("recovery_stopped")
