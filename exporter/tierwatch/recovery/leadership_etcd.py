"""Leadership of the recovery service's replicas (``recovery.ha``): every replica records the
notifications it receives in its own inbox; only the holder of the etcd lease (lease.py) runs actions.

The ledger in etcd, next to the leader key (``<key>/ledger/``), is what the replicas share:

- ``ponr/<alert key>``: written at an action's point of no return, in a transaction fenced by the
  leader's token (so a replica that lost the lease cannot pass it), with the alert and the run, so a
  new leader can resume it verify-only and count it in its rate limit and cooldown;
- ``done/<incident>/<alert key>``: written when an alert's action ends, so a new leader does not
  run what another replica finished, nor another copy of the same incident (an HA Prometheus pair's);
  with the server a failover promoted, so a rejoin on any replica follows it.

A new leader first reads the ledger (takeover): it counts the runs, marks what others finished, and
resumes verify-only what another replica left past its point of no return. Every other alert then runs
as usual, and the action's own live re-check decides whether anything is still to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from ..clients.etcd import EtcdError
from ..config.recovery import HaSettings
from ..events import EventLog
from . import metrics as m
from .audit import AuditTrail
from .inbox import Inbox, InboxAlert, starts_at_epoch
from .leadership import Leadership, LeaseLost
from .lease import LeaderLease

# how long ledger records are kept (a new leader drops older ones): well beyond any rate-limit window
LEDGER_KEEP = 7 * 86400.0


class EtcdLeadership(Leadership):
    """Leads while holding the etcd lease: the lease, the shared ledger and the replica's two metrics."""

    def __init__(
        self,
        settings: HaSettings,
        inbox: Inbox,
        audit: AuditTrail,
        events: EventLog,
        registry: CollectorRegistry,
    ):
        identity = settings.name or f"{socket.gethostname()}/{os.getpid()}"
        self.inbox, self.audit, self.events = inbox, audit, events
        self.ledger = settings.key.rstrip("/") + "/ledger/"
        self.leader = Gauge(m.LEADER.name, m.LEADER.help, registry=registry)
        self.lost = Counter(
            m.LEASE_LOST_TOTAL.name.removesuffix("_total"), m.LEASE_LOST_TOTAL.help, registry=registry
        )
        self.lease = LeaderLease(settings, identity, events, self._changed)
        self._not_acting: str | None = None

    def _changed(self, leader: bool, why: str) -> None:
        self.leader.set(1 if leader else 0)
        if leader:
            self.audit.record("lease_acquired", token=self.lease.last_token, replica=self.lease.identity)
        else:
            self.lost.inc()
            self.audit.record("lease_lost", reason=why[:200], replica=self.lease.identity)

    @property
    def term(self) -> int | None:
        return self.lease.token

    @property
    def fencing_token(self) -> int | None:
        return self.lease.token

    async def keep(self, stop: asyncio.Event) -> None:
        await self.lease.run(stop)

    def resume_at_start(self, leftovers: list[InboxAlert]) -> list[InboxAlert]:
        """None at once: they wait for a term, whose takeover resumes them with the ledger's."""
        return []

    async def take_over(self, running: set[str]) -> list[InboxAlert] | None:
        """Read the ledger and bring the inbox up to date with it; the alerts to resume verify-only
        (None: etcd could not be read, try again)."""
        try:
            ponr = await self.lease.records(self.ledger + "ponr/")
            done = await self.lease.records(self.ledger + "done/")
        except EtcdError as exc:
            self.events.emit("takeover_delayed", "warning", error=str(exc)[:200])
            return None
        # a record this version cannot read is skipped, not fatal (written by hand, or by another version)
        ponr = [
            (k, r) for k, r in ponr if _fields(r, {"key": str, "cluster": str, "action": str, "at": float})
        ]
        done = [(k, r) for k, r in done if _fields(r, {"key": str, "at": float})]
        old = time.time() - LEDGER_KEEP
        for key, rec in [*ponr, *done]:
            if float(rec.get("at", 0)) < old:
                with contextlib.suppress(EtcdError):
                    await self.lease.client.delete(key)
        finished = {
            rec["key"]: f"finished by {rec.get('replica', '?')}: {rec.get('outcome')}" for _, rec in done
        }
        runs = [(rec["key"], rec["cluster"], rec["action"], float(rec["at"])) for _, rec in ponr]
        adopt = [rec for _, rec in ponr if rec["key"] not in finished]
        await asyncio.to_thread(self.inbox.import_runs, runs)
        for _, rec in done:
            promoted = rec.get("failover")
            if isinstance(promoted, dict) and isinstance(promoted.get("new_primary"), str):
                old = promoted.get("old_primary")
                await asyncio.to_thread(
                    self.inbox.record_failover,
                    rec["key"],
                    str(promoted.get("cluster", "")),
                    promoted["new_primary"],
                    old if isinstance(old, str) else None,
                    float(rec["at"]),
                )
        resumes = await asyncio.to_thread(self.inbox.reconcile, finished, adopt, running)
        self.audit.record(
            "takeover",
            token=self.lease.last_token,
            finished_elsewhere=len(finished),
            resumed=[alert.key for alert in resumes],
        )
        return resumes

    async def handled_elsewhere(self, alert: InboxAlert) -> str | None:
        """Why another replica's work makes this alert's action unnecessary, or None. Raises LeaseLost
        when the ledger cannot be read (no quorum: nothing may be done)."""
        try:
            records = await self.lease.records(f"{self.ledger}done/{alert.incident}/")
        except EtcdError as exc:
            raise LeaseLost(f"ledger unreadable: {exc}") from None
        started = starts_at_epoch(alert.starts_at) or 0.0
        for _, rec in records:
            by = f"{rec.get('replica', '?')} ({rec.get('outcome')})"
            if rec.get("key") == alert.key:
                return f"finished by {by}"
            if rec.get("outcome") in ("refused", "cancelled"):  # it did nothing: this copy is checked anew
                continue
            if started and _fields(rec, {"at": float}) and float(rec["at"]) >= started:
                return f"another copy of the incident, finished by {by} after this alert started firing"
        return None

    def check(self, token: int | None) -> None:
        if self.lease.token != token:
            raise LeaseLost(self.lease.problem or f"the lease of token {token} is no longer held")

    async def point_of_no_return(
        self,
        alert: InboxAlert,
        cluster: str,
        action: str,
        token: int | None,
        decision: dict[str, Any] | None = None,
    ) -> None:
        """Record the run (and its ``decision``, which a new leader's resumed run finishes) in the
        ledger, fenced by ``token`` (the lease the action started under); raises LeaseLost, nothing
        written, unless this replica still holds that very lease."""
        if token is None or token != self.lease.token:
            raise LeaseLost(self.lease.problem or f"the lease of token {token} is no longer held")
        record = {
            "key": alert.key,
            "incident": alert.incident,
            "alertname": alert.alertname,
            "fingerprint": alert.fingerprint,
            "starts_at": alert.starts_at,
            "labels": alert.labels,
            "cluster": cluster,
            "action": action,
            "at": time.time(),
            "token": token,
            "replica": self.lease.identity,
            **({"decision": decision} if decision else {}),
        }
        if not await self.lease.fenced(token, [(f"{self.ledger}ponr/{alert.key}", json.dumps(record))]):
            raise LeaseLost(f"the leader key no longer has revision {token}")

    async def finished(self, alert: InboxAlert, outcome: str, failover: dict[str, Any] | None = None) -> None:
        """Tell the other replicas this alert is done, and which server it promoted (best effort:
        without it a new leader re-checks the live state and finds nothing to do)."""
        record: dict[str, Any] = {
            "key": alert.key,
            "outcome": outcome,
            "at": time.time(),
            "replica": self.lease.identity,
        }
        if failover:
            record["failover"] = {**failover, "cluster": alert.labels.get("cluster", "")}
        await self.lease.put(f"{self.ledger}done/{alert.incident}/{alert.key}", json.dumps(record))

    async def not_acting(self, pending: int) -> None:
        """Audit once per cause that alerts wait because this replica may not act."""
        why = self.lease.problem
        if pending and why and why != self._not_acting:
            self.audit.record("not_acting", reason=why[:200], pending=pending)
            self.events.emit("not_acting", "error", reason=why[:200], pending=pending)
        self._not_acting = why if pending else None

    def status(self) -> str:
        return f"ready: {self.lease.status()}\n"

    def describe(self) -> dict[str, Any]:
        return {"ha": "etcd", "replica": self.lease.identity, "lease_ttl": self.lease.settings.lease_ttl}


def _fields(record: object, kinds: dict[str, type]) -> bool:
    """Whether a ledger record is a mapping with these fields of these types (ints count as floats)."""
    if not isinstance(record, dict):
        return False
    for name, kind in kinds.items():
        value = record.get(name)
        ok = (
            isinstance(value, int | float) and not isinstance(value, bool)
            if kind is float
            else isinstance(value, kind)
        )
        if not ok:
            return False
    return True
