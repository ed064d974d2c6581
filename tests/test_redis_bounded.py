"""Redis replies are bounded: a hostile "Redis" target fails the probe with a reason and costs at most
the reply cap, whatever it sends; queue reads share the cap."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile_servers import hostile_process

from tierwatch.clients.redis_bounded import MAX_REPLY_BYTES
from tierwatch.config import ClusterConfig, QueueConfig, TargetConfig
from tierwatch.lab.stack import Stack
from tierwatch.lab.stack.redis import start_redis
from tierwatch.probes.base import ProbeFailure
from tierwatch.probes.redis import RedisProbe

from redis_fixtures import make_cluster, target_info

MB = 1 << 20


@pytest.fixture(scope="module")
def hostile() -> Iterator[dict[str, int]]:
    """Hostile servers in their own process (their memory is not ours): kind -> port."""
    with hostile_process() as ports:
        yield ports


def rss_bytes() -> int:
    """This process's resident set size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def hostile_info(port: int, timeout: float = 2.0) -> RedisProbe:
    cluster = ClusterConfig(
        name="evil",
        tier="redis",
        targets=[TargetConfig(name="evil-1", region="primary", url=f"redis://127.0.0.1:{port}")],
    )
    return RedisProbe(target_info(cluster, "evil-1", timeout=timeout))


async def probe_failure(probe: RedisProbe) -> tuple[ProbeFailure, float]:
    start = time.monotonic()
    with pytest.raises(ProbeFailure) as caught:
        await probe.probe()
    return caught.value, time.monotonic() - start


def test_huge_bulk_reply_fails_with_protocol_and_costs_at_most_the_cap(hostile: dict[str, int]) -> None:
    async def run() -> list[str]:
        probe = hostile_info(hostile["huge_bulk"])
        reasons = []
        try:
            for _ in range(5):
                failure, took = await probe_failure(probe)
                reasons.append(failure.reason)
                assert took < 2.0
        finally:
            await probe.close()
        return reasons

    before = rss_bytes()
    reasons = asyncio.run(run())
    grown = rss_bytes() - before
    assert reasons == ["protocol"] * 5
    assert grown < 50 * MB, f"RSS grew by {grown / MB:.1f} MB"


@pytest.mark.parametrize(
    ("kind", "reasons"),
    [
        ("garbage", {"protocol"}),
        ("trickle_redis", {"timeout"}),
        ("silent", {"timeout"}),
        ("accept_close", {"error"}),
        ("blackhole", {"timeout"}),
    ],
)
def test_hostile_target_is_down_with_a_reason_within_its_deadline(
    hostile: dict[str, int], kind: str, reasons: set[str]
) -> None:
    async def run() -> tuple[ProbeFailure, float]:
        probe = hostile_info(hostile[kind], timeout=0.5)
        try:
            return await probe_failure(probe)
        finally:
            await probe.close()

    failure, took = asyncio.run(run())
    assert failure.reason in reasons
    assert took < 1.5


def test_queue_reply_over_the_cap_fails_the_probe_and_the_next_probe_reconnects(stack: Stack) -> None:
    server = start_redis(stack, "redis-a")
    client = server.client()
    client.rpush("rq:queue:default", b"j" * 2 * MAX_REPLY_BYTES)
    base = make_cluster([server])
    cluster = base.model_copy(update={"queues": [QueueConfig(name="default", kind="rq")]})
    probe = RedisProbe(target_info(cluster, server.name))

    async def run() -> tuple[str, bool, int]:
        try:
            with pytest.raises(ProbeFailure) as caught:
                await probe.probe()
            client.delete("rq:queue:default")
            obs = await probe.probe()
            return caught.value.reason, obs.role == "primary", probe.link.connects
        finally:
            await probe.close()

    try:
        reason, primary, connects = asyncio.run(run())
    finally:
        client.close()
    assert reason == "protocol"
    assert primary
    assert connects == 2
