"""Child processes as a set's OS user (PostgreSQL refuses root), optionally dying with this process.

``subprocess``'s own ``user=`` keeps root's supplementary groups, and changing credentials clears the
parent-death signal (prctl(2)): so the switch and then ``PR_SET_PDEATHSIG`` happen in one preexec hook,
in that order.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import signal
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .outcome import StageError

_PR_SET_PDEATHSIG = 1
OUTPUT_LINES = 15  # lines of a failed tool's output shown in an error
MAX_OUTPUT = 16 * 1024 * 1024  # bytes of a tool's output read back (pgbackrest info of a large repository)


@dataclass(frozen=True)
class OsUser:
    name: str
    uid: int
    gid: int
    home: str


def resolve_os_user(configured: str | None, where: str) -> OsUser | None:
    """The user to run children as: ``configured`` when running as root (then required), None to run
    them as this process's own user (which must then be ``configured``, if given)."""
    if os.geteuid() == 0:
        if configured is None:
            raise StageError("prepare", f"running as root: set {where}.os_user (PostgreSQL refuses root)")
        try:
            entry = pwd.getpwnam(configured)
        except KeyError:
            raise StageError("prepare", f"{where}.os_user: no such user {configured!r}") from None
        if entry.pw_uid == 0:
            raise StageError("prepare", f"{where}.os_user: expected a user other than root")
        return OsUser(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)
    current = pwd.getpwuid(os.geteuid()).pw_name
    if configured is not None and configured != current:
        raise StageError("prepare", f"{where}.os_user is {configured}: run as root or as {configured}")
    return None


def user_name(user: OsUser | None) -> str:
    """The name children run as."""
    return user.name if user is not None else pwd.getpwuid(os.geteuid()).pw_name


def chown(path: Path, user: OsUser | None) -> None:
    """Give ``path`` (never following a symlink) to ``user`` when running as root."""
    if user is not None:
        os.chown(path, user.uid, user.gid, follow_symlinks=False)


def child_setup(user: OsUser | None, die_with_parent: bool) -> Callable[[], None] | None:
    """The preexec hook: switch to ``user``, then arm SIGKILL on this process's death."""
    if user is None and not die_with_parent:
        return None
    libc = ctypes.CDLL(None, use_errno=True) if die_with_parent else None
    parent = os.getpid()

    def setup() -> None:
        if user is not None:
            os.setgid(user.gid)
            os.initgroups(user.name, user.gid)
            os.setuid(user.uid)
        if libc is not None:
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != parent:  # this process died before the signal was armed
                os._exit(1)

    return setup


def child_env(user: OsUser | None) -> dict[str, str]:
    """This process's environment with HOME, USER and LOGNAME of ``user``."""
    env = dict(os.environ)
    if user is not None:
        env.update(HOME=user.home, USER=user.name, LOGNAME=user.name)
    return env


def run(
    argv: Sequence[str], user: OsUser | None, *, timeout: float, stage: str, cwd: Path | None = None
) -> str:
    """Run ``argv`` as ``user`` (dying with this process) to its end; its stdout. Its output goes to
    unlinked temporary files, of which at most MAX_OUTPUT bytes are read back (a tool that floods its
    output fills a file, not this process's memory). A failure, a timeout or a flood is a StageError
    with the last lines of its output."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            done = subprocess.run(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                timeout=max(1.0, timeout),
                cwd=cwd or "/",
                env=child_env(user),
                preexec_fn=child_setup(user, die_with_parent=True),
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise StageError(stage, f"{Path(argv[0]).name} did not finish within {timeout:.0f}s") from None
        except OSError as exc:
            raise StageError(stage, f"cannot run {argv[0]}: {exc.strerror}") from None
        stdout, stderr = _bounded(out), _bounded(err)
    if done.returncode != 0:
        tail = "\n".join(((stdout or "") + (stderr or "")).strip().splitlines()[-OUTPUT_LINES:])
        raise StageError(stage, f"{Path(argv[0]).name} failed with code {done.returncode}:\n{tail}")
    if stdout is None:
        raise StageError(stage, f"{Path(argv[0]).name} wrote more than {MAX_OUTPUT} bytes: refused")
    return stdout


def _bounded(stream: IO[bytes]) -> str | None:
    """At most MAX_OUTPUT bytes of ``stream`` from its start, decoded; None when it holds more."""
    stream.seek(0)
    data = stream.read(MAX_OUTPUT + 1)
    return None if len(data) > MAX_OUTPUT else data.decode("utf-8", "replace")


def spawn(
    argv: Sequence[str],
    user: OsUser | None,
    *,
    log: IO[bytes],
    cwd: Path,
    die_with_parent: bool,
) -> subprocess.Popen[bytes]:
    """Start a server as ``user`` in its own session (a Ctrl-C to the terminal reaches only this
    process, which stops it in order), its output into ``log``."""
    return subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env=child_env(user),
        start_new_session=True,
        preexec_fn=child_setup(user, die_with_parent),
    )


def stop(process: subprocess.Popen[bytes], first: int = signal.SIGTERM, grace: float = 30.0) -> None:
    """Send ``first``, wait ``grace`` seconds, then SIGKILL; always reaped."""
    if process.poll() is None:
        try:
            process.send_signal(first)
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        except ProcessLookupError:
            pass
