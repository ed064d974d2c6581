"""Start a command detached and exit at once: the restart command the demo gives the recovery
service (``restart_commands``), so a restarted server outlives the command that started it.

``python -m tierwatch_lab.stack.launch --pidfile F --log L -- ARGV...``; ``kill_launched(dir)`` stops
every process whose pid file lies in ``dir`` (the demo registers it to run on exit).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
from pathlib import Path


def launch(argv: list[str], pidfile: Path, log: Path, env: dict[str, str] | None = None) -> int:
    """Start ``argv`` in its own session with output to ``log``; write its pid to ``pidfile``."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    pidfile.write_text(f"{proc.pid}\n")
    return proc.pid


def kill_launched(directory: Path) -> None:
    """SIGKILL the process group of every ``*.pid`` file in ``directory``."""
    for pidfile in directory.glob("*.pid"):
        with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
            os.killpg(int(pidfile.read_text().strip()), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pidfile", type=Path, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument(
        "--env-file",
        type=Path,
        help="KEY=VALUE lines added to the environment (keeps secrets out of the command line)",
    )
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        parser.error("nothing to launch")
    env = dict(os.environ)
    if args.env_file:
        for line in args.env_file.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                env[key] = value
    launch(argv, args.pidfile, args.log, env)


if __name__ == "__main__":
    main()
