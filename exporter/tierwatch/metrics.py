"""Turns the monitor's state into Prometheus metric families, and /metrics into a ready body.

Both only read what the last finished probes left in memory; they never contact a target.
``TierwatchCollector`` is a prometheus_client collector (the reference rendering); ``ReadyExposition``
renders each target's lines when its probe finishes and a scrape only joins them, because a full render
takes ~0.16 CPU-ms per target (1.6 s for 10,000 targets) and would stall the event loop, and with it the
probes in flight, on every scrape. The join itself runs in C: each family keeps one column of lines
(one entry per target), so a scrape does no Python work per target.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Callable, Iterable, Iterator, Mapping
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
    CLUSTER_PROBE_DURATION,
    CONFIG_RELOAD_SUCCESSFUL,
    CONFIG_RELOAD_TIME,
    FAILURE_REASONS,
    LAST_PROBE,
    PROBE_BUCKETS,
    PROBE_DURATION,
    PROBE_FAILURES,
    PROBE_LAST_DURATION,
    PROBES,
    ROLE,
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
from .tier_catalog import failure_reasons, roles

BUCKET_LABELS = [f"{b:g}" for b in PROBE_BUCKETS]
CORE_SPECS = (UP, PROBE_FAILURES, CIRCUIT_STATE, ROLE, LAST_PROBE, PROBES, PROBE_LAST_DURATION)
# failure reasons a tier's probe can never give (tier_catalog.failure_reasons) are not exported, unless
# one does occur; each tier's roles: tier_catalog.roles


def enabled_options(monitor: Monitor) -> frozenset[str]:
    """The ``metrics.*`` opt-in settings turned on in the monitor's config (``MetricSpec.opt_in``)."""
    settings = monitor.loaded.config.metrics
    return frozenset(key for key, on in settings.model_dump().items() if on)


def exported(spec: MetricSpec, options: frozenset[str]) -> bool:
    """Whether a family is exported with the opt-in settings ``options``."""
    return not spec.opt_in or spec.opt_in in options


@dataclass(frozen=True)
class SeriesBudget:
    """How many series one target of a kind exports with the default settings, and the most it may."""

    kind: str
    # series: seen in one run of tests/integration/test_series_budget.py (some families follow server state)
    series: int
    budget: int
    note: str = ""


HISTOGRAM_SERIES = len(PROBE_BUCKETS) + 3  # buckets, +Inf, _count, _sum
# Prometheus pays for every series: a new one per target is a decision (issue 17). The per-target latency
# histogram is opt-in (metrics.probe_duration_histogram, +16 series a target); by default a target has
# the last probe's duration and a probe counter, and latency quantiles come from one histogram per
# tier, cluster and region. Budgets leave no room to grow unnoticed.
SERIES_PER_TARGET: tuple[SeriesBudget, ...] = (
    SeriesBudget("HTTP app server", 12, 12, "http:// (an https:// target adds its certificate expiry)"),
    SeriesBudget("load balancer (HAProxy)", 51, 51, "one frontend, one backend of one server"),
    SeriesBudget("VIP of an LB pair (per cluster)", 3, 3),
    SeriesBudget("Redis primary", 37, 37, "one replica, no queue"),
    SeriesBudget("Redis replica", 39, 39, "with the lag its primary reports about it"),
    SeriesBudget("Redis Sentinel", 23, 23, "watching one master"),
    SeriesBudget(
        "PostgreSQL primary",
        65,
        85,
        "one streaming standby, three databases, no user table yet: each of the top_tables tables "
        "(5 by default) adds 4",
    ),
    SeriesBudget("PostgreSQL replica", 47, 47, "with the lag its primary reports about it"),
    SeriesBudget(
        "Patroni member (adds to its PostgreSQL target)",
        21,
        26,
        "a member read without failures (tests/integration/test_patroni_probe.py, a real Patroni); each "
        "failure reason seen adds 1",
    ),
    SeriesBudget(
        "probe latency histogram (per tier, cluster and region)",
        HISTOGRAM_SERIES,
        HISTOGRAM_SERIES,
        "tierwatch_cluster_probe_duration_seconds: per region of a cluster, not per target",
    ),
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

    def _cluster_latency(self) -> Iterator[Metric]:
        latency = self.monitor.latency
        if not latency:
            return
        histograms = family(CLUSTER_PROBE_DURATION)
        for key in sorted(latency):
            group = latency[key]
            cumulative, buckets = 0, []
            for bound, count in zip(BUCKET_LABELS, group.bucket_counts, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            buckets.append(("+Inf", group.count))
            histograms.add_metric(list(key), buckets, group.sum)  # type: ignore[attr-defined]
        yield histograms

    def tail_families(self, by_tier_state: Mapping[tuple[str, str], int] | None = None) -> Iterator[Metric]:
        """The families that are not per target: the clusters' VIPs and the exporter's own;
        ``by_tier_state``: the targets per (tier, status), counted here if not given."""
        if by_tier_state is None:
            by_tier_state = {}
            for state in self.monitor.states:
                key = (state.info.tier, state.status)
                by_tier_state[key] = by_tier_state.get(key, 0) + 1
        yield from self._vip_families()
        yield from self._cluster_latency()
        yield from self._exporter_families(by_tier_state)

    def target_families(self) -> Iterator[Metric]:
        """The per-target families, every target's samples."""
        options = enabled_options(self.monitor)
        histogram = exported(PROBE_DURATION, options)
        core = {spec.name: family(spec) for spec in CORE_SPECS}
        durations = family(PROBE_DURATION)
        extra: dict[str, Metric] = {}
        for state in self.monitor.states:
            info = state.info
            labels = list(info.labels)
            _add(core[UP.name], labels, 1.0 if state.up else 0.0)
            reasons = failure_reasons(info.tier)
            for reason in FAILURE_REASONS:
                if reason in reasons or state.failures[reason]:
                    _add(core[PROBE_FAILURES.name], [*labels, reason], state.failures[reason])
            for breaker_state in CIRCUIT_STATES:
                value = 1.0 if state.breaker.state == breaker_state else 0.0
                _add(core[CIRCUIT_STATE.name], [*labels, breaker_state], value)
            if state.role is not None:
                for role in roles(info.tier):
                    _add(core[ROLE.name], [*labels, role], 1.0 if role == state.role else 0.0)
            if state.last_probe is not None:
                _add(core[LAST_PROBE.name], labels, state.last_probe)
            _add(core[PROBES.name], labels, state.duration_count)
            if state.duration_last is not None:
                _add(core[PROBE_LAST_DURATION.name], labels, state.duration_last)
            if histogram:
                cumulative, buckets = 0, []
                for bound, count in zip(BUCKET_LABELS, state.bucket_counts, strict=True):
                    cumulative += count
                    buckets.append((bound, cumulative))
                buckets.append(("+Inf", state.duration_count))
                durations.add_metric(labels, buckets, state.duration_sum)  # type: ignore[attr-defined]
            for sample in state.samples:
                if not exported(sample.spec, options):
                    continue
                metric = extra.get(sample.spec.name)
                if metric is None:
                    metric = extra[sample.spec.name] = family(sample.spec)
                _add(metric, [*labels, *sample.labels], sample.value)
        yield from core.values()
        if histogram:
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

    def _exporter_families(self, by_tier_state: Mapping[tuple[str, str], int]) -> Iterator[Metric]:
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
    def __init__(self, collector: TierwatchCollector, counts: Mapping[tuple[str, str], int]):
        self._collector = collector
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        return self._collector.tail_families(self._counts)


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
    """``floatToGoString``, with shortcuts for the small non-negative integers most samples are
    (counters, bucket counts) and for finite floats below 1e6 (durations): there Go writes what
    Python's repr of the float does (``N.0`` for an integer)."""
    if type(value) is int and 0 <= value < 1_000_000:
        return f"{value}.0"
    if type(value) is float and -math.inf < value < 1e6:
        return repr(value)
    return floatToGoString(value)


def _headers(spec: MetricSpec) -> tuple[str, str]:
    """The HELP and TYPE lines of a family in the text format 0.0.4 and in OpenMetrics."""
    kind = "gauge" if spec.kind == "info" else spec.kind
    base = spec.name.removesuffix("_total") if spec.kind == "counter" else spec.name
    text_name = f"{base}_total" if spec.kind == "counter" else base
    text_help = spec.help.replace("\\", r"\\").replace("\n", r"\n")
    text = f"# HELP {text_name} {text_help}\n# TYPE {text_name} {kind}\n"
    return text, f"# HELP {base} {_escape(spec.help)}\n# TYPE {base} {kind}\n"


def _encoded_headers(spec: MetricSpec) -> tuple[bytes, bytes]:
    text, openmetrics = _headers(spec)
    return text.encode(), openmetrics.encode()


class TargetPrefixes:
    """A target's sample-line prefixes (name and escaped, sorted labels), built once per target so a
    render after a probe only formats values and joins; and its last rendering of the families that
    rarely change (failures, circuit, role), reused while their values are the same."""

    __slots__ = (
        "buckets",
        "circuit",
        "circuit_lines",
        "count",
        "extra",
        "failures",
        "inf",
        "info",
        "labels",
        "last",
        "last_duration",
        "last_probe",
        "probes",
        "reasons",
        "role_lines",
        "roles",
        "sum",
        "up",
        "up_lines",
    )

    def __init__(self, labels: tuple[str, ...], tier: str):
        self.info: object = None  # the TargetInfo these were last checked against
        self.labels = labels
        base = list(zip(TARGET_LABELS, labels, strict=True))
        self.up = _prefix(UP.name, base)
        self.up_lines = (f"{self.up}0.0\n", f"{self.up}1.0\n")
        self.last_probe = _prefix(LAST_PROBE.name, base)
        self.probes = _prefix(PROBES.name, base)
        self.last_duration = _prefix(PROBE_LAST_DURATION.name, base)
        self.reasons = failure_reasons(tier)
        self.failures = [(r, _prefix(PROBE_FAILURES.name, [*base, ("reason", r)])) for r in FAILURE_REASONS]
        self.circuit = [(s, _prefix(CIRCUIT_STATE.name, [*base, ("state", s)])) for s in CIRCUIT_STATES]
        self.roles = [(r, _prefix(ROLE.name, [*base, ("role", r)])) for r in roles(tier)]
        # the whole family's lines for each state and role: a render picks one
        self.circuit_lines = {s: _enum_lines(self.circuit, s) for s in CIRCUIT_STATES}
        self.role_lines = {r: _enum_lines(self.roles, r) for r, _ in self.roles}
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


def _enum_lines(prefixes: list[tuple[str, str]], current: str | None) -> str:
    """An enum-style family's lines: 1 for ``current``, 0 for the others."""
    return "".join([f"{prefix}{'1.0' if value == current else '0.0'}\n" for value, prefix in prefixes])


def _timestamp(value: float) -> str:
    """``floatToGoString`` of a Unix time (a finite float above 1e6, so in Go's exponent form)."""
    text = repr(value)
    dot = text.find(".")
    if dot > 6 and value > 0 and "e" not in text:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return floatToGoString(value)


def target_prefixes(state: TargetState, cached: TargetPrefixes | None = None) -> TargetPrefixes:
    """``cached`` if it was built for this target's labels, else new prefixes for them."""
    info = state.info
    if cached is not None and (cached.info is info or cached.labels == info.labels):
        cached.info = info
        return cached
    prefixes = TargetPrefixes(info.labels, info.tier)
    prefixes.info = info
    return prefixes


def _failure_lines(p: TargetPrefixes, counts: tuple[int, ...]) -> str:
    return "".join(
        [
            f"{prefix}{_value(n)}\n"
            for (reason, prefix), n in zip(p.failures, counts, strict=True)
            if n or reason in p.reasons
        ]
    )


def render_target(
    state: TargetState, prefixes: TargetPrefixes | None = None, options: frozenset[str] = frozenset()
) -> dict[str, str]:
    """A target's sample lines, by family name: what ``TierwatchCollector`` writes for it with the
    opt-in settings ``options`` (``enabled_options``). Pass the target's ``prefixes``
    (``target_prefixes``) to reuse them between renders."""
    p = target_prefixes(state, prefixes)
    out = {UP.name: p.up_lines[1 if state.up else 0]}
    failures = state.failures
    counts = tuple([failures[reason] for reason in FAILURE_REASONS])
    out[PROBE_FAILURES.name] = p.reuse(PROBE_FAILURES.name, counts, lambda: _failure_lines(p, counts))
    breaker = state.breaker.state
    lines = p.circuit_lines.get(breaker)
    out[CIRCUIT_STATE.name] = lines if lines is not None else _enum_lines(p.circuit, breaker)
    role = state.role
    if role is not None:
        lines = p.role_lines.get(role)
        out[ROLE.name] = lines if lines is not None else _enum_lines(p.roles, role)
    if state.last_probe is not None:
        out[LAST_PROBE.name] = f"{p.last_probe}{_timestamp(state.last_probe)}\n"
    count = state.duration_count
    out[PROBES.name] = f"{p.probes}{_value(count)}\n"
    if state.duration_last is not None:
        out[PROBE_LAST_DURATION.name] = f"{p.last_duration}{_value(state.duration_last)}\n"
    if PROBE_DURATION.opt_in in options:
        histogram, cumulative = [], 0
        for prefix, n in zip(p.buckets, state.bucket_counts, strict=True):
            cumulative += n
            histogram.append(f"{prefix}{_value(cumulative)}\n")
        histogram.append(f"{p.inf}{_value(count)}\n")
        histogram.append(f"{p.count}{_value(count)}\n")
        histogram.append(f"{p.sum}{_value(state.duration_sum)}\n")
        out[PROBE_DURATION.name] = "".join(histogram)
    for sample in state.samples:
        spec = sample.spec
        if spec.opt_in and spec.opt_in not in options:
            continue
        line = f"{p.sample_prefix(spec, sample.labels)}{_value(sample.value)}\n"
        previous = out.get(spec.name)
        out[spec.name] = line if previous is None else previous + line
    return out


def _what_a_reader_sees(state: TargetState) -> tuple[object, ...]:
    """Everything ``render_target`` reads from a target's state (the histogram's buckets change only
    with its count and sum)."""
    return (
        state.info,  # its labels (a reload replaces it: one render more then)
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
    calls ``refresh``) and written into one column per family (a list with one entry per target, in
    config order), so a scrape joins each column in C instead of visiting every target in Python: at
    10,000 targets a scrape costs a few CPU-ms, not the ~40 of a per-target join, and holds the event
    loop (and the latency of every probe in flight) that much less.

    The output is byte for byte what ``TierwatchCollector`` gives through prometheus_client's encoders.
    """

    def __init__(self, monitor: Monitor):
        self.monitor = monitor
        self._collector = TierwatchCollector(monitor)
        self._counts: dict[tuple[str, str], int] = {}  # targets by (tier, status), kept by refresh
        self._tail = _TailCollector(self._collector, self._counts)
        self._lines: dict[str, dict[str, bytes]] = {}  # target -> family -> its lines
        self._prefixes: dict[str, TargetPrefixes] = {}
        self._rendered_from: dict[str, tuple[object, ...]] = {}
        self._status: dict[str, tuple[str, str]] = {}  # target -> the (tier, status) counted for it
        self._specs: dict[str, MetricSpec] = {spec.name: spec for spec in (*CORE_SPECS, PROBE_DURATION)}
        self._headers: dict[str, tuple[bytes, bytes]] = {}
        self._bodies: dict[str, tuple[int, bytes]] = {}
        self._loaded = monitor.loaded
        self._options = enabled_options(monitor)
        # the columns, laid out for the monitor's target list of ``_layout`` (``Monitor.layout``)
        self._layout = -1
        self._index: dict[str, int] = {}
        self._order: list[str] = []
        self._columns: dict[str, list[bytes]] = {}
        self._families: list[str] | None = None  # the families in exposition order; None: to compute
        self.refresh_all()
        monitor.on_change.append(self.refresh)
        monitor.on_remove.append(self.forget)

    def refresh(self, state: TargetState) -> None:
        """Render one target's lines again (called by the monitor when the target's state changed),
        unless nothing they show changed since the last render."""
        if self.monitor.loaded is not self._loaded and self._options_changed():
            return  # every target was rendered again
        name = state.info.name
        seen = _what_a_reader_sees(state)
        if self._rendered_from.get(name) == seen and name in self._lines:
            return  # e.g. a replica whose primary reported the same lag again
        for sample in state.samples:
            self._specs.setdefault(sample.spec.name, sample.spec)
        prefixes = self._prefixes[name] = target_prefixes(state, self._prefixes.get(name))
        lines = {name: text.encode() for name, text in render_target(state, prefixes, self._options).items()}
        old = self._lines.get(name)
        self._lines[name] = lines
        self._rendered_from[name] = seen
        self._count(name, (state.info.tier, state.status))
        if self._layout != self.monitor.layout:
            return  # the columns are laid out again on the next scrape
        index = self._index.get(name)
        if index is None:
            self._layout = -1  # a target the layout does not know: lay out again
            return
        columns = self._columns
        for family_name, text in lines.items():
            column = columns.get(family_name)
            if column is None:
                column = columns[family_name] = [b""] * len(self._order)
            column[index] = text
        if old is None or list(old) != list(lines):  # its families changed: so may their order
            if old is not None:
                for family_name in old.keys() - lines.keys():
                    columns[family_name][index] = b""
            self._families = None

    def _count(self, name: str, key: tuple[str, str]) -> None:
        counts = self._counts
        old = self._status.get(name)
        if old == key:
            return
        if old is not None:
            counts[old] -= 1
            if not counts[old]:
                del counts[old]
        counts[key] = counts.get(key, 0) + 1
        self._status[name] = key

    def _options_changed(self) -> bool:
        """After a reload: re-render every target if the opt-in settings changed (True then)."""
        self._loaded = self.monitor.loaded
        options = enabled_options(self.monitor)
        if options == self._options:
            return False
        self._options = options
        self._bodies.clear()
        self._layout = -1
        self.refresh_all()
        return True

    def forget(self, name: str) -> None:
        """Drop a target's lines (called by the monitor when a reload removed it)."""
        self._lines.pop(name, None)
        self._prefixes.pop(name, None)
        self._rendered_from.pop(name, None)
        self._layout = -1

    def refresh_all(self) -> None:
        """Render every target's lines again, changed or not (at start, or after changing states by
        hand)."""
        self._rendered_from.clear()
        for state in self.monitor.states:
            self.refresh(state)

    def _lay_out(self) -> None:
        """Columns for the monitor's current target list (at start and after a reload)."""
        states = self.monitor.states
        self._order = [state.info.name for state in states]
        self._index = {name: index for index, name in enumerate(self._order)}
        columns: dict[str, list[bytes]] = {}
        for index, name in enumerate(self._order):
            for family_name, text in self._lines[name].items():
                column = columns.get(family_name)
                if column is None:
                    column = columns[family_name] = [b""] * len(self._order)
                column[index] = text
        self._columns = columns
        self._families = None
        self._counts.clear()
        self._status.clear()
        for state in states:
            self._count(state.info.name, (state.info.tier, state.status))
        self._layout = self.monitor.layout

    def _family_order(self) -> list[str]:
        """The core families, then the others in the order the targets (in config order) first show
        them: the collector's order."""
        names = [spec.name for spec in CORE_SPECS]
        if PROBE_DURATION.opt_in in self._options:
            names.append(PROBE_DURATION.name)
        seen = set(names)
        for name in self._order:
            for family_name in self._lines[name]:
                if family_name not in seen:
                    seen.add(family_name)
                    names.append(family_name)
        return names

    def body(self, encoder: Callable[[Collector], bytes], content_type: str) -> bytes:
        """The exposition for a negotiated ``encoder``/``content_type`` (from ``choose_encoder``);
        joined again only when the monitor's state changed since the last one."""
        if self.monitor.loaded is not self._loaded:
            self._options_changed()
        version = self.monitor.version
        cached = self._bodies.get(content_type)
        if cached is not None and cached[0] == version:
            return cached[1]
        if self._layout != self.monitor.layout:
            self._lay_out()
        if self._families is None:
            self._families = self._family_order()
        openmetrics = content_type.startswith("application/openmetrics-text")
        parts: list[bytes] = []
        for name in self._families:
            headers = self._headers.get(name)
            if headers is None:
                headers = self._headers[name] = _encoded_headers(self._specs[name])
            parts.append(headers[1] if openmetrics else headers[0])
            column = self._columns.get(name)
            if column is not None:
                parts.extend(column)
        parts.append(encoder(self._tail))
        body = b"".join(parts)
        self._bodies[content_type] = (version, body)
        return body
