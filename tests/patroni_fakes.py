"""A Patroni member that lies: a real HTTP server on 127.0.0.1 answering GET /patroni and GET /cluster
with the JSON shapes of Patroni's own REST API (api.py, utils.cluster_as_json), filled with whatever
the test says, so the recovery service's checks of Patroni's word can be shown to refuse (imported
explicitly: ``from patroni_fakes import ...``)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class FakeMember:
    """What the fake says: its own name, role and state, the leader it names (``None``: no leader;
    or a function asked at each request), whether the cluster is paused, its scope. ``members`` maps
    each listed member's name to its PostgreSQL port (host 127.0.0.1)."""

    name: str
    members: dict[str, int]
    leader: str | Callable[[], str | None] | None = None
    role: str = "replica"
    state: str = "running"
    paused: bool = False
    scope: str = "main-db"
    port: int = 0
    requests: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "state": self.state,
            "role": self.role,
            "server_version": 150000,
            "timeline": 2,
            "patroni": {"version": "4.1.5", "scope": self.scope, "name": self.name},
            "xlog": {"location": 50331648} if self.role == "primary" else {"received_location": 50331648},
        }
        if self.paused:
            doc["pause"] = True
        return doc

    def cluster(self) -> dict[str, Any]:
        leader = self.leader() if callable(self.leader) else self.leader
        members = [
            {
                "name": name,
                "role": "leader" if name == leader else "replica",
                "state": "running" if name == leader else "streaming",
                "api_url": f"http://127.0.0.1:{self.port}/patroni",
                "host": "127.0.0.1",
                "port": port,
                "timeline": 2,
            }
            for name, port in sorted(self.members.items())
        ]
        doc: dict[str, Any] = {"members": members, "scope": self.scope}
        if self.paused:
            doc["pause"] = True
        return doc


def _handler(fake: FakeMember) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fake.requests.append(self.path)
            if self.path == "/patroni":
                body = json.dumps(fake.status()).encode()
            elif self.path == "/cluster":
                body = json.dumps(fake.cluster()).encode()
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def fake_members(fakes: Sequence[FakeMember]) -> Iterator[Sequence[FakeMember]]:
    """Serve each fake on a free port of 127.0.0.1 (``fake.port`` set) until the block ends; every
    server is shut down and closed on every path."""
    servers: list[ThreadingHTTPServer] = []
    threads: list[threading.Thread] = []
    try:
        for fake in fakes:
            server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
            server.daemon_threads = True
            servers.append(server)
            fake.port = server.server_address[1]
            thread = threading.Thread(target=server.serve_forever, name=f"fake-patroni-{fake.name}")
            thread.start()
            threads.append(thread)
        yield fakes
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
        for thread in threads:
            thread.join(5)
