"""``tierwatch serve``: the monitor loop plus HTTP endpoints /metrics, /health, /ready, / (the status
page), /target?name=NAME (one target's history) and ``POST /-/reload`` (also SIGHUP): re-read the
config file and apply it without a restart."""

from __future__ import annotations

import asyncio
import gc
import time
import urllib.parse
from typing import Any

from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry
from prometheus_client.exposition import choose_encoder

from .backup_watch import BackupCollector, BackupWatch
from .config import ConfigError, LoadedConfig, TargetConfig, load_config
from .config.shard import Shard
from .discovery import Discovery, DiscoveryCollector
from .dns_watch import DnsCollector, DnsWatch
from .events import EventLog
from .http_server import (
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
from .metrics import ReadyExposition
from .monitor import Monitor
from .status_page import render_status_page, render_target_page, render_unknown_target
from .web_config import WebConfig


class DiscoveryFeed:
    """Runs the config's target discovery and feeds what it finds to the monitor
    (``Monitor.apply_targets``); a reload starts a new one from the reloaded config (see ``restart``)."""

    def __init__(self, monitor: Monitor, events: EventLog):
        self.monitor = monitor
        self.events = events
        self.discovery = Discovery(monitor.loaded, self.apply, events)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def apply(self, changed: dict[str, list[TargetConfig]]) -> None:
        """Give the monitor each changed cluster's full target list."""
        for cluster, targets in changed.items():
            await self.monitor.apply_targets(cluster, targets)

    def start(self) -> None:
        """Refresh every source now, then on each source's interval, in the background."""
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self.discovery.run(self._stop))

    async def stop(self) -> None:
        """Stop refreshing (the monitor keeps the targets it has)."""
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def restart(self, loaded: LoadedConfig) -> dict[str, list[TargetConfig]]:
        """For a reload: stop, read the reloaded config's sources once, and return every discovering
        cluster's full list, for ``Monitor.apply`` to keep discovered targets (and their state) instead
        of dropping and adding them again. Call ``start`` after the monitor applied it."""
        await self.stop()

        def later(_: dict[str, list[TargetConfig]]) -> None:
            return None  # the first refresh is applied by Monitor.apply itself

        self.discovery = Discovery(loaded, later, self.events)
        await self.discovery.refresh()
        self.discovery.on_change = self.apply
        return self.discovery.current()


class _DiscoveryMetrics:
    """The current discovery's metrics (the feed swaps its Discovery on a reload)."""

    def __init__(self, feed: DiscoveryFeed):
        self.feed = feed

    def collect(self) -> Any:
        return DiscoveryCollector(self.feed.discovery).collect()

    def describe(self) -> list[Any]:
        return []


class ExporterReloader:
    """Reloads the exporter's config: the file at the running config's path, read by the same loader
    as at start. A file with problems, a changed ``listen`` (unless ``--listen`` fixes it) or a
    certificate that cannot be used is refused, and the running config goes on; otherwise
    ``Monitor.apply`` runs it and the TLS certificate (``--web.config.file``) is loaded again."""

    def __init__(
        self,
        monitor: Monitor,
        events: EventLog,
        listen: str,
        listen_fixed: bool,
        web: WebConfig | None,
        feed: DiscoveryFeed | None = None,
    ):
        self.monitor = monitor
        self.feed = feed
        self.events = events
        self.listen = listen
        self.listen_fixed = listen_fixed
        self.web = web
        self.shard: Shard | None = None  # --shard: applied to every reloaded config
        self._lock = asyncio.Lock()

    async def reload(self, source: str) -> list[str]:
        """Reload once (``source``: sighup or http); the problems that refused it, or [] on success."""
        async with self._lock:
            path = self.monitor.loaded.path
            try:
                loaded = await asyncio.to_thread(load_config, path)
            except ConfigError as exc:
                problems = exc.problems
            else:
                problems = []
                loaded = self.shard.apply(loaded) if self.shard is not None else loaded
                if not self.listen_fixed and loaded.config.listen != self.listen:
                    problems.append(
                        f"{path}: listen: cannot change without a restart (serving on {self.listen})"
                    )
                if not problems:
                    renewed = await asyncio.to_thread(renew_certificate, self.web)
                    problems += [renewed] if renewed else []
            monitor = self.monitor
            if problems:
                monitor.last_reload_successful = False
                monitor.version += 1
                log_reload_problems(self.events, source, problems)
                return problems
            discovered = await self.feed.restart(loaded) if self.feed is not None else None
            result = await monitor.apply(loaded, discovered)
            if self.feed is not None:
                self.feed.start()
            apply_log_settings(self.events, loaded.config.log.format, loaded.config.log.level)
            monitor.last_reload_successful = True
            monitor.last_reload_success_time = time.time()
            monitor.version += 1
            self.events.emit(
                "config_reloaded",
                source=source,
                config=str(path),
                targets=len(monitor.states),
                added=len(result.added),
                removed=len(result.removed),
                changed=len(result.changed),
                kept=len(result.kept),
            )
            return []


class ExporterApp:
    """The exporter's ASGI application; every endpoint answers from memory, never from a target."""

    def __init__(self, monitor: Monitor, reloader: ExporterReloader | None = None):
        self.monitor = monitor
        self.reloader = reloader
        self.exposition = ReadyExposition(monitor)
        # process_* and python_*: rendered on every scrape (cheap reads of /proc/self), after the rest
        self.standard = CollectorRegistry(auto_describe=False)
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.standard.register(collector)

    def render_metrics(self, accept: str) -> tuple[list[bytes | memoryview], str]:
        """The exposition for ``accept``, in chunks to send one after the other: each target's lines
        were rendered when its probe finished; this joins them, again only when the monitor's state
        changed since the last scrape, then adds the process's own families."""
        encoder, content_type = choose_encoder(accept)
        body = self.exposition.body(encoder, content_type)
        standard = encoder(self.standard)
        # both parts of an OpenMetrics body end with "# EOF": keep only the last one (a view of the
        # large part, not a copy of it)
        if body.endswith(b"# EOF\n"):
            return [memoryview(body)[: -len(b"# EOF\n")], standard], content_type
        return [body, standard], content_type

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method = scope["method"]
        head = method == "HEAD"
        path = scope["path"]
        if path == "/-/reload" and self.reloader is not None:
            if method != "POST":
                await respond(send, 405, "method not allowed: POST to reload\n", headers=[("allow", "POST")])
                return
            problems = await self.reloader.reload("http")
            if problems:
                text = "".join(f"{p}\n" for p in problems)
                await respond(send, 500, f"config not reloaded, the previous one keeps running:\n{text}")
            else:
                await respond(send, 200, "config reloaded\n")
            return
        if method not in ("GET", "HEAD"):
            await respond(send, 405, "method not allowed\n", headers=[("allow", "GET, HEAD")])
            return
        if path == "/metrics":
            body, content_type = self.render_metrics(header(scope, "accept") or "")
            await respond(send, 200, body, content_type, head_only=head)
        elif path == "/health":
            await respond(send, 200, "ok\n", head_only=head)
        elif path == "/ready":
            if self.monitor.first_round_done.is_set():
                await respond(send, 200, "ready\n", head_only=head)
            else:
                await respond(send, 503, "first probe round not finished\n", head_only=head)
        elif path == "/":
            page = render_status_page(self.monitor)
            await respond(send, 200, page, "text/html; charset=utf-8", head_only=head)
        elif path == "/target":
            query = urllib.parse.parse_qs(bytes(scope.get("query_string", b"")).decode("utf-8", "replace"))
            names = query.get("name")
            if not names:
                await respond(send, 400, "expected /target?name=TARGET\n", head_only=head)
                return
            state = self.monitor.state_of(names[0])
            if state is None:
                page = render_unknown_target(names[0])
                await respond(send, 404, page, "text/html; charset=utf-8", head_only=head)
            else:
                page = render_target_page(self.monitor, state)
                await respond(send, 200, page, "text/html; charset=utf-8", head_only=head)
        else:
            await respond(send, 404, "not found\n", head_only=head)


GC_GEN0_THRESHOLD = 50_000  # Python's default is 700: a probe round allocates tens of thousands


def settle_garbage_collector() -> None:
    """Once the config and the probes are built: move every object alive now (they live as long as
    the process) out of the collector's scans, and collect the young generation less often. Measured
    in bench/README.md ("CPU per probe: the HTTP client")."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])


async def run_exporter(
    loaded: LoadedConfig,
    listen: str | None = None,
    events: EventLog | None = None,
    web: WebConfig | None = None,
    shard: Shard | None = None,
) -> None:
    """Run the monitor and the HTTP server until SIGTERM/SIGINT, then close every connection;
    SIGHUP and ``POST /-/reload`` reload the config (``ExporterReloader``); ``web``
    (``--web.config.file``) adds TLS and basic auth (in front of /-/reload too); ``shard``
    (``--shard I/N``) keeps only that shard's clusters, at start and on every reload."""
    loaded = shard.apply(loaded) if shard is not None else loaded
    cfg = loaded.config
    events = events or EventLog.from_settings(cfg.log)
    monitor = Monitor(loaded, events)
    address = listen or cfg.listen
    feed = DiscoveryFeed(monitor, events)
    reloader = ExporterReloader(monitor, events, address, listen is not None, web, feed)
    reloader.shard = shard
    remove_reload_signal = install_reload_signal(lambda: reloader.reload("sighup"))
    settle_garbage_collector()
    stop = asyncio.Event()
    events.emit(
        "exporter_started",
        listen=address,
        targets=len(monitor.states),
        config=str(loaded.path),
        **({"shard": str(shard)} if shard is not None else {}),
    )
    loop_task = asyncio.create_task(monitor.run(stop))
    feed.start()
    backups = BackupWatch(lambda: monitor.loaded, events)  # follows reloads through monitor.loaded
    backups_task = asyncio.create_task(backups.run(stop))
    records = DnsWatch(monitor, events)  # service_discovery: on the monitor's interval, follows reloads
    records_task = asyncio.create_task(records.run(stop))
    app = ExporterApp(monitor, reloader)
    app.standard.register(_DiscoveryMetrics(feed))  # type: ignore[arg-type]
    app.standard.register(BackupCollector(backups))  # type: ignore[arg-type]
    app.standard.register(DnsCollector(records))  # type: ignore[arg-type]
    try:
        await serve_app(app, address, stop, web=web)
    finally:
        remove_reload_signal()
        stop.set()
        await feed.stop()
        await backups_task
        await records_task
        await loop_task
        await monitor.close()
        events.emit("exporter_stopped")
