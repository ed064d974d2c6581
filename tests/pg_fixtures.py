"""Real PostgreSQL servers for tests, plus helpers to probe them without the monitor.

Import the fixtures explicitly in a test module: ``from pg_fixtures import pg_cluster``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import pytest

from tierwatch.config import ClusterConfig, Secret, TargetConfig
from tierwatch.probes.base import Observation, TargetInfo
from tierwatch.probes.postgres import PostgresProbe
from tierwatch_lab.stack import Stack
from tierwatch_lab.stack.postgres import PgServer, start_primary, start_replica


@dataclass
class PgCluster:
    """Servers of one replication cluster and the tierwatch config that describes them."""

    stack: Stack
    servers: dict[str, PgServer]
    name: str = "main-db"

    @property
    def config(self) -> ClusterConfig:
        targets = [
            TargetConfig(name=name, region="failover" if name.endswith("dr") else "primary",
                         url=server.dsn_without_password)
            for name, server in self.servers.items()
        ]  # fmt: skip
        return ClusterConfig(name=self.name, tier="postgres", targets=targets, password_env="PG_PASSWORD")

    def info(self, name: str, *, password: str | None = None, timeout: float = 2.0) -> TargetInfo:
        """TargetInfo of one server, with the monitor password unless another is given."""
        cluster = self.config
        target = next(t for t in cluster.targets if t.name == name)
        secret = Secret(password if password is not None else self.servers[name].monitor_password)
        return TargetInfo(tier="postgres", cluster=cluster, target=target, password=secret, timeout=timeout)

    def probe(self, name: str, **kwargs: object) -> PostgresProbe:
        return PostgresProbe(self.info(name, **kwargs))  # type: ignore[arg-type]


def value(obs: Observation, metric: str, *labels: str) -> float | None:
    """The value of one sample of an observation, or None if absent."""
    for sample in obs.samples:
        if sample.spec.name == metric and sample.labels == labels:
            return sample.value
    return None


async def probe_until(
    probe: PostgresProbe,
    condition: Callable[[Observation], bool],
    timeout: float,
    what: str,
    between: Callable[[], Awaitable[None] | None] | None = None,
) -> Observation:
    """Probe until ``condition`` holds for an observation; ``between`` runs before each attempt."""
    deadline = time.monotonic() + timeout
    while True:
        if between is not None:
            result = between()
            if result is not None:
                await result
        obs = await probe.probe()
        if condition(obs):
            return obs
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.1)


def _start_cluster(stack: Stack, replicas: tuple[str, ...], *, archive: bool) -> PgCluster:
    primary = start_primary(stack, "pg-1", archive=archive)
    servers = {"pg-1": primary}
    for name in replicas:
        servers[name] = start_replica(stack, primary, name)
    return PgCluster(stack=stack, servers=servers)


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[PgCluster]:
    """A primary (with a settable archive_command), two replicas and a DR replica."""
    with Stack() as stack:
        yield _start_cluster(stack, ("pg-2", "pg-3", "pg-dr"), archive=True)


@pytest.fixture
def pg_pair() -> Iterator[PgCluster]:
    """A primary and one replica, for destructive tests (promotion)."""
    with Stack() as stack:
        yield _start_cluster(stack, ("pg-2",), archive=False)


@pytest.fixture
def pg_single() -> Iterator[PgCluster]:
    """A lone primary, for tests that freeze or break it."""
    with Stack() as stack:
        yield _start_cluster(stack, (), archive=False)
