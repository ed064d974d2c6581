"""A started server process, and a Stack that owns several and stops them all."""

from __future__ import annotations

import ctypes
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TypeVar

T = TypeVar("T")


class StackError(RuntimeError):
    """A server could not be started or did not become ready."""


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``condition`` until it returns a truthy value or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except (StackError, AssertionError):
            raise  # the thing waited for died: no point in waiting longer
        except Exception as exc:  # noqa: BLE001 - polled conditions may fail until ready
            last_exc = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {type(last_exc).__name__}: {last_exc})" if last_exc else ""
            raise StackError(f"timed out after {timeout:g}s waiting for {what}{detail}")
        time.sleep(interval)


_PR_SET_PDEATHSIG = 1


def _child_setup(user: str | None) -> Callable[[], None]:
    """Runs in the child before exec: die with the parent (so a killed test run or demo never leaves
    servers behind), and switch to ``user`` when given."""
    entry = pwd.getpwnam(user) if user else None
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def setup() -> None:
        if entry is not None:
            os.setgid(entry.pw_gid)
            os.initgroups(entry.pw_name, entry.pw_gid)
            os.setuid(entry.pw_uid)
        # after the switch: changing credentials clears the parent-death signal (prctl(2)), which let
        # a killed demo leave its PostgreSQL servers (run as postgres) behind
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return setup


class ManagedProcess:
    """One server process in its own session (so a stop reaches its children), logging to a file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        user: str | None = None,
    ):
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.cwd = cwd
        self.env = env
        self.user = user
        self.popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.popen is None:
            raise StackError(f"{self.name} is not started")
        return self.popen.pid

    def start(self) -> ManagedProcess:
        """Start the process (as ``user`` when given; root is needed to switch)."""
        if shutil.which(self.argv[0]) is None and not Path(self.argv[0]).exists():
            raise StackError(f"{self.name}: {self.argv[0]} not found; install its Debian package")
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        demote = self.user and os.geteuid() == 0 and pwd.getpwuid(0).pw_name != self.user
        preexec = _child_setup(self.user if demote else None)
        env = dict(os.environ if self.env is None else self.env)
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.cwd,
            env=env,
            start_new_session=True,
            preexec_fn=preexec,
        )
        return self

    def running(self) -> bool:
        """True while the process has not exited."""
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the process's whole group."""
        if self.running():
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): it keeps its sockets open but answers nothing."""
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Unfreeze a paused process."""
        self.signal(signal.SIGCONT)

    def kill(self) -> None:
        """Kill hard (SIGKILL), as a crash would, and reap it."""
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGKILL)
        self._reap(5.0)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (SIGTERM), then SIGKILL after ``timeout``; always reaps and closes the log."""
        if self.popen is not None and self.popen.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            if not self._reap(timeout):
                self.signal(signal.SIGKILL)
                self._reap(5.0)
        if self.popen is not None:
            # the group may still hold children if the leader exited first
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self._log is not None:
            self._log.close()
            self._log = None

    def _reap(self, timeout: float) -> bool:
        assert self.popen is not None
        try:
            self.popen.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def check_alive(self) -> None:
        """Raise StackError with the tail of the log if the process already exited."""
        if self.popen is not None and self.popen.poll() is not None:
            raise StackError(f"{self.name} exited with code {self.popen.returncode}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the process wrote."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class Stack:
    """A scratch directory plus the processes started in it; ``close`` stops them in reverse order
    and removes the directory."""

    def __init__(self, base: Path | None = None, *, keep: bool = False):
        self.root = Path(tempfile.mkdtemp(prefix="tierwatch-", dir=base))
        os.chmod(self.root, 0o755)
        self.keep = keep
        self.processes: list[ManagedProcess] = []
        self._cleanups: list[Callable[[], None]] = []

    def path(self, *parts: str) -> Path:
        """A path inside the stack's directory (parents created)."""
        path = self.root.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def directory(self, *parts: str, owner: str | None = None) -> Path:
        """A fresh directory inside the stack, owned by ``owner`` when running as root."""
        path = self.root.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        if owner and os.geteuid() == 0:
            entry = pwd.getpwnam(owner)
            os.chown(path, entry.pw_uid, entry.pw_gid)
        return path

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        user: str | None = None,
    ) -> ManagedProcess:
        """Start a process whose output goes to ``<stack>/logs/<name>.log``; stopped by ``close``."""
        proc = ManagedProcess(
            name, argv, log_path=self.path("logs", f"{name}.log"), cwd=cwd, env=env, user=user
        )
        self.processes.append(proc)
        proc.start()
        return proc

    def on_close(self, cleanup: Callable[[], None]) -> None:
        """Run ``cleanup`` when the stack closes (after processes stop)."""
        self._cleanups.append(cleanup)

    def close(self) -> None:
        """Stop every process (reverse start order), run cleanups, remove the directory."""
        for proc in reversed(self.processes):
            proc.stop()
        for cleanup in reversed(self._cleanups):
            try:
                cleanup()
            except Exception:  # noqa: BLE001 - cleanup must go on
                pass
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
