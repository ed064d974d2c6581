"""Service discovery through DNS: after a failover, move the cluster's records (``service_discovery``)
to the new primary or the region that now serves, by RFC 2136 updates signed with TSIG.

Each record is a compare-and-swap: the update carries the prerequisite that the record still holds
exactly what was read just before, and that read must be the value of the server (or region) the
failover moved away from, or of a member the run saw not answering (a record the kit moved to a
primary that died since) — or, when neither is known (a resumed run), of another member of the
cluster. A record that holds anything else was changed by someone else and is not overwritten:
the step fails (``conflict``), audited; the failover itself stands. Before each update the lease is
checked (``ctx.still_leading``), so a paused leader that lost it never publishes; and since the new
leader moved the record first, the prerequisite refuses the stale leader's update anyway.

A server that does not answer or refuses is retried until ``update_timeout``; every update is
verified by reading the record back from the same server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..clients.dns_update import DnsError, TsigKey, query_rrset, replace_rrset
from ..config.service_discovery import DnsRecordConfig, ServiceDiscovery, record_values
from .actions.base import ActionContext, Outcome

OK_RESULTS = frozenset({"updated", "unchanged"})
RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0)  # then every 2 s until update_timeout


@dataclass
class DnsResults:
    """Per record (absolute name) the step's result, and the problems for people."""

    results: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(result in OK_RESULTS for result in self.results.values())


def cluster_records(ctx: ActionContext) -> list[DnsRecordConfig]:
    """The records of the action's cluster (none without ``service_discovery``)."""
    settings = ctx.loaded.config.service_discovery
    if settings is None:
        return []
    return [r for r in settings.records if r.cluster == ctx.cluster.name]


async def publish(
    ctx: ActionContext, new: str, old: str | None, gone: Iterable[str] = ()
) -> DnsResults | None:
    """Point every record of the cluster at member ``new`` (a target for a primary record, a region
    for an app record), moving away from ``old`` or from one of the members ``gone`` (those the run
    saw not answering: a record naming one of them is stale, not someone else's); None when the
    cluster has no records. Raises LeaseLost once this replica no longer leads."""
    settings = ctx.loaded.config.service_discovery
    records = cluster_records(ctx)
    if settings is None or not records:
        return None
    ctx.still_leading()  # a leader that lost its lease does not even read: the new one owns the step
    secret = ctx.loaded.dns_key_secret()
    out = DnsResults()
    if secret is None:  # loaded without secrets (a dry check): nothing can be signed
        for record in records:
            out.results[record.fqdn(settings.zone)] = "refused"
        out.problems.append("no TSIG key loaded")
        return out
    key = TsigKey(settings.key.name, settings.key.algorithm, secret)
    deadline = time.monotonic() + settings.update_timeout
    for record in records:
        fqdn = record.fqdn(settings.zone)
        result, problem = await _publish_one(ctx, settings, key, record, new, old, set(gone), deadline)
        out.results[fqdn] = result
        if problem:
            out.problems.append(f"{fqdn}: {problem}")
    return out


async def _publish_one(
    ctx: ActionContext,
    settings: ServiceDiscovery,
    key: TsigKey,
    record: DnsRecordConfig,
    new: str,
    old: str | None,
    gone: set[str],
    deadline: float,
) -> tuple[str, str | None]:
    """(result, problem) of moving one record to ``new``."""
    fqdn = record.fqdn(settings.zone)
    values = record_values(record, ctx.cluster, settings.zone)
    wanted = values.get(new)
    if wanted is None:
        why = f"no {record.type} value for {new}"
        ctx.audit("dns_update_failed", record=fqdn, result="no_value", error=why)
        return "no_value", why
    if old is None and not gone:  # a resumed run that knows nothing: any other member's value
        previous = set(values.values()) - {wanted}
    else:
        previous = {values[m] for m in {old, *gone} if m is not None and m in values} - {wanted}
    server = settings.server_address
    started = time.monotonic()
    attempts = 0
    last: DnsError | None = None
    while True:
        attempts += 1
        try:
            current = await query_rrset(server, fqdn, record.type, settings.timeout)
            if current == {wanted}:
                ctx.audit("dns_unchanged", record=fqdn, value=wanted, attempts=attempts)
                return "unchanged", None
            if current and not (len(current) == 1 and current <= previous):
                why = f"holds {sorted(current)}, not the value of {old or 'a member'} or of one not answering"
                ctx.audit("dns_update_failed", record=fqdn, result="conflict", error=why)
                return "conflict", f"changed by someone else ({why}); not overwritten"
            ctx.still_leading()
            ctx.audit(
                "dns_updating", record=fqdn, type=record.type, old=sorted(current), new=wanted, member=new
            )
            await replace_rrset(
                server,
                settings.zone,
                key,
                fqdn,
                record.type,
                settings.ttl,
                current,
                frozenset({wanted}),
                settings.timeout,
            )
            await _read_back(server, fqdn, record.type, wanted, settings.timeout, deadline)
            seconds = round(time.monotonic() - started, 3)
            ctx.audit(
                "dns_updated", record=fqdn, value=wanted, ttl=settings.ttl, seconds=seconds, attempts=attempts
            )
            return "updated", None
        except DnsError as exc:  # down, refusing, or changed between the read and the update: again
            last = exc
            ctx.audit("dns_retry", record=fqdn, kind=exc.kind, error=str(exc), attempt=attempts)
        delay = RETRY_DELAYS[min(attempts - 1, len(RETRY_DELAYS) - 1)]
        if time.monotonic() + delay >= deadline:
            break
        await asyncio.sleep(delay)
    assert last is not None
    ctx.audit("dns_update_failed", record=fqdn, result=last.kind, error=str(last), attempts=attempts)
    return last.kind, f"{last} (after {attempts} attempts)"


async def _read_back(
    server: tuple[str, int], fqdn: str, rdtype: str, wanted: str, timeout: float, deadline: float
) -> None:
    """Wait until ``server`` answers ``wanted`` for the record; DnsError("protocol") if it never does."""
    while True:
        current = await query_rrset(server, fqdn, rdtype, timeout)
        if current == {wanted}:
            return
        if time.monotonic() >= deadline:
            raise DnsError("protocol", f"the server answers {sorted(current)} after the update")
        await asyncio.sleep(0.05)


def with_dns(outcome: Outcome, results: DnsResults | None, after_s: float | None = None) -> Outcome:
    """``outcome`` with the step's results in its facts (``dns``: record → result, ``dns_after_s``:
    seconds from the promotion to the records published); a succeeded outcome becomes failed when a
    record could not be moved (the failover itself stands)."""
    if results is None:
        return outcome
    outcome.facts["dns"] = dict(results.results)
    if after_s is not None and results.ok:
        outcome.facts["dns_after_s"] = round(after_s, 3)
    if results.ok or outcome.status != "succeeded":
        return outcome
    detail = f"{outcome.detail}; DNS not updated: {'; '.join(results.problems)}"
    return Outcome("failed", detail, failover=outcome.failover, facts=outcome.facts)
