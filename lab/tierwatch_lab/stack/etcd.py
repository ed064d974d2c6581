"""A real etcd cluster (Debian's ``etcd-server``, 3.4) of several members on free loopback ports.

Used by the recovery-service HA tests and the HA drills: the replicas' leader lease lives in it.
Members can be stopped (SIGTERM), killed (SIGKILL) and started again on the same ports and data.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field

import httpx

from .ports import free_port
from .process import ManagedProcess, Stack, StackError, wait_for

HOST = "127.0.0.1"


@dataclass
class EtcdMember:
    """One member: its name, ports and (while started) its process."""

    name: str
    client_port: int
    peer_port: int
    argv: list[str]
    process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.client_port}"

    def healthy(self) -> bool:
        """True if the member answers /health with a leader (it is part of a quorum)."""
        try:
            response = httpx.get(f"{self.url}/health", timeout=2.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and response.json().get("health") == "true"


@dataclass
class EtcdCluster:
    """A started cluster."""

    stack: Stack
    members: list[EtcdMember] = field(default_factory=list)

    @property
    def endpoints(self) -> list[str]:
        return [member.url for member in self.members]

    def stop_member(self, index: int) -> None:
        """Stop one member gracefully."""
        process = self.members[index].process
        if process is not None:
            process.stop()

    def kill_member(self, index: int) -> None:
        """SIGKILL one member."""
        process = self.members[index].process
        if process is not None:
            process.kill()

    def start_member(self, index: int) -> None:
        """Start a stopped member again (same ports, same data) and wait until the cluster is healthy."""
        member = self.members[index]
        member.process = self.stack.spawn(member.name, member.argv)
        wait_for(member.healthy, 30, f"etcd member {member.name} healthy again")

    def healthy(self) -> bool:
        """True if every started member reports a leader."""
        started = [m for m in self.members if m.process is not None and m.process.running()]
        return bool(started) and all(m.healthy() for m in started)


def binary() -> str:
    path = shutil.which("etcd")
    if path is None:
        raise StackError("etcd not found; install the Debian package etcd-server")
    return path


def start_etcd_cluster(stack: Stack, size: int = 3, name: str = "etcd") -> EtcdCluster:
    """Start ``size`` members forming one cluster and wait until all are healthy."""
    members = [EtcdMember(f"{name}{i}", free_port(), free_port(), []) for i in range(size)]
    initial = ",".join(f"{m.name}=http://{HOST}:{m.peer_port}" for m in members)
    token = f"{name}-{stack.root.name}"
    for member in members:
        data = stack.directory(name, member.name)
        member.argv = [
            binary(),
            f"--name={member.name}",
            f"--data-dir={data}",
            f"--listen-client-urls={member.url}",
            f"--advertise-client-urls={member.url}",
            f"--listen-peer-urls=http://{HOST}:{member.peer_port}",
            f"--initial-advertise-peer-urls=http://{HOST}:{member.peer_port}",
            f"--initial-cluster={initial}",
            f"--initial-cluster-token={token}",
            "--initial-cluster-state=new",
            "--logger=zap",
            "--log-level=warn",
        ]
        member.process = stack.spawn(member.name, member.argv)
    cluster = EtcdCluster(stack, members)

    def ready() -> bool:
        for member in members:
            assert member.process is not None
            member.process.check_alive()
        return cluster.healthy()

    wait_for(ready, 30, f"etcd cluster of {size} healthy", interval=0.2)
    return cluster
