"""``tierwatch serve``: the monitor loop plus HTTP endpoints /metrics, /health, /ready and /."""

from __future__ import annotations

import asyncio
import gc

from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry
from prometheus_client.exposition import choose_encoder

from .config import LoadedConfig
from .events import EventLog
from .http_server import Receive, Scope, Send, header, respond, serve_app
from .metrics import ReadyExposition
from .monitor import Monitor
from .status_page import render_status_page
from .web_config import WebConfig


class ExporterApp:
    """The exporter's ASGI application; every endpoint answers from memory, never from a target."""

    def __init__(self, monitor: Monitor):
        self.monitor = monitor
        self.exposition = ReadyExposition(monitor)
        # process_* and python_*: rendered on every scrape (cheap reads of /proc/self), after the rest
        self.standard = CollectorRegistry(auto_describe=False)
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.standard.register(collector)

    def render_metrics(self, accept: str) -> tuple[bytes, str]:
        """The exposition for ``accept``: each target's lines were rendered when its probe finished;
        this joins them, again only when the monitor's state changed since the last scrape."""
        encoder, content_type = choose_encoder(accept)
        body = self.exposition.body(encoder, content_type)
        # both parts of an OpenMetrics body end with "# EOF": keep only the last one
        return body.removesuffix(b"# EOF\n") + encoder(self.standard), content_type

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method = scope["method"]
        head = method == "HEAD"
        if method not in ("GET", "HEAD"):
            await respond(send, 405, "method not allowed\n", headers=[("allow", "GET, HEAD")])
            return
        path = scope["path"]
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
) -> None:
    """Run the monitor and the HTTP server until SIGTERM/SIGINT, then close every connection;
    ``web`` (``--web.config.file``) adds TLS and basic auth."""
    cfg = loaded.config
    events = events or EventLog.from_settings(cfg.log)
    monitor = Monitor(loaded, events)
    settle_garbage_collector()
    stop = asyncio.Event()
    address = listen or cfg.listen
    events.emit("exporter_started", listen=address, targets=len(monitor.states), config=str(loaded.path))
    loop_task = asyncio.create_task(monitor.run(stop))
    try:
        await serve_app(ExporterApp(monitor), address, stop, web=web)
    finally:
        stop.set()
        await loop_task
        await monitor.close()
        events.emit("exporter_stopped")
