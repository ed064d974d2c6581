"""The health check loop: probes every target every interval, each under its own deadline, and keeps
the latest result of each target for /metrics and the status page.

Probes are spread over the interval, each target at a stable offset (a hash of its name, as Prometheus
spreads its scrapes), with at most ``monitor.max_concurrency`` in flight; a probe is timed from the
moment it got its concurrency slot. Were every probe started at the same instant, the recorded
latency would be the event loop's queue, not the target's.

Nothing that reads the state ever waits on a target: a probe writes its result into ``TargetState``
when it finishes, and readers see whatever the last finished probe left there.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
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
TARGET_STATUSES = ("up", "down", "unknown")


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

    @property
    def status(self) -> str:
        """``up``, ``down``, or ``unknown`` while the target has not been probed yet."""
        return "unknown" if self.up is None else ("up" if self.up else "down")

    def observe_duration(self, seconds: float) -> None:
        """Add one probe latency to the histogram (non-cumulative buckets; +Inf is duration_count)."""
        index = bisect.bisect_left(PROBE_BUCKETS, seconds)
        if index < len(PROBE_BUCKETS):
            self.bucket_counts[index] += 1
        self.duration_sum += seconds
        self.duration_count += 1


def schedule_offset(name: str, interval: float) -> float:
    """A stable offset in [0, interval) for the probe of ``name`` (like Prometheus's scrape offset):
    probes are spread over the interval instead of all starting at the same instant."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 * interval


@dataclass
class _Target:
    state: TargetState
    probe: Probe
    own_samples: list[Sample] = field(default_factory=list)
    peer_samples: dict[str, list[Sample]] = field(default_factory=dict)
    reported_to: set[str] = field(default_factory=set)  # peers whose inbox holds this target's samples


@dataclass
class ClusterState:
    """Cluster-level results: today the VIP of a load-balancer pair."""

    config: ClusterConfig
    vip: VipResult | None = None
    vip_probe: VipProbe | None = None


@dataclass
class _Slot:
    """One scheduled job: a target's probe or a cluster's VIP probe, at ``offset`` in every interval."""

    name: str
    offset: float
    target: _Target | None = None
    cluster: ClusterState | None = None
    busy: bool = False  # started (or waiting for a concurrency slot) and not finished


class Monitor:
    """Owns one probe per target and runs them, each at its own offset in every interval."""

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
        self.max_concurrency = cfg.monitor.max_concurrency
        self.events = events or EventLog.from_settings(cfg.log)
        self._clock = clock
        self._wall = wall_clock
        self.rounds = 0
        self.overruns = 0
        self.version = 0  # bumped whenever any state a reader can see changes
        self.last_round_duration: float | None = None
        self.first_round_done = asyncio.Event()
        self._targets: list[_Target] = []
        self.clusters: dict[str, ClusterState] = {}
        self._slots: list[_Slot] = []
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
                job = _Target(TargetState(info, breaker), probe_class(tier)(info))
                self._targets.append(job)
                self._slots.append(_Slot(target.name, schedule_offset(target.name, self.interval), job))
            state = ClusterState(cluster)
            if cluster.vip:
                state.vip_probe = VipProbe(cluster, self.timeout)
                name = f"vip:{cluster.name}"
                self._slots.append(_Slot(name, schedule_offset(name, self.interval), cluster=state))
            self.clusters[cluster.name] = state
        self._by_name = {t.state.info.name: t for t in self._targets}
        self._cluster_targets: dict[str, list[_Target]] = {}
        for t in self._targets:
            self._cluster_targets.setdefault(t.state.info.cluster.name, []).append(t)
        # samples other targets of the cluster reported about a target: target -> source -> samples
        self._inbox: dict[str, dict[str, list[Sample]]] = {t.state.info.name: {} for t in self._targets}
        self._limit: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None
        # called with a target's state whenever what a reader sees of it changed (after its probe, or
        # a peer's report, or a VIP role); /metrics renders that target's lines there, not on a scrape
        self.on_change: list[Callable[[TargetState], None]] = []

    @property
    def states(self) -> list[TargetState]:
        """Every target's latest state, in config order."""
        return [t.state for t in self._targets]

    def schedule(self) -> list[tuple[float, str]]:
        """Every job's (offset in the interval, name), earliest first; VIP jobs are ``vip:CLUSTER``."""
        return sorted((slot.offset, slot.name) for slot in self._slots)

    async def run_round(self) -> None:
        """Probe every target once now, at most ``max_concurrency`` at a time; returns when every
        probe finished or timed out (tests and one-shot use; ``run`` spreads the probes)."""
        started = time.perf_counter()
        jobs = [asyncio.ensure_future(self._run_slot(slot)) for slot in self._slots]
        try:
            await asyncio.gather(*jobs)
        finally:
            for job in jobs:
                job.cancel()
        self._finish_round(started, overran=False)

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set, start each job at its offset in every interval.

        A job whose previous run has not finished when its slot comes is skipped, and its round counts
        as overrun; when the loop fell more than an interval behind, the missed intervals are skipped.
        """
        loop = asyncio.get_running_loop()
        order = sorted(self._slots, key=lambda slot: slot.offset)
        stopped = asyncio.ensure_future(stop.wait())
        running: set[asyncio.Future[None]] = set()
        base = loop.time()
        cycle = 0
        try:
            while not stop.is_set():
                cycle_start = base + cycle * self.interval
                launched: list[asyncio.Future[None]] = []
                started, skipped = time.perf_counter(), 0
                for slot in order:
                    delay = cycle_start + slot.offset - loop.time()
                    if delay > 0:
                        await asyncio.wait({stopped}, timeout=delay)
                    if stop.is_set():
                        break
                    if slot.busy:
                        skipped += 1
                        continue
                    if not launched:
                        started = time.perf_counter()
                    launched.append(asyncio.ensure_future(self._run_slot(slot)))
                if stop.is_set():
                    break
                watcher = asyncio.ensure_future(self._watch_round(started, launched, skipped > 0))
                for job in (*launched, watcher):
                    running.add(job)
                    job.add_done_callback(running.discard)
                cycle += 1
                behind = loop.time() - (base + cycle * self.interval)
                if behind > self.interval:
                    missed = int(behind // self.interval)
                    cycle += missed
                    self.overruns += missed
                delay = base + cycle * self.interval - loop.time()
                if delay > 0:
                    await asyncio.wait({stopped}, timeout=delay)
        finally:
            stopped.cancel()
            for job in list(running):
                job.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def _watch_round(self, started: float, jobs: list[asyncio.Future[None]], overran: bool) -> None:
        if jobs:
            await asyncio.wait(jobs)
        self._finish_round(started, overran)

    def _finish_round(self, started: float, overran: bool) -> None:
        self.last_round_duration = time.perf_counter() - started
        self.rounds += 1
        if overran:
            self.overruns += 1
        self.version += 1
        self.first_round_done.set()

    async def close(self) -> None:
        """Close every probe's connections."""
        probes: list[Probe | VipProbe] = [t.probe for t in self._targets]
        probes += [c.vip_probe for c in self.clusters.values() if c.vip_probe]
        await asyncio.gather(*(p.close() for p in probes), return_exceptions=True)

    async def _run_slot(self, slot: _Slot) -> None:
        """Run one job once it gets a concurrency slot; its latency is timed from then on."""
        loop = asyncio.get_running_loop()
        if self._limit is None or self._limit[0] is not loop:
            self._limit = (loop, asyncio.Semaphore(self.max_concurrency))
        slot.busy = True
        try:
            async with self._limit[1]:
                if slot.target is not None:
                    await self._probe(slot.target)
                elif slot.cluster is not None:
                    await self._probe_vip(slot.cluster)
        finally:
            slot.busy = False

    async def _probe(self, target: _Target) -> None:
        try:
            await self._probe_and_record(target)
        finally:
            self._publish(target)
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
            elapsed = time.perf_counter() - start
            io = observation.io_seconds
            state.last_duration = elapsed if io is None else min(io, elapsed)
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
        state.breaker.record_failure()
        self._set_up(state, False, reason)
        # a probe only runs while the circuit is closed or half-open, so "open" here is a transition
        if state.breaker.state == "open":
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
            self._event("target_down", state, level="warning", error=state.last_error or "", **fields)
        state.up = up

    def _publish(self, target: _Target) -> None:
        """Make a finished probe's samples visible: its own, plus what it reported about the other
        targets of its cluster (a primary's view of its replicas' lag), attributed to them."""
        source = target.state.info.name
        cluster = target.state.info.cluster
        affected = {source} | target.reported_to
        for peer in target.reported_to:
            self._inbox[peer].pop(source, None)
        target.reported_to = set()
        for peer, samples in target.peer_samples.items():
            known = self._by_name.get(peer)
            if known is not None and known.state.info.cluster is cluster and peer != source:
                self._inbox[peer][source] = samples
                target.reported_to.add(peer)
                affected.add(peer)
        for name in affected:
            self._merge_samples(self._by_name[name])
        if self.clusters[cluster.name].vip is not None:
            self._apply_vip_roles(self.clusters[cluster.name])

    def _merge_samples(self, target: _Target) -> None:
        own = target.own_samples
        inbox = self._inbox[target.state.info.name]
        if inbox:
            seen = {(s.spec.name, s.labels) for s in own}
            merged = list(own)
            for peer in self._cluster_targets[target.state.info.cluster.name]:
                for sample in inbox.get(peer.state.info.name, ()):
                    key = (sample.spec.name, sample.labels)
                    if key not in seen:  # the target's own samples win, then the first reporter
                        seen.add(key)
                        merged.append(sample)
            own = merged
        target.state.samples = own
        self._changed(target.state)

    def _changed(self, state: TargetState) -> None:
        for listener in self.on_change:
            listener(state)

    async def _probe_vip(self, cluster: ClusterState) -> None:
        assert cluster.vip_probe is not None
        names = {t.name for t in cluster.config.targets}
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                cluster.vip = await cluster.vip_probe.probe(names)
        except TimeoutError:
            await cluster.vip_probe.close()
            cluster.vip = VipResult(False, None, time.perf_counter() - start)
        self._apply_vip_roles(cluster)
        self.version += 1

    def _apply_vip_roles(self, cluster: ClusterState) -> None:
        """Mark the LB that answered on the VIP active and the others standby; keep the last known
        roles while the VIP does not answer (so 'the active LB is down' stays visible)."""
        vip = cluster.vip
        if vip is None or not vip.up or vip.served_by is None:
            return
        for target in self._cluster_targets.get(cluster.config.name, ()):
            state = target.state
            role = "active" if state.info.name == vip.served_by else "standby"
            if role != state.role:
                if state.role is not None:
                    self._event("role_changed", state, previous=state.role, role=role)
                state.role = role
                self._changed(state)

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
