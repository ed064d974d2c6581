"""Who may act: the one worker loop (worker.py) asks its Leadership before it claims an alert, and an
action's point of no return is fenced by the term the action started in.

Patroni's shape: one loop, leadership behind one interface (its ``AbstractDCS``), one backend per file.
``SoloLeadership`` (here) is a single process that always leads; ``EtcdLeadership``
(leadership_etcd.py, ``recovery.ha``) leads while it holds an etcd lease.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import Any

from .inbox import InboxAlert


class LeaseLost(BaseException):
    """The lease is not held (any more): the action must stop before its point of no return.

    A BaseException, like CancelledError, so an action's ``except Exception`` cannot swallow it."""


class Leadership(ABC):
    """What the worker and the execution of an alert need to know about leading."""

    @property
    @abstractmethod
    def term(self) -> int | None:
        """The term this replica leads in, or None while it may not act. A different term than the
        last one seen (even after losing and winning again) means another replica may have acted."""

    @property
    @abstractmethod
    def fencing_token(self) -> int | None:
        """The token an action starting now runs under (its context's ``fencing_token``); None: unfenced."""

    @abstractmethod
    async def keep(self, stop: asyncio.Event) -> None:
        """Campaign for leadership and keep it until ``stop``, then give it up."""

    @abstractmethod
    def resume_at_start(self, leftovers: list[InboxAlert]) -> list[InboxAlert]:
        """Of the alerts a crash left past their point of no return, those to resume (verify-only) at
        once, before the first term."""

    @abstractmethod
    async def take_over(self, running: set[str]) -> list[InboxAlert] | None:
        """At the start of a term: the alerts to resume verify-only (None: not possible yet, try
        again); ``running`` are the keys of the actions under way here."""

    @abstractmethod
    async def not_acting(self, pending: int) -> None:
        """Called while no term is held and ``pending`` alerts wait."""

    @abstractmethod
    async def handled_elsewhere(self, alert: InboxAlert) -> str | None:
        """Why another replica's work makes this alert's action unnecessary, or None. Raises
        LeaseLost when that cannot be known (nothing may be done)."""

    @abstractmethod
    def check(self, token: int | None) -> None:
        """Raise LeaseLost unless the term of ``token`` (an action's fencing token) is still held."""

    @abstractmethod
    async def point_of_no_return(
        self,
        alert: InboxAlert,
        cluster: str,
        action: str,
        token: int | None,
        decision: dict[str, Any] | None = None,
    ) -> None:
        """Record that the action passes its point of no return under ``token``; raises LeaseLost,
        nothing recorded, unless that term is still held."""

    @abstractmethod
    async def finished(self, alert: InboxAlert, outcome: str, failover: dict[str, Any] | None = None) -> None:
        """The alert's action ended with ``outcome`` (``failover``: the server it promoted)."""

    @abstractmethod
    def status(self) -> str:
        """What /ready says once the worker runs."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Fields for the service's start event."""


class SoloLeadership(Leadership):
    """A single process: it always leads, in one term; nothing is fenced and nothing is shared."""

    @property
    def term(self) -> int:
        return 0

    @property
    def fencing_token(self) -> None:
        return None

    async def keep(self, stop: asyncio.Event) -> None:
        return None

    def resume_at_start(self, leftovers: list[InboxAlert]) -> list[InboxAlert]:
        return leftovers

    async def take_over(self, running: set[str]) -> list[InboxAlert]:
        return []

    async def not_acting(self, pending: int) -> None:
        return None

    async def handled_elsewhere(self, alert: InboxAlert) -> None:
        return None

    def check(self, token: int | None) -> None:
        return None

    async def point_of_no_return(
        self,
        alert: InboxAlert,
        cluster: str,
        action: str,
        token: int | None,
        decision: dict[str, Any] | None = None,
    ) -> None:
        return None

    async def finished(self, alert: InboxAlert, outcome: str, failover: dict[str, Any] | None = None) -> None:
        return None

    def status(self) -> str:
        return "ready\n"

    def describe(self) -> dict[str, Any]:
        return {}
