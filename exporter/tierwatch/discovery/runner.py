"""The discovery runner: refreshes every source of every cluster on its own interval and hands the
clusters whose target list changed to a callback (the monitor's ``apply_targets``).

A cluster's list is its static ``targets`` followed by what each of its sources gives, in config
order. A discovered name must be unique across the whole config: one that a static target, another
source of the cluster or another cluster already has is skipped, and the target that had it keeps it.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ..config import ClusterConfig, DiscoveryConfig, FileSDConfig, LoadedConfig, TargetConfig
from ..events import EventLog
from .dns_sd import DnsSD
from .file_sd import FileSD
from .targets import map_targets

OnChange = Callable[[dict[str, list[TargetConfig]]], Awaitable[None] | None]


@dataclass
class SourceState:
    """One discovery entry of a cluster, with what it gives now and its counters."""

    cluster: ClusterConfig
    entry: DiscoveryConfig
    reader: FileSD | DnsSD
    found: list[tuple[str, TargetConfig]] = field(default_factory=list)  # (where, target), mapped
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (where, reason) of the last refresh
    accepted: int = 0  # targets of this source in the cluster's current list
    invalid: int = 0  # skipped in the cluster's current list (mapping problems and taken names)
    errors: int = 0  # failed refreshes (a file, a name), ever
    logged_skips: set[tuple[str, str]] = field(default_factory=set)
    logged_errors: set[tuple[str, str]] = field(default_factory=set)

    @property
    def kind(self) -> str:
        """``file_sd`` or ``dns_sd``."""
        return self.entry.kind


class Discovery:
    """Runs the ``discovery:`` entries of a loaded config.

    ``on_change`` is called (and awaited when it returns an awaitable) with ``{cluster: full target
    list}`` for the clusters whose list changed: static targets first, then the discovered ones. When it
    raises, the change is logged and offered again at the source's next refresh.
    """

    def __init__(self, loaded: LoadedConfig, on_change: OnChange, events: EventLog | None = None):
        cfg = loaded.config
        self.on_change = on_change
        self.events = events or EventLog.from_settings(cfg.log)
        self.sources: dict[str, list[SourceState]] = {}
        self._static: dict[str, str] = {}  # static target name -> its cluster
        self._current: dict[str, list[TargetConfig]] = {}
        self._lock = asyncio.Lock()
        for cluster in cfg.clusters:
            for target in cluster.targets:
                self._static[target.name] = cluster.name
            for target in cluster.sentinel.targets if cluster.sentinel else ():
                self._static[target.name] = cluster.name
        for cluster in cfg.clusters:
            if not cluster.discovery:
                continue
            self._current[cluster.name] = list(cluster.targets)
            states = []
            for entry in cluster.discovery:
                source = entry.source
                reader = FileSD(source) if isinstance(source, FileSDConfig) else DnsSD(source)
                states.append(SourceState(cluster, entry, reader))
            self.sources[cluster.name] = states

    def current(self) -> dict[str, list[TargetConfig]]:
        """Every discovering cluster's current full target list (to apply again after a reload)."""
        return {name: list(targets) for name, targets in self._current.items()}

    async def refresh(self) -> dict[str, list[TargetConfig]]:
        """Refresh every source once, at the same time, and publish; returns what changed."""
        everything = [s for states in self.sources.values() for s in states]
        await asyncio.gather(*(self._refresh_source(s) for s in everything))
        return await self._publish(list(self.sources))

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh at once, then each source every ``refresh_interval``, until ``stop`` is set."""
        if not self.sources:
            return
        await self.refresh()
        tasks = [
            asyncio.create_task(self._loop(state, stop))
            for states in self.sources.values()
            for state in states
        ]
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _loop(self, state: SourceState, stop: asyncio.Event) -> None:
        interval = state.entry.source.refresh_interval
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), interval)
                return
            except TimeoutError:
                pass
            await self._refresh_source(state)
            await self._publish([state.cluster.name])

    async def _refresh_source(self, state: SourceState) -> None:
        reader = state.reader
        try:
            if isinstance(reader, FileSD):
                result = await asyncio.to_thread(reader.refresh)
            else:
                result = await reader.refresh()
        except Exception as exc:  # noqa: BLE001 - a failing reader must not stop discovery; targets kept
            state.errors += 1
            self._log_errors(state, [("-", f"refresh failed ({type(exc).__name__})")])
            return
        state.errors += len(result.errors)
        self._log_errors(state, result.errors)
        mapped = map_targets(state.cluster.name, state.cluster.tier, state.entry.source, result.found)
        state.found, state.skipped = mapped.targets, mapped.skipped

    def _log_errors(self, state: SourceState, errors: list[tuple[str, str]]) -> None:
        state.logged_errors = self._log_new(
            state, "discovery_refresh_failed", errors, state.logged_errors, kept="previous targets"
        )

    def _log_new(
        self,
        state: SourceState,
        event: str,
        problems: list[tuple[str, str]],
        logged: set[tuple[str, str]],
        **extra: str,
    ) -> set[tuple[str, str]]:
        """Log each (where, reason) not logged while it lasted already; returns the set now logged."""
        now = set(problems)
        for where, reason in sorted(now - logged):
            self.events.emit(
                event,
                "warning",
                cluster=state.cluster.name,
                source=state.kind,
                where=where,
                reason=reason,
                **extra,
            )
        return now

    async def _publish(self, clusters: list[str]) -> dict[str, list[TargetConfig]]:
        async with self._lock:
            changed: dict[str, list[TargetConfig]] = {}
            before: dict[str, list[TargetConfig]] = {}
            for name in clusters:
                targets = self._compose(name)
                if targets != self._current[name]:
                    before[name] = self._current[name]
                    self._current[name] = targets
                    changed[name] = targets
            if not changed:
                return {}
            for name, targets in changed.items():
                old = {t.name for t in before[name]}
                new = {t.name for t in targets}
                self.events.emit(
                    "discovery_targets_changed",
                    cluster=name,
                    targets=len(targets),
                    added=len(new - old),
                    removed=len(old - new),
                )
            try:
                outcome = self.on_change(dict(changed))
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception as exc:  # noqa: BLE001 - a refused change is offered again, never fatal
                self.events.emit(
                    "discovery_apply_failed", "error", clusters=",".join(changed), reason=type(exc).__name__
                )
                self._current.update(before)  # offered again at the next refresh
                return {}
            return changed

    def _compose(self, cluster_name: str) -> list[TargetConfig]:
        """The cluster's list now: its static targets, then every source's valid, unclaimed targets."""
        states = self.sources[cluster_name]
        cluster = states[0].cluster
        taken = dict(self._static)
        for other, targets in self._current.items():
            if other != cluster_name:
                for target in targets:
                    taken.setdefault(target.name, other)
        out = list(cluster.targets)
        seen = {t.name for t in out}
        for state in states:
            skipped = list(state.skipped)
            accepted = 0
            for where, target in state.found:
                owner = taken.get(target.name)
                if target.name in seen or (owner is not None and owner != cluster_name):
                    by = f" by cluster {owner}" if owner is not None and owner != cluster_name else ""
                    skipped.append((where, f"target name already taken{by}; names are unique labels"))
                    continue
                seen.add(target.name)
                out.append(target)
                accepted += 1
            state.accepted, state.invalid = accepted, len(skipped)
            self._log_skips(state, skipped)
        return out

    def _log_skips(self, state: SourceState, skipped: list[tuple[str, str]]) -> None:
        state.logged_skips = self._log_new(state, "discovery_target_skipped", skipped, state.logged_skips)

    def totals(self) -> list[tuple[str, str, str, int, int, int]]:
        """(tier, cluster, source kind, targets, invalid, errors), the entries of a kind added up."""
        rows: dict[tuple[str, str, str], list[int]] = {}
        for name, states in self.sources.items():
            for state in states:
                row = rows.setdefault((state.cluster.tier, name, state.kind), [0, 0, 0])
                row[0] += state.accepted
                row[1] += state.invalid
                row[2] += state.errors
        return [(*key, *values) for key, values in rows.items()]  # type: ignore[misc]
