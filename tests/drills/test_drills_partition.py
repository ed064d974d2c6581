"""The primary-partition drill (tierwatch_lab.drills_partition) against the demo stack with its 5 s detection
window: the Redis master, then the PostgreSQL primary, cut off (network namespace, silent drops) with
some of their clients. The kit promotes a replica, the isolated old primary never acknowledges a write
(write fencing), rejoins as a replica once healed, no acknowledged write is lost, and nothing of the
namespaces outlives the stack."""

from __future__ import annotations

import os
import socket
import socketserver
import threading
import time
from pathlib import Path

import pytest

from tierwatch_lab.demo import build
from tierwatch_lab.drills import build_options, wait_until_watched
from tierwatch_lab.drills_partition import drill_primary_partition
from tierwatch_lab.stack import Stack
from tierwatch_lab.stack.servernet import create_server_net


class _Echo(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        while line := self.rfile.readline():
            self.wfile.write(line)


def _echo_server(host: str = "127.0.0.1") -> socketserver.ThreadingTCPServer:
    server = socketserver.ThreadingTCPServer((host, 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _ask(sock: socket.socket, word: bytes, timeout: float) -> bytes:
    sock.settimeout(timeout)
    sock.sendall(word + b"\n")
    try:
        return sock.recv(100)
    except TimeoutError:
        return b""


def test_server_net_cut_drops_silently_both_ways_and_heal_resumes() -> None:
    """A server in the namespace reached from the root at 127.0.0.1:P, a root server reached from the
    namespace at 127.0.0.1:Q; the cut stalls both (no reset: the same connections answer after the
    heal); nothing is left once the stack closes."""
    stack = Stack()
    outside = _echo_server()
    try:
        net = create_server_net(stack)
        started: dict[str, socketserver.ThreadingTCPServer] = {}

        def in_namespace() -> None:
            net.enter()
            started["inside"] = _echo_server("0.0.0.0")

        thread = threading.Thread(target=in_namespace)
        thread.start()
        thread.join(10)
        inside = started["inside"]
        port = net.expose(inside.server_address[1])
        net.reach([outside.server_address[1]])
        from_root = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert _ask(from_root, b"a", 5) == b"a\n"
        box: dict[str, socket.socket] = {}

        def connect_from_namespace() -> None:
            net.enter()
            box["sock"] = socket.create_connection(("127.0.0.1", outside.server_address[1]), timeout=5)

        thread = threading.Thread(target=connect_from_namespace)
        thread.start()
        thread.join(10)
        from_ns = box["sock"]
        assert _ask(from_ns, b"b", 5) == b"b\n"
        net.cut()
        assert _ask(from_root, b"c", 1.5) == b""  # stalled, not reset
        assert _ask(from_ns, b"d", 1.5) == b""
        late = socket.create_connection(("127.0.0.1", port), timeout=5)  # the local forwarder accepts...
        assert _ask(late, b"e", 1.5) == b""  # ...but nothing comes back across the cut
        net.heal()
        from_root.settimeout(10)
        from_ns.settimeout(10)
        assert from_root.recv(100).startswith(b"c\n")  # retransmitted once healed: never dropped for good
        assert from_ns.recv(100).startswith(b"d\n")
        for sock in (from_root, from_ns, late):
            sock.close()
        inside.shutdown()
        inside.server_close()
    finally:
        stack.close()
        outside.shutdown()
        outside.server_close()
    assert net.leftovers() == []


def _processes_under(root: Path) -> list[int]:
    """Pids whose command line names a path inside ``root`` (the stack's servers all do)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes()
        except OSError:
            continue
        if str(root).encode() in cmdline:
            found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_primary_partition_promotes_fences_the_old_primary_and_rejoins_it() -> None:
    stack = Stack()
    try:
        demo = build(stack, **build_options("primary-partition"))
        nets = list(demo.server_nets.values())
        assert len(nets) == 2
        wait_until_watched(demo)
        assert demo.chain is not None
        prom = demo.chain.prometheus
        # the kit reads the topology as without namespaces: the master maps each replica to its
        # target (they announce 127.0.0.1, not the veth address they arrive from), the PostgreSQL
        # primary its standbys by application_name
        seen = {
            'max(tierwatch_redis_connected_replicas{target="redis-a"})': 3.0,
            'max(tierwatch_redis_unknown_replicas{target="redis-a"})': 0.0,
            'count(max by (standby) (tierwatch_pg_standby_connected{target="pg-1"} == 1))': 3.0,
        }
        for query, expected in seen.items():
            assert prom.value(query) == expected, (query, prom.value(query))
        result = drill_primary_partition(demo, time.time() + 150)
    finally:
        stack.close()
    report = result.render()
    print("\n" + report + f"\n  checker: {result.faults}")
    events = [what for _, what in result.timeline]
    assert result.acked > 0 and result.lost == 0, report
    for engine, (promote, rejoin) in {
        "redis": ("redis_failover", "redis_rejoin"),
        "postgres": ("pg_promote", "pg_rejoin"),
    }.items():
        check = result.faults[engine]
        extra = check["extra"]
        old, new = extra["old_primary"], extra["new_primary"]
        assert any(f"{promote} succeeded" in what for what in events), (engine, report)  # a promotion
        assert new not in (None, old), (engine, report)
        assert check["acked"] > 0 and check["acked_lost"] == 0, (engine, report)
        assert check["double_primary_s"] == 0, (engine, report)
        assert extra["acked_after_cut"]["isolated-direct"] == 0, (engine, report)  # fenced
        assert extra["acked_after_cut"]["direct"] == 0, (engine, report)
        assert extra["acked_after_cut"]["lb"] > 0, (engine, report)
        assert any(what.startswith(f"fenced: {old} ") for what in events), (engine, report)
        assert any(what.startswith(f"rejoined: {old} ") and new in what for what in events), (engine, report)
        assert any(f"{rejoin} succeeded" in what for what in events), (engine, report)
    assert result.primaries == {"redis": 1, "postgres": 1}, report
    assert result.recovered, report
    for net in nets:
        assert net.leftovers() == [], net.leftovers()
    assert _processes_under(stack.root) == []
