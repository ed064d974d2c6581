"""The ``recovery:`` section of the tierwatch config: how the recovery service listens, authenticates,
which alert may run which action, its safety limits, and per-cluster action settings."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from ..action_catalog import FAILOVER_ACTIONS, action_names
from ..durations import parse_duration, parse_duration_or_zero

# the names in the action catalogue, as a Literal built at import time (pydantic checks it)
ActionName = Literal[action_names()]  # type: ignore[valid-type]

Duration = Annotated[float, BeforeValidator(parse_duration)]
DurationOrZero = Annotated[float, BeforeValidator(parse_duration_or_zero)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class BasicAuth(_Strict):
    username: Annotated[str, Field(min_length=1)]
    password_file: str


class AuthSettings(_Strict):
    """Exactly one of a bearer token file or basic auth; requests without it get 401."""

    bearer_token_file: str | None = None
    basic: BasicAuth | None = None


class TlsSettings(_Strict):
    cert_file: str
    key_file: str


class RateLimit(_Strict):
    max_actions: Annotated[int, Field(ge=1)] = 3
    per: Duration = 3600.0


class RejoinCommands(_Strict):
    """pg_rejoin: how to stop a returning old primary, rewind it against the new primary and start it
    as a standby; argument lists (no shell) in which ``{primary_host}`` and ``{primary_port}`` are
    replaced by the new primary's address from its target URL (never by anything from an alert)."""

    stop: Annotated[list[str], Field(min_length=1)]
    rewind: Annotated[list[str], Field(min_length=1)]
    start: Annotated[list[str], Field(min_length=1)]


class ClusterRecovery(_Strict):
    """Per-cluster settings of the actions (only the keys an action uses are read)."""

    # service discovery: an HAProxy backend whose servers are named after this cluster's targets;
    # after a failover the new primary's server is set ready and the others maint, on every LB
    write_backend: str | None = None
    # Redis/PostgreSQL: a separate admin credential for promotion and re-pointing replicas
    admin_user: str | None = None
    admin_password_file: str | None = None
    # PostgreSQL: the most WAL a promotion candidate may miss (bytes of replay behind the best)
    max_lag_bytes: Annotated[int, Field(ge=0)] = 16 * 1024 * 1024
    # Redis/PostgreSQL failover: a replica linked to the old primary that heard from it within this
    # long still sees it alive (a witness), and the failover is refused
    witness_max_silence: Duration = 3.0
    # Redis with Sentinel: how long to wait for Sentinel to finish its own failover
    sentinel_wait: Duration = 30.0
    # PostgreSQL with Patroni (``patroni:`` on the cluster): how long to wait for Patroni's election;
    # Patroni's defaults elect within ttl + loop_wait (40 s) of the leader's last update
    patroni_wait: Duration = 45.0
    # restart_instance: an argument list per target (no shell), or a systemd unit per target
    restart_commands: dict[str, list[str]] = {}
    systemd_units: dict[str, str] = {}
    # pg_rejoin: per target, the commands that turn it from a returning old primary into a standby
    rejoin_commands: dict[str, RejoinCommands] = {}
    # traffic: the HAProxy backend of the app servers, weight steps and the error budget per step
    app_backend: str = "be_app"
    weight_steps: list[Annotated[int, Field(ge=0, le=256)]] = [75, 50, 25, 0]
    step_interval: DurationOrZero = 2.0
    max_error_ratio: Annotated[float, Field(ge=0, le=1)] = 0.05
    # cache warm-up: URLs to GET, with bounded concurrency
    warmup_urls: list[str] = []
    warmup_concurrency: Annotated[int, Field(ge=1, le=64)] = 4


class AllowedAction(_Strict):
    """An allow-list entry: the action, and whether a failover may promote outside the old primary's
    region. Crossing regions accepts losing what the other region had not yet received, so it is the
    operator's reviewed config that allows it, never a label of the alert."""

    action: ActionName
    regional: bool = False

    @model_validator(mode="after")
    def _regional_failover_only(self) -> AllowedAction:
        if self.regional and self.action not in FAILOVER_ACTIONS:
            raise ValueError(
                f"regional: true only with a failover action ({', '.join(sorted(FAILOVER_ACTIONS))})"
            )
        return self


def _allow_entry(value: object) -> object:
    """A bare action name is ``{action: NAME}``; an unknown name is named in one clear message."""
    if isinstance(value, str):
        if value not in action_names():
            raise ValueError(f"expected one of {', '.join(repr(n) for n in action_names())}")
        return {"action": value}
    return value


def _etcd_url(value: object) -> object:
    """An etcd client URL: http(s)://host:port, nothing after the port."""
    if not isinstance(value, str) or not re.fullmatch(r"https?://[^/\s]+/?", value):
        raise ValueError("expected an etcd client URL such as http://10.0.0.1:2379")
    return value.rstrip("/")


class HaSettings(_Strict):
    """Several replicas of the service, one acting at a time: the holder of a lease on ``key`` in etcd
    (recovery/lease.py). Without this section the service is the single process that acts."""

    etcd: Annotated[list[Annotated[str, BeforeValidator(_etcd_url)]], Field(min_length=1)]
    key: Annotated[str, Field(min_length=1, pattern=r"^/\S+$")] = "/tierwatch/recovery/leader"
    # the lease's time to live: a dead leader is replaced within about lease_ttl + retry_interval
    lease_ttl: Duration = 10.0
    # how often a follower tries to take the lease (a leader renews it every lease_ttl / 3)
    retry_interval: Duration = 1.0
    # this replica's name in the leader key (default: host name and listen address)
    name: str | None = None

    @model_validator(mode="after")
    def _timings(self) -> HaSettings:
        if not 2.0 <= self.lease_ttl <= 300.0:
            raise ValueError(f"lease_ttl: expected 2s to 5m, got {self.lease_ttl:g}s")
        if not 0.1 <= self.retry_interval <= self.lease_ttl:
            raise ValueError("retry_interval: expected at least 100ms and at most lease_ttl")
        return self


class RecoverySettings(_Strict):
    listen: str = "127.0.0.1:9490"
    state_dir: str = "/var/lib/tierwatch"
    dry_run: bool = False
    auth: AuthSettings = AuthSettings()
    tls: TlsSettings | None = None
    max_body_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 1024 * 1024
    action_timeout: Duration = 60.0
    rate_limit: RateLimit = RateLimit()
    cooldown: DurationOrZero = 600.0
    # instance-level actions wait this long, so a regional failover raised by the same evaluation
    # (the region is gone, not its instances) can supersede them instead of racing them
    settle: DurationOrZero = 1.0
    # alertname -> the one action it may run: a name, or {action, regional} (see AllowedAction)
    allow: dict[str, Annotated[AllowedAction, BeforeValidator(_allow_entry)]] = {}
    clusters: dict[str, ClusterRecovery] = {}
    # labels that only say which Prometheus replica sent an alert: alerts differing only in these are
    # one incident (one action, whatever the number of copies)
    replica_labels: list[str] = ["replica", "prometheus", "prometheus_replica"]
    # HTTP: a request's headers, and its body, must each arrive within read_timeout; at most
    # max_connections are open at once (fewer if the open-file limit is low)
    read_timeout: Duration = 10.0
    max_connections: Annotated[int, Field(ge=8, le=65536)] = 1024
    # high availability: replicas sharing a leader lease in etcd (None: this process alone acts)
    ha: HaSettings | None = None

    def allowed(self, alertname: str) -> AllowedAction | None:
        """The allow-list entry of ``alertname`` (a bare action name is ``regional: false``)."""
        return self.allow.get(alertname)

    def allowed_actions(self) -> set[str]:
        """Every action some alert may run."""
        return {entry.action for entry in self.allow.values()}
