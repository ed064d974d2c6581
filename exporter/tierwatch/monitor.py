"""The health check loop: probes every target every interval, concurrently, each under its own deadline,
and keeps the latest result of each target for /metrics and the status page.

Nothing that reads the state ever waits on a target: a probe writes its result into ``TargetState``
when it finishes, and readers see whatever the last finished probe left there.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .breaker import CircuitBreaker
from .config import ClusterConfig, LoadedConfig
from .events import EventLog
from .metric_catalog import FAILURE_REASONS, PROBE_BUCKETS
from .probes import Observation, Probe, Sample, TargetInfo, probe_class
from .probes.base import classify_failure, describe_failure
from .probes.vip import VipProbe, VipResult

RESET_TIMEOUT = 2.0  # seconds a probe may take to drop its connections after a failure


@dataclass
class TargetState:
    """The latest known state of one target."""

    info: TargetInfo
    breaker: CircuitBreaker
    up: bool | None = None
    role: str | None = None
    last_probe: float | None = None
    last_duration: float | None = None
    last_reason: str | None = None
    last_error: str | None = None
    changed_at: float | None = None
    samples: list[Sample] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAILURE_REASONS, 0))
    bucket_counts: list[int] = field(default_factory=lambda: [0] * len(PROBE_BUCKETS))
    duration_sum: float = 0.0
    duration_count: int = 0

    def observe_duration(self, seconds: float) -> None:
        """Add one probe latency to the histogram (non-cumulative buckets; +Inf is duration_count)."""
        index = bisect.bisect_left(PROBE_BUCKETS, seconds)
        if index < len(PROBE_BUCKETS):
            self.bucket_counts[index] += 1
        self.duration_sum += seconds
        self.duration_count += 1


@dataclass
class _Target:
    state: TargetState
    probe: Probe
    own_samples: list[Sample] = field(default_factory=list)
    peer_samples: dict[str, list[Sample]] = field(default_factory=dict)


@dataclass
class ClusterState:
    """Cluster-level results: today the VIP of a load-balancer pair."""

    config: ClusterConfig
    vip: VipResult | None = None
    vip_probe: VipProbe | None = None


class Monitor:
    """Owns one probe per target and runs probe rounds."""

    def __init__(
        self,
        loaded: LoadedConfig,
        events: EventLog | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ):
        self.loaded = loaded
        cfg = loaded.config
        self.interval = cfg.monitor.interval
        self.timeout = cfg.monitor.timeout
        self.events = events or EventLog(cfg.log.format, cfg.log.level)
        self._clock = clock
        self._wall = wall_clock
        self.rounds = 0
        self.overruns = 0
        self.version = 0  # bumped whenever any state a reader can see changes
        self.last_round_duration: float | None = None
        self.first_round_done = asyncio.Event()
        self._targets: list[_Target] = []
        self.clusters: dict[str, ClusterState] = {}
        for cluster in cfg.clusters:
            password = loaded.password_for(cluster.name)
            members = [(cluster.tier, t) for t in cluster.targets]
            if cluster.sentinel is not None:
                members += [("sentinel", t) for t in cluster.sentinel.targets]
            for tier, target in members:
                info = TargetInfo(tier, cluster, target, password, self.timeout)
                breaker = CircuitBreaker(
                    cfg.circuit_breaker.failure_threshold, cfg.circuit_breaker.reset_timeout, clock
                )
                self._targets.append(_Target(TargetState(info, breaker), probe_class(tier)(info)))
            state = ClusterState(cluster)
            if cluster.vip:
                state.vip_probe = VipProbe(cluster, self.timeout)
            self.clusters[cluster.name] = state
        self._by_name = {t.state.info.name: t for t in self._targets}

    @property
    def states(self) -> list[TargetState]:
        """Every target's latest state, in config order."""
        return [t.state for t in self._targets]

    async def run_round(self) -> None:
        """Probe every target once, concurrently; returns when every probe finished or timed out."""
        started = self._clock()
        jobs: list[asyncio.Future[None]] = [asyncio.ensure_future(self._probe(t)) for t in self._targets]
        jobs += [asyncio.ensure_future(self._probe_vip(c)) for c in self.clusters.values() if c.vip_probe]
        try:
            await asyncio.gather(*jobs)
        finally:
            for job in jobs:
                job.cancel()
        self._merge_peer_samples()
        self._apply_vip_roles()
        self.last_round_duration = self._clock() - started
        self.rounds += 1
        self.version += 1
        self.first_round_done.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Run rounds every interval until ``stop`` is set; a late round skips the missed slots."""
        next_start = self._clock()
        while not stop.is_set():
            await self.run_round()
            next_start += self.interval
            now = self._clock()
            if now > next_start:
                self.overruns += 1
                missed = int((now - next_start) // self.interval) + 1
                next_start += missed * self.interval
            try:
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, next_start - now))
            except TimeoutError:
                pass

    async def close(self) -> None:
        """Close every probe's connections."""
        probes: list[Probe | VipProbe] = [t.probe for t in self._targets]
        probes += [c.vip_probe for c in self.clusters.values() if c.vip_probe]
        await asyncio.gather(*(p.close() for p in probes), return_exceptions=True)

    async def _probe(self, target: _Target) -> None:
        try:
            await self._probe_and_record(target)
        finally:
            self.version += 1

    async def _probe_and_record(self, target: _Target) -> None:
        state = target.state
        if not state.breaker.allow():
            target.own_samples, target.peer_samples = [], {}
            self._set_up(state, False, state.last_reason)
            return
        if state.breaker.state == "half_open":
            self._event("circuit_half_open", state)
        start = time.perf_counter()
        state.last_probe = self._wall()
        try:
            async with asyncio.timeout(self.timeout):
                observation = await target.probe.probe()
        except Exception as exc:  # noqa: BLE001 - every failure of a probe is data
            state.observe_duration(time.perf_counter() - start)
            await self._record_failure(target, exc)
        else:
            state.last_duration = time.perf_counter() - start
            state.observe_duration(state.last_duration)
            self._record_success(target, observation)

    def _record_success(self, target: _Target, observation: Observation) -> None:
        state = target.state
        was = state.breaker.state
        state.breaker.record_success()
        if was != "closed":
            self._event("circuit_closed", state)
        target.own_samples = observation.samples
        target.peer_samples = observation.peer_samples
        if observation.role != state.role and observation.role is not None:
            if state.role is not None:
                self._event("role_changed", state, previous=state.role, role=observation.role)
            state.role = observation.role
        state.last_error = None
        self._set_up(state, True, None)

    async def _record_failure(self, target: _Target, exc: BaseException) -> None:
        state = target.state
        reason = classify_failure(exc)
        state.failures[reason] += 1
        state.last_error = describe_failure(exc)
        state.last_duration = None
        target.own_samples, target.peer_samples = [], {}
        was = state.breaker.state
        state.breaker.record_failure()
        self._set_up(state, False, reason)
        if state.breaker.state == "open" and was != "open":
            self._event(
                "circuit_open",
                state,
                level="warning",
                reason=reason,
                retry_in_seconds=round(state.breaker.reset_timeout, 3),
            )
        try:
            async with asyncio.timeout(RESET_TIMEOUT):
                await target.probe.reset()
        except Exception as reset_exc:  # noqa: BLE001 - a failed reset must not stop the loop
            self._event("probe_reset_failed", state, level="warning", error=type(reset_exc).__name__)

    def _set_up(self, state: TargetState, up: bool, reason: str | None) -> None:
        state.last_reason = reason
        if state.up is up:
            return
        state.changed_at = self._wall()
        if up:
            self._event("target_up", state)
        else:
            fields = {"reason": reason} if reason else {}
            if state.up is None or state.up:
                self._event("target_down", state, level="warning", error=state.last_error or "", **fields)
        state.up = up

    def _merge_peer_samples(self) -> None:
        """Attach samples a primary reported about its replicas to the replicas' own targets."""
        incoming: dict[str, list[Sample]] = {}
        for target in self._targets:
            for peer, samples in target.peer_samples.items():
                known = self._by_name.get(peer)
                if known is not None and known.state.info.cluster is target.state.info.cluster:
                    incoming.setdefault(peer, []).extend(samples)
        for target in self._targets:
            own = target.own_samples
            extra = incoming.get(target.state.info.name, [])
            if extra:
                seen = {(s.spec.name, s.labels) for s in own}
                own = own + [s for s in extra if (s.spec.name, s.labels) not in seen]
            target.state.samples = own

    async def _probe_vip(self, cluster: ClusterState) -> None:
        assert cluster.vip_probe is not None
        names = {t.name for t in cluster.config.targets}
        cluster.vip = await cluster.vip_probe.probe(names)

    def _apply_vip_roles(self) -> None:
        """Mark the LB that answered on the VIP active and the others standby; keep the last known
        roles while the VIP does not answer (so 'the active LB is down' stays visible)."""
        for cluster in self.clusters.values():
            vip = cluster.vip
            if vip is None or not vip.up or vip.served_by is None:
                continue
            for target in self._targets:
                state = target.state
                if state.info.cluster is not cluster.config:
                    continue
                role = "active" if state.info.name == vip.served_by else "standby"
                if role != state.role:
                    if state.role is not None:
                        self._event("role_changed", state, previous=state.role, role=role)
                    state.role = role

    def _event(self, event: str, state: TargetState, level: str = "info", **fields: object) -> None:
        info = state.info
        self.events.emit(
            event,
            level,
            tier=info.tier,
            cluster=info.cluster.name,
            target=info.name,
            region=info.region,
            **fields,
        )
