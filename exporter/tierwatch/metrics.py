"""Turns the monitor's state into Prometheus metric families, and /metrics into a ready body.

Both only read what the last finished probes left in memory; they never contact a target.
``TierwatchCollector`` is a prometheus_client collector (the reference rendering); ``ReadyExposition``
renders each target's lines when its probe finishes and a scrape only joins them, because a full render
takes ~0.5 CPU-ms per target (1 s for 2,000 targets) and would stall the event loop, and with it the
probes in flight, on every scrape.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from . import __version__
from .metric_catalog import (
    BUILD_INFO,
    CIRCUIT_STATE,
    CIRCUIT_STATES,
    CONFIG_RELOAD_SUCCESSFUL,
    CONFIG_RELOAD_TIME,
    FAILURE_REASONS,
    LAST_PROBE,
    PROBE_BUCKETS,
    PROBE_DURATION,
    PROBE_FAILURES,
    ROLE,
    ROLES_BY_TIER,
    ROUND_DURATION,
    ROUND_OVERRUNS,
    ROUNDS,
    TARGET_LABELS,
    TARGETS,
    UP,
    MetricSpec,
)
from .monitor import TARGET_STATUSES, Monitor, TargetState
from .probes.vip import VIP_DURATION, VIP_IDENTIFIED, VIP_UP

BUCKET_LABELS = [f"{b:g}" for b in PROBE_BUCKETS]
CORE_SPECS = (UP, PROBE_FAILURES, CIRCUIT_STATE, ROLE, LAST_PROBE)


def family(spec: MetricSpec) -> Metric:
    """An empty metric family for a catalogued spec."""
    labels = list(spec.all_labels)
    if spec.kind == "counter":
        return CounterMetricFamily(spec.name.removesuffix("_total"), spec.help, labels=labels)
    if spec.kind == "histogram":
        return HistogramMetricFamily(spec.name, spec.help, labels=labels)
    return GaugeMetricFamily(spec.name, spec.help, labels=labels)


def _add(metric: Metric, labels: list[str], value: float) -> None:
    metric.add_metric(labels, value)  # type: ignore[attr-defined]


class TierwatchCollector(Collector):
    """Renders the latest state of every target, the clusters' VIPs and the exporter itself."""

    def __init__(self, monitor: Monitor):
        self.monitor = monitor

    def describe(self) -> list[Metric]:
        # Returning nothing keeps the registry from calling collect() at registration time.
        return []

    def collect(self) -> Iterator[Metric]:
        yield from self.target_families()
        yield from self.tail_families()

    def tail_families(self) -> Iterator[Metric]:
        """The families that are not per target: the clusters' VIPs and the exporter's own."""
        by_tier_state: dict[tuple[str, str], int] = {}
        for state in self.monitor.states:
            key = (state.info.tier, state.status)
            by_tier_state[key] = by_tier_state.get(key, 0) + 1
        yield from self._vip_families()
        yield from self._exporter_families(by_tier_state)

    def target_families(self) -> Iterator[Metric]:
        """The per-target families, every target's samples."""
        core = {spec.name: family(spec) for spec in CORE_SPECS}
        durations = family(PROBE_DURATION)
        extra: dict[str, Metric] = {}
        for state in self.monitor.states:
            info = state.info
            labels = list(info.labels)
            _add(core[UP.name], labels, 1.0 if state.up else 0.0)
            for reason in FAILURE_REASONS:
                _add(core[PROBE_FAILURES.name], [*labels, reason], state.failures[reason])
            for breaker_state in CIRCUIT_STATES:
                value = 1.0 if state.breaker.state == breaker_state else 0.0
                _add(core[CIRCUIT_STATE.name], [*labels, breaker_state], value)
            if state.role is not None:
                for role in ROLES_BY_TIER.get(info.tier, ()):
                    _add(core[ROLE.name], [*labels, role], 1.0 if role == state.role else 0.0)
            if state.last_probe is not None:
                _add(core[LAST_PROBE.name], labels, state.last_probe)
            cumulative, buckets = 0, []
            for bound, count in zip(BUCKET_LABELS, state.bucket_counts, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            buckets.append(("+Inf", state.duration_count))
            durations.add_metric(labels, buckets, state.duration_sum)  # type: ignore[attr-defined]
            for sample in state.samples:
                metric = extra.get(sample.spec.name)
                if metric is None:
                    metric = extra[sample.spec.name] = family(sample.spec)
                _add(metric, [*labels, *sample.labels], sample.value)
        yield from core.values()
        yield durations
        yield from extra.values()

    def _vip_families(self) -> Iterator[Metric]:
        families = {spec.name: family(spec) for spec in (VIP_UP, VIP_IDENTIFIED, VIP_DURATION)}
        emitted = False
        for cluster in self.monitor.clusters.values():
            if cluster.vip is None:
                continue
            emitted = True
            labels = ["lb", cluster.config.name]
            _add(families[VIP_UP.name], labels, 1.0 if cluster.vip.up else 0.0)
            _add(families[VIP_IDENTIFIED.name], labels, 1.0 if cluster.vip.served_by else 0.0)
            _add(families[VIP_DURATION.name], labels, cluster.vip.duration)
        if emitted:
            yield from families.values()

    def _exporter_families(self, by_tier_state: dict[tuple[str, str], int]) -> Iterator[Metric]:
        info = family(BUILD_INFO)
        _add(info, [__version__, platform.python_version()], 1.0)
        yield info
        rounds = family(ROUNDS)
        _add(rounds, [], self.monitor.rounds)
        yield rounds
        overruns = family(ROUND_OVERRUNS)
        _add(overruns, [], self.monitor.overruns)
        yield overruns
        if self.monitor.last_round_duration is not None:
            duration = family(ROUND_DURATION)
            _add(duration, [], self.monitor.last_round_duration)
            yield duration
        targets = family(TARGETS)
        tiers = sorted({tier for tier, _ in by_tier_state})
        for tier in tiers:
            for status in TARGET_STATUSES:
                _add(targets, [tier, status], by_tier_state.get((tier, status), 0))
        yield targets
        reloaded = family(CONFIG_RELOAD_SUCCESSFUL)
        _add(reloaded, [], 1.0 if self.monitor.last_reload_successful else 0.0)
        yield reloaded
        reload_time = family(CONFIG_RELOAD_TIME)
        _add(reload_time, [], self.monitor.last_reload_success_time)
        yield reload_time


class _TailCollector(Collector):
    def __init__(self, collector: TierwatchCollector):
        self._collector = collector

    def collect(self) -> Iterator[Metric]:
        return self._collector.tail_families()


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _sample(name: str, labels: Iterable[tuple[str, str]], value: float) -> str:
    """One exposition line, labels sorted by name, as prometheus_client writes it in both formats."""
    pairs = ",".join(f'{key}="{_escape(val)}"' for key, val in sorted(labels))
    return f"{name}{{{pairs}}} {floatToGoString(value)}\n" if pairs else f"{name} {floatToGoString(value)}\n"


def _headers(spec: MetricSpec) -> tuple[str, str]:
    """The HELP and TYPE lines of a family in the text format 0.0.4 and in OpenMetrics."""
    kind = "gauge" if spec.kind == "info" else spec.kind
    base = spec.name.removesuffix("_total") if spec.kind == "counter" else spec.name
    text_name = f"{base}_total" if spec.kind == "counter" else base
    text_help = spec.help.replace("\\", r"\\").replace("\n", r"\n")
    text = f"# HELP {text_name} {text_help}\n# TYPE {text_name} {kind}\n"
    return text, f"# HELP {base} {_escape(spec.help)}\n# TYPE {base} {kind}\n"


def render_target(state: TargetState) -> dict[str, str]:
    """A target's sample lines, by family name: what ``TierwatchCollector`` writes for it."""
    info = state.info
    base = list(zip(TARGET_LABELS, info.labels, strict=True))
    out = {UP.name: _sample(UP.name, base, 1.0 if state.up else 0.0)}
    out[PROBE_FAILURES.name] = "".join(
        _sample(PROBE_FAILURES.name, [*base, ("reason", reason)], state.failures[reason])
        for reason in FAILURE_REASONS
    )
    out[CIRCUIT_STATE.name] = "".join(
        _sample(CIRCUIT_STATE.name, [*base, ("state", s)], 1.0 if state.breaker.state == s else 0.0)
        for s in CIRCUIT_STATES
    )
    if state.role is not None:
        out[ROLE.name] = "".join(
            _sample(ROLE.name, [*base, ("role", role)], 1.0 if role == state.role else 0.0)
            for role in ROLES_BY_TIER.get(info.tier, ())
        )
    if state.last_probe is not None:
        out[LAST_PROBE.name] = _sample(LAST_PROBE.name, base, state.last_probe)
    lines, cumulative = [], 0
    bucket = f"{PROBE_DURATION.name}_bucket"
    for bound, count in zip(BUCKET_LABELS, state.bucket_counts, strict=True):
        cumulative += count
        lines.append(_sample(bucket, [*base, ("le", bound)], cumulative))
    lines.append(_sample(bucket, [*base, ("le", "+Inf")], state.duration_count))
    lines.append(_sample(f"{PROBE_DURATION.name}_count", base, state.duration_count))
    lines.append(_sample(f"{PROBE_DURATION.name}_sum", base, state.duration_sum))
    out[PROBE_DURATION.name] = "".join(lines)
    for sample in state.samples:
        spec = sample.spec
        name = spec.name if spec.kind != "counter" or spec.name.endswith("_total") else f"{spec.name}_total"
        line = _sample(name, [*base, *zip(spec.labels, sample.labels, strict=True)], sample.value)
        out[spec.name] = out.get(spec.name, "") + line
    return out


class ReadyExposition:
    """/metrics as a ready body: each target's lines are rendered when its state changes (the monitor
    calls ``refresh``), so a scrape joins strings instead of rendering every target.

    The output is byte for byte what ``TierwatchCollector`` gives through prometheus_client's encoders.
    """

    def __init__(self, monitor: Monitor):
        self.monitor = monitor
        self._collector = TierwatchCollector(monitor)
        self._tail = _TailCollector(self._collector)
        self._lines: dict[str, dict[str, str]] = {}
        self._specs: dict[str, MetricSpec] = {spec.name: spec for spec in (*CORE_SPECS, PROBE_DURATION)}
        self._headers: dict[str, tuple[str, str]] = {}
        self._bodies: dict[str, tuple[int, bytes]] = {}
        self.refresh_all()
        monitor.on_change.append(self.refresh)
        monitor.on_remove.append(self.forget)

    def refresh(self, state: TargetState) -> None:
        """Render one target's lines again (called by the monitor when the target's state changed)."""
        for sample in state.samples:
            self._specs.setdefault(sample.spec.name, sample.spec)
        self._lines[state.info.name] = render_target(state)

    def forget(self, name: str) -> None:
        """Drop a target's lines (called by the monitor when a reload removed it)."""
        self._lines.pop(name, None)

    def refresh_all(self) -> None:
        """Render every target's lines (at start, or after changing states by hand)."""
        for state in self.monitor.states:
            self.refresh(state)

    def body(self, encoder: Callable[[Collector], bytes], content_type: str) -> bytes:
        """The exposition for a negotiated ``encoder``/``content_type`` (from ``choose_encoder``);
        joined again only when the monitor's state changed since the last one."""
        version = self.monitor.version
        cached = self._bodies.get(content_type)
        if cached is not None and cached[0] == version:
            return cached[1]
        openmetrics = content_type.startswith("application/openmetrics-text")
        per_target = [self._lines[state.info.name] for state in self.monitor.states]
        names = [spec.name for spec in (*CORE_SPECS, PROBE_DURATION)]
        seen = set(names)
        for lines in per_target:
            for name in lines:
                if name not in seen:
                    seen.add(name)
                    names.append(name)
        parts = []
        for name in names:
            headers = self._headers.get(name)
            if headers is None:
                headers = self._headers[name] = _headers(self._specs[name])
            parts.append(headers[1] if openmetrics else headers[0])
            parts.extend(lines.get(name, "") for lines in per_target)
        body = "".join(parts).encode() + encoder(self._tail)
        self._bodies[content_type] = (version, body)
        return body
