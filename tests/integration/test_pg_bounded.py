"""PostgreSQL replies are bounded: a fake server answering the probe query with a 500 MB row fails the
probe with ``protocol`` at once and costs about the cap at its peak (libpq reads a long message in one
call for as long as bytes keep arriving, so a cut made between two calls came too late); a real
server's probe is not disturbed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile_servers import hostile_process

from tierwatch.config import ClusterConfig, Secret, TargetConfig
from tierwatch.probes.base import ProbeFailure, TargetInfo
from tierwatch.probes.postgres import PostgresProbe

from pg_fixtures import PgCluster, pg_single  # noqa: F401 - fixture

MB = 1 << 20


@pytest.fixture(scope="module")
def fake_pg() -> Iterator[int]:
    with hostile_process(("pg_huge_row",)) as ports:
        yield ports["pg_huge_row"]


def status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field}")


def reset_peak_rss() -> None:
    """Set the process's peak RSS (VmHWM) back to its current RSS (Linux's clear_refs, value 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def fake_probe(port: int) -> PostgresProbe:
    cluster = ClusterConfig(
        name="evil",
        tier="postgres",
        targets=[
            TargetConfig(
                name="evil-pg", region="primary", url=f"postgresql://tierwatch@127.0.0.1:{port}/postgres"
            )
        ],
    )
    return PostgresProbe(TargetInfo("postgres", cluster, cluster.targets[0], Secret("x"), 2.0))


def test_huge_row_fails_with_protocol_and_costs_about_the_cap(fake_pg: int) -> None:
    async def run() -> list[tuple[str, float]]:
        probe = fake_probe(fake_pg)
        results = []
        try:
            for _ in range(30):
                start = time.monotonic()
                with pytest.raises(ProbeFailure) as caught:
                    await probe.probe()
                results.append((caught.value.reason, time.monotonic() - start))
        finally:
            await probe.close()
        return results

    reset_peak_rss()
    before = status_bytes("VmRSS")
    results = asyncio.run(run())
    grown = status_bytes("VmHWM") - before
    assert [reason for reason, _ in results] == ["protocol"] * 30
    assert all(took < 1.9 for _, took in results)  # cut by the cap, not by the probe deadline
    assert grown < 12 * MB, f"peak RSS grew by {grown / MB:.1f} MB"


def test_real_server_is_probed_normally_with_the_guard(pg_single: PgCluster) -> None:  # noqa: F811
    async def run() -> tuple[str | None, bool]:
        probe = pg_single.probe("pg-1")
        try:
            obs = await probe.probe()
            obs = await probe.probe()
            return obs.role, probe._guard.tripped
        finally:
            await probe.close()

    role, tripped = asyncio.run(run())
    assert role == "primary"
    assert not tripped
