"""Checks that the service-discovery records (``service_discovery:``) tell the truth, on the monitor's
interval, off the probe loop, and exports what it found (section "service_discovery" of the metric
catalogue).

Each round asks the authoritative server (``service_discovery.server``, directly, no recursion:
``clients.dns_update.query_rrset``) for every record whose cluster this exporter watches, at most
``MAX_QUERIES`` at a time, each exchange bounded by ``service_discovery.timeout``, and compares the
RRset with what the monitor sees at that moment:

- a record of a Redis or PostgreSQL cluster (``follows`` primary) matches when it holds exactly the
  value of the one target that is up with the role primary (``tierwatch_role`` times ``tierwatch_up``);
  no live primary, or more than one, and it cannot match;
- a record of an app cluster (``follows`` region) matches when it holds exactly the value of one region
  and that region has at least one app target up.

Values are ``config.service_discovery.record_values`` of the cluster's current targets (discovered ones
included), in the canonical form of ``dns_text`` that answers come in too. A failed query exports
``tierwatch_dns_record_up 0`` (with the check's time and the TTL) and drops ``matches``: an old verdict
would look current. A failure is logged when it starts or changes kind, a mismatch when it starts;
each with the record's name, type and cluster only (never a value, never the key: queries are not
signed).

The ``record`` label is the owner name without its trailing dot (``primary.main-db.tierwatch.test``),
next to ``type`` (A, AAAA, CNAME, SRV) and the cluster's ``tier`` and ``cluster``. The TTL exported is
the answer's (``query_rrset`` reports it), else (an empty answer) ``service_discovery.ttl``, the TTL the
recovery service writes.

Reloads are followed through the monitor's loaded config, compared each second: a changed config
starts a round at once, and the records it no longer has lose their series.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .config import ClusterConfig, LoadedConfig
from .config.service_discovery import (
    DnsRecordConfig,
    ServiceDiscovery,
    follows,
    record_label,
    record_values,
)
from .events import EventLog
from .gauge_families import Add, GaugeCollector
from .metric_catalog import (
    DNS_RECORD_LAST_CHECK,
    DNS_RECORD_MATCHES,
    DNS_RECORD_TTL,
    DNS_RECORD_UP,
)
from .monitor import Monitor, TargetState

if TYPE_CHECKING:
    from .clients.dns_update import RRset

MAX_QUERIES = 16  # records queried at once
RECONCILE_SECONDS = 1.0  # how often a reload is looked for between rounds
PRIMARY_ROLES = frozenset({"primary", "master"})
GRACE_SECONDS = 1.0  # the backstop past ``timeout`` that cancels a query the client did not end

Query = Callable[[tuple[str, int], str, str, float], Awaitable["RRset"]]
RecordKey = tuple[str, str, str]  # (cluster, owner name with its trailing dot, type)


@dataclass(frozen=True)
class Member:
    """What the comparison needs of one target of the record's cluster."""

    name: str
    region: str
    up: bool
    role: str | None


@dataclass(frozen=True)
class Check:
    """One check of one record."""

    tier: str
    ended: float  # Unix time
    ttl: float
    matches: bool | None  # None: the query failed
    failure: str | None = None  # DnsError's kind, or "error"; None: answered
    detail: str | None = None  # DnsError's detail (secret-free, no record data), for the log

    @property
    def up(self) -> bool:
        return self.failure is None


def judge(kind: str, answer: frozenset[str], values: Mapping[str, str], members: Iterable[Member]) -> bool:
    """Whether ``answer`` tells the truth: for ``kind`` "primary" it is exactly the value of the one
    live primary among ``members``; for "region" exactly the value of one region with a member up.
    ``values``: member name (primary) or region (region) -> canonical record data."""
    if kind == "primary":
        live = [m.name for m in members if m.up and m.role in PRIMARY_ROLES]
        if len(live) != 1:
            return False
        value = values.get(live[0])
        return value is not None and answer == {value}
    regions_up = {m.region for m in members if m.up}
    return any(answer == {value} and region in regions_up for region, value in values.items())


class DnsWatch:
    """Keeps every watched record's latest Check, all records checked once per monitor interval."""

    def __init__(self, monitor: Monitor, events: EventLog, query: Query | None = None):
        self.monitor = monitor
        self.events = events
        self._query = query
        self.checks: dict[RecordKey, Check] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Check every record once the monitor finished its first round, then every interval (and at
        once after a reload), until ``stop``."""
        loop = asyncio.get_running_loop()
        if not await self._until(self.monitor.first_round_done.wait(), stop):
            return
        while not stop.is_set():
            started = loop.time()
            loaded = self.monitor.loaded
            if not await self._until(self.check_all(loaded), stop):
                return
            while not stop.is_set() and self.monitor.loaded is loaded:
                left = started + self.monitor.interval - loop.time()
                if left <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), min(left, RECONCILE_SECONDS))

    @staticmethod
    async def _until(work: Awaitable[Any], stop: asyncio.Event) -> bool:
        """Run ``work`` unless ``stop`` comes first (then it is cancelled); True when it finished."""
        task = asyncio.ensure_future(work)
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pending in (task, stopped):
                pending.cancel()
            await asyncio.gather(task, stopped, return_exceptions=True)
        return not stop.is_set() and task.done() and not task.cancelled()

    def records(self, loaded: LoadedConfig) -> list[tuple[RecordKey, DnsRecordConfig, ClusterConfig]]:
        """The records to check: those whose cluster this exporter watches (a shard keeps some), with
        the cluster as the monitor runs it (its discovered targets included)."""
        settings = loaded.config.service_discovery
        if settings is None:
            return []
        found = []
        for record in settings.records:
            state = self.monitor.clusters.get(record.cluster)
            if state is None or follows(state.config.tier) is None:
                continue
            key = (record.cluster, record.fqdn(settings.zone), record.type)
            found.append((key, record, state.config))
        return found

    async def check_all(self, loaded: LoadedConfig) -> None:
        """Check every record of ``loaded`` once, ``MAX_QUERIES`` at a time; drop the others' checks."""
        settings = loaded.config.service_discovery
        records = self.records(loaded)
        wanted = {key for key, _, _ in records}
        for key in list(self.checks):
            if key not in wanted:
                del self.checks[key]
        if settings is None or not records:
            return
        limit = asyncio.Semaphore(MAX_QUERIES)
        # each cluster's target states, gathered once a round: the monitor updates them in place, so a
        # verdict reads them as they are when its answer arrives
        states: dict[str, list[TargetState]] = {}
        for state in self.monitor.states:
            states.setdefault(state.info.cluster.name, []).append(state)

        async def one(key: RecordKey, record: DnsRecordConfig, cluster: ClusterConfig) -> None:
            async with limit:
                check = await self.check(settings, record, cluster, states.get(cluster.name, []))
            if self.monitor.loaded is loaded:  # a reload meanwhile: the next round decides
                self._log(key, check, self.checks.get(key))
                self.checks[key] = check

        await asyncio.gather(*(one(*item) for item in records))

    async def check(
        self,
        settings: ServiceDiscovery,
        record: DnsRecordConfig,
        cluster: ClusterConfig,
        states: Iterable[TargetState],
    ) -> Check:
        """Query one record and compare the answer with ``states``, the monitor's view of its cluster
        (its Sentinels left out by tier)."""
        # the client (and dnspython) is loaded only once a config has records to check
        from .clients.dns_update import DnsError, query_rrset

        tier = cluster.tier
        fqdn = record.fqdn(settings.zone)
        query = self._query or query_rrset
        try:
            async with asyncio.timeout(settings.timeout + GRACE_SECONDS):
                answer = await query(settings.server_address, fqdn, record.type, settings.timeout)
        except DnsError as exc:
            return Check(tier, time.time(), settings.ttl, None, exc.kind, exc.detail)
        except TimeoutError:
            return Check(tier, time.time(), settings.ttl, None, "unavailable", "no answer in time")
        except Exception as exc:  # noqa: BLE001 - a bug in one check must not end the watch
            return Check(tier, time.time(), settings.ttl, None, "error", type(exc).__name__)
        kind = follows(tier)
        values = record_values(record, cluster, settings.zone)  # canonical, as answers are
        members = [
            Member(s.info.name, s.info.region, s.up is True, s.role) for s in states if s.info.tier == tier
        ]
        matches = kind is not None and judge(kind, answer, values, members)
        ttl = answer.ttl
        return Check(tier, time.time(), float(ttl if ttl is not None else settings.ttl), matches)

    def _log(self, key: RecordKey, check: Check, previous: Check | None) -> None:
        """A failure when it starts or changes kind, a recovery once, a mismatch when it starts."""
        cluster, fqdn, rdtype = key
        fields = {"record": record_label(fqdn), "type": rdtype, "cluster": cluster}
        was_failure = previous.failure if previous is not None else None
        if check.failure is not None:
            if check.failure != was_failure:
                self.events.emit("dns_record_check_failed", "warning", **fields, failure=check.failure,
                                 problem=check.detail)  # fmt: skip
            return
        if was_failure is not None:
            self.events.emit("dns_record_check_recovered", **fields)
        was_matching = previous.matches if previous is not None and previous.up else None
        if not check.matches and was_matching is not False:
            self.events.emit("dns_record_mismatch", "warning", **fields)
        elif check.matches and was_matching is False:
            self.events.emit("dns_record_matches", **fields)


class DnsCollector(GaugeCollector):
    """Renders a DnsWatch's checks (four series a record at most)."""

    def __init__(self, watch: DnsWatch):
        self.watch = watch

    def render(self, add: Add) -> None:
        for (cluster, fqdn, rdtype), check in sorted(self.watch.checks.items()):
            labels = [check.tier, cluster, record_label(fqdn), rdtype]
            add(DNS_RECORD_UP, labels, 1 if check.up else 0)
            add(DNS_RECORD_LAST_CHECK, labels, check.ended)
            add(DNS_RECORD_TTL, labels, check.ttl)
            if check.up:
                add(DNS_RECORD_MATCHES, labels, 1 if check.matches else 0)
