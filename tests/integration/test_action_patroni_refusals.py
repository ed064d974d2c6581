"""pg_promote and pg_rejoin on a cluster that says Patroni is in charge, when Patroni's word cannot be
trusted: real PostgreSQL servers (the primary killed, two replicas) and Patroni members that lie (real
HTTP servers, patroni_fakes.py). The action must refuse, audit what each member said, and change
nothing: the replicas stay in recovery. tests/integration/test_action_patroni.py runs a real Patroni."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from patroni_fakes import FakeMember, fake_members

from tierwatch.config import LoadedConfig
from tierwatch.config.recovery import ClusterRecovery
from tierwatch.recovery import metrics as recovery_metrics
from tierwatch.recovery.actions.base import Outcome
from tierwatch.recovery.actions.patroni_election import PATRONI_PAUSED, PATRONI_UNCONFIRMED
from tierwatch.recovery.actions.pg_promote import PgPromote
from tierwatch.recovery.actions.pg_rejoin import PgRejoin
from tierwatch_lab.stack import Stack, free_port

from action_fixtures import ADMIN_ROLE, PgActionCluster, make_context, start_pg_cluster

CLUSTER = "main-db"
ALERT = {"alertname": "PostgresPrimaryDown", "target": "pg-1"}
NAMES = ("pg-1", "pg-2", "pg-3")


@pytest.fixture(scope="module")
def dead_primary() -> Iterator[PgActionCluster]:
    """pg-1 killed (SIGKILL of its postmaster), pg-2 and pg-3 replicas left in recovery; nothing the
    tests run may change that."""
    with Stack() as stack:
        pg = start_pg_cluster(stack, ("pg-2", "pg-3"))
        pg.servers["pg-1"].process.kill()
        yield pg


def ports(pg: PgActionCluster) -> dict[str, int]:
    return {name: server.port for name, server in pg.servers.items()}


def load(
    make_config: Callable[..., LoadedConfig],
    pg: PgActionCluster,
    urls: dict[str, str],
    scope: str | None = "main-db",
) -> LoadedConfig:
    entry = pg.cluster_entry(CLUSTER)
    entry["patroni"] = {"members": [{"target": name, "url": url} for name, url in urls.items()]}
    if scope is not None:
        entry["patroni"]["scope"] = scope
    return make_config([entry])


def settings(pg: PgActionCluster, **extra: Any) -> ClusterRecovery:
    return ClusterRecovery(admin_user=ADMIN_ROLE, admin_password_file=str(pg.admin_password_file), **extra)


def run(action: Any, ctx: Any) -> Outcome:
    return asyncio.run(action.run(ctx))


def unchanged(pg: PgActionCluster) -> None:
    for name in ("pg-2", "pg-3"):
        assert pg.servers[name].in_recovery(), name


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def fakes(pg: PgActionCluster, names: Sequence[str], **said: Any) -> list[FakeMember]:
    return [FakeMember(name, ports(pg), **said) for name in names]


def test_paused_cluster_is_refused_at_once(
    dead_primary: PgActionCluster, make_config: Callable[..., LoadedConfig]
) -> None:
    pg = dead_primary
    with fake_members(fakes(pg, ("pg-2", "pg-3"), leader=None, paused=True)) as (two, three):
        loaded = load(make_config, pg, {"pg-1": closed_port_url(), "pg-2": two.url, "pg-3": three.url})
        ctx, recorder = make_context(loaded, CLUSTER, ALERT, settings=settings(pg, patroni_wait=30))
        started = time.monotonic()
        outcome = run(PgPromote(), ctx)
        took = time.monotonic() - started
    assert outcome.status == "refused", (outcome, recorder.text())
    assert outcome.facts["limit"] == PATRONI_PAUSED and PATRONI_PAUSED in recovery_metrics.LIMITS
    assert "paused" in outcome.detail and "pg-2, pg-3" in outcome.detail
    assert took < 10, took  # not the 30 s patroni_wait
    [paused] = recorder.named("patroni_paused")
    assert paused["paused_by"] == ["pg-2", "pg-3"]
    assert paused["answers"]["pg-1"].startswith("no answer")
    assert recorder.named("refused") and recorder.point_of_no_return_calls == 0
    assert not recorder.named("promoted")
    unchanged(pg)


def test_one_lying_member_is_outvoted_and_nothing_moves(
    dead_primary: PgActionCluster, make_config: Callable[..., LoadedConfig]
) -> None:
    """pg-3's member claims pg-3 leads; the other two still name the dead pg-1: no majority for pg-3."""
    pg = dead_primary
    honest = FakeMember("pg-2", ports(pg), leader="pg-1")
    liar = FakeMember("pg-3", ports(pg), leader="pg-3", role="primary")
    old = FakeMember("pg-1", ports(pg), leader="pg-1", role="primary")
    with fake_members([old, honest, liar]):
        urls = {"pg-1": old.url, "pg-2": honest.url, "pg-3": liar.url}
        ctx, recorder = make_context(
            load(make_config, pg, urls), CLUSTER, ALERT, settings=settings(pg, patroni_wait=2)
        )
        started = time.monotonic()
        outcome = run(PgPromote(), ctx)
        took = time.monotonic() - started
    assert outcome.status == "refused", (outcome, recorder.text())
    assert outcome.facts["limit"] == PATRONI_UNCONFIRMED and PATRONI_UNCONFIRMED in recovery_metrics.LIMITS
    assert "pg-3 named leader by 1 of 3 members (2 needed)" in outcome.detail
    assert 2 <= took < 10, took
    [audit] = recorder.named("patroni_unconfirmed")
    assert set(audit["answers"]) == set(NAMES)
    assert audit["answers"]["pg-3"] == "leader pg-3, itself primary/running"
    assert audit["answers"]["pg-2"] == "leader pg-1, itself replica/running"
    assert recorder.point_of_no_return_calls == 0 and not recorder.named("promoted")
    unchanged(pg)


def test_a_majority_naming_a_server_still_in_recovery_is_refused(
    dead_primary: PgActionCluster, make_config: Callable[..., LoadedConfig]
) -> None:
    """Two members agree pg-2 leads and pg-2's member says primary/running, but pg-2 is in recovery:
    the kit's own PostgreSQL check does not confirm it."""
    pg = dead_primary
    two = FakeMember("pg-2", ports(pg), leader="pg-2", role="primary")
    three = FakeMember("pg-3", ports(pg), leader="pg-2")
    with fake_members([two, three]):
        urls = {"pg-1": closed_port_url(), "pg-2": two.url, "pg-3": three.url}
        ctx, recorder = make_context(
            load(make_config, pg, urls), CLUSTER, ALERT, settings=settings(pg, patroni_wait=1)
        )
        outcome = run(PgPromote(), ctx)
    assert outcome.status == "refused", (outcome, recorder.text())
    assert outcome.facts["limit"] == PATRONI_UNCONFIRMED
    assert "pg-2 named leader by 2 of 3 members but is still in recovery" in outcome.detail
    assert recorder.point_of_no_return_calls == 0
    unchanged(pg)


def test_members_of_another_scope_do_not_vote(
    dead_primary: PgActionCluster, make_config: Callable[..., LoadedConfig]
) -> None:
    pg = dead_primary
    others = fakes(pg, ("pg-2", "pg-3"), leader="pg-2", role="primary", scope="other-db")
    with fake_members(others) as (two, three):
        urls = {"pg-1": closed_port_url(), "pg-2": two.url, "pg-3": three.url}
        ctx, recorder = make_context(
            load(make_config, pg, urls), CLUSTER, ALERT, settings=settings(pg, patroni_wait=1)
        )
        outcome = run(PgPromote(), ctx)
    assert outcome.status == "refused", (outcome, recorder.text())
    assert "no member named a new leader" in outcome.detail
    [audit] = recorder.named("patroni_unconfirmed")
    assert audit["answers"]["pg-2"] == "no answer (reports scope other-db, not main-db)"
    unchanged(pg)


def test_dry_run_says_what_it_would_do_without_waiting(
    dead_primary: PgActionCluster, make_config: Callable[..., LoadedConfig]
) -> None:
    pg = dead_primary
    with fake_members(fakes(pg, ("pg-2", "pg-3"), leader="pg-1")) as (two, three):
        urls = {"pg-1": closed_port_url(), "pg-2": two.url, "pg-3": three.url}
        ctx, recorder = make_context(
            load(make_config, pg, urls), CLUSTER, ALERT, settings=settings(pg, patroni_wait=30), dry_run=True
        )
        started = time.monotonic()
        outcome = run(PgPromote(), ctx)
        took = time.monotonic() - started
    assert outcome.status == "succeeded", (outcome, recorder.text())
    assert outcome.detail == (
        "dry run: Patroni is in charge (no confirmed new leader yet); would move the write backend"
    )
    assert took < 10, took
    [would] = recorder.named("would_wait_for_patroni")
    assert would["answers"]["pg-2"] == "leader pg-1, itself replica/running"
    assert recorder.point_of_no_return_calls == 0
    unchanged(pg)


def test_pg_rejoin_refuses_on_a_patroni_cluster(
    dead_primary: PgActionCluster, make_config: Callable[..., LoadedConfig]
) -> None:
    pg = dead_primary
    urls = {name: closed_port_url() for name in NAMES}
    ctx, recorder = make_context(
        load(make_config, pg, urls), CLUSTER, {"alertname": "PostgresSplitBrain"}, settings=settings(pg)
    )
    outcome = run(PgRejoin(), ctx)
    assert outcome.status == "refused"
    assert outcome.detail == "Patroni is in charge of cluster main-db: it rewinds its own members"
    [refused] = recorder.named("refused")
    assert "never stops or rewinds a Patroni member" in refused["reason"]
    assert recorder.point_of_no_return_calls == 0
