"""Shared helpers and fixtures for the Redis, Sentinel and queue tests (imported explicitly)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tierwatch.config import ClusterConfig, QueueConfig, Secret, SentinelConfig, TargetConfig
from tierwatch.probes.base import Observation, Probe, ProbeFailure, TargetInfo
from tierwatch.probes.redis import RedisProbe
from tierwatch_lab.stack import Stack, wait_for
from tierwatch_lab.stack.redis import RedisServer

T = TypeVar("T")


@pytest.fixture
def redis_stack() -> Iterator[Stack]:
    """A Stack whose processes are all stopped at the end of the test."""
    stack = Stack()
    try:
        yield stack
    finally:
        stack.close()


def make_cluster(
    servers: Sequence[RedisServer],
    *,
    name: str = "cache-main",
    queues: Sequence[dict[str, Any]] = (),
    sentinels: Sequence[RedisServer] = (),
    master_name: str = "mymaster",
) -> ClusterConfig:
    """A redis ClusterConfig whose targets are ``servers`` (named after them)."""
    sentinel = None
    if sentinels:
        sentinel = SentinelConfig(
            master_name=master_name,
            targets=[TargetConfig(name=s.name, region="primary", url=s.url) for s in sentinels],
        )
    return ClusterConfig(
        name=name,
        tier="redis",
        targets=[TargetConfig(name=s.name, region="primary", url=s.url) for s in servers],
        sentinel=sentinel,
        queues=[QueueConfig(**q) for q in queues],
    )


def target_info(
    cluster: ClusterConfig, name: str, *, password: str | None = None, timeout: float = 2.0
) -> TargetInfo:
    """TargetInfo for the target (or sentinel) called ``name`` in ``cluster``."""
    sentinels = cluster.sentinel.targets if cluster.sentinel else []
    for tier, targets in (("redis", cluster.targets), ("sentinel", sentinels)):
        for target in targets:
            if target.name == name:
                secret = Secret(password) if password is not None else None
                return TargetInfo(tier=tier, cluster=cluster, target=target, password=secret, timeout=timeout)
    raise KeyError(name)


def probe_once(info: TargetInfo, probe_cls: type[Probe] = RedisProbe) -> Observation:
    """Create a probe, probe once, close it."""

    async def run() -> Observation:
        probe = probe_cls(info)
        try:
            return await probe.probe()
        finally:
            await probe.close()

    return asyncio.run(run())


def failure_of(info: TargetInfo, probe_cls: type[Probe] = RedisProbe) -> ProbeFailure:
    """Probe once expecting a ProbeFailure, and return it."""
    with pytest.raises(ProbeFailure) as caught:
        probe_once(info, probe_cls)
    return caught.value


def value(obs: Observation, name: str, *labels: str) -> float | None:
    """The value of the sample ``name{labels}`` in ``obs``, or None."""
    for sample in obs.samples:
        if sample.spec.name == name and sample.labels == labels:
            return sample.value
    return None


def peer_value(obs: Observation, peer: str, name: str) -> float | None:
    """The value of a sample ``obs`` attributes to another target."""
    for sample in obs.peer_samples.get(peer, []):
        if sample.spec.name == name:
            return sample.value
    return None


def samples_named(obs: Observation, name: str) -> dict[tuple[str, ...], float]:
    """Every sample of ``name`` by its label values."""
    return {s.labels: s.value for s in obs.samples if s.spec.name == name}


def poll(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll ``condition`` until truthy (raises with ``what`` after ``timeout`` seconds)."""
    return wait_for(condition, timeout, what, interval)


def normal_clients(server: RedisServer) -> int:
    """Normal (non-replica, non-pubsub) client connections, not counting the one asking."""
    client = server.client()
    try:
        return len(client.client_list(_type="normal")) - 1
    finally:
        client.close()


def open_fds() -> int:
    """File descriptors open in this process."""
    return len(os.listdir("/proc/self/fd"))


def elapsed(start: float) -> float:
    """Seconds since ``start`` (a time.monotonic() value)."""
    return time.monotonic() - start


def write_keys(server: RedisServer, count: int, prefix: str = "key") -> None:
    """SET ``count`` small keys on ``server`` in one pipeline."""
    client = server.client()
    try:
        pipe = client.pipeline(transaction=False)
        for i in range(count):
            pipe.set(f"{prefix}:{i}", "v" * 40)
        pipe.execute()
    finally:
        client.close()


def empty_member(server: RedisServer, keys: int = 1) -> None:
    """Make the replica ``server`` a member that lost its data: detached (REPLICAOF NO ONE), flushed,
    then holding only ``keys`` keys."""
    client = server.client()
    try:
        client.execute_command("REPLICAOF", "NO", "ONE")
        client.flushall()
    finally:
        client.close()
    write_keys(server, keys, prefix="empty")


NODE_DIR = Path(__file__).parent / "node"


@pytest.fixture(scope="session")
def bullmq_script() -> Path:
    """tests/node/bullmq_jobs.js with its npm dependencies installed (fails loudly if npm cannot)."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.fail("Node.js and npm are required for the BullMQ tests (apt-get install nodejs npm)")
    result = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        pytest.fail(f"npm install in {NODE_DIR} failed (exit {result.returncode}):\n{result.stderr[-2000:]}")
    return NODE_DIR / "bullmq_jobs.js"
