"""Redis replies are bounded: a hostile "Redis" target fails the probe with a reason and costs at most
the reply cap, whatever it sends; queue reads share the cap. An aggregate header announcing more
elements than the cap can hold fails before the parser allocates them, and the exporter watching such
targets stays small and exits promptly on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import time
import tracemalloc
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import hiredis
import pytest
from hostile_servers import hostile_process
from redis.asyncio.connection import Connection
from redis.exceptions import RedisError

from tierwatch.clients.redis import connection_options
from tierwatch.clients.redis_bounded import MAX_REPLY_BYTES, BoundedHiredisParser, ReplyTooLarge
from tierwatch.config import ClusterConfig, QueueConfig, TargetConfig
from tierwatch.probes.base import ProbeFailure
from tierwatch.probes.redis import RedisProbe
from tierwatch_lab.stack import Stack
from tierwatch_lab.stack.redis import start_redis
from tierwatch_lab.stack.tierwatch import start_exporter

from helpers import metric_value
from redis_fixtures import make_cluster, target_info

MB = 1 << 20
T = TypeVar("T")
# What a parser may allocate for one reply: a pointer per element the cap can hold (at least 3 bytes
# each), with room to spare; a header announcing a million elements makes hiredis allocate 8-16 MB.
ALLOCATION_BOUND = 4 * MB
HUGE = 1_000_000


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


class SmallBudget(BoundedHiredisParser):
    max_reply_bytes = 64


def peak_allocated(run: Callable[[], T]) -> tuple[T, int]:
    """``run()``'s result and the most memory Python's allocators held at once above the start."""
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        result = run()
        return result, tracemalloc.get_traced_memory()[1] - base
    finally:
        if not tracing:
            tracemalloc.stop()


def read_replies(
    data: bytes, count: int, read_size: int, parser_class: type[BoundedHiredisParser] = BoundedHiredisParser
) -> list[Any] | Exception:
    """Up to ``count`` replies the parser reads from ``data`` (then end of stream), ``read_size`` bytes
    per read; or the exception that stopped it."""

    async def run() -> list[Any] | Exception:
        stream = asyncio.StreamReader()
        stream.feed_data(data)
        stream.feed_eof()
        parser = parser_class(read_size)
        parser.on_connect(SimpleNamespace(_reader=stream, encoder=SimpleNamespace(decode_responses=False)))
        replies = []
        try:
            for _ in range(count):
                replies.append(await parser.read_response())
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            return exc
        return replies

    return asyncio.run(run())


@pytest.mark.parametrize("read_size", [1, 65536])
@pytest.mark.parametrize("kind", ["*", "%", "~", ">", "|"])
def test_aggregate_header_over_the_cap_fails_before_the_parser_allocates(kind: str, read_size: int) -> None:
    data = f"{kind}{HUGE}\r\n".encode() + b"+\r\n" * 10
    outcome, peak = peak_allocated(lambda: read_replies(data, 1, read_size))
    assert peak < ALLOCATION_BOUND, f"{kind}{HUGE}: the parser allocated {peak / MB:.1f} MB"
    assert isinstance(outcome, ReplyTooLarge), f"{kind}{HUGE}: {outcome!r}"


@pytest.mark.parametrize("read_size", [1, 65536])
def test_nested_headers_share_the_cap(read_size: int) -> None:
    # each fits the cap alone (900 KB of minimal elements), together they cannot
    data = b"*300000\r\n" * 2 + b"+\r\n" * 10
    outcome, peak = peak_allocated(lambda: read_replies(data, 1, read_size))
    assert peak < ALLOCATION_BOUND, f"the parser allocated {peak / MB:.1f} MB"
    assert isinstance(outcome, ReplyTooLarge), repr(outcome)


def verbatim(text: bytes) -> bytes:
    return b"=%d\r\ntxt:%s\r\n" % (len(text) + 4, text)


FITTING = [
    b"$13\r\n*2147483647\r\n\r\n",  # a bulk string's bytes are no header
    verbatim(b"%2147483647\r\n*9\r\n"),
    b"*3\r\n%1\r\n+k\r\n~2\r\n:1\r\n,1.5\r\n>1\r\n_\r\n#t\r\n",
    b"|1\r\n+a\r\n$5\r\n>9999\r\n",
    b"*-1\r\n",
    b"*0\r\n",
    b"$0\r\n\r\n",
    b"(12345678901234567890\r\n",
    b"*2\r\n*1\r\n*1\r\n$3\r\n*99\r\n+\r\n",
]


@pytest.mark.parametrize("read_size", [1, 7, 65536])
def test_replies_that_fit_read_as_hiredis_reads_them(read_size: int) -> None:
    data = b"".join(FITTING)
    reference = hiredis.Reader()
    reference.feed(data)
    expected = [reference.gets() for _ in FITTING]
    assert read_replies(data, len(FITTING), read_size) == expected


@pytest.mark.parametrize("read_size", [1, 7, 65536])
def test_a_reply_exactly_at_the_cap_is_read_and_one_element_more_is_refused_unread(read_size: int) -> None:
    exact = b"*19\r\n+ab\r\n" + b"+\r\n" * 18
    assert len(exact) == SmallBudget.max_reply_bytes
    assert read_replies(exact, 1, read_size, SmallBudget) == [[b"ab"] + [b""] * 18]
    outcome = read_replies(b"*20\r\n", 1, read_size, SmallBudget)
    assert isinstance(outcome, ReplyTooLarge), repr(outcome)


@pytest.mark.parametrize("read_size", [1, 7])
def test_each_reply_of_a_pipeline_has_its_own_cap(read_size: int) -> None:
    reply = b"*19\r\n" + b"+\r\n" * 19
    assert read_replies(reply * 2, 2, read_size, SmallBudget) == [[b""] * 19] * 2


def test_a_dropped_connections_partial_reply_is_released(hostile: dict[str, int]) -> None:
    async def run() -> tuple[int, int]:
        options = connection_options(None, 0.5, client_name="tierwatch")
        conn = Connection(host="127.0.0.1", port=hostile["partial_array"], **options)
        before = tracemalloc.get_traced_memory()[0]
        try:
            with pytest.raises(RedisError):  # the 300,000-element reply never completes
                await conn.connect()
            assert not conn.is_connected
            # the connection object lives on (as in a traceback); what its parser holds must not
            return tracemalloc.get_traced_memory()[0] - before, tracemalloc.get_traced_memory()[1] - before
        finally:
            await conn.disconnect()

    (held, peak), _ = peak_allocated(lambda: asyncio.run(run()))
    assert peak > 2 * MB  # the partial reply was allocated (300,000 pointers)...
    assert held < MB, f"a dropped connection still holds {held / MB:.1f} MB"  # ...and released


def vm_status(pid: int) -> dict[str, int]:
    """VmSize and VmRSS of process ``pid``, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmSize", "VmRSS"):
            out[key] = int(value.split()[0]) * 1024
    return out


def test_exporter_watching_huge_headers_stays_small_and_exits_promptly(
    stack: Stack, write_config: Callable[..., Path]
) -> None:
    kinds = ("huge_array", "huge_map")
    with hostile_process(kinds) as ports:
        targets = [
            {"name": kind.replace("_", "-"), "region": "primary", "url": f"redis://127.0.0.1:{ports[kind]}"}
            for kind in kinds
        ]
        config = write_config(
            {
                "monitor": {"interval": "1s", "timeout": "500ms"},
                "circuit_breaker": {"failure_threshold": 1000},
                "clusters": [{"name": "evil", "tier": "redis", "targets": targets}],
            }
        )
        exporter = start_exporter(stack, config)
        assert exporter.process.popen is not None
        pid = exporter.process.popen.pid
        first = vm_status(pid)
        peak = dict(first)
        deadline = time.monotonic() + 30
        while True:
            exporter.process.check_alive()
            status = vm_status(pid)
            peak = {key: max(peak[key], value) for key, value in status.items()}
            # a normal exporter maps well under 200 MB; each huge header used to map 16 GiB more
            assert peak["VmSize"] < 2 << 30, (
                f"VmSize {first['VmSize'] / MB:.0f} -> {peak['VmSize'] / MB:.0f} MB"
            )
            with urllib.request.urlopen(f"{exporter.url}/metrics", timeout=5) as response:
                text = response.read().decode()
            failures = [
                metric_value(text, "tierwatch_probe_failures_total", target=t["name"], reason="protocol") or 0
                for t in targets
            ]
            if min(failures) >= 5 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert min(failures) >= 5, f"protocol failures per target: {failures}"
        grown = {key: peak[key] - first[key] for key in peak}
        assert grown["VmSize"] < 64 * MB and grown["VmRSS"] < 64 * MB, f"grown by {grown}"

        began = time.monotonic()
        exporter.process.popen.send_signal(signal.SIGTERM)
        exporter.process.popen.wait(30)
        took = time.monotonic() - began
    print(
        f"exporter VmSize {first['VmSize'] / MB:.0f} -> peak {peak['VmSize'] / MB:.0f} MB, "
        f"VmRSS {first['VmRSS'] / MB:.0f} -> peak {peak['VmRSS'] / MB:.0f} MB, SIGTERM exit {took:.2f} s"
    )
    assert took < 5, f"exit took {took:.1f} s after SIGTERM"
