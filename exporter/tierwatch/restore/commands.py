"""The batch commands as the CLI runs them: which sets, signal handling, publishing each result
(metrics file, audit line, one printed line) and the exit code."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from types import FrameType

from ..config import LoadedConfig
from ..config.backups import BackupSet, BackupsSettings
from . import journal, metrics, textfile
from .outcome import Interrupted, Outcome, StageError

RESTORE_GAUGES = [textfile.Gauge(spec.name, spec.help) for spec in metrics.RESTORE_TEST]
_KEPT = ("rto_seconds", "rpo_seconds", "restored_bytes")


@contextmanager
def interruptible() -> Iterator[None]:
    """SIGTERM and SIGINT raise Interrupted once (a job started in the background inherits SIGINT
    ignored, so both are installed here); a second signal while cleaning up is ignored."""
    fired: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if not fired:
            fired.append(signum)
            raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def selected_sets(settings: BackupsSettings, name: str | None, command: str) -> list[BackupSet] | None:
    if name is None:
        return list(settings.sets)
    found = settings.find(name)
    if found is None:
        print(f"tierwatch {command}: no backup set named {name!r} in backups.sets", file=sys.stderr)
        return None
    return [found]


def backups_settings(loaded: LoadedConfig, command: str) -> BackupsSettings | None:
    settings = loaded.config.backups
    if settings is None:
        print(f"tierwatch {command}: {loaded.path} has no backups: section", file=sys.stderr)
    return settings


def attempt(work: Callable[[], Outcome]) -> Outcome:
    """``work()``, a StageError turned into a failed Outcome."""
    try:
        return work()
    except StageError as exc:
        return Outcome(success=False, stage=exc.stage, error=exc.message)


def restore_test(loaded: LoadedConfig, backup: str | None, target: datetime | None) -> int:
    """``tierwatch restore-test``: exit 0 only when every selected set verified."""
    settings = backups_settings(loaded, "restore-test")
    if settings is None:
        return 2
    sets = selected_sets(settings, backup, "restore-test")
    if sets is None:
        return 2
    failed = 0
    with interruptible():
        for bset in sets:
            try:
                outcome = attempt(lambda bset=bset: _restore_one(settings, bset, target))  # type: ignore[misc]
            except Interrupted as exc:
                _audit(settings, "restore_test", bset, Outcome(False, "interrupted", str(exc)))
                print(f"{bset.name}: interrupted (signal {exc.signum}); cleaned up", file=sys.stderr)
                return 128 + exc.signum
            # a busy set is the other run's to report; a result that could not be recorded is a failure
            published = outcome.stage == "lock" or _publish_restore(settings, bset, outcome)
            audited = _audit(settings, "restore_test", bset, outcome)
            rto, rpo = outcome.rto_seconds or 0.0, outcome.rpo_seconds or 0.0
            restored = f"RTO {rto:.1f}s, RPO {rpo:.1f}s, {outcome.restored_bytes} bytes restored"
            _print(bset, outcome, f"verified {outcome.backup_label}: {restored}")
            failed += not (outcome.success and published and audited)
    return 1 if failed else 0


def _restore_one(settings: BackupsSettings, bset: BackupSet, target: datetime | None) -> Outcome:
    if bset.pgbackrest is not None:
        from .pg_restore_test import run_test as run_pg

        return run_pg(settings, bset, target)
    from .redis_restore_test import run_test as run_redis

    return run_redis(settings, bset, target)


def labels(loaded_tier: str, bset: BackupSet) -> dict[str, str]:
    return {"tier": loaded_tier, "cluster": bset.cluster, "backup": bset.name}


def _publish_restore(settings: BackupsSettings, bset: BackupSet, outcome: Outcome) -> bool:
    kept = {key: getattr(outcome, key) for key in _KEPT}
    return _publish(settings, bset, outcome, "tierwatch_restore_test_", RESTORE_GAUGES, kept)


def _publish(
    settings: BackupsSettings,
    bset: BackupSet,
    outcome: Outcome,
    prefix: str,
    gauges: list[textfile.Gauge],
    kept: dict[str, float | None],
) -> bool:
    """Write a set's metrics file: this run's time and result; the last success's time and ``kept``
    measurements from this run if it succeeded, else as the previous file had them. False (said on
    stderr) when it could not be written (a full disk): the run then exits as failed."""
    path = Path(settings.textfile_dir) / f"{prefix}{bset.name}.prom"
    previous = textfile.read_values(path)
    now = time.time()
    values = {
        f"{prefix}last_run_timestamp_seconds": now,
        f"{prefix}last_success_timestamp_seconds": now
        if outcome.success
        else previous.get(f"{prefix}last_success_timestamp_seconds", 0.0),
        f"{prefix}success": 1.0 if outcome.success else 0.0,
    }
    for key, value in kept.items():
        chosen = value if outcome.success else previous.get(prefix + key)
        if chosen is not None:
            values[prefix + key] = float(chosen)
    try:
        textfile.write(path, textfile.render(gauges, values, labels(bset.tier, bset)))
    except OSError as exc:
        print(f"{bset.name}: cannot write {path}: {exc.strerror}", file=sys.stderr)
        return False
    return True


def _audit(settings: BackupsSettings, event: str, bset: BackupSet, outcome: Outcome) -> bool:
    """Append the run's audit line; False (said on stderr) when the trail cannot take it."""
    fields = {
        "backup": bset.name,
        "cluster": bset.cluster,
        "tier": bset.tier,
        "outcome": "success" if outcome.success else ("busy" if outcome.stage == "lock" else "failure"),
        "stage": outcome.stage,
        "error": outcome.error,
        "rto_seconds": _round(outcome.rto_seconds),
        "rpo_seconds": _round(outcome.rpo_seconds),
        "bytes": outcome.restored_bytes,
        "restored": outcome.backup_label,
    }
    try:
        journal.append(Path(settings.audit_log), event, **fields)
    except OSError as exc:
        print(f"{bset.name}: cannot append to {settings.audit_log}: {exc.strerror}", file=sys.stderr)
        return False
    return True


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _print(bset: BackupSet, outcome: Outcome, success: str) -> None:
    """One line per set: ``success`` on stdout, or the failed stage on stderr."""
    if outcome.success:
        print(f"{bset.name}: {success}")
    else:
        print(f"{bset.name}: FAILED at stage {outcome.stage}: {outcome.error}", file=sys.stderr)


REDIS_GAUGES = [textfile.Gauge(spec.name, spec.help) for spec in metrics.REDIS_BACKUP]


def redis_snapshot(loaded: LoadedConfig, backup: str | None) -> int:
    """``tierwatch redis-snapshot``: exit 0 only when every selected Redis set kept a snapshot."""
    settings = backups_settings(loaded, "redis-snapshot")
    if settings is None:
        return 2
    sets = selected_sets(settings, backup, "redis-snapshot")
    if sets is None:
        return 2
    sets = [s for s in sets if s.redis is not None]
    if not sets:
        print("tierwatch redis-snapshot: no redis set selected in backups.sets", file=sys.stderr)
        return 2
    from .redis_snapshot import run_snapshot

    failed = 0
    with interruptible():
        for bset in sets:
            try:
                outcome = attempt(lambda bset=bset: run_snapshot(loaded, bset))  # type: ignore[misc]
            except Interrupted as exc:
                _audit(settings, "redis_snapshot", bset, Outcome(False, "interrupted", str(exc)))
                return 128 + exc.signum
            published = _publish_snapshot(settings, bset, outcome)
            audited = _audit(settings, "redis_snapshot", bset, outcome)
            _print(bset, outcome, f"kept {outcome.backup_label} ({outcome.restored_bytes} bytes) "
                   f"in {outcome.rto_seconds or 0:.1f}s")  # fmt: skip
            failed += not (outcome.success and published and audited)
    return 1 if failed else 0


def _publish_snapshot(settings: BackupsSettings, bset: BackupSet, outcome: Outcome) -> bool:
    kept = {"size_bytes": outcome.restored_bytes, "duration_seconds": outcome.rto_seconds}
    return _publish(settings, bset, outcome, "tierwatch_redis_backup_", REDIS_GAUGES, kept)


def pitr(
    loaded: LoadedConfig, backup: str, target: datetime, data_dir: str, port: int, *, promote: bool
) -> int:
    """``tierwatch pitr``: 0 with the server running and instructions printed, else 1."""
    settings = backups_settings(loaded, "pitr")
    if settings is None:
        return 2
    sets = selected_sets(settings, backup, "pitr")
    if sets is None:
        return 2
    from .pitr import print_instructions, run_pitr

    bset = sets[0]
    started = {
        "backup": bset.name,
        "target_time": target.isoformat(),
        "port": port,
        "data_dir": str(data_dir),
    }
    if not _append_or_refuse(settings, "pitr", {**started, "outcome": "started"}):
        return 1
    with interruptible():
        try:
            text = run_pitr(bset, target, Path(data_dir), port, promote=promote)
        except StageError as exc:
            journal_fields = {"backup": bset.name, "outcome": "failure", "stage": exc.stage}
            _append_quietly(settings, "pitr", journal_fields)
            print(f"tierwatch pitr: {bset.name}: FAILED at stage {exc.stage}: {exc.message}", file=sys.stderr)
            return 1
        except Interrupted as exc:
            print(f"tierwatch pitr: interrupted (signal {exc.signum})", file=sys.stderr)
            return 128 + exc.signum
    _append_quietly(
        settings,
        "pitr",
        {"backup": bset.name, "outcome": "running", "target_time": target.isoformat(), "port": port,
         "data_dir": str(data_dir), "promoted": promote},
    )  # fmt: skip
    print_instructions(text)
    return 0


def _append_or_refuse(settings: BackupsSettings, event: str, fields: dict[str, object]) -> bool:
    """Append the record an action starts with; False (said on stderr) when the trail cannot take it:
    nothing acts without its audit record."""
    try:
        journal.append(Path(settings.audit_log), event, **fields)
    except OSError as exc:
        print(
            f"tierwatch {event}: cannot append to {settings.audit_log} ({exc.strerror}): not acting",
            file=sys.stderr,
        )
        return False
    return True


def _append_quietly(settings: BackupsSettings, event: str, fields: dict[str, object]) -> None:
    try:
        journal.append(Path(settings.audit_log), event, **fields)
    except OSError as exc:
        print(f"cannot append to {settings.audit_log}: {exc.strerror}", file=sys.stderr)
