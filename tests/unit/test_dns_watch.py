"""The exporter's service-discovery check (tierwatch.dns_watch) without a DNS server: the comparison
with the live primary / the regions up, what a failed query exports and logs, the bound on queries in
flight, reloads, shards, and stopping while a query hangs. tests/integration/test_dns_watch_knot.py runs it
against a real Knot DNS."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tierwatch.clients.dns_update import DnsError, RRset
from tierwatch.config import LoadedConfig
from tierwatch.config.shard import Shard, shard_of
from tierwatch.dns_watch import MAX_QUERIES, DnsCollector, DnsWatch, Member, judge
from tierwatch.events import EventLog
from tierwatch.monitor import Monitor

from helpers import metric_value

ZONE = "tierwatch.test."
NODE = "node.tierwatch.test."
PG = {"pg-1": f"0 0 5432 {NODE}", "pg-2": f"0 0 5433 {NODE}", "pg-3": f"0 0 5434 {NODE}"}
APP = {"primary": f"0 0 3001 {NODE}", "failover": f"0 0 3003 {NODE}"}
DB_RECORD = "primary.main-db.tierwatch.test."
APP_RECORD = "app.tierwatch.test."


def srv(port: int) -> str:
    return f"0 0 {port} {NODE}"


# ---- the comparison ----


def members(*spec: tuple[str, str, bool, str | None]) -> list[Member]:
    return [Member(name, region, up, role) for name, region, up, role in spec]


PG_VALUES = {"pg-1": srv(5432), "pg-2": srv(5433)}


@pytest.mark.parametrize(
    ("answer", "targets", "expected"),
    [
        ({srv(5432)}, [("pg-1", "p", True, "primary"), ("pg-2", "p", True, "replica")], True),
        ({srv(5432)}, [("pg-1", "p", True, "master"), ("pg-2", "p", True, "replica")], True),
        # the record names the replica
        ({srv(5433)}, [("pg-1", "p", True, "primary"), ("pg-2", "p", True, "replica")], False),
        # the primary's value and another one: clients would reach both
        ({srv(5432), srv(5433)}, [("pg-1", "p", True, "primary"), ("pg-2", "p", True, "replica")], False),
        (set(), [("pg-1", "p", True, "primary")], False),
        # the last primary is down (its role stays): no live primary, nothing is right
        ({srv(5432)}, [("pg-1", "p", False, "primary"), ("pg-2", "p", True, "replica")], False),
        # two live primaries (split brain): no answer is right
        ({srv(5432)}, [("pg-1", "p", True, "primary"), ("pg-2", "p", True, "primary")], False),
        # the new primary after a failover, the old one down
        ({srv(5433)}, [("pg-1", "p", False, "primary"), ("pg-2", "p", True, "primary")], True),
        # never probed yet
        ({srv(5432)}, [("pg-1", "p", False, None)], False),
        # a live primary without a value (a discovered target the URL gives none for)
        ({srv(5432)}, [("pg-9", "p", True, "primary")], False),
    ],
)
def test_a_primary_record_matches_only_the_one_live_primary(
    answer: set[str], targets: list[Any], expected: bool
) -> None:
    assert judge("primary", frozenset(answer), PG_VALUES, members(*targets)) is expected


APP_VALUES = {"primary": srv(3001), "failover": srv(3003)}


@pytest.mark.parametrize(
    ("answer", "targets", "expected"),
    [
        ({srv(3001)}, [("es-1", "primary", True, None), ("es-3", "failover", True, None)], True),
        ({srv(3003)}, [("es-1", "primary", True, None), ("es-3", "failover", True, None)], True),
        # one app target of the region up is enough
        ({srv(3001)}, [("es-1", "primary", False, None), ("es-2", "primary", True, None)], True),
        # the region named has no target up
        ({srv(3001)}, [("es-1", "primary", False, None), ("es-3", "failover", True, None)], False),
        # both regions at once
        ({srv(3001), srv(3003)}, [("es-1", "primary", True, None), ("es-3", "failover", True, None)], False),
        ({srv(9999)}, [("es-1", "primary", True, None)], False),
        (set(), [("es-1", "primary", True, None)], False),
    ],
)
def test_a_region_record_matches_a_region_with_an_app_target_up(
    answer: set[str], targets: list[Any], expected: bool
) -> None:
    assert judge("region", frozenset(answer), APP_VALUES, members(*targets)) is expected


# ---- the watch, on a monitor that is not running ----


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "dns.key"
    path.write_text("c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3I=\n")
    path.chmod(0o600)
    return path


def sd_config(key_file: Path, records: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    key = {"name": "tierwatch-recovery.", "algorithm": "hmac-sha256", "secret_file": str(key_file)}
    return {"server": "127.0.0.1:53535", "zone": ZONE, "key": key, "ttl": 7, "timeout": "300ms",
            "records": records, **extra}  # fmt: skip


CLUSTERS: list[dict[str, Any]] = [
    {"name": "main-db", "tier": "postgres", "targets": [
        {"name": n, "region": "primary" if n != "pg-3" else "failover",
         "url": f"postgresql://tw@127.0.0.1:{5432 + i}/postgres"} for i, n in enumerate(PG)]},
    {"name": "web", "tier": "app", "targets": [
        {"name": "es-1", "region": "primary", "url": "http://127.0.0.1:3001/health"},
        {"name": "es-3", "region": "failover", "url": "http://127.0.0.1:3003/health"}]},
]  # fmt: skip
RECORDS: list[dict[str, Any]] = [
    {"name": "primary.main-db", "cluster": "main-db", "type": "SRV", "values": PG},
    {"name": "app", "cluster": "web", "type": "SRV", "values": APP},
]


@pytest.fixture
def configure(key_file: Path, make_config: Callable[..., LoadedConfig]) -> Callable[..., LoadedConfig]:
    def build(records: list[dict[str, Any]] = RECORDS, clusters: list[dict[str, Any]] = CLUSTERS,
              **extra: Any) -> LoadedConfig:  # fmt: skip
        return make_config(clusters, service_discovery=sd_config(key_file, records, **extra))

    return build


ANSWER_TTL = 11  # what the fake server answers (the config writes 7)


class FakeServer:
    """Answers query_rrset's calls from ``zone`` ({(name, type): rdata set}), or raises ``fail``."""

    def __init__(self, zone: dict[tuple[str, str], set[str]]):
        self.zone = zone
        self.fail: Exception | None = None
        self.hang = False
        self.calls: list[tuple[tuple[str, int], str, str, float]] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def __call__(self, server: tuple[str, int], name: str, rdtype: str, timeout: float) -> RRset:
        self.calls.append((server, name, rdtype, timeout))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.01)
            if self.hang:
                await asyncio.sleep(3600)
            if self.fail is not None:
                raise self.fail
            values = frozenset(self.zone.get((name, rdtype), set()))
            return RRset.of(values, ANSWER_TTL) if values else RRset()
        finally:
            self.in_flight -= 1


def see(monitor: Monitor, **targets: tuple[bool, str | None]) -> None:
    """Set what the monitor last saw of these targets: name=(up, role)."""
    for state in monitor.states:
        if state.info.name in targets:
            state.up, state.role = targets[state.info.name]


def healthy(monitor: Monitor) -> None:
    see(monitor, **{"pg-1": (True, "primary"), "pg-2": (True, "replica"), "pg-3": (True, "replica")},
        **{"es-1": (True, None), "es-3": (True, None)})  # fmt: skip


def exposition(watch: DnsWatch) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DnsCollector(watch))  # type: ignore[arg-type]
    return generate_latest(registry).decode()


def watch_of(loaded: LoadedConfig, server: FakeServer, log: io.StringIO | None = None) -> DnsWatch:
    monitor = Monitor(loaded, EventLog(stream=io.StringIO()))
    return DnsWatch(monitor, EventLog(stream=log or io.StringIO()), query=server)


DB = {"cluster": "main-db", "record": "primary.main-db.tierwatch.test", "type": "SRV"}
WEB = {"cluster": "web", "record": "app.tierwatch.test", "type": "SRV"}


def test_matching_records_export_one_and_their_labels(configure: Callable[..., LoadedConfig]) -> None:
    server = FakeServer({(DB_RECORD, "SRV"): {PG["pg-1"]}, (APP_RECORD, "SRV"): {APP["primary"]}})
    watch = watch_of(configure(), server)
    healthy(watch.monitor)
    before = time.time()
    asyncio.run(watch.check_all(watch.monitor.loaded))
    text = exposition(watch)
    for labels, tier in ((DB, "postgres"), (WEB, "app")):
        assert metric_value(text, "tierwatch_dns_record_up", tier=tier, **labels) == 1
        assert metric_value(text, "tierwatch_dns_record_matches", tier=tier, **labels) == 1
        assert metric_value(text, "tierwatch_dns_record_ttl_seconds", **labels) == ANSWER_TTL  # the answer's
        checked = metric_value(text, "tierwatch_dns_record_last_check_timestamp_seconds", **labels)
        assert checked is not None and before <= checked <= time.time()
    # asked directly at the configured server, with the owner name and the configured timeout
    assert sorted(server.calls) == sorted(
        [(("127.0.0.1", 53535), DB_RECORD, "SRV", 0.3), (("127.0.0.1", 53535), APP_RECORD, "SRV", 0.3)]
    )
    assert 'record="primary.main-db.tierwatch.test."' not in text  # no trailing dot in the label


def test_the_verdict_follows_the_monitors_view(configure: Callable[..., LoadedConfig]) -> None:
    server = FakeServer({(DB_RECORD, "SRV"): {PG["pg-1"]}, (APP_RECORD, "SRV"): {APP["primary"]}})
    watch = watch_of(configure(), server)
    healthy(watch.monitor)

    def matches() -> tuple[float | None, float | None]:
        asyncio.run(watch.check_all(watch.monitor.loaded))
        text = exposition(watch)
        return (metric_value(text, "tierwatch_dns_record_matches", **DB),
                metric_value(text, "tierwatch_dns_record_matches", **WEB))  # fmt: skip

    assert matches() == (1, 1)
    # pg-1 dies and pg-2 is promoted; the primary region's app server dies: the records are stale
    see(watch.monitor, **{"pg-1": (False, "primary"), "pg-2": (True, "primary"), "es-1": (False, None)})
    assert matches() == (0, 0)
    # the records are moved
    server.zone = {(DB_RECORD, "SRV"): {PG["pg-2"]}, (APP_RECORD, "SRV"): {APP["failover"]}}
    assert matches() == (1, 1)
    # pg-1 comes back as a second primary: no record is right
    see(watch.monitor, **{"pg-1": (True, "primary")})
    assert matches() == (0, 1)
    # by hand, the record is pointed at a replica, then deleted
    see(watch.monitor, **{"pg-1": (True, "replica")})
    assert matches() == (1, 1)
    server.zone[(DB_RECORD, "SRV")] = {PG["pg-3"]}
    assert matches() == (0, 1)
    del server.zone[(DB_RECORD, "SRV")]
    assert matches() == (0, 1)


def test_configured_values_compare_in_canonical_form(configure: Callable[..., LoadedConfig]) -> None:
    """A value written relative to the zone or in capitals is the name the server answers with."""
    records = [{"name": "primary.main-db", "cluster": "main-db", "type": "SRV",
                "values": {"pg-1": "0 0 5432 NODE", "pg-2": "0 0 5433 node", "pg-3": "0 0 5434 node"}},
               {"name": "db-a", "cluster": "main-db", "type": "A"}]  # fmt: skip
    server = FakeServer({(DB_RECORD, "SRV"): {PG["pg-1"]}, ("db-a.tierwatch.test.", "A"): {"127.0.0.1"}})
    watch = watch_of(configure(records), server)
    healthy(watch.monitor)
    asyncio.run(watch.check_all(watch.monitor.loaded))
    text = exposition(watch)
    assert metric_value(text, "tierwatch_dns_record_matches", **DB) == 1
    # A: the value comes from the target's URL (every lab target is on 127.0.0.1)
    labels = {"record": "db-a.tierwatch.test", "type": "A"}
    assert metric_value(text, "tierwatch_dns_record_matches", **labels) == 1


def test_a_name_with_two_types_gives_two_series(configure: Callable[..., LoadedConfig]) -> None:
    records = [{"name": "db", "cluster": "main-db", "type": "A"},
               {"name": "db", "cluster": "main-db", "type": "SRV", "values": PG}]  # fmt: skip
    server = FakeServer({("db.tierwatch.test.", "A"): {"127.0.0.1"}, ("db.tierwatch.test.", "SRV"): set()})
    watch = watch_of(configure(records), server)
    healthy(watch.monitor)
    asyncio.run(watch.check_all(watch.monitor.loaded))
    text = exposition(watch)
    assert metric_value(text, "tierwatch_dns_record_matches", record="db.tierwatch.test", type="A") == 1
    assert metric_value(text, "tierwatch_dns_record_matches", record="db.tierwatch.test", type="SRV") == 0


@pytest.mark.parametrize(
    ("failure", "kind"),
    [
        (DnsError("unavailable", "no answer from 127.0.0.1:53535 within 0.3s"), "unavailable"),
        (DnsError("refused", "REFUSED (the server does not allow this)"), "refused"),
        (DnsError("protocol", "garbled or unexpected answer (FormError)"), "protocol"),
        (RuntimeError("a bug"), "error"),
    ],
)
def test_a_failed_query_is_up_zero_without_a_verdict(
    configure: Callable[..., LoadedConfig], failure: Exception, kind: str
) -> None:
    server = FakeServer({(DB_RECORD, "SRV"): {PG["pg-1"]}, (APP_RECORD, "SRV"): {APP["primary"]}})
    log = io.StringIO()
    watch = watch_of(configure(), server, log)
    healthy(watch.monitor)
    asyncio.run(watch.check_all(watch.monitor.loaded))
    assert metric_value(exposition(watch), "tierwatch_dns_record_matches", **DB) == 1
    server.fail = failure
    asyncio.run(watch.check_all(watch.monitor.loaded))
    text = exposition(watch)
    assert metric_value(text, "tierwatch_dns_record_up", **DB) == 0
    assert metric_value(text, "tierwatch_dns_record_matches", **DB) is None  # no stale verdict
    assert metric_value(text, "tierwatch_dns_record_ttl_seconds", **DB) == 7  # no answer: the configured
    assert metric_value(text, "tierwatch_dns_record_last_check_timestamp_seconds", **DB) is not None
    assert watch.checks["main-db", DB_RECORD, "SRV"].failure == kind
    [line] = [line for line in log.getvalue().splitlines() if "cluster=main-db" in line]
    assert "dns_record_check_failed" in line and f"failure={kind}" in line
    assert "record=primary.main-db.tierwatch.test type=SRV" in line


def test_failures_are_logged_when_they_start_or_change_never_with_values(
    configure: Callable[..., LoadedConfig], key_file: Path
) -> None:
    server = FakeServer({(DB_RECORD, "SRV"): {PG["pg-1"]}, (APP_RECORD, "SRV"): {APP["primary"]}})
    log = io.StringIO()
    watch = watch_of(configure(), server, log)
    healthy(watch.monitor)

    def events(records: str = "cluster=main-db") -> list[str]:
        asyncio.run(watch.check_all(watch.monitor.loaded))
        lines = log.getvalue().splitlines()
        log.seek(0)
        log.truncate()
        return [line.split()[2] for line in lines if records in line]

    assert events() == []  # matching from the start: nothing to say
    server.fail = DnsError("unavailable", "no answer from 127.0.0.1:53535 within 0.3s")
    assert events() == ["dns_record_check_failed"]
    assert events() == []  # the same failure again
    server.fail = DnsError("refused", "NOTAUTH (bad TSIG key?)")
    assert events() == ["dns_record_check_failed"]  # another kind
    server.fail = None
    assert events() == ["dns_record_check_recovered"]
    see(watch.monitor, **{"pg-1": (True, "replica"), "pg-2": (True, "primary")})
    assert events() == ["dns_record_mismatch"]
    assert events() == []
    server.zone[DB_RECORD, "SRV"] = {PG["pg-2"]}
    assert events() == ["dns_record_matches"]
    server.zone[DB_RECORD, "SRV"] = {PG["pg-3"]}
    server.fail = DnsError("unavailable", "connection to 127.0.0.1:53535 refused")
    events()
    server.fail = None
    assert events() == ["dns_record_check_recovered", "dns_record_mismatch"]
    text = log.getvalue()
    secrets = (key_file.read_text().strip(), str(key_file))
    for value in ("5432", "5433", "5434", "node.tierwatch.test", *secrets):
        assert value not in text


def test_a_hanging_query_ends_at_the_timeout(configure: Callable[..., LoadedConfig]) -> None:
    server = FakeServer({})
    server.hang = True
    watch = watch_of(configure(), server)
    healthy(watch.monitor)
    started = time.monotonic()
    asyncio.run(watch.check_all(watch.monitor.loaded))
    assert time.monotonic() - started < 0.3 + 1.0 + 0.5  # timeout + the backstop's grace
    assert {check.failure for check in watch.checks.values()} == {"unavailable"}


def test_queries_in_flight_are_bounded(configure: Callable[..., LoadedConfig]) -> None:
    records = [{"name": f"r{i}.db", "cluster": "main-db", "type": "SRV", "values": PG} for i in range(40)]
    server = FakeServer({(f"r{i}.db.tierwatch.test.", "SRV"): {PG["pg-1"]} for i in range(40)})
    watch = watch_of(configure(records), server)
    healthy(watch.monitor)
    asyncio.run(watch.check_all(watch.monitor.loaded))
    assert len(server.calls) == 40
    assert 1 < server.most_in_flight <= MAX_QUERIES
    assert all(check.matches for check in watch.checks.values())


def test_records_of_clusters_of_another_shard_are_left_out(configure: Callable[..., LoadedConfig]) -> None:
    loaded = configure()
    assert shard_of("main-db", 3) != shard_of("web", 3)
    shard = Shard(shard_of("web", 3), 3)  # web's shard: main-db is another exporter's
    server = FakeServer({(DB_RECORD, "SRV"): {PG["pg-1"]}, (APP_RECORD, "SRV"): {APP["primary"]}})
    watch = watch_of(shard.apply(loaded), server)
    healthy(watch.monitor)
    asyncio.run(watch.check_all(watch.monitor.loaded))
    assert list(watch.checks) == [("web", APP_RECORD, "SRV")]
    assert [call[1] for call in server.calls] == [APP_RECORD]


def test_no_service_discovery_no_series(make_config: Callable[..., LoadedConfig]) -> None:
    server = FakeServer({})
    watch = watch_of(make_config(CLUSTERS), server)
    asyncio.run(watch.check_all(watch.monitor.loaded))
    assert watch.checks == {} and server.calls == []
    assert exposition(watch) == ""


# ---- the watch running: interval, reloads, stop ----


async def until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_the_watch_runs_every_interval_and_follows_reloads(configure: Callable[..., LoadedConfig]) -> None:
    server = FakeServer({(DB_RECORD, "SRV"): {PG["pg-1"]}, (APP_RECORD, "SRV"): {APP["primary"]}})
    watch = watch_of(configure(), server)
    monitor = watch.monitor
    healthy(monitor)
    other = {"name": "other.main-db", "cluster": "main-db", "type": "SRV", "values": PG}

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(watch.run(stop))
        await asyncio.sleep(0.3)
        assert server.calls == []  # nothing before the monitor's first round
        monitor.first_round_done.set()
        await until(lambda: len(watch.checks) == 2, 2)
        first = len(server.calls)
        await asyncio.sleep(1.5)  # interval 1s: one or two more rounds, not a busy loop
        assert 2 <= len(server.calls) - first <= 4
        # a reload drops the app record and adds another: checked at once, not an interval later
        reloaded = configure([RECORDS[0], other])
        await monitor.apply(reloaded)
        await until(lambda: ("main-db", "other.main-db.tierwatch.test.", "SRV") in watch.checks, 0.9)
        assert ("web", APP_RECORD, "SRV") not in watch.checks
        assert "app.tierwatch.test" not in exposition(watch)
        # the reload that removes the section removes every series
        await monitor.apply(dataclasses.replace(reloaded, config=reloaded.config.model_copy(
            update={"service_discovery": None})))  # fmt: skip
        await until(lambda: not watch.checks, 2)
        stop.set()
        await asyncio.wait_for(task, 2)

    asyncio.run(scenario())
    assert exposition(watch) == ""


def test_stopping_cancels_a_hanging_query(configure: Callable[..., LoadedConfig]) -> None:
    server = FakeServer({})
    server.hang = True
    watch = watch_of(configure(timeout="10s"), server)
    watch.monitor.first_round_done.set()

    async def scenario() -> float:
        stop = asyncio.Event()
        task = asyncio.create_task(watch.run(stop))
        await until(lambda: server.in_flight == 2, 2)
        started = time.monotonic()
        stop.set()
        await asyncio.wait_for(task, 2)
        assert server.in_flight == 0
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 0.5
