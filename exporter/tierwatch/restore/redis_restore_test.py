"""Restore test of one Redis set: the newest RDB of the set's directory is copied into a new run
directory and loaded by a throwaway ``redis-server`` (no TCP port, a unix socket in the run directory,
no persistence, dying with this process); it must hold ``min_keys`` keys and every verify key.

RTO is copy start -> verified; RPO is the wall-clock time at restore start minus the heartbeat key's
value if configured, else the RDB file's modification time.
"""

from __future__ import annotations

import os
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from ..config.backups import BackupSet, BackupsSettings
from .accounts import OsUser, chown, resolve_os_user, spawn, stop
from .outcome import Outcome, StageError
from .scratch import RunDir, SetLock, check_space, prepare_scratch, remove_leftovers
from .snapshot_files import newest_snapshot

SERVER = "redis-server"
UNPRIVILEGED = "nobody"  # the throwaway server never needs root to load a file
POLL = 0.1


def run_test(settings: BackupsSettings, bset: BackupSet, target: datetime | None) -> Outcome:
    source = bset.redis
    assert source is not None
    if target is not None:
        raise StageError("prepare", "--target-time applies to PostgreSQL sets (an RDB is one point in time)")
    user = resolve_os_user(UNPRIVILEGED, f"backups.sets.{bset.name}") if os.geteuid() == 0 else None
    scratch = prepare_scratch(settings.scratch_dir)
    deadline = time.monotonic() + bset.timeout
    with SetLock(scratch, bset.name):
        remove_leftovers(scratch, bset.name)
        rdb = newest_snapshot(Path(source.directory), bset.name)
        if rdb is None:
            raise StageError("info", f"no snapshot (*.rdb) in {source.directory}")
        size = os.stat(rdb).st_size
        check_space(scratch, size, bset.min_free_bytes)
        run = RunDir(scratch, bset.name, user)
        try:
            return _load_and_verify(bset, user, run, rdb, deadline)
        finally:
            run.remove()


def _load_and_verify(
    bset: BackupSet, user: OsUser | None, run: RunDir, rdb: Path, deadline: float
) -> Outcome:
    wall_start, started = time.time(), time.monotonic()
    copy = run.path / "dump.rdb"
    try:
        shutil.copyfile(rdb, copy, follow_symlinks=False)
    except OSError as exc:
        raise StageError("restore", f"cannot copy {rdb.name}: {exc.strerror}") from None
    chown(copy, user)
    socket_path = run.path / "redis.sock"
    conf = run.path / "redis.conf"
    conf.write_text(
        "\n".join(
            [
                "port 0",
                f'unixsocket "{socket_path}"',
                "unixsocketperm 700",
                'save ""',
                "appendonly no",
                f'dir "{run.path}"',
                'dbfilename "dump.rdb"',
                "daemonize no",
                'logfile ""',
            ]
        )
        + "\n"
    )
    chown(conf, user)
    log_path = run.path / "redis.log"
    with open(log_path, "ab") as log:
        try:
            process = spawn([SERVER, str(conf)], user, log=log, cwd=run.path, die_with_parent=True)
        except OSError as exc:
            raise StageError("start", f"cannot start {SERVER}: {exc.strerror}") from None
    try:
        run.add_child(process.pid)
        client = _wait_loaded(process, socket_path, deadline, log_path)
        try:
            _verify(client, bset)
            rto = time.monotonic() - started
            newest = _heartbeat(client, bset) if bset.heartbeat_key else os.stat(rdb).st_mtime
        finally:
            client.close()
        return Outcome(
            success=True,
            rto_seconds=rto,
            rpo_seconds=max(0.0, wall_start - newest),
            restored_bytes=os.stat(copy).st_size,
            backup_label=rdb.name,
        )
    finally:
        stop(process)


def _wait_loaded(process: Any, socket_path: Path, deadline: float, log_path: Path) -> Any:
    import redis

    client = redis.Redis(unix_socket_path=str(socket_path), socket_timeout=10, decode_responses=False)
    while True:
        code = process.poll()
        if code is not None:
            client.close()
            raise StageError("recovery", f"{SERVER} exited with code {code}:\n{_tail(log_path)}")
        try:
            if int(client.info("persistence").get("loading", 1)) == 0 and client.ping():
                return client
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() >= deadline:
            client.close()
            raise StageError("recovery", f"timed out waiting for {SERVER} to load the snapshot")
        time.sleep(POLL)


def _verify(client: Any, bset: BackupSet) -> None:
    keyspace = client.info("keyspace")
    keys = sum(int(db.get("keys", 0)) for db in keyspace.values() if isinstance(db, dict))
    if bset.min_keys is not None and keys < bset.min_keys:
        raise StageError("verify", f"the snapshot holds {keys} keys, expected at least {bset.min_keys}")
    missing = sum(1 for key in bset.verify_keys if not client.exists(key))
    if missing:
        raise StageError(
            "verify", f"{missing} of {len(bset.verify_keys)} verify_keys missing from the snapshot"
        )


def _heartbeat(client: Any, bset: BackupSet) -> float:
    value = client.get(bset.heartbeat_key)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise StageError("verify", "heartbeat_key: missing or not a Unix time in the snapshot") from None


def _tail(path: Path, lines: int = 10) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
