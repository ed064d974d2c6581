"""Scratch space: one lock per set, one new run directory per run (removed after, on every path),
leftovers of dead runs removed, free space checked before anything is written.

A run directory is ``SCRATCH/run-SET-YYYYMMDDTHHMMSSZ-PID`` with a pid file naming the run and the
servers it started; only such directories, directly below the scratch directory, are ever removed,
and never through a symlink (``shutil.rmtree`` works on file descriptors and does not follow links).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import stat
import time
from pathlib import Path

from .accounts import OsUser, chown
from .outcome import StageError

PID_FILE = "tierwatch-run.json"
MARGIN_FRACTION = 0.10  # restored WAL and the server's own files come on top of the backup's size
MARGIN_MIN_BYTES = 64 * 1024 * 1024


def inside_data_directory(path: Path) -> Path | None:
    """The first of ``path`` and its parents that is a PostgreSQL data directory, if any."""
    for candidate in (path, *path.parents):
        if (candidate / "PG_VERSION").exists() or (candidate / "postmaster.pid").exists():
            return candidate
    return None


def prepare_scratch(configured: str) -> Path:
    """The scratch directory (created 0711: the OS user must reach its run directory), refused when
    it is a symlink or inside a PostgreSQL data directory."""
    path = Path(configured)
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o711)
        info = os.lstat(path)
    except OSError as exc:
        raise StageError("prepare", f"scratch_dir {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise StageError("prepare", f"scratch_dir {path} is not a directory (a symlink is refused)")
    real = path.resolve()
    data_dir = inside_data_directory(real)
    if data_dir is not None:
        raise StageError("prepare", f"scratch_dir {path} is inside the data directory {data_dir}: refused")
    if info.st_uid == os.geteuid() and info.st_mode & 0o011 != 0o011:
        os.chmod(real, stat.S_IMODE(info.st_mode) | 0o011)
    return real


class SetLock:
    """``flock`` on ``SCRATCH/.lock-SET``: one run at a time per set (released when the process dies)."""

    def __init__(self, scratch: Path, name: str):
        self.path = scratch / f".lock-{name}"
        self.name = name
        self._fd = -1

    def __enter__(self) -> SetLock:
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StageError("lock", f"cannot open the lock file {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = -1
            raise StageError("lock", f"another run of backup set {self.name} is in progress") from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # releases the lock
            self._fd = -1


def process_start(pid: int) -> int | None:
    """The start time (clock ticks since boot) of ``pid``, None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return int(handle.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _alive(entry: dict[str, int]) -> bool:
    pid, start = entry.get("pid"), entry.get("start")
    return isinstance(pid, int) and pid > 0 and process_start(pid) == start


class RunDir:
    """A new run directory: created (never reused), its pid file kept up to date, removed by ``remove``."""

    def __init__(self, scratch: Path, name: str, user: OsUser | None):
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self.scratch = scratch
        self.path = scratch / f"run-{name}-{stamp}-{os.getpid()}"
        self._children: list[dict[str, int]] = []
        try:
            os.mkdir(self.path, 0o700)  # fails if it exists: a run never touches another's files
        except OSError as exc:
            raise StageError(
                "prepare", f"cannot create the run directory {self.path}: {exc.strerror}"
            ) from None
        self._write_pid_file()
        chown(self.path, user)

    def add_child(self, pid: int) -> None:
        """Record a server this run started (a later run kills it if this one died before it did)."""
        start = process_start(pid)
        if start is not None:
            self._children.append({"pid": pid, "start": start})
            self._write_pid_file()

    def _write_pid_file(self) -> None:
        me = {"pid": os.getpid(), "start": process_start(os.getpid()) or 0}
        data = json.dumps({**me, "children": self._children}).encode()
        temp = self.path / f".{PID_FILE}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(temp, self.path / PID_FILE)

    def remove(self) -> None:
        remove_run_dir(self.scratch, self.path)


def remove_run_dir(scratch: Path, path: Path) -> None:
    """Remove a run directory directly below ``scratch`` (anything else is refused), links unfollowed."""
    if path.parent != scratch or not path.name.startswith("run-"):
        raise StageError("cleanup", f"refusing to remove {path}: not a run directory of {scratch}")
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        raise StageError("cleanup", f"refusing to remove {path}: not a directory")
    shutil.rmtree(path)


def remove_leftovers(scratch: Path, name: str) -> list[Path]:
    """Remove the run directories of ``name`` whose run died (with the set's lock held, no live run
    can own one): servers they recorded are killed first. The removed paths."""
    pattern = re.compile(rf"^run-{re.escape(name)}-\d{{8}}T\d{{6}}Z-\d+$")
    removed = []
    for entry in sorted(scratch.iterdir()):
        if not pattern.match(entry.name) or not entry.is_dir() or entry.is_symlink():
            continue
        try:
            record = json.loads((entry / PID_FILE).read_text())
        except (OSError, ValueError):
            record = {}
        if isinstance(record, dict) and _alive(record):
            continue  # its run still lives (the lock file was replaced?): not a leftover
        children = record.get("children", []) if isinstance(record, dict) else []
        for child in children if isinstance(children, list) else []:
            if isinstance(child, dict) and _alive(child):
                try:
                    os.kill(child["pid"], signal.SIGKILL)
                except ProcessLookupError:
                    pass
        remove_run_dir(scratch, entry)
        removed.append(entry)
    return removed


def free_bytes(path: Path) -> int:
    """Bytes available to an unprivileged writer on the filesystem of ``path``."""
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize


def check_space(path: Path, needed: int, min_free: int | None) -> None:
    """Refuse (stage disk) unless ``needed`` plus a margin fits and ``min_free`` bytes stay free."""
    margin = max(int(needed * MARGIN_FRACTION), MARGIN_MIN_BYTES)
    wanted = needed + margin + (min_free or 0)
    available = free_bytes(path)
    if available < wanted:
        raise StageError(
            "disk",
            f"not enough free space in {path}: {_size(available)} free, {_size(wanted)} needed "
            f"({_size(needed)} to restore + {_size(margin)} margin"
            + (f" + {_size(min_free)} min_free_bytes)" if min_free else ")"),
        )


def tree_bytes(path: Path) -> int:
    """The bytes of the regular files below ``path`` (links not followed)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                info = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode):
                total += info.st_size
    return total


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"
