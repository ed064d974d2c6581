"""A Patroni REST API stand-in for the client's and probe's hostile-peer tests: a real keep-alive HTTP
server on 127.0.0.1 (asyncio, in the test's own loop) answering per path with Patroni's own JSON shapes
(api.py ``get_postgresql_status``, ``utils.cluster_as_json``) or whatever bytes a test gives, and
counting the connections it accepted (imported explicitly: ``from patroni_api import ...``)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from tierwatch.config import PatroniMember

# GET /patroni of a Patroni 4.1 primary and replica (api.py get_postgresql_status + _write_status_response)
PRIMARY = {
    "state": "running",
    "postmaster_start_time": "2026-12-07 21:00:00.123456+00:00",
    "role": "primary",
    "server_version": 150010,
    "xlog": {"location": 67109200},
    "timeline": 3,
    "replication": [
        {
            "usename": "replicator",
            "application_name": "pg2",
            "client_addr": "127.0.0.1",
            "state": "streaming",
            "sync_state": "async",
            "sync_priority": 0,
        }
    ],
    "dcs_last_seen": 1796677200,
    "database_system_identifier": "7445678901234567890",
    "patroni": {"version": "4.1.5", "scope": "pgmain", "name": "pg1"},
}
REPLICA = {
    "state": "running",
    "postmaster_start_time": "2026-12-07 21:00:05.5+00:00",
    "role": "replica",
    "server_version": 150010,
    "xlog": {
        "received_location": 67109200,
        "replayed_location": 67109000,
        "replayed_timestamp": None,
        "paused": False,
    },
    "timeline": 3,
    "replication_state": "streaming",
    "pause": True,
    "dcs_last_seen": 1796677201,
    "tags": {"nofailover": True},
    "pending_restart": True,
    "pending_restart_reason": {"max_connections": {"old_value": "100", "new_value": "200"}},
    "patroni": {"version": "4.1.5", "scope": "pgmain", "name": "pg2"},
}
# Patroni 3.x: the primary's role was "master"; a stopped member has no xlog and no timeline
MASTER_3 = {**PRIMARY, "role": "master", "patroni": {"version": "3.0.4", "scope": "pgmain", "name": "pg1"}}
STOPPED = {
    "state": "stopped",
    "role": "replica",
    "cluster_unlocked": True,
    "dcs_last_seen": 1796677202,
    "tags": {"failover_priority": 0},
    "patroni": {"version": "4.1.5", "scope": "pgmain", "name": "pg3"},
}
# GET /cluster (utils.cluster_as_json + scope)
CLUSTER = {
    "members": [
        {
            "name": "pg1",
            "role": "leader",
            "state": "running",
            "api_url": "http://127.0.0.1:8008/patroni",
            "host": "127.0.0.1",
            "port": 5432,
            "timeline": 3,
        },
        {
            "name": "pg2",
            "role": "replica",
            "state": "streaming",
            "api_url": "http://127.0.0.1:8009/patroni",
            "host": "127.0.0.1",
            "port": 5433,
            "timeline": 3,
            "receive_lsn": "0/4000250",
            "receive_lag": 0,
            "replay_lsn": "0/4000188",
            "replay_lag": 200,
            "lsn": "0/4000250",
            "lag": 0,
        },
        {
            "name": "pg3",
            "role": "replica",
            "state": "stopped",
            "api_url": "http://127.0.0.1:8010/patroni",
            "host": "127.0.0.1",
            "port": 5434,
            "receive_lsn": "unknown",
            "receive_lag": "unknown",
            "lag": "unknown",
            "lsn": "unknown",
        },
    ],
    "pause": True,
    "scope": "pgmain",
}

Responder = Callable[[str, asyncio.StreamWriter], Any]


def _reply(body: bytes, status: str = "200 OK") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def json_server(documents: dict[str, object], status: str = "200 OK") -> Responder:
    async def respond(path: str, writer: asyncio.StreamWriter) -> None:
        body = documents[path]
        writer.write(_reply(body if isinstance(body, bytes) else json.dumps(body).encode(), status))

    return respond


@asynccontextmanager
async def serving(respond: Responder, target: str = "pg1") -> AsyncIterator[tuple[PatroniMember, list[int]]]:
    """A keep-alive HTTP server on 127.0.0.1; yields a member for it and the connections it accepted."""
    accepted: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ")[1].decode()
                await respond(path, writer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    member = PatroniMember(target=target, url=f"http://watcher:s3cret@127.0.0.1:{port}")
    try:
        yield member, accepted
    finally:
        server.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
