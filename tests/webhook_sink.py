"""A local HTTP server recording every POST it gets (path, headers, JSON body): the receiving end of
Alertmanager's webhook receivers in the tests."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tierwatch_lab.stack import free_port

MAX_BODY = 1 << 20


@dataclass
class Sink:
    """What a running sink received, in order."""

    port: int
    received: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def posts(self, path: str) -> list[dict[str, Any]]:
        """Every POST to ``path``: ``{"path", "headers", "body"}``."""
        return [r for r in list(self.received) if r["path"] == path]

    def bodies(self, path: str) -> list[dict[str, Any]]:
        """The JSON bodies of the POSTs to ``path``."""
        return [r["body"] for r in self.posts(path)]


@contextmanager
def webhook_sink() -> Iterator[Sink]:
    """Run a sink on a free loopback port until the block ends."""
    box = Sink(free_port())

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(min(length, MAX_BODY))
            box.received.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", box.port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield box
    finally:
        server.shutdown()
        server.server_close()
