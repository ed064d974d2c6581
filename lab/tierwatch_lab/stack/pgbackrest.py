"""A real pgBackRest (Debian ``pgbackrest``) for a lab PostgreSQL primary: WAL ``archive-push`` from
``archive_command``, full / differential / incremental backups into a local repository.

The repository is a directory of the stack that stands for the failover region's backup store (the
demo puts it under ``region-failover/``). pgBackRest runs as the ``postgres`` OS user, like the server,
with its lock, spool and log paths inside the stack so that nothing touches the machine's own
/var/lib/pgbackrest or /var/log/pgbackrest.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .postgres import OS_USER, PgServer, start_primary
from .process import Stack, StackError, wait_for

BINARY = "pgbackrest"
KINDS = ("full", "diff", "incr")


@dataclass
class PgBackRest:
    """One stanza of a lab pgBackRest: its config file, repository and working directory."""

    stanza: str
    config: Path
    repo: Path
    base: Path

    @property
    def archive_command(self) -> str:
        """The primary's ``archive_command``."""
        return f"{BINARY} --config={self.config} --stanza={self.stanza} archive-push %p"

    def command(self, *args: str) -> list[str]:
        """``pgbackrest --config=... --stanza=... ARGS`` (to run as the postgres user)."""
        return [BINARY, f"--config={self.config}", f"--stanza={self.stanza}", *args]

    def run(self, *args: str, timeout: float = 120.0) -> str:
        """Run ``pgbackrest --config=... --stanza=... ARGS`` as postgres; its stdout."""
        argv = self.command(*args)
        try:
            done = subprocess.run(
                argv,
                cwd=self.base,
                user=OS_USER if os.geteuid() == 0 else None,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise StackError(f"pgbackrest {' '.join(args)} did not finish within {timeout:g}s") from None
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
            raise StackError(f"pgbackrest {' '.join(args)} failed with code {done.returncode}:\n{tail}")
        return done.stdout

    def backup(self, kind: str = "full") -> None:
        """Take a backup of ``kind`` (full, diff or incr); a checkpoint is forced (start-fast)."""
        if kind not in KINDS:
            raise StackError(f"backup kind {kind!r}: expected one of {', '.join(KINDS)}")
        self.run(f"--type={kind}", "backup", timeout=600.0)

    def info(self) -> dict[str, Any]:
        """The stanza's entry of ``pgbackrest info --output=json``."""
        stanzas = json.loads(self.run("info", "--output=json"))
        found = [entry for entry in stanzas if entry.get("name") == self.stanza]
        if not found:
            raise StackError(f"pgbackrest info lists no stanza {self.stanza!r}")
        entry: dict[str, Any] = found[0]
        return entry

    def archive_segment_files(self) -> list[Path]:
        """The WAL segment files in the repository (``<segment>-<sha1>[.gz]``), oldest first."""
        archive = self.repo / "archive" / self.stanza
        files = [
            path
            for path in archive.glob("*/*/*")
            if len(path.name) > 24 and path.name[24] == "-" and path.name[:24].isalnum()
        ]
        return sorted(files, key=lambda path: path.name)

    def backup_files(self, label: str) -> list[Path]:
        """The data files of backup ``label`` in the repository (what a corruption drill flips a byte of)."""
        root = self.repo / "backup" / self.stanza / label / "pg_data"
        return sorted(path for path in root.rglob("*") if path.is_file())


def archive_now(primary: PgServer, timeout: float = 60.0) -> str:
    """Close the primary's current WAL segment and wait until its archiver has pushed it (what
    ``archive_timeout`` does within its interval); the segment's name."""
    segment = str(primary.scalar("SELECT pg_walfile_name(pg_switch_wal())"))

    def archived() -> bool:
        last = primary.scalar("SELECT last_archived_wal FROM pg_stat_archiver")
        return last is not None and str(last)[:24] >= segment

    wait_for(archived, timeout, f"WAL segment {segment} archived")
    return segment


def configure(stack: Stack, name: str, *, stanza: str = "main", repo: Path | None = None) -> PgBackRest:
    """A pgBackRest working directory and repository for primary ``name`` (config written by ``attach``)."""
    base = stack.directory("pgbackrest", name, owner=OS_USER)
    repo = repo if repo is not None else stack.directory("pgbackrest", name, "repo", owner=OS_USER)
    if os.geteuid() == 0:
        os.chown(repo, *_postgres_ids())
    return PgBackRest(stanza=stanza, config=base / "pgbackrest.conf", repo=repo, base=base)


def attach(backrest: PgBackRest, primary: PgServer) -> None:
    """Write the config for ``primary``, create the stanza and check that archiving works."""
    backrest.config.write_text(
        "[global]\n"
        f"repo1-path={backrest.repo}\n"
        "repo1-retention-full=4\n"
        "start-fast=y\n"
        # a local repository has no transient errors: a corrupted file fails at once, not after retries
        "job-retry=0\n"
        "compress-type=gz\n"
        "compress-level=1\n"
        "log-level-console=warn\n"
        "log-level-file=off\n"
        f"lock-path={backrest.base / 'lock'}\n"
        f"spool-path={backrest.base / 'spool'}\n"
        f"[{backrest.stanza}]\n"
        f"pg1-path={primary.data_dir}\n"
        f"pg1-port={primary.port}\n"
        f"pg1-socket-path={primary.socket_dir}\n"
    )
    if os.geteuid() == 0:
        os.chown(backrest.config, *_postgres_ids())
    backrest.run("stanza-create")
    backrest.run("check")


def start_backed_up_primary(
    stack: Stack,
    name: str,
    *,
    stanza: str = "main",
    repo: Path | None = None,
    settings: Mapping[str, str] | None = None,
    full_backup: bool = True,
    **kwargs: Any,
) -> tuple[PgServer, PgBackRest]:
    """A primary whose WAL pgBackRest archives (``archive_timeout`` 60 s unless ``settings`` say
    otherwise), its stanza created and checked, and a first full backup unless ``full_backup`` is False."""
    backrest = configure(stack, name, stanza=stanza, repo=repo)
    merged = {
        "archive_mode": "on",
        "archive_command": backrest.archive_command,
        "archive_timeout": "60s",
        **(settings or {}),
    }
    primary = start_primary(stack, name, settings=merged, **kwargs)
    attach(backrest, primary)
    if full_backup:
        backrest.backup("full")
    return primary, backrest


def _postgres_ids() -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam(OS_USER)
    return entry.pw_uid, entry.pw_gid
