"""The leader lease of the recovery service's replicas, in etcd (``recovery.ha``).

Election, as Patroni does it: a follower reads the leader key; when it is gone it grants a lease of
``lease_ttl`` and creates the key attached to it in a transaction whose compare is "the key's create
revision is 0" (it does not exist). The winner's key create revision is the **fencing token**: it only
grows, so a later leader always holds a larger one. The leader renews the lease every ``lease_ttl / 3``.

A leader counts itself leader only until ``sent + TTL`` of its last successful renewal (``sent`` is the
time the renewal was sent, so the local deadline always falls before etcd's expiry): a leader cut off
from etcd, or an etcd without quorum, stops acting before anyone else can take over. Takeover time is
therefore at most ``lease_ttl`` (the old lease expiring) plus ``retry_interval`` (a follower's next try).

``fenced`` runs a transaction whose compare is "the leader key still has my create revision": the
point of no return of an action writes its ledger record that way, so a replica that lost the lease
cannot pass it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

from ..clients.etcd import EtcdClient, EtcdError, compare_create, op_put, op_range
from ..config.recovery import HaSettings
from ..events import EventLog
from .leadership import LeaseLost

__all__ = ["LeaderLease", "LeaseLost"]  # LeaseLost is the Leadership interface's; imported from here too


class LeaderLease:
    """Campaigns for and keeps the leader key; ``token`` is the fencing token while leader."""

    def __init__(
        self,
        settings: HaSettings,
        identity: str,
        events: EventLog,
        on_change: Callable[[bool, str], None] = lambda _leader, _why: None,
    ):
        self.settings = settings
        self.key = settings.key
        self.identity = identity
        self.events = events
        self.on_change = on_change
        self.client = EtcdClient(settings.etcd, timeout=min(settings.lease_ttl / 3, 3.0))
        self._lease = 0
        self._token = 0
        self._deadline = 0.0
        self._leading = False  # as last reported through on_change
        self.holder: str | None = None  # the leader's identity, as last read
        self.problem: str | None = None  # why etcd could not be used, as last seen
        self.lost_reason: str | None = None  # why the lease was found lost, until reported

    @property
    def token(self) -> int | None:
        """The fencing token while this replica holds the lease (and its deadline has not passed)."""
        if self._lease and self._token and time.monotonic() < self._deadline:
            return self._token
        return None

    @property
    def last_token(self) -> int:
        """The fencing token of the lease last won (0: none), also once its deadline has passed."""
        return self._token

    def status(self) -> str:
        """leader/follower, for /ready and the logs."""
        if self.token is not None:
            return f"leader (token {self._token})"
        if self.problem:
            return f"follower: not acting, etcd unavailable ({self.problem})"
        return f"follower (leader: {self.holder or 'none yet'})"

    async def run(self, stop: asyncio.Event) -> None:
        """Campaign and renew until ``stop``; then give the lease up so another replica takes over now."""
        ttl = self.settings.lease_ttl
        while not stop.is_set():
            if self._lease:
                # a renewal that cannot finish before the deadline is a failed one: report the loss
                # on time even when every member is slow to refuse
                budget = max(0.1, self._deadline - time.monotonic())
                try:
                    async with asyncio.timeout(budget):
                        await self._renew()
                except TimeoutError:
                    self._unavailable(f"no etcd answer within the lease's remaining {budget:.1f}s")
                pause = ttl / 3 if self.problem is None else min(ttl / 6, 1.0)
            else:
                await self._campaign()
                pause = self.settings.retry_interval
            self._report()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)
        await self.resign()

    def _report(self) -> None:
        """Tell on_change when leadership starts or ends (also when the deadline passed silently)."""
        leading = self.token is not None
        if leading != self._leading:
            self._leading = leading
            why = "lease acquired" if leading else (self.problem or self.lost_reason or "lease lost")
            self.lost_reason = None
            self.events.emit(
                "lease_acquired" if leading else "lease_lost",
                "info" if leading else "warning",
                key=self.key,
                token=self._token,
                reason=why,
            )
            self.on_change(leading, why)
        if not leading and self._lease and time.monotonic() >= self._deadline:
            self._lease, self._token = 0, 0  # the lease is gone (or as good as): campaign anew

    async def _campaign(self) -> None:
        try:
            [current] = await self.client.range(self.key) or [None]
            if current is not None:
                self.holder, self.problem = current.value.decode(errors="replace"), None
                return
            sent = time.monotonic()
            lease, granted = await self.client.grant(self.settings.lease_ttl)
            result = await self.client.txn(
                [compare_create(self.key, 0)], [op_put(self.key, self.identity, lease)], [op_range(self.key)]
            )
        except EtcdError as exc:
            self._unavailable(str(exc))
            return
        self.problem = None
        if result.succeeded:
            self._lease, self._token, self._deadline = lease, result.revision, sent + granted
            self.holder = self.identity
            return
        self.holder = result.kvs[0].value.decode(errors="replace") if result.kvs else None
        with contextlib.suppress(EtcdError):
            await self.client.revoke(lease)

    async def _renew(self) -> None:
        """Keep the lease alive and check the key is still ours (deleted or replaced by hand, or by a
        replica that saw the lease expire while this one was paused: then this one is no leader)."""
        sent = time.monotonic()
        try:
            remaining = await self.client.keepalive(self._lease)
            [current] = await self.client.range(self.key) or [None]
        except EtcdError as exc:
            self._unavailable(str(exc))
            return
        self.problem = None
        if remaining <= 0:
            self._lose("the lease expired in etcd")
        elif current is None or current.create_revision != self._token:
            self.holder = current.value.decode(errors="replace") if current else None
            self._lose(f"the leader key is no longer ours (holder: {self.holder or 'none'})")
            with contextlib.suppress(EtcdError):
                await self.client.revoke(self._lease)
        else:
            self._deadline = sent + remaining

    def _lose(self, why: str) -> None:
        self.lost_reason = why
        self._deadline = 0.0

    def _unavailable(self, detail: str) -> None:
        if self.problem != detail:
            self.events.emit("etcd_unavailable", "warning", key=self.key, error=detail[:200])
        self.problem = detail

    async def fenced(self, token: int, puts: list[tuple[str, str]]) -> bool:
        """Write ``puts`` only if the leader key still has create revision ``token`` (one
        transaction); False if it does not (or etcd cannot tell: no quorum)."""
        try:
            result = await self.client.txn(
                [compare_create(self.key, token)], [op_put(key, value) for key, value in puts], []
            )
        except EtcdError as exc:
            self._unavailable(str(exc))
            return False
        return result.succeeded

    async def put(self, key: str, value: str) -> bool:
        """A best-effort unfenced write (a record anyone may read); False if etcd refused it."""
        try:
            await self.client.put(key, value)
        except EtcdError as exc:
            self._unavailable(str(exc))
            return False
        return True

    async def records(self, prefix: str) -> list[tuple[str, dict[str, Any]]]:
        """(key, decoded JSON) of every record under ``prefix``; raises EtcdError."""
        found = []
        for kv in await self.client.range(prefix, prefix=True):
            with contextlib.suppress(ValueError):
                record = json.loads(kv.value)
                if isinstance(record, dict):  # anything else is not a record of ours
                    found.append((kv.key, record))
        return found

    async def resign(self) -> None:
        """Give up the lease (its key goes with it) and close the client."""
        if self._lease:
            with contextlib.suppress(EtcdError):
                await self.client.revoke(self._lease)
            self._lease, self._token = 0, 0
            self._report()
        await self.client.close()
