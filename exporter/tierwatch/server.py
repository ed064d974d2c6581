"""``tierwatch serve``: the monitor loop plus HTTP endpoints /metrics, /health, /ready and /."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from .config import LoadedConfig
from .events import EventLog
from .http_server import Receive, Scope, Send, header, respond, serve_app
from .metrics import TierwatchCollector
from .monitor import Monitor
from .status_page import render_status_page


class ExporterApp:
    """The exporter's ASGI application; every endpoint answers from memory, never from a target."""

    def __init__(self, monitor: Monitor):
        self.monitor = monitor
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(TierwatchCollector(monitor))
        self._rendered: dict[str, tuple[int, bytes]] = {}

    def render_metrics(self, accept: str) -> tuple[bytes, str]:
        """The exposition for ``accept``, rendered again only when the monitor's state changed since
        the last render (an HA pair of Prometheus servers scrapes the same state twice)."""
        encoder, content_type = choose_encoder(accept)
        version = self.monitor.version
        cached = self._rendered.get(content_type)
        if cached is not None and cached[0] == version:
            return cached[1], content_type
        body = encoder(self.registry)
        self._rendered[content_type] = (version, body)
        return body, content_type

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


async def run_exporter(
    loaded: LoadedConfig, listen: str | None = None, events: EventLog | None = None
) -> None:
    """Run the monitor and the HTTP server until SIGTERM/SIGINT, then close every connection."""
    cfg = loaded.config
    events = events or EventLog(cfg.log.format, cfg.log.level)
    monitor = Monitor(loaded, events)
    stop = asyncio.Event()
    address = listen or cfg.listen
    events.emit("exporter_started", listen=address, targets=len(monitor.states), config=str(loaded.path))
    loop_task = asyncio.create_task(monitor.run(stop))
    try:
        await serve_app(ExporterApp(monitor), address, stop)
    finally:
        stop.set()
        await loop_task
        await monitor.close()
        events.emit("exporter_stopped")
