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
from dataclasses import dataclass

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


@dataclass(frozen=True)
class SeriesBudget:
    """How many series one target of a kind exports with the default settings, and the most it may."""

    kind: str
    series: int  # seen in one run of tests/test_series_budget.py (some families follow server state)
    budget: int
    note: str = ""


HISTOGRAM_SERIES = len(PROBE_BUCKETS) + 3  # buckets, +Inf, _count, _sum
# Prometheus pays for every series: a new one per target is a decision (issue 17). Budgets are today's
# counts, so growth fails tests/test_series_budget.py; lowering them is the next step.
SERIES_PER_TARGET: tuple[SeriesBudget, ...] = (
    SeriesBudget("HTTP app server", 28, 28),
    SeriesBudget("load balancer (HAProxy)", 59, 59, "one frontend, one backend of one server"),
    SeriesBudget("VIP of an LB pair (per cluster)", 3, 3),
    SeriesBudget("Redis primary", 49, 49, "one replica, no queue"),
    SeriesBudget("Redis replica", 51, 51, "with the lag its primary reports about it"),
    SeriesBudget("Redis Sentinel", 37, 37, "watching one master"),
    SeriesBudget("PostgreSQL primary", 67, 67, "one streaming standby"),
    SeriesBudget("PostgreSQL replica", 57, 57, "with the lag its primary reports about it"),
)


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
    return f"{_prefix(name, labels)}{_value(value)}\n"


def _prefix(name: str, labels: Iterable[tuple[str, str]]) -> str:
    """A sample line up to its value: the name and the escaped labels, sorted by name."""
    pairs = ",".join(f'{key}="{_escape(val)}"' for key, val in sorted(labels))
    return f"{name}{{{pairs}}} " if pairs else f"{name} "


def _value(value: float) -> str:
    """``floatToGoString``, with a shortcut for the small non-negative integers most samples are
    (counters, bucket counts): below 1e6 Go writes them as Python's repr of the float, ``N.0``."""
    if type(value) is int and 0 <= value < 1_000_000:
        return f"{value}.0"
    return floatToGoString(value)


def _headers(spec: MetricSpec) -> tuple[str, str]:
    """The HELP and TYPE lines of a family in the text format 0.0.4 and in OpenMetrics."""
    kind = "gauge" if spec.kind == "info" else spec.kind
    base = spec.name.removesuffix("_total") if spec.kind == "counter" else spec.name
    text_name = f"{base}_total" if spec.kind == "counter" else base
    text_help = spec.help.replace("\\", r"\\").replace("\n", r"\n")
    text = f"# HELP {text_name} {text_help}\n# TYPE {text_name} {kind}\n"
    return text, f"# HELP {base} {_escape(spec.help)}\n# TYPE {base} {kind}\n"


class TargetPrefixes:
    """A target's sample-line prefixes (name and escaped, sorted labels), built once per target so a
    render after a probe only formats values and joins; and its last rendering of the families that
    rarely change (failures, circuit, role), reused while their values are the same."""

    __slots__ = (
        "buckets",
        "circuit",
        "count",
        "extra",
        "failures",
        "inf",
        "labels",
        "last",
        "last_probe",
        "roles",
        "sum",
        "up",
    )

    def __init__(self, labels: tuple[str, ...], tier: str):
        self.labels = labels
        base = list(zip(TARGET_LABELS, labels, strict=True))
        self.up = _prefix(UP.name, base)
        self.last_probe = _prefix(LAST_PROBE.name, base)
        self.failures = [_prefix(PROBE_FAILURES.name, [*base, ("reason", r)]) for r in FAILURE_REASONS]
        self.circuit = [(s, _prefix(CIRCUIT_STATE.name, [*base, ("state", s)])) for s in CIRCUIT_STATES]
        self.roles = [(r, _prefix(ROLE.name, [*base, ("role", r)])) for r in ROLES_BY_TIER.get(tier, ())]
        bucket = f"{PROBE_DURATION.name}_bucket"
        self.buckets = [_prefix(bucket, [*base, ("le", bound)]) for bound in BUCKET_LABELS]
        self.inf = _prefix(bucket, [*base, ("le", "+Inf")])
        self.count = _prefix(f"{PROBE_DURATION.name}_count", base)
        self.sum = _prefix(f"{PROBE_DURATION.name}_sum", base)
        # (spec name, sample label values) -> line prefix
        self.extra: dict[tuple[str, tuple[str, ...]], str] = {}
        # family name -> (the values it was rendered from, its lines)
        self.last: dict[str, tuple[object, str]] = {}

    def sample_prefix(self, spec: MetricSpec, values: tuple[str, ...]) -> str:
        """The prefix of a probe's own sample (``Sample``) of family ``spec`` with label ``values``."""
        key = (spec.name, values)
        prefix = self.extra.get(key)
        if prefix is None:
            if len(self.extra) > 256:  # label values that keep changing: do not grow without bound
                self.extra.clear()
            base = zip(TARGET_LABELS, self.labels, strict=True)
            counter = spec.kind == "counter" and not spec.name.endswith("_total")
            name = f"{spec.name}_total" if counter else spec.name
            prefix = self.extra[key] = _prefix(name, [*base, *zip(spec.labels, values, strict=True)])
        return prefix

    def reuse(self, family_name: str, values: object, render: Callable[[], str]) -> str:
        """The lines of ``family_name`` for ``values``: the last ones if the values are the same."""
        last = self.last.get(family_name)
        if last is not None and last[0] == values:
            return last[1]
        lines = render()
        self.last[family_name] = (values, lines)
        return lines


def target_prefixes(state: TargetState, cached: TargetPrefixes | None = None) -> TargetPrefixes:
    """``cached`` if it was built for this target's labels, else new prefixes for them."""
    labels = state.info.labels
    if cached is not None and cached.labels == labels:
        return cached
    return TargetPrefixes(labels, state.info.tier)


def render_target(state: TargetState, prefixes: TargetPrefixes | None = None) -> dict[str, str]:
    """A target's sample lines, by family name: what ``TierwatchCollector`` writes for it. Pass the
    target's ``prefixes`` (``target_prefixes``) to reuse them between renders."""
    p = target_prefixes(state, prefixes)
    out = {UP.name: f"{p.up}{'1.0' if state.up else '0.0'}\n"}
    failures = state.failures
    counts = tuple([failures[reason] for reason in FAILURE_REASONS])
    out[PROBE_FAILURES.name] = p.reuse(
        PROBE_FAILURES.name,
        counts,
        lambda: "".join([f"{prefix}{_value(n)}\n" for prefix, n in zip(p.failures, counts, strict=True)]),
    )
    breaker = state.breaker.state
    out[CIRCUIT_STATE.name] = p.reuse(
        CIRCUIT_STATE.name,
        breaker,
        lambda: "".join([f"{prefix}{'1.0' if s == breaker else '0.0'}\n" for s, prefix in p.circuit]),
    )
    role = state.role
    if role is not None:
        out[ROLE.name] = p.reuse(
            ROLE.name,
            role,
            lambda: "".join([f"{prefix}{'1.0' if r == role else '0.0'}\n" for r, prefix in p.roles]),
        )
    if state.last_probe is not None:
        out[LAST_PROBE.name] = f"{p.last_probe}{floatToGoString(state.last_probe)}\n"
    lines, cumulative = [], 0
    for prefix, count in zip(p.buckets, state.bucket_counts, strict=True):
        cumulative += count
        lines.append(f"{prefix}{_value(cumulative)}\n")
    lines.append(f"{p.inf}{_value(state.duration_count)}\n")
    lines.append(f"{p.count}{_value(state.duration_count)}\n")
    lines.append(f"{p.sum}{floatToGoString(state.duration_sum)}\n")
    out[PROBE_DURATION.name] = "".join(lines)
    for sample in state.samples:
        spec = sample.spec
        line = f"{p.sample_prefix(spec, sample.labels)}{_value(sample.value)}\n"
        previous = out.get(spec.name)
        out[spec.name] = line if previous is None else previous + line
    return out


def _what_a_reader_sees(state: TargetState) -> tuple[object, ...]:
    """Everything ``render_target`` reads from a target's state (the histogram's buckets change only
    with its count and sum)."""
    return (
        state.info.labels,
        state.up,
        state.role,
        state.breaker.state,
        state.last_probe,
        state.duration_count,
        state.duration_sum,
        tuple(state.failures.values()),
        tuple(state.samples),
    )


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
        self._prefixes: dict[str, TargetPrefixes] = {}
        self._rendered_from: dict[str, tuple[object, ...]] = {}
        self._specs: dict[str, MetricSpec] = {spec.name: spec for spec in (*CORE_SPECS, PROBE_DURATION)}
        self._headers: dict[str, tuple[str, str]] = {}
        self._bodies: dict[str, tuple[int, bytes]] = {}
        self.refresh_all()
        monitor.on_change.append(self.refresh)
        monitor.on_remove.append(self.forget)

    def refresh(self, state: TargetState) -> None:
        """Render one target's lines again (called by the monitor when the target's state changed),
        unless nothing they show changed since the last render."""
        name = state.info.name
        seen = _what_a_reader_sees(state)
        if self._rendered_from.get(name) == seen and name in self._lines:
            return  # e.g. a replica whose primary reported the same lag again
        for sample in state.samples:
            self._specs.setdefault(sample.spec.name, sample.spec)
        prefixes = self._prefixes[name] = target_prefixes(state, self._prefixes.get(name))
        self._lines[name] = render_target(state, prefixes)
        self._rendered_from[name] = seen

    def forget(self, name: str) -> None:
        """Drop a target's lines (called by the monitor when a reload removed it)."""
        self._lines.pop(name, None)
        self._prefixes.pop(name, None)
        self._rendered_from.pop(name, None)

    def refresh_all(self) -> None:
        """Render every target's lines again, changed or not (at start, or after changing states by
        hand)."""
        self._rendered_from.clear()
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
