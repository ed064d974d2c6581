"""The Patroni REST client against a real local HTTP server: Patroni's own JSON shapes (4.x and 3.x's
"master") parse to the right status and cluster view; garbage, wrong types, a 10 MB body, a stall and
a refused port each cost a bounded read and raise PatroniError with a short, secret-free message."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from tierwatch.clients.patroni import (
    PatroniClient,
    PatroniError,
    read_cluster,
    read_status,
)
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
async def serving(respond: Responder) -> AsyncIterator[tuple[PatroniMember, list[int]]]:
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
    member = PatroniMember(target="pg1", url=f"http://watcher:s3cret@127.0.0.1:{port}")
    try:
        yield member, accepted
    finally:
        server.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_primary_and_replica_status() -> None:
    async def scenario() -> None:
        async with serving(json_server({"/patroni": PRIMARY})) as (member, _):
            status = await read_status(member, 2.0, 65536)
        assert status.name == "pg1" and status.scope == "pgmain"
        assert status.role == "primary" and status.state == "running" and status.timeline == 3
        assert status.wal_position == 67109200 and status.replayed_position is None
        assert not status.paused and not status.cluster_unlocked and not status.failover_disabled
        assert not status.pending_restart and status.replication_state is None
        assert status.dcs_last_seen == 1796677200.0
        assert status.postmaster_start_time == pytest.approx(1796677200.123456)

        async with serving(json_server({"/patroni": REPLICA})) as (member, _):
            status = await read_status(member, 2.0, 65536)
        assert status.name == "pg2" and status.role == "replica"
        assert status.replication_state == "streaming"
        assert status.wal_position == 67109200 and status.replayed_position == 67109000
        assert status.paused and status.failover_disabled and status.pending_restart

    run(scenario())


def test_patroni_3_master_and_a_stopped_member() -> None:
    async def scenario() -> None:
        async with serving(json_server({"/patroni": MASTER_3})) as (member, _):
            assert (await read_status(member, 2.0, 65536)).role == "primary"
        async with serving(json_server({"/patroni": STOPPED})) as (member, _):
            status = await read_status(member, 2.0, 65536)
        assert status.state == "stopped" and status.timeline is None and status.wal_position is None
        assert status.cluster_unlocked and status.failover_disabled  # failover_priority 0

    run(scenario())


def test_cluster_view() -> None:
    async def scenario() -> None:
        async with serving(json_server({"/cluster": CLUSTER})) as (member, _):
            view = await read_cluster(member, 2.0, 65536)
        assert view.leader == "pg1" and view.paused and view.scope == "pgmain"
        assert [(m.name, m.role, m.state) for m in view.members] == [
            ("pg1", "primary", "running"),
            ("pg2", "replica", "streaming"),
            ("pg3", "replica", "stopped"),
        ]
        assert [m.lag_bytes for m in view.members] == [None, 0, None]
        assert view.members[1].host == "127.0.0.1" and view.members[1].port == 5433
        assert view.members[2].timeline is None

        unlocked = {"members": [{**m, "role": "replica"} for m in CLUSTER["members"]], "scope": "pgmain"}
        async with serving(json_server({"/cluster": unlocked})) as (member, _):
            view = await read_cluster(member, 2.0, 65536)
        assert view.leader is None and not view.paused

    run(scenario())


def test_keep_alive_one_connection_for_many_reads() -> None:
    async def scenario() -> None:
        async with serving(json_server({"/patroni": PRIMARY, "/cluster": CLUSTER})) as (member, accepted):
            client = PatroniClient(member, 65536)
            try:
                for _ in range(5):
                    await client.status(2.0)
                    await client.cluster(2.0)
            finally:
                await client.close()
        assert len(accepted) == 1

    run(scenario())


BAD_DOCUMENTS: list[tuple[object, str]] = [
    (b"<html>not json</html>", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b"[" * 50000 + b"]" * 50000, "not JSON"),  # nesting deeper than the parser's recursion limit
    ({**PRIMARY, "role": 7}, "role: not a string"),
    ({k: v for k, v in PRIMARY.items() if k != "state"}, "state: missing"),
    ({**PRIMARY, "timeline": "3"}, "timeline: not a non-negative integer"),
    ({**PRIMARY, "timeline": -1}, "timeline: not a non-negative integer"),
    ({**PRIMARY, "pause": "yes"}, "pause: not a boolean"),
    ({**PRIMARY, "xlog": [1]}, "xlog: not a JSON dict"),
    ({**PRIMARY, "xlog": {"location": 2**70}}, "location: not a non-negative integer"),
    ({**PRIMARY, "dcs_last_seen": "now"}, "dcs_last_seen: not a timestamp"),
    ({**PRIMARY, "patroni": "pg1"}, "patroni: not a JSON dict"),
]


@pytest.mark.parametrize(("body", "problem"), BAD_DOCUMENTS, ids=range(len(BAD_DOCUMENTS)))
def test_garbage_and_wrong_types_are_clean_failures(body: object, problem: str) -> None:
    async def scenario() -> None:
        async with serving(json_server({"/patroni": body})) as (member, _):
            with pytest.raises(PatroniError) as caught:
                await read_status(member, 2.0, 1024 * 1024)
        assert caught.value.reason == "protocol"
        assert problem in str(caught.value)

    run(scenario())


def test_cluster_wrong_types_and_two_leaders() -> None:
    two_leaders = {"members": [{"name": "a", "role": "leader"}, {"name": "b", "role": "master"}]}
    cases = [
        ({"members": "pg1"}, "members: not a JSON list"),
        ({"members": [["pg1"]]}, "a member is not a JSON object"),
        ({"members": [{"role": "leader"}]}, "name: missing"),
        ({"members": [{"name": "a", "port": "5432"}]}, "port: not a non-negative integer"),
        (two_leaders, "two leaders"),
    ]

    async def scenario() -> None:
        for body, problem in cases:
            async with serving(json_server({"/cluster": body})) as (member, _):
                with pytest.raises(PatroniError, match=problem):
                    await read_cluster(member, 2.0, 65536)

    run(scenario())


def test_status_other_than_200_is_a_failure() -> None:
    async def scenario() -> None:
        async with serving(json_server({"/patroni": PRIMARY}, "503 Service Unavailable")) as (member, _):
            with pytest.raises(PatroniError, match="status 503"):
                await read_status(member, 2.0, 65536)

    run(scenario())


def test_a_huge_body_costs_a_bounded_read() -> None:
    """A 100 MB answer (far over the 10 MB of the brief: the loopback's socket buffers hold ~10 MB)."""
    size = 100 * 1024 * 1024
    sent: list[int] = []

    async def endless(path: str, writer: asyncio.StreamWriter) -> None:
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
        writer.write(b'{"padding": "')
        chunk = b"x" * 65536
        for _ in range(size // len(chunk)):
            writer.write(chunk)
            try:
                await writer.drain()
            except ConnectionError:
                return
            sent.append(len(chunk))

    async def scenario() -> None:
        async with serving(endless) as (member, _):
            started = time.monotonic()
            with pytest.raises(PatroniError) as caught:
                await read_status(member, 5.0, 65536)
            assert time.monotonic() - started < 2.0
            await asyncio.sleep(0.2)  # let the server notice the close
        assert caught.value.reason == "protocol" and "larger than 65536 bytes" in str(caught.value)
        assert sum(sent) < size // 4  # the client read its cap and closed; the rest was never sent

    run(scenario())


def test_stall_and_refused_are_bounded_and_secret_free() -> None:
    async def stall(path: str, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")
        await asyncio.sleep(30)

    async def scenario() -> None:
        async with serving(stall) as (member, _):
            started = time.monotonic()
            with pytest.raises(PatroniError) as caught:
                await read_status(member, 0.5, 65536)
            assert 0.4 < time.monotonic() - started < 1.5
        assert caught.value.reason == "timeout"
        assert "s3cret" not in str(caught.value) and "watcher" not in str(caught.value)

        member = PatroniMember(target="pg1", url=f"http://watcher:s3cret@127.0.0.1:{closed_port()}")
        with pytest.raises(PatroniError) as caught:
            await read_cluster(member, 1.0, 65536)
        assert caught.value.reason == "refused"
        assert "s3cret" not in str(caught.value) and "127.0.0.1" not in str(caught.value)

    run(scenario())
