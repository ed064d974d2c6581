"""The health check loop: probes every target every interval, each under its own deadline, and keeps
the latest result of each target for /metrics and the status page.

Probes are spread over the interval, each target at a stable offset (a hash of its name, as Prometheus
spreads its scrapes), with at most ``monitor.max_concurrency`` in flight; a probe is timed from the
moment it got its concurrency slot. Were every probe started at the same instant, the recorded
latency would be the event loop's queue, not the target's.

Nothing that reads the state ever waits on a target: a probe writes its result into ``TargetState``
when it finishes, and readers see whatever the last finished probe left there.

``Monitor.apply`` swaps in a new config while the loop runs (a reload, or target discovery through
``apply_cluster``): targets whose probe settings did not change keep their probe (connections), their
state (breaker, counters, histogram) and their slot; see its docstring for the rest.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import hashlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .breaker import CircuitBreaker
from .config import ClusterConfig, LoadedConfig, Secret, TargetConfig
from .events import EventLog
from .metric_catalog import FAILURE_REASONS, PROBE_BUCKETS
from .probes import Observation, Probe, Sample, TargetInfo, probe_class
from .probes.base import ProbeFailure, classify_failure, describe_failure
from .probes.vip import VipProbe, VipResult
from .target_history import TargetHistory
from .tier_catalog import MEMBERSHIP_TIERS

RESET_TIMEOUT = 2.0  # seconds a probe may take to drop its connections after a failure
# The loop wakes for a batch of about this many due probes, not for each one: every wake-up of a
# process costs CPU (the probes of 200 targets, each started on its own, cost 1.7 times more CPU
# per probe than those of 2,000). A probe starts at most one batch window late, never early.
PROBES_PER_WAKEUP = 8
TARGET_STATUSES = ("up", "down", "unknown")


@dataclass
class LatencyHistogram:
    """Probe latencies of a group of targets (non-cumulative buckets over PROBE_BUCKETS; +Inf is
    ``count``)."""

    bucket_counts: list[int] = field(default_factory=lambda: [0] * len(PROBE_BUCKETS))
    sum: float = 0.0
    count: int = 0


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
    duration_count: int = 0  # every probe attempt: tierwatch_probes_total
    duration_last: float | None = None  # the last attempt's, failed or not
    # the histogram of the target's (tier, cluster, region), shared with its peers there
    group: LatencyHistogram | None = None
    # its last state changes and probe durations, for the status page (fixed size)
    history: TargetHistory = field(default_factory=TargetHistory)

    @property
    def status(self) -> str:
        """``up``, ``down``, or ``unknown`` while the target has not been probed yet."""
        return "unknown" if self.up is None else ("up" if self.up else "down")

    def observe_duration(self, seconds: float, ok: bool = True) -> None:
        """Add one probe latency to the histogram (non-cumulative buckets; +Inf is duration_count)
        and to the history (``ok``: the probe succeeded)."""
        self.history.probe(seconds, ok)
        index = bisect.bisect_left(PROBE_BUCKETS, seconds)
        if index < len(PROBE_BUCKETS):
            self.bucket_counts[index] += 1
        self.duration_sum += seconds
        self.duration_count += 1
        self.duration_last = seconds
        group = self.group
        if group is not None:
            if index < len(PROBE_BUCKETS):
                group.bucket_counts[index] += 1
            group.sum += seconds
            group.count += 1


def batch_window(interval: float, jobs: int) -> float:
    """How late a probe may start so that the loop wakes for about ``PROBES_PER_WAKEUP`` probes at a
    time: a tenth of the interval at most."""
    return min(interval / 10, interval * PROBES_PER_WAKEUP / max(1, jobs))


def schedule_offset(name: str, interval: float) -> float:
    """A stable offset in [0, interval) for the probe of ``name`` (like Prometheus's scrape offset):
    probes are spread over the interval instead of all starting at the same instant."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 * interval


def cluster_members(cluster: ClusterConfig) -> Iterator[tuple[str, TargetConfig]]:
    """(tier, target) of every target of a cluster, its Sentinels included."""
    for target in cluster.targets:
        yield cluster.tier, target
    if cluster.sentinel is not None:
        for target in cluster.sentinel.targets:
            yield "sentinel", target


def probe_settings(info: TargetInfo) -> tuple[Any, ...]:
    """Everything a target's probe is built from. A reload keeps the probe (and its connections)
    while this is equal; compared in memory only, never shown (it holds the password). For the
    tiers whose probes use the cluster's membership (tier_catalog), that is the whole cluster."""
    cluster: Any = info.cluster if info.tier in MEMBERSHIP_TIERS else info.cluster.name
    password = info.password.reveal() if info.password is not None else None
    return (info.tier, info.target, password, info.timeout, cluster)


def _endpoint(info: TargetInfo) -> tuple[Any, ...]:
    """What the breaker's verdict is about: the target's own address and credentials."""
    return (info.target, info.password.reveal() if info.password is not None else None)


@dataclass
class _Target:
    state: TargetState
    probe: Probe
    own_samples: list[Sample] = field(default_factory=list)
    peer_samples: dict[str, list[Sample]] = field(default_factory=dict)
    reported_to: set[str] = field(default_factory=set)  # peers whose inbox holds this target's samples
    in_flight: Probe | None = None  # the probe a run in progress uses (a reload may replace .probe)
    removed: bool = False  # dropped by a reload: its in-flight probe publishes nothing
    retired: list[Probe] = field(default_factory=list)  # replaced while in flight: closed after it


@dataclass
class ApplyResult:
    """What ``Monitor.apply`` did, by target name."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # same series, new probe (new connections)
    kept: list[str] = field(default_factory=list)  # probe, connections and state untouched


@dataclass
class ClusterState:
    """Cluster-level results: today the VIP of a load-balancer pair."""

    config: ClusterConfig
    vip: VipResult | None = None
    vip_probe: VipProbe | None = None
    retired: list[VipProbe] = field(default_factory=list)  # replaced while in flight: closed after it


@dataclass
class _Slot:
    """One scheduled job: a target's probe or a cluster's VIP probe, at ``offset`` in every interval."""

    name: str
    offset: float
    target: _Target | None = None
    cluster: ClusterState | None = None
    busy: bool = False  # started (or waiting for a concurrency slot) and not finished


class _RoundTally:
    """One interval's jobs still running: the round ends (``finish``) when its last job does, once every
    job of the interval was started (``seal``), and never after ``stop``. Each job reports its end and
    is let go as it finishes, spread over the interval. Keeping them all for an ``asyncio.wait`` at the
    interval's end stalled the event loop, and any ``/metrics`` answer, up to ~380 ms once per interval
    at 10,000 targets: a callback per job at once, a gen-0 collection over the interval's kept tasks,
    then freeing them together (bench/results/scale/metrics-tail-2026-12-08.md).
    """

    def __init__(self, finish: Callable[[float, bool], None], stop: asyncio.Event, running: set[Any]):
        self._finish = finish
        self._stop = stop
        self._running = running  # every job of the monitor not finished yet, for ``run`` to cancel
        self.launched = 0
        self.pending = 0
        self._sealed: tuple[float, bool] | None = None

    def add(self, job: asyncio.Future[None]) -> None:
        """Count ``job`` in this round (called as it starts)."""
        self.launched += 1
        self.pending += 1
        self._running.add(job)
        job.add_done_callback(self._done)

    def seal(self, started: float, overran: bool) -> None:
        """Every job of the interval started (the first at ``started``); the round ends with the last."""
        self._sealed = (started, overran)
        self._end_if_done()

    def _done(self, job: asyncio.Future[None]) -> None:
        self.pending -= 1
        self._running.discard(job)
        self._end_if_done()

    def _end_if_done(self) -> None:
        if self.pending or self._sealed is None or self._stop.is_set():
            return
        sealed, self._sealed = self._sealed, None
        self._finish(*sealed)


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
        self.breaker_settings = cfg.circuit_breaker
        self.events = events or EventLog.from_settings(cfg.log)
        self._clock = clock
        self._wall = wall_clock
        self.rounds = 0
        self.scheduler_waits = 0  # times the scheduler slept until probes were due (one per batch)
        self.overruns = 0
        self.version = 0  # bumped whenever any state a reader can see changes
        self.layout = 0  # bumped whenever the list of targets (``states``) changes
        self.last_round_duration: float | None = None
        self.first_round_done = asyncio.Event()
        # the last reload (or the start): did it succeed, and when did one last succeed (wall clock)
        self.last_reload_successful = True
        self.last_reload_success_time = wall_clock()
        self._targets: list[_Target] = []
        self._by_name: dict[str, _Target] = {}
        self._cluster_targets: dict[str, list[_Target]] = {}
        self.clusters: dict[str, ClusterState] = {}
        # probe latencies by (tier, cluster, region): tierwatch_cluster_probe_duration_seconds
        self.latency: dict[tuple[str, str, str], LatencyHistogram] = {}
        self._slots: list[_Slot] = []
        self._slots_changed = asyncio.Event()  # set by apply: the run loop re-reads the slots
        self._passwords: dict[str, Secret | None] = {}
        # samples other targets of the cluster reported about a target: target -> source -> samples
        self._inbox: dict[str, dict[str, list[Sample]]] = {}
        self._orphans: set[Probe | VipProbe] = set()  # replaced or removed while in flight
        self._limit: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None
        # called with a target's state whenever what a reader sees of it changed (after its probe, or
        # a peer's report, or a VIP role); /metrics renders that target's lines there, not on a scrape
        self.on_change: list[Callable[[TargetState], None]] = []
        # called with a target's name when a reload removed it (its series must go)
        self.on_remove: list[Callable[[str], None]] = []
        self._passwords = {c.name: loaded.password_for(c.name) for c in cfg.clusters}
        self._reconcile(cfg.clusters)

    @property
    def states(self) -> list[TargetState]:
        """Every target's latest state, in config order."""
        return [t.state for t in self._targets]

    def state_of(self, name: str) -> TargetState | None:
        """The latest state of the target called ``name``, if there is one."""
        job = self._by_name.get(name)
        return job.state if job is not None else None

    def schedule(self) -> list[tuple[float, str]]:
        """Every job's (offset in the interval, name), earliest first; VIP jobs are ``vip:CLUSTER``."""
        return sorted((slot.offset, slot.name) for slot in self._slots)

    # --- reload ------------------------------------------------------------------------------------

    async def apply(
        self, loaded: LoadedConfig, targets: Mapping[str, Sequence[TargetConfig]] | None = None
    ) -> ApplyResult:
        """Run ``loaded`` from now on, without stopping the loop (a reload).

        Targets are matched by name. A target whose labels (tier, cluster, target, region) and probe
        settings (``probe_settings``: its own keys, password, ``monitor.timeout``, and for Redis,
        Sentinel and PostgreSQL its cluster's settings and members) are unchanged keeps its probe and
        connections, its state (breaker, counters, histogram) and its slot, so it loses no probe.
        Same labels with other probe settings: a new probe (the old one is closed once idle), the
        counters and histogram go on, the breaker starts closed again if the target's own keys or
        password changed. Other labels, or gone: removed, its series disappear; new targets get
        their slot (probed at once if it already passed in the current interval). ``monitor.interval``
        applies from the next interval, ``timeout`` from the next probe, ``max_concurrency`` to probes
        not yet started, ``circuit_breaker`` to every breaker at once (its state kept).

        ``targets`` (cluster name -> its full target list) replaces the file's list of those clusters:
        target discovery's current lists, so a reload does not drop and re-add discovered targets."""
        cfg = loaded.config
        self.loaded = loaded
        self.interval = cfg.monitor.interval
        self.timeout = cfg.monitor.timeout
        if cfg.monitor.max_concurrency != self.max_concurrency:
            self.max_concurrency = cfg.monitor.max_concurrency
            self._limit = None  # a new semaphore for the probes that start from now on
        self.breaker_settings = cfg.circuit_breaker
        for job in self._targets:
            job.state.breaker.failure_threshold = cfg.circuit_breaker.failure_threshold
            job.state.breaker.reset_timeout = cfg.circuit_breaker.reset_timeout
        self._passwords = {c.name: loaded.password_for(c.name) for c in cfg.clusters}
        overrides = targets or {}
        clusters = [
            c.model_copy(update={"targets": list(overrides[c.name])}) if c.name in overrides else c
            for c in cfg.clusters
        ]
        result, idle = self._reconcile(clusters)
        await self._close_probes(idle)
        return result

    async def apply_targets(self, cluster_name: str, targets: Sequence[TargetConfig]) -> ApplyResult:
        """Replace the targets of one configured cluster (target discovery) by the same rules as
        ``apply``; the rest of the config is untouched. Raises KeyError for an unknown cluster and
        ValueError when a name is already a target of another cluster (names are unique labels).
        A later ``apply`` (a reload) runs the file's target lists again."""
        current = self.clusters[cluster_name].config
        others = {t.name for c in self.clusters.values() for _, t in cluster_members(c.config)}
        others -= {t.name for t in current.targets}  # the list being replaced (its Sentinels stay)
        counts = collections.Counter(t.name for t in targets)
        clash = sorted({name for name, count in counts.items() if count > 1 or name in others})
        if clash:
            raise ValueError(f"cluster {cluster_name}: target names not unique: {', '.join(clash)}")
        replaced = current.model_copy(update={"targets": list(targets)})
        clusters = [replaced if c.config.name == cluster_name else c.config for c in self.clusters.values()]
        result, idle = self._reconcile(clusters)
        await self._close_probes(idle)
        return result

    def _new_breaker(self) -> CircuitBreaker:
        settings = self.breaker_settings
        return CircuitBreaker(settings.failure_threshold, settings.reset_timeout, self._clock)

    def _reconcile(self, clusters: Sequence[ClusterConfig]) -> tuple[ApplyResult, list[Probe | VipProbe]]:
        """Make ``clusters`` the running set, synchronously (no probe can interleave); returns what
        changed and the replaced probes that are idle now (to be closed by the caller). Probes in
        flight are closed when their run ends."""
        old_slots = {slot.name: slot for slot in self._slots}
        result = ApplyResult()
        idle: list[Probe | VipProbe] = []
        targets: list[_Target] = []
        slots: list[_Slot] = []
        cluster_states: dict[str, ClusterState] = {}

        def retire(job: _Target) -> None:
            if job.in_flight is not None:
                job.retired.append(job.probe)
                self._orphans.add(job.probe)
            else:
                idle.append(job.probe)

        for cluster in clusters:
            password = self._passwords.get(cluster.name)
            for tier, target in cluster_members(cluster):
                info = TargetInfo(tier, cluster, target, password, self.timeout)
                job = self._by_name.get(target.name)
                if job is not None and job.state.info.labels == info.labels:
                    before = job.state.info
                    if probe_settings(before) == probe_settings(info):
                        job.probe.info = info  # equal but for the cluster's other members
                        result.kept.append(target.name)
                    else:
                        retire(job)
                        job.probe = probe_class(tier)(info)
                        if _endpoint(before) != _endpoint(info):
                            job.state.breaker = self._new_breaker()
                        result.changed.append(target.name)
                    job.state.info = info
                    slot = old_slots[target.name]
                else:
                    job = _Target(TargetState(info, self._new_breaker()), probe_class(tier)(info))
                    slot = _Slot(target.name, schedule_offset(target.name, self.interval), job)
                    result.added.append(target.name)
                targets.append(job)
                slots.append(slot)
            state = self.clusters.get(cluster.name) or ClusterState(cluster)
            before_cluster, state.config = state.config, cluster
            name = f"vip:{cluster.name}"
            vip_slot = old_slots.get(name)
            vip_busy = vip_slot is not None and vip_slot.busy
            same_vip = (before_cluster.vip, before_cluster.vip_header) == (cluster.vip, cluster.vip_header)
            if state.vip_probe is not None and not (
                cluster.vip and same_vip and state.vip_probe.timeout == self.timeout
            ):
                self._retire_vip(state, vip_busy, idle)
            if cluster.vip:
                if state.vip_probe is None:
                    state.vip_probe = VipProbe(cluster, self.timeout)
                slots.append(vip_slot or _Slot(name, schedule_offset(name, self.interval), cluster=state))
            cluster_states[cluster.name] = state
        for name, state in self.clusters.items():
            if name not in cluster_states and state.vip_probe is not None:
                slot = old_slots.get(f"vip:{name}")
                self._retire_vip(state, slot is not None and slot.busy, idle)
        live = {id(job) for job in targets}
        for name, job in self._by_name.items():
            if id(job) not in live:
                job.removed = True
                result.removed.append(name)
                if job.in_flight is not None:
                    self._orphans.add(job.probe)
                else:
                    idle.append(job.probe)

        self._targets, self._slots, self.clusters = targets, slots, cluster_states
        self.layout += 1
        self._by_name = {job.state.info.name: job for job in targets}
        self._cluster_targets = {}
        latency: dict[tuple[str, str, str], LatencyHistogram] = {}
        for job in targets:
            info = job.state.info
            self._cluster_targets.setdefault(info.cluster.name, []).append(job)
            key = (info.tier, info.cluster.name, info.region)
            group = latency.get(key)
            if group is None:
                group = latency[key] = self.latency.get(key) or LatencyHistogram()
            job.state.group = group
        self.latency = latency  # a group with no target left is dropped (its series go)
        gone = set(result.removed)
        inbox = {name: self._inbox.get(name, {}) for name in self._by_name}
        stale = [name for name, box in inbox.items() if gone & box.keys()]
        for name in stale:
            for source in gone & inbox[name].keys():
                del inbox[name][source]
        self._inbox = inbox
        for job in targets:
            job.reported_to -= gone
        for name in result.removed:
            for listener in self.on_remove:
                listener(name)
        for name in stale:
            self._merge_samples(self._by_name[name])
        for name in (*result.added, *result.changed):
            self._changed(self._by_name[name].state)
        self.version += 1
        self._slots_changed.set()
        return result, idle

    def _retire_vip(self, state: ClusterState, busy: bool, idle: list[Probe | VipProbe]) -> None:
        assert state.vip_probe is not None
        if busy:
            state.retired.append(state.vip_probe)
            self._orphans.add(state.vip_probe)
        else:
            idle.append(state.vip_probe)
        state.vip_probe, state.vip = None, None

    async def _close_probes(self, probes: Sequence[Probe | VipProbe]) -> None:
        """Close probes that no run uses any more; a failure to close is only logged."""
        results = await asyncio.gather(*(p.close() for p in probes), return_exceptions=True)
        for probe in probes:
            self._orphans.discard(probe)
        for failed in (r for r in results if isinstance(r, BaseException)):
            self.events.emit("probe_close_failed", "warning", error=type(failed).__name__)

    # --- running -----------------------------------------------------------------------------------

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

    def _respread(self, interval: float) -> None:
        """New offsets for every job after the interval changed."""
        for slot in self._slots:
            slot.offset = schedule_offset(slot.name, interval)

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set, start each job at its offset in every interval.

        A job whose previous run has not finished when its slot comes is skipped, and its round counts
        as overrun; when the loop fell more than an interval behind, the missed intervals are skipped.
        A reload (``apply``) takes effect within the current interval: jobs already started in it are
        not started again, new jobs whose offset already passed start at once, removed ones never;
        a new ``monitor.interval`` applies from the next interval.
        """
        loop = asyncio.get_running_loop()
        stopped = asyncio.ensure_future(stop.wait())
        reshaped: asyncio.Future[Any] = asyncio.ensure_future(self._slots_changed.wait())
        running: set[asyncio.Future[None]] = set()
        interval = self.interval
        base = loop.time()
        cycle = 0
        try:
            while not stop.is_set():
                if self.interval != interval:  # a reload changed it: a new spread from this instant
                    base, cycle, interval = base + cycle * interval, 0, self.interval
                    self._respread(interval)
                window = batch_window(interval, len(self._slots))
                cycle_start = base + cycle * interval
                tally = _RoundTally(self._finish_round, stop, running)
                started, skipped = time.perf_counter(), 0
                done: set[int] = set()
                self._slots_changed.clear()
                order = sorted(self._slots, key=lambda slot: slot.offset)
                index = 0
                while index < len(order):
                    slot = order[index]
                    if slot.offset >= interval:  # added with a longer new interval: from the next one
                        index += 1
                        continue
                    delay = cycle_start + slot.offset - loop.time()
                    if delay > 0:  # wake a window later: the probes due by then start together
                        self.scheduler_waits += 1
                        await asyncio.wait({stopped, reshaped}, timeout=delay + window)
                    if stop.is_set():
                        break
                    if reshaped.done():  # a reload: carry on with the new set, minus what already ran
                        self._slots_changed.clear()
                        reshaped = asyncio.ensure_future(self._slots_changed.wait())
                        order = sorted((s for s in self._slots if id(s) not in done), key=lambda s: s.offset)
                        index = 0
                        continue
                    index += 1
                    done.add(id(slot))
                    if slot.busy:
                        skipped += 1
                        continue
                    if not tally.launched:
                        started = time.perf_counter()
                    tally.add(asyncio.ensure_future(self._run_slot(slot)))
                if stop.is_set():
                    break
                tally.seal(started, skipped > 0)
                cycle += 1
                behind = loop.time() - (base + cycle * interval)
                if behind > interval:
                    missed = int(behind // interval)
                    cycle += missed
                    self.overruns += missed
                delay = base + cycle * interval - loop.time()
                if delay > 0:
                    await asyncio.wait({stopped}, timeout=delay)
        finally:
            stopped.cancel()
            reshaped.cancel()
            for job in list(running):
                job.cancel()
            await asyncio.gather(*running, return_exceptions=True)

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
        probes += list(self._orphans)
        await asyncio.gather(*(p.close() for p in probes), return_exceptions=True)
        self._orphans.clear()

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
        if target.removed:
            return
        probe = target.in_flight = target.probe  # a reload may replace .probe: this run keeps its own
        try:
            await self._probe_and_record(target)
        finally:
            target.in_flight = None
            if not target.removed:
                self._publish(target)
                self.version += 1
            done = [*target.retired, *([probe] if target.removed else [])]
            target.retired = []
            if done:
                await self._close_probes(done)

    async def _probe_and_record(self, target: _Target) -> None:
        probe = target.in_flight or target.probe
        state = target.state
        if not state.breaker.allow():
            target.own_samples, target.peer_samples = [], {}
            self._set_up(state, False, state.last_reason)
            return
        if state.breaker.state == "half_open":
            self._event("circuit_half_open", state)
            state.history.change("circuit", "open", "half_open", self._wall())
        start = time.perf_counter()
        state.last_probe = self._wall()
        # the one deadline of this run: the probe sizes its client calls from it, and the timeout
        # here is only the backstop that cancels the probe at that same instant
        deadline = asyncio.get_running_loop().time() + self.timeout
        try:
            async with asyncio.timeout_at(deadline):
                observation = await probe.probe(deadline)
        except Exception as exc:  # noqa: BLE001 - every failure of a probe is data
            state.observe_duration(time.perf_counter() - start, ok=False)
            if type(exc) is TimeoutError:  # the backstop: cancelled at the deadline, unclassified
                exc = ProbeFailure("timeout", f"no complete answer within {self.timeout:g}s")
            await self._record_failure(target, probe, exc)
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
            state.history.change("circuit", was, "closed", self._wall())
        target.own_samples = observation.samples
        target.peer_samples = observation.peer_samples
        if observation.role != state.role and observation.role is not None:
            if state.role is not None:
                self._event("role_changed", state, previous=state.role, role=observation.role)
                state.history.change("role", state.role, observation.role, self._wall())
            state.role = observation.role
        state.last_error = None
        self._set_up(state, True, None)

    async def _record_failure(self, target: _Target, probe: Probe, exc: BaseException) -> None:
        state = target.state
        reason = classify_failure(exc)
        state.failures[reason] += 1
        state.last_error = describe_failure(exc)
        state.last_duration = None
        target.own_samples, target.peer_samples = [], {}
        was = state.breaker.state
        state.breaker.record_failure()
        self._set_up(state, False, reason)
        # a probe only runs while the circuit is closed or half-open, so "open" here is a transition
        if state.breaker.state == "open":
            state.history.change("circuit", was, "open", self._wall())
            self._event(
                "circuit_open",
                state,
                level="warning",
                reason=reason,
                retry_in_seconds=round(state.breaker.reset_timeout, 3),
            )
        try:
            async with asyncio.timeout(RESET_TIMEOUT):
                await probe.reset()
        except Exception as reset_exc:  # noqa: BLE001 - a failed reset must not stop the loop
            self._event("probe_reset_failed", state, level="warning", error=type(reset_exc).__name__)

    def _set_up(self, state: TargetState, up: bool, reason: str | None) -> None:
        state.last_reason = reason
        if state.up is up:
            return
        state.changed_at = self._wall()
        error = None if up else state.last_error  # describe_failure's text: secret-free
        state.history.change("status", state.status, "up" if up else "down", state.changed_at, error)
        if up:
            self._event("target_up", state)
        else:
            fields = {"reason": reason} if reason else {}
            self._event("target_down", state, level="warning", error=state.last_error or "", **fields)
        state.up = up

    def _publish(self, target: _Target) -> None:
        """Make a finished probe's samples visible: its own, plus what it reported about the other
        targets of its cluster (a primary's view of its replicas' lag), attributed to them."""
        if not target.reported_to and not target.peer_samples:  # the common case: about itself only
            self._merge_samples(target)
            self._vip_roles_of(target.state.info.cluster.name)
            return
        source = target.state.info.name
        cluster = target.state.info.cluster
        affected = {source} | target.reported_to
        for peer in target.reported_to:
            self._inbox.get(peer, {}).pop(source, None)
        target.reported_to = set()
        for peer, samples in target.peer_samples.items():
            known = self._by_name.get(peer)
            if known is not None and known.state.info.cluster is cluster and peer != source:
                self._inbox[peer][source] = samples
                target.reported_to.add(peer)
                affected.add(peer)
        for name in affected:
            if name in self._by_name:
                self._merge_samples(self._by_name[name])
        self._vip_roles_of(cluster.name)

    def _vip_roles_of(self, cluster_name: str) -> None:
        cluster_state = self.clusters.get(cluster_name)
        if cluster_state is not None and cluster_state.vip is not None:
            self._apply_vip_roles(cluster_state)

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
        probe = cluster.vip_probe  # a reload may replace or drop it meanwhile: this run keeps its own
        if probe is None:
            return
        names = {t.name for t in cluster.config.targets}
        start = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + self.timeout  # as for a target's probe
        try:
            async with asyncio.timeout_at(deadline):
                result = await probe.probe(names, deadline)
        except TimeoutError:
            await probe.close()
            result = VipResult(False, None, time.perf_counter() - start)
        finally:
            if cluster.retired:
                retired, cluster.retired = cluster.retired, []
                await self._close_probes(retired)
        if cluster.vip_probe is not probe:
            return  # replaced by a reload: this result is about the old address
        cluster.vip = result
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
                    state.history.change("role", state.role, role, self._wall())
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
