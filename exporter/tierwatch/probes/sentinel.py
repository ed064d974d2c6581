"""Sentinel probe: what one Sentinel believes about the cluster's master, in one pipelined round trip.

The master's address is reported as the configured target it belongs to (``master_target`` takes
only the cluster's target names), never as an address.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import ResponseError

from ..clients.redis import pairs, refuses_password, text
from ..metric_catalog import metric
from .base import Observation, Probe, TargetInfo
from .redis import RedisLink, guarded

# as SENTINEL CKQUORUM counts: "disconnected" alone is a link being re-established, not a down instance
DOWN_FLAGS = frozenset({"s_down", "o_down"})

MASTER_MONITORED = metric(
    "tierwatch_sentinel_master_monitored",
    "gauge",
    "1 if the Sentinel monitors the cluster's master_name, else 0 (then no other sentinel series).",
    section="redis",
)
MASTER_TARGET = metric(
    "tierwatch_sentinel_master_target",
    "gauge",
    "1 for the configured target the Sentinel sees as master, 0 for the cluster's other targets.",
    ("master_target",),
    section="redis",
)
MASTER_UNKNOWN = metric(
    "tierwatch_sentinel_master_address_unknown",
    "gauge",
    "1 if the master address the Sentinel reports matches no configured target of the cluster.",
    section="redis",
)
MASTER_OK = metric(
    "tierwatch_sentinel_master_ok",
    "gauge",
    "1 if the Sentinel sees the master up (no s_down or o_down flag).",
    section="redis",
)
OK_REPLICAS = metric(
    "tierwatch_sentinel_ok_replicas",
    "gauge",
    "Replicas of the master the Sentinel sees up.",
    section="redis",
)
OK_SENTINELS = metric(
    "tierwatch_sentinel_ok_sentinels",
    "gauge",
    "Sentinels monitoring the master that this Sentinel sees up, itself included.",
    section="redis",
)
QUORUM = metric(
    "tierwatch_sentinel_quorum", "gauge", "The configured quorum for the master.", section="redis"
)
QUORUM_REACHABLE = metric(
    "tierwatch_sentinel_quorum_reachable",
    "gauge",
    "1 if SENTINEL CKQUORUM says enough Sentinels are reachable to authorize a failover.",
    section="redis",
)
CONFIG_EPOCH = metric(
    "tierwatch_sentinel_config_epoch",
    "gauge",
    "The master's configuration epoch (goes up with every failover).",
    section="redis",
)
FAILOVER = metric(
    "tierwatch_sentinel_failover_in_progress",
    "gauge",
    "1 while a failover of the master is in progress.",
    section="redis",
)


def _state(flat: Any) -> dict[str, str]:
    """A SENTINEL MASTER/REPLICAS item (flat key-value list) as text."""
    return {key: text(value) for key, value in pairs(flat).items()}


def _flags(state: dict[str, str]) -> set[str]:
    return set(state.get("flags", "").split(","))


class SentinelProbe(Probe):
    """Probes one redis-sentinel about the cluster's ``sentinel.master_name``."""

    def __init__(self, info: TargetInfo):
        super().__init__(info)
        if info.cluster.sentinel is None:
            raise ValueError(f"cluster {info.cluster.name} has no sentinel section")
        self.master_name = info.cluster.sentinel.master_name
        self.link = self._link(with_password=True)
        self._password_refused = False

    def _link(self, *, with_password: bool) -> RedisLink:
        password = self.info.password if with_password else None
        return RedisLink(
            self.info.target.url,
            password,
            self.info.timeout,
            tls_skip_verify=self.info.target.tls_skip_verify,
        )

    async def probe(self, deadline: float | None = None) -> Observation:
        deadline = self.deadline(deadline)
        try:
            return await guarded(self.link, deadline, self._probe())
        except Exception as exc:
            if not self._fall_back_without_password(exc):
                raise
        return await guarded(self.link, deadline, self._probe())  # the same deadline: one probe

    def _fall_back_without_password(self, exc: Exception) -> bool:
        """A Sentinel without requirepass refuses AUTH; then probe it without the cluster's password."""
        if refuses_password(exc) and self.info.password is not None and not self._password_refused:
            self._password_refused = True
            self.link = self._link(with_password=False)
            return True
        return False

    async def _probe(self) -> Observation:
        name = self.master_name
        master, replicas, sentinels, quorum = await self.link.roundtrip(
            [
                ("SENTINEL", "MASTER", name),
                ("SENTINEL", "REPLICAS", name),
                ("SENTINEL", "SENTINELS", name),
                ("SENTINEL", "CKQUORUM", name),
            ]
        )
        obs = Observation()
        if isinstance(master, ResponseError):
            if "no such master" not in str(master).lower():
                raise master
            obs.add(MASTER_MONITORED, 0)
            return obs
        obs.add(MASTER_MONITORED, 1)
        self._observe_master(_state(master), obs)
        obs.add(OK_REPLICAS, _count_ok(replicas))
        obs.add(OK_SENTINELS, 1 + _count_ok(sentinels))
        obs.add(QUORUM_REACHABLE, 0 if isinstance(quorum, ResponseError) else 1)
        return obs

    def _observe_master(self, state: dict[str, str], obs: Observation) -> None:
        port = state.get("port", "")
        current = self.info.peer_by_address(state.get("ip", ""), int(port)) if port.isdigit() else None
        for target in self.info.cluster.targets:
            obs.add(MASTER_TARGET, 1 if target.name == current else 0, target.name)
        obs.add(MASTER_UNKNOWN, 1 if current is None else 0)
        flags = _flags(state)
        obs.add(MASTER_OK, 0 if flags & DOWN_FLAGS else 1)
        obs.add(FAILOVER, 1 if "failover_in_progress" in flags else 0)
        for spec, key in ((QUORUM, "quorum"), (CONFIG_EPOCH, "config-epoch")):
            if state.get(key, "").isdigit():
                obs.add(spec, float(state[key]))

    async def close(self) -> None:
        await self.link.close()


def _count_ok(reply: Any) -> int:
    """Instances in a SENTINEL REPLICAS/SENTINELS reply without a down flag."""
    if isinstance(reply, ResponseError):
        raise reply
    return sum(1 for item in reply or [] if not _flags(_state(item)) & DOWN_FLAGS)
