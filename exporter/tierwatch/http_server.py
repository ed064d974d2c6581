"""A small ASGI helper shared by the exporter and the recovery service: routing by path, uvicorn in
the caller's event loop, signal handling that lets the caller clean up before exiting, and a guard
against slow clients (a deadline for request headers, a cap on open connections)."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import signal
import ssl
from collections.abc import Awaitable, Callable, Generator, Iterable, Sequence
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .events import LEVELS, EventLog
from .web_config import WebConfig, _reason

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def respond(
    send: Send,
    status: int,
    body: bytes | str | Sequence[bytes | memoryview],
    content_type: str = "text/plain; charset=utf-8",
    headers: Iterable[tuple[str, str]] = (),
    head_only: bool = False,
) -> None:
    """Send a complete HTTP response; a ``body`` given as a sequence of chunks is sent as they are
    (a large body is not copied once more to join them)."""
    chunks = [body.encode()] if isinstance(body, str) else [body] if isinstance(body, bytes) else list(body)
    raw_headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(sum(len(chunk) for chunk in chunks)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in headers),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    if head_only or not chunks:
        await send({"type": "http.response.body", "body": b""})
        return
    for chunk in chunks[:-1]:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": chunks[-1]})


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


# open files kept free for everything but client connections (inbox, audit, logs, action clients)
RESERVED_FILES = 64
DEFAULT_READ_TIMEOUT = 10.0
DEFAULT_MAX_CONNECTIONS = 1024
# seconds a head or body may take before its connection counts as slow (evictable at the limit)
DEFAULT_GRACE = 1.0


class ConnectionGuard:
    """Shared state of the guarded connections of one server.

    A connection must deliver a complete request head within ``read_timeout`` of being opened (or of
    its previous response), else it is closed; its body is the application's to time. At most
    ``limit`` connections are open: a new one past the limit takes the slot of a slow connection,
    chosen in this order, so a crowd of slow clients cannot keep a real request out:

    1. the oldest one that has been waiting for its request head for ``grace`` seconds or more;
    2. the oldest one whose request body has been arriving for ``grace`` seconds or more (a client
       that sent a valid head, then trickles the body), unless the server itself paused reading it;
    3. the oldest one waiting for its request head, however briefly.

    Only if none is left is the new connection closed. Alertmanager writes a webhook (a few KB) at
    once, so its body is complete within milliseconds of its head and never reaches step 2; step 1
    comes before step 3 so that, while slow clients remain, a real client that has just connected is
    not evicted before it could send its head. Age, not a minimum byte rate (mod_reqtimeout's
    MinRate), picks the body to evict: a trickle can choose any rate that lasts ``read_timeout``, and
    the oldest entry is found in constant time however many connections are open.
    ``on_drop(reason)`` is told of each ('read_timeout', 'evicted', 'over_limit')."""

    def __init__(
        self,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        on_drop: Callable[[str], None] | None = None,
    ):
        self.read_timeout = read_timeout
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        files = soft - RESERVED_FILES if soft != resource.RLIM_INFINITY else 4 * max_connections
        # asyncio accepts up to `backlog` connections in one go, before any of them is seen here:
        # keep room for one such batch on top of the open connections, so accept never hits EMFILE
        self.backlog = max(16, min(2048, files // 4))
        self.limit = max(8, min(max_connections, files - self.backlog))
        self.on_drop = on_drop or (lambda _reason: None)
        self.open = 0
        self.grace = DEFAULT_GRACE
        # connections waiting for a request head, and those whose body is still arriving, oldest first
        self.waiting: dict[GuardedH11Protocol, None] = {}
        self.receiving: dict[GuardedH11Protocol, None] = {}

    def victim(self) -> GuardedH11Protocol | None:
        """The connection to close to make room for a new one (see the class), if any."""
        head = next(iter(self.waiting), None)
        now = asyncio.get_running_loop().time()
        if head is not None and now - head.since >= self.grace:
            return head
        for conn in self.receiving:
            if now - conn.since < self.grace:
                break  # the later ones are younger still
            if not conn.flow.read_paused:  # paused: the application is behind, not the client
                return conn
        return head

    def protocol_class(self) -> type[GuardedH11Protocol]:
        """An h11 protocol class bound to this guard (for uvicorn's ``http`` setting)."""
        return type("BoundGuardedH11Protocol", (GuardedH11Protocol,), {"guard": self})


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the ConnectionGuard's deadline and connection cap."""

    guard: ConnectionGuard

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._armed_cycle: object = None
        self.since = self.loop.time()  # when the current head or body phase began
        self._counted = True
        guard = self.guard
        guard.open += 1
        if guard.open > guard.limit:
            victim = guard.victim()
            if victim is None:
                guard.on_drop("over_limit")
                transport.close()
                return
            guard.on_drop("evicted")
            victim._drop()
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._armed_cycle = self.cycle
        self._deadline = self.loop.call_later(self.guard.read_timeout, self._expired)
        self.since = self.loop.time()
        self.guard.waiting[self] = None

    def _disarm(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()  # type: ignore[union-attr]
            self._deadline = None
        self.guard.waiting.pop(self, None)

    def _follow_body(self) -> None:
        """Enter or leave the guard's ``receiving``: a request is being served whose body is still
        arriving (neither complete nor answered)."""
        cycle, receiving = self.cycle, self.guard.receiving
        arriving = (
            self not in self.guard.waiting
            and cycle is not None
            and cycle.more_body
            and not cycle.response_complete
            and not cycle.disconnected
        )
        if arriving and self not in receiving:
            self.since = self.loop.time()
            receiving[self] = None
        elif not arriving:
            receiving.pop(self, None)

    def _drop(self) -> None:
        self._disarm()
        self.guard.receiving.pop(self, None)
        self.transport.abort()  # frees the descriptor now, even with unsent data

    def _expired(self) -> None:
        self._deadline = None
        self.guard.on_drop("read_timeout")
        self._drop()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._deadline is not None and self.cycle is not self._armed_cycle:
            self._disarm()  # a request head arrived (its body is the application's to time)
        self._follow_body()

    def on_response_complete(self) -> None:
        before = self.cycle
        super().on_response_complete()
        if not self.transport.is_closing() and self.cycle is before:
            self._arm()  # keep-alive: the next request head has a deadline too
        self._follow_body()  # answered, or a pipelined request began

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.guard.receiving.pop(self, None)
        if getattr(self, "_counted", False):
            self._counted = False
            self.guard.open -= 1
        super().connection_lost(exc)


# --- reload (SIGHUP and POST /-/reload, both services) ----------------------------------------------


def log_reload_problems(events: EventLog, source: str, problems: Sequence[str]) -> None:
    """One ``config_problem`` event per problem (the loader's ``FILE:LINE: key.path: expectation``
    lines, secret-free), then ``config_reload_failed``."""
    for problem in problems:
        events.emit("config_problem", "error", problem=problem)
    events.emit("config_reload_failed", "error", source=source, problems=len(problems), then="kept_running")


def apply_log_settings(events: EventLog, fmt: str, level: str) -> None:
    """A reloaded ``log.format`` and ``log.level`` apply at once."""
    events.fmt = fmt
    events.min_level = LEVELS[level]


def renew_certificate(web: WebConfig | None) -> str | None:
    """Load the TLS certificate and key again from their files into the running listener's context
    (a renewed certificate; new handshakes use it). Blocking (file reads): call it in a thread.
    Returns a problem, secret-free, if the files cannot be used; the running certificate is kept then."""
    if web is None or web.tls is None or web.context is None:
        return None
    tls = web.tls
    try:
        tls.ssl_context()  # the files must work on their own before the live context is touched
        web.context.load_cert_chain(tls.cert_file, tls.key_file, password=lambda: b"")
    except (OSError, ssl.SSLError, ValueError) as exc:
        return f"{web.source}: cannot use the certificate and key again: {_reason(exc)}"
    return None


def install_reload_signal(reload: Callable[[], Awaitable[object]]) -> Callable[[], None]:
    """Run ``reload()`` on each SIGHUP (instead of dying, SIGHUP's default) until the returned
    function is called."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[object]] = set()

    def on_hangup() -> None:
        task = loop.create_task(reload())  # type: ignore[arg-type]
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hangup)

    def remove() -> None:
        loop.remove_signal_handler(signal.SIGHUP)
        for task in tasks:
            task.cancel()

    return remove


class _Server(uvicorn.Server):
    """uvicorn without its own signal capture: the caller decides how to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class _Config(uvicorn.Config):
    """uvicorn's config with a ready-made SSLContext (TLS versions and client-certificate policy from
    the web config, which uvicorn's own TLS settings cannot all express)."""

    tls_context: ssl.SSLContext | None = None

    def load(self) -> None:
        super().load()
        if self.tls_context is not None:
            self.ssl = self.tls_context


async def serve_app(
    app: Callable[[Scope, Receive, Send], Awaitable[None]],
    listen: str,
    on_stop: asyncio.Event,
    guard: ConnectionGuard | None = None,
    web: WebConfig | None = None,
    on_unauthorized: Callable[[str], None] | None = None,
    **config: Any,
) -> None:
    """Serve ``app`` on ``listen`` until SIGTERM/SIGINT or until ``on_stop`` is set; sets ``on_stop``
    when a signal arrives so the caller's other tasks can finish. Connections are guarded by
    ``guard`` (by default a ConnectionGuard with its default deadline and cap). ``web`` (a web config)
    adds TLS and basic auth in front of every path; ``on_unauthorized(path)`` is told of each request
    its basic auth refused."""
    host, port = parse_listen(listen)
    guard = guard or ConnectionGuard()
    if web is not None:
        app = web.protect(app, on_unauthorized)
    options: dict[str, Any] = {
        "log_level": "warning",
        "access_log": False,
        "lifespan": "off",
        "http": guard.protocol_class(),
        "backlog": guard.backlog,
        "ws": "none",
        "timeout_graceful_shutdown": 5,
        **config,
    }
    uvicorn_config = _Config(app, host=host, port=port, **options)
    uvicorn_config.tls_context = web.context if web is not None else None
    server = _Server(uvicorn_config)
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
