"""``tierwatch recover``: receives Alertmanager webhooks, records them durably, and runs the allowed
recovery action of each firing alert once, under safety limits, with an audit trail of every decision.

The service is split by job, each in its own module, and this one puts them together:

- intake.py: POST /webhook → authenticate → size limit → validate → Inbox.record (SQLite, fsynced) → 200;
- worker.py: the one claim → start → wake loop, alone or as a replica, under a Leadership
  (leadership.py: SoloLeadership; leadership_etcd.py: the etcd lease of ``recovery.ha``);
- policy.py: allow-list, tiers, supersession, per-cluster lock, rate limit and cooldown;
- execution.py: one alert from its claim to its outcome (point of no return, audit, metrics);
- stores.py: the inbox and the audit trail, and whether each can be written now.

Here: construction, the HTTP paths, reload, and ``run_recovery``.

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
import dataclasses
import json
import time
from pathlib import Path

from prometheus_client.exposition import choose_encoder

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
from ..web_config import BasicAuthChecker, TlsServerConfig, WebConfig, basic_credentials
from .actions import ACTION_CLASSES, preload
from .audit import AuditTrail, RateLimitedAudit
from .auth import Authenticator
from .decisions_page import read_decisions, render_decisions_page
from .execution import Execution
from .inbox import Inbox
from .intake import Intake
from .leadership import Leadership, SoloLeadership
from .leadership_etcd import EtcdLeadership
from .live import LiveConfig
from .policy import Policy
from .self_metrics import RecoveryMetrics
from .stores import StateStores
from .worker import Runs, Worker

AUDIT_ENTRIES = 200  # what GET /audit returns


class RecoveryService:
    """The webhook receiver, the durable inbox and the action worker."""

    def __init__(self, loaded: LoadedConfig, settings: RecoverySettings, events: EventLog | None = None):
        self.events = events or EventLog.from_settings(loaded.config.log)
        state_dir = Path(settings.state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        self.live = LiveConfig.of(loaded, settings)  # the webhook's secret read at load time
        self.metrics = RecoveryMetrics()
        self.stores = StateStores(state_dir, tuple(settings.replica_labels), self.metrics, self.events)
        self.rejections = RateLimitedAudit(self.audit)
        self.metrics.create_series(
            loaded.config.clusters, settings.allowed_actions(), loaded.config.service_discovery
        )
        preload(settings.allowed_actions() & set(ACTION_CLASSES))
        self.leadership: Leadership = (
            EtcdLeadership(settings.ha, self.inbox, self.audit, self.events, self.metrics.registry)
            if settings.ha
            else SoloLeadership()
        )
        self.runs = Runs()
        self.policy = Policy(self.inbox, self.audit, self.metrics)
        current = self._current
        self.execution = Execution(
            current, self.stores, self.metrics, self.events, self.leadership, self.policy, self.runs
        )
        self.worker = Worker(
            self.leadership,
            self.inbox,
            self.audit,
            self.runs,
            self.stores.claim_next,
            self.execution.run_alert,
            lambda: self.settings.action_timeout,
        )
        self.intake = Intake(current, self.stores, self.metrics, self.rejections, self.runs, self.worker.wake)
        # what a reload may not change or must keep (set by run_recovery)
        self.listen: str | None = None  # the address served, unless --listen fixed it
        self.forced_dry_run = False  # --dry-run
        self.web: WebConfig | None = None
        self.guard: ConnectionGuard | None = None
        self._reload_lock = asyncio.Lock()

    def _current(self) -> LiveConfig:
        return self.live

    # what the service runs with now (a reload replaces ``live`` whole)
    @property
    def loaded(self) -> LoadedConfig:
        return self.live.loaded

    @property
    def settings(self) -> RecoverySettings:
        return self.live.settings

    @property
    def clusters(self) -> dict[str, ClusterConfig]:
        return self.live.clusters

    @property
    def auth(self) -> Authenticator:
        return self.live.auth

    @property
    def inbox(self) -> Inbox:
        return self.stores.inbox

    @property
    def audit(self) -> AuditTrail:
        return self.stores.audit

    @property
    def ready(self) -> bool:
        """The worker runs (the inbox's leftovers from a crash are dealt with)."""
        return self.worker.ready

    @property
    def state_problem(self) -> str | None:
        """Why nothing may be recorded or run now (a store that cannot be written), or None."""
        return self.stores.problem

    def stop_before_point_of_no_return(self, reason: str) -> None:
        """Interrupt every action not past its point of no return (back to the inbox)."""
        self.runs.stop_before_point_of_no_return(reason)

    # --- HTTP --------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path in ("/webhook", "/api/v1/alerts") and method == "POST":
            status, body = await self.intake.webhook(scope, receive)
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
                status = self.leadership.status() if self.ready else "starting\n"
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
        elif path == "/decisions" and method == "GET":
            # the audit's own data, so its credential (and a challenge: a browser asks for basic auth)
            if not self.auth.check(header(scope, "authorization")):
                extra = [("www-authenticate", f'{self.auth.scheme} realm="tierwatch"')]
                await respond(send, 401, "unauthorized\n", headers=extra)
                return
            try:
                decisions = await asyncio.to_thread(read_decisions, self.audit.path)
            except OSError as exc:
                await respond(send, 503, f"audit trail unreadable ({exc.errno})\n")
                return
            await respond(send, 200, render_decisions_page(decisions), "text/html; charset=utf-8")
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
        elif path in ("/webhook", "/metrics", "/health", "/ready", "/audit", "/decisions"):
            await respond(send, 405, "method not allowed\n")
        else:
            await respond(send, 404, "not found\n")

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
            self.live = LiveConfig.of(loaded, settings)
            self.inbox.replica_labels = tuple(settings.replica_labels)
            self.metrics.create_series(
                loaded.config.clusters, settings.allowed_actions(), loaded.config.service_discovery
            )
            preload(settings.allowed_actions())  # _reload_problems refused unknown ones
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
            self.worker.wake()
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
        self.stores.close()


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
        **service.leadership.describe(),
    )
    guard = service.guard = ConnectionGuard(
        settings.read_timeout, settings.max_connections, service.on_connection_dropped
    )
    remove_reload_signal = install_reload_signal(lambda: service.reload("sighup"))
    worker = asyncio.create_task(service.worker.run(stop))
    try:
        await serve_app(service, address, stop, guard, web=web, on_unauthorized=refused)
    finally:
        remove_reload_signal()
        stop.set()
        await worker
        service.close()
        service.events.emit("recovery_stopped")
