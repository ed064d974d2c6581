"""The Patroni REST client against a real local HTTP server: Patroni's own JSON shapes (4.x and 3.x's
"master") parse to the right status and cluster view; garbage, wrong types, a 10 MB body, a stall and
a refused port each cost a bounded read and raise PatroniError with a short, secret-free message."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from patroni_api import CLUSTER, MASTER_3, PRIMARY, REPLICA, STOPPED, closed_port, json_server, serving

from tierwatch.clients.patroni import (
    PatroniClient,
    PatroniError,
    read_cluster,
    read_status,
)
from tierwatch.config import PatroniMember


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
