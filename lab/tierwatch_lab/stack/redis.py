"""Start redis-server and redis-sentinel processes on free ports, each with its own directory.

Used by the tests and by ``tierwatch demo``. Settings go into a config file in the server's own
directory (never on the command line, so a password does not show in ``ps``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from .ports import free_port
from .process import ManagedProcess, Stack, StackError, wait_for

HOST = "127.0.0.1"


@dataclass
class RedisServer:
    """A started redis-server (or redis-sentinel) and how to reach it."""

    name: str
    port: int
    process: ManagedProcess
    dir: Path
    password: str | None = None
    username: str | None = None
    host: str = HOST
    _clients: list[redis.Redis] = field(default_factory=list, repr=False)

    @property
    def url(self) -> str:
        """``redis://[user@]host:port`` (never with the password)."""
        user = f"{self.username}@" if self.username else ""
        return f"redis://{user}{self.host}:{self.port}"

    def client(self, **kwargs: Any) -> redis.Redis:
        """A synchronous redis-py client (decoded responses), closed when the stack closes."""
        options: dict[str, Any] = {"decode_responses": True, "socket_timeout": 10.0, "protocol": 2}
        options.update(kwargs)
        client = redis.Redis(
            host=self.host, port=self.port, username=self.username, password=self.password, **options
        )
        self._clients.append(client)
        return client

    def info(self, section: str | None = None) -> dict[str, Any]:
        """``INFO [section]`` as parsed by redis-py."""
        client = self.client()
        try:
            return client.info(section) if section else client.info()
        finally:
            client.close()

    def close_clients(self) -> None:
        """Close every client handed out by ``client``."""
        for client in self._clients:
            client.close()
        self._clients.clear()


# Write fencing as the demo runs it: a master refuses writes (NOREPLICAS) once no replica has
# acknowledged the stream for 10 s, so a master cut off from its replicas stops taking writes that a
# failover on the other side would drop. Give it to every server: any of them may become master.
WRITE_FENCING: tuple[str, ...] = ("min-replicas-to-write 1", "min-replicas-max-lag 10")


def _config_lines(port: int, directory: Path) -> list[str]:
    return [
        f"port {port}",
        f"bind {HOST}",
        "protected-mode no",
        "daemonize no",
        f'dir "{directory}"',
        'logfile ""',
        'save ""',
        "appendonly no",
        "repl-diskless-sync-delay 0",
    ]


def _auth_lines(password: str | None, username: str | None) -> list[str]:
    if password is None:
        return []
    if username:
        return [f"user {username} on >{password} ~* &* +@all", "user default off", f"masteruser {username}"]
    return [f"requirepass {password}"]


def start_redis(
    stack: Stack,
    name: str,
    *,
    port: int | None = None,
    replica_of: RedisServer | None = None,
    password: str | None = None,
    username: str | None = None,
    extra_config: Sequence[str] = (),
    extra_args: Sequence[str] = (),
    launcher: Sequence[str] = (),
    ready_timeout: float = 15.0,
) -> RedisServer:
    """Start redis-server as ``name``; a replica of ``replica_of`` when given (waits for the link).
    ``launcher``: an argv prefix it runs under (e.g. ``ip netns exec NS``: stack/servernet.py).

    ``password`` sets ``requirepass`` (or, with ``username``, an ACL user with every permission and
    the default user disabled); replicas use the same credentials towards their master.
    """
    port = port or free_port()
    directory = stack.directory(name)
    lines = _config_lines(port, directory) + _auth_lines(password, username)
    if password is not None:
        lines.append(f"masterauth {password}")
    if replica_of is not None:
        lines.append(f"replicaof {replica_of.host} {replica_of.port}")
    lines.extend(extra_config)
    conf = directory / "redis.conf"
    conf.write_text("\n".join(lines) + "\n")
    conf.chmod(0o600)
    proc = stack.spawn(name, [*launcher, "redis-server", str(conf), *extra_args], cwd=directory)
    server = RedisServer(name, port, proc, directory, password, username)
    stack.on_close(server.close_clients)
    _wait_ping(server, ready_timeout)
    if replica_of is not None:
        wait_replica_linked(server, ready_timeout)
    return server


def _wait_ping(server: RedisServer, timeout: float) -> None:
    client = server.client(socket_timeout=1.0, socket_connect_timeout=1.0)

    def ready() -> bool:
        server.process.check_alive()
        return bool(client.ping())

    try:
        wait_for(ready, timeout, f"{server.name} to answer PING on port {server.port}")
    except StackError as exc:
        raise StackError(f"{exc}\n{server.process.log_tail()}") from None
    finally:
        client.close()


def wait_replica_linked(server: RedisServer, timeout: float = 15.0) -> None:
    """Wait until ``server`` reports ``master_link_status:up``."""
    client = server.client(socket_timeout=1.0)
    try:
        wait_for(
            lambda: client.info("replication").get("master_link_status") == "up",
            timeout,
            f"{server.name} to link to its master",
        )
    finally:
        client.close()


def wait_writes_accepted(master: RedisServer, timeout: float = 15.0) -> None:
    """Wait until a fencing master has as many good replicas as min-replicas-to-write asks for (a
    replica counts from its first ACK, up to a second after its link is up); at once without fencing."""
    client = master.client(socket_timeout=1.0)

    def met() -> bool:
        good = client.info("replication").get("min_slaves_good_slaves")
        needed = int(client.config_get("min-replicas-to-write")["min-replicas-to-write"])
        return good is None or int(good) >= needed

    try:
        wait_for(met, timeout, f"{master.name} to have enough good replicas to accept writes")
    finally:
        client.close()


def start_sentinels(
    stack: Stack,
    master: RedisServer,
    *,
    n: int = 3,
    quorum: int = 2,
    master_name: str = "mymaster",
    down_after_ms: int = 1000,
    failover_timeout_ms: int = 10000,
    prefix: str = "sentinel",
    ready_timeout: float = 20.0,
) -> list[RedisServer]:
    """Start ``n`` redis-sentinel processes monitoring ``master`` and wait until they know each other."""
    sentinels = []
    for index in range(1, n + 1):
        name = f"{prefix}-{index}"
        port = free_port()
        directory = stack.directory(name)
        lines = [
            *_config_lines(port, directory)[:6],  # no persistence or replication settings
            f"sentinel monitor {master_name} {master.host} {master.port} {quorum}",
            f"sentinel down-after-milliseconds {master_name} {down_after_ms}",
            f"sentinel failover-timeout {master_name} {failover_timeout_ms}",
            f"sentinel parallel-syncs {master_name} 1",
        ]
        if master.password is not None:
            if master.username:
                lines.append(f"sentinel auth-user {master_name} {master.username}")
            lines.append(f"sentinel auth-pass {master_name} {master.password}")
        conf = directory / "sentinel.conf"
        conf.write_text("\n".join(lines) + "\n")
        conf.chmod(0o600)
        proc = stack.spawn(name, ["redis-sentinel", str(conf)], cwd=directory)
        sentinel = RedisServer(name, port, proc, directory)
        stack.on_close(sentinel.close_clients)
        _wait_ping(sentinel, ready_timeout)
        sentinels.append(sentinel)
    for sentinel in sentinels:
        _wait_sentinel_peers(sentinel, master_name, n - 1, ready_timeout)
    return sentinels


def _wait_sentinel_peers(sentinel: RedisServer, master_name: str, others: int, timeout: float) -> None:
    client = sentinel.client(socket_timeout=1.0)

    def known() -> bool:
        state = client.sentinel_master(master_name)
        return int(state.get("num-other-sentinels", 0)) >= others

    try:
        wait_for(known, timeout, f"{sentinel.name} to discover {others} other sentinels")
    finally:
        client.close()


def sentinel_master_port(sentinel: RedisServer, master_name: str = "mymaster") -> int:
    """The port of the master as ``sentinel`` currently sees it."""
    client = sentinel.client(socket_timeout=1.0)
    try:
        _host, port = client.sentinel_get_master_addr_by_name(master_name)
    finally:
        client.close()
    return int(port)
