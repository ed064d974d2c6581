"""A small ASGI helper shared by the exporter and the recovery service: routing by path, uvicorn in
the caller's event loop, and signal handling that lets the caller clean up before exiting."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Generator, Iterable
from typing import Any

import uvicorn

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def respond(
    send: Send,
    status: int,
    body: bytes | str,
    content_type: str = "text/plain; charset=utf-8",
    headers: Iterable[tuple[str, str]] = (),
    head_only: bool = False,
) -> None:
    """Send a complete HTTP response."""
    payload = body.encode() if isinstance(body, str) else body
    raw_headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(payload)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in headers),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": b"" if head_only else payload})


def header(scope: Scope, name: str) -> str | None:
    """The first value of a request header (case-insensitive), if present."""
    wanted = name.lower().encode()
    for key, value in scope.get("headers", []):
        if key.lower() == wanted:
            return bytes(value).decode("latin-1")
    return None


def parse_listen(listen: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:PORT`` for IPv6); raises ValueError with a clear message."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT for --listen, got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


class _Server(uvicorn.Server):
    """uvicorn without its own signal capture: the caller decides how to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def serve_app(
    app: Callable[[Scope, Receive, Send], Awaitable[None]],
    listen: str,
    on_stop: asyncio.Event,
    **config: Any,
) -> None:
    """Serve ``app`` on ``listen`` until SIGTERM/SIGINT or until ``on_stop`` is set; sets ``on_stop``
    when a signal arrives so the caller's other tasks can finish."""
    host, port = parse_listen(listen)
    server = _Server(
        uvicorn.Config(
            app, host=host, port=port, log_level="warning", access_log=False, lifespan="off", **config
        )
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop.set)

    async def watch() -> None:
        await on_stop.wait()
        server.should_exit = True

    watcher = asyncio.create_task(watch())
    try:
        await server.serve()
        if not server.started:
            raise OSError(f"could not listen on {listen}")
    finally:
        on_stop.set()
        watcher.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
