"""What every recovery action gets and returns.

An action re-checks the live state before it changes anything, says when it passes its point of no
return (after which a resolved alert no longer cancels it and a restart of the service verifies
instead of repeating), and verifies its result before reporting success.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from ...config import ClusterConfig, ClusterRecovery, LoadedConfig, RecoverySettings, Secret, TargetConfig
from ...config.secrets import read_secret_file

OutcomeStatus = Literal["succeeded", "failed", "refused"]


@dataclass(frozen=True)
class AlertRef:
    """The alert that asked for the action (labels as Alertmanager sent them; never used in a shell)."""

    alertname: str
    fingerprint: str
    starts_at: str
    labels: dict[str, str]

    @property
    def target(self) -> str | None:
        return self.labels.get("target")

    @property
    def region(self) -> str | None:
        return self.labels.get("region")


@dataclass
class Outcome:
    """How an action ended. ``detail`` is for people and must hold no secret."""

    status: OutcomeStatus
    detail: str
    failover: bool = False
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass
class ActionContext:
    """Everything an action may use. ``audit`` records a step of the decision trail;
    ``point_of_no_return`` must be awaited right before the first irreversible change, with the
    ``decision`` a resumed run must finish rather than make again (a failover: which server it
    promotes), recorded durably with it."""

    loaded: LoadedConfig
    settings: RecoverySettings
    cluster: ClusterConfig
    alert: AlertRef
    dry_run: bool
    audit: Callable[..., None]
    point_of_no_return: Callable[..., Awaitable[None]]
    resumed: bool = False  # True when re-run after a restart that happened past the point of no return
    # resumed: the decision the interrupted run recorded at its point of no return (None: none was)
    decision: dict[str, Any] | None = None
    # a failover may promote a server of another region than the old primary's (the service decides)
    regional: bool = False
    # recovery.ha: the leader's fencing token (etcd revision of its lease key) when the action started;
    # point_of_no_return raises LeaseLost (a BaseException: let it through) once it is no longer held
    fencing_token: int | None = None
    # the audited facts of the cluster's last failover that promoted a server (new_primary,
    # old_primary, ...), or None; read from the audit trail only when an action asks (rejoin)
    last_failover: Callable[[], Awaitable[dict[str, Any] | None]] | None = None
    # recovery.ha: raises LeaseLost once the lease this action started under is no longer held. A
    # failover or a rejoin calls it past its point of no return before each further change (re-pointing
    # a server, moving the write backend, each rejoin command): a leader that was paused or cut off
    # meanwhile leaves the rest to the new leader, which resumes it from the ledger
    still_leading: Callable[[], None] = lambda: None

    @property
    def cluster_settings(self) -> ClusterRecovery:
        return self.settings.clusters.get(self.cluster.name, ClusterRecovery())

    @property
    def password(self) -> Secret | None:
        return self.loaded.password_for(self.cluster.name)

    def admin_password(self) -> Secret | None:
        """The cluster's admin password (``admin_password_file``, read at load time), else the
        monitoring password."""
        resolved = self.loaded.admin_password_for(self.cluster.name)
        if resolved is not None:
            return resolved
        path = self.cluster_settings.admin_password_file
        if path:  # settings not from the loaded file (built by hand): the same reader, now
            return read_secret_file(path, "admin password file")
        return self.password

    def target(self, name: str) -> TargetConfig | None:
        return next((t for t in self.cluster.targets if t.name == name), None)


def refuse(ctx: ActionContext, detail: str, reason: str | None = None) -> Outcome:
    """Audit why the action will not act (``reason``, the fuller account, defaults to ``detail``) and
    return the refusal."""
    ctx.audit("refused", reason=reason or detail)
    return Outcome("refused", detail)


class Action(ABC):
    """A recovery action; ``load_action`` makes a new instance for every run."""

    name: str

    @abstractmethod
    async def run(self, ctx: ActionContext) -> Outcome:
        """Check the live state, act (unless ``ctx.dry_run``), verify; never raise for expected
        refusals — return Outcome('refused', why)."""
