"""The PostgreSQL probe of a Patroni-managed target against a real PostgreSQL and a Patroni REST API that
misbehaves: a stalled, oversized, garbage or wrong-scope answer is ``tierwatch_patroni_up 0`` with its
reason counted, while the PostgreSQL probe succeeds with its own latency and its own samples; in steady
state the Patroni read reuses one connection."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from patroni_api import PRIMARY, REPLICA, json_server, serving

from tierwatch.config import PatroniConfig, PatroniMember
from tierwatch.probes.base import Observation
from tierwatch.probes.patroni import ROLES, SERIES_PER_MEMBER, STATES
from tierwatch.probes.postgres import PostgresProbe

from pg_fixtures import PgCluster, pg_single, value

__all__ = ["pg_single"]


def probe_with(cluster: PgCluster, member: PatroniMember, scope: str | None = "pgmain") -> PostgresProbe:
    info = cluster.info("pg-1", timeout=2.0)
    patroni = PatroniConfig(scope=scope, members=[member], max_body_bytes=64 * 1024)
    info = type(info)(
        tier=info.tier,
        cluster=info.cluster.model_copy(update={"patroni": patroni}),
        target=info.target,
        password=info.password,
        timeout=info.timeout,
    )
    return PostgresProbe(info)


def patroni_samples(obs: Observation) -> dict[tuple[str, tuple[str, ...]], float]:
    return {
        (s.spec.name, s.labels): s.value for s in obs.samples if s.spec.name.startswith("tierwatch_patroni_")
    }


async def probed(
    cluster: PgCluster, respond: Callable[[str, asyncio.StreamWriter], Awaitable[Any]], **kwargs: Any
) -> tuple[Observation, float]:
    """One probe of pg-1 with the API ``respond`` serves: (observation, seconds the probe took)."""
    async with serving(respond, target="pg-1") as (member, _):
        probe = probe_with(cluster, member, **kwargs)
        try:
            started = time.perf_counter()
            obs = await probe.probe()
            return obs, time.perf_counter() - started
        finally:
            await probe.close()


def test_a_good_answer_adds_patronis_view(pg_single: PgCluster) -> None:
    obs, _ = asyncio.run(probed(pg_single, json_server({"/patroni": PRIMARY})))
    assert obs.role == "primary" and value(obs, "tierwatch_pg_timeline") == 1  # the PG probe, intact
    assert value(obs, "tierwatch_patroni_up") == 1
    assert value(obs, "tierwatch_patroni_role", "primary") == 1
    assert value(obs, "tierwatch_patroni_role", "replica") == 0
    assert value(obs, "tierwatch_patroni_state", "running") == 1
    assert value(obs, "tierwatch_patroni_timeline") == 3
    assert value(obs, "tierwatch_patroni_wal_position_bytes") == 67109200
    assert value(obs, "tierwatch_patroni_dcs_last_seen_timestamp_seconds") == 1796677200
    assert value(obs, "tierwatch_patroni_paused") == 0
    assert len(patroni_samples(obs)) == SERIES_PER_MEMBER == 1 + len(ROLES) + len(STATES) + 8

    obs, _ = asyncio.run(probed(pg_single, json_server({"/patroni": REPLICA})))
    assert value(obs, "tierwatch_patroni_role", "replica") == 1
    assert value(obs, "tierwatch_patroni_streaming") == 1
    assert value(obs, "tierwatch_patroni_paused") == 1
    assert value(obs, "tierwatch_patroni_failover_disabled") == 1
    assert value(obs, "tierwatch_patroni_pending_restart") == 1


def test_a_stalled_api_costs_the_pg_probe_nothing(pg_single: PgCluster) -> None:
    async def stall(path: str, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{")
        await asyncio.sleep(30)

    obs, took = asyncio.run(probed(pg_single, stall))
    assert obs.role == "primary"
    assert value(obs, "tierwatch_patroni_up") == 0
    assert value(obs, "tierwatch_patroni_read_failures_total", "timeout") == 1
    assert value(obs, "tierwatch_patroni_role", "primary") is None  # nothing Patroni did not say
    # the Patroni read waited out the probe's own deadline (95 % of 2 s) ...
    assert 1.7 < took < 2.0
    # ... but the latency recorded is the PostgreSQL exchange's own
    assert obs.io_seconds is not None and obs.io_seconds < 0.5


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"role": "primary", "state": "running", "padding": "' + b"x" * 200_000 + b'"}', "protocol"),
        (b"<html>502 Bad Gateway</html>", "protocol"),
        (b'{"role": ["primary"], "state": "running"}', "protocol"),
    ],
    ids=["over-the-cap", "garbage", "wrong-type"],
)
def test_bad_answers_are_up_0_with_their_reason(pg_single: PgCluster, body: bytes, reason: str) -> None:
    obs, _ = asyncio.run(probed(pg_single, json_server({"/patroni": body})))
    assert obs.role == "primary" and value(obs, "tierwatch_pg_server_version_num")
    assert value(obs, "tierwatch_patroni_up") == 0
    assert value(obs, "tierwatch_patroni_read_failures_total", reason) == 1


def test_another_scope_is_not_counted(pg_single: PgCluster) -> None:
    obs, _ = asyncio.run(probed(pg_single, json_server({"/patroni": PRIMARY}), scope="other"))
    assert value(obs, "tierwatch_patroni_up") == 0
    assert value(obs, "tierwatch_patroni_read_failures_total", "scope") == 1
    assert value(obs, "tierwatch_patroni_role", "primary") is None
    obs, _ = asyncio.run(probed(pg_single, json_server({"/patroni": PRIMARY}), scope=None))
    assert value(obs, "tierwatch_patroni_up") == 1  # no scope configured: any scope is taken


def test_steady_state_opens_no_new_connection(pg_single: PgCluster) -> None:
    async def scenario() -> list[int]:
        async with serving(json_server({"/patroni": PRIMARY}), target="pg-1") as (member, accepted):
            probe = probe_with(pg_single, member)
            try:
                for _ in range(10):
                    obs = await probe.probe()
                    assert value(obs, "tierwatch_patroni_up") == 1
            finally:
                await probe.close()
            return accepted

    assert len(asyncio.run(scenario())) == 1
