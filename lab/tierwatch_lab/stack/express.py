"""The demo's Node.js/Express app servers (demo/app/server.js) started as processes.

``ensure_app_installed`` runs ``npm ci`` in demo/app when its ``node_modules`` is missing or older than
the lock file; ``start_express`` starts one server and waits until its ``/health`` answers.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ..kit import kit_dir
from .ports import free_port
from .process import ManagedProcess, Stack, StackError, wait_for

NODE_HINT = "install Node.js 18 or newer with npm (Debian: apt-get install nodejs npm)"


@dataclass
class ExpressApp:
    """A started Express app server."""

    name: str
    region: str
    host: str
    port: int
    process: ManagedProcess
    admin_token: str = field(default="", repr=False)

    @property
    def base_url(self) -> str:
        """``http://host:port`` (127.0.0.1 when it listens on every address)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The liveness URL, ``/health``."""
        return f"{self.base_url}/health"

    @property
    def metrics_url(self) -> str:
        """The prom-client ``/metrics`` URL."""
        return f"{self.base_url}/metrics"

    @property
    def metrics_address(self) -> str:
        """``host:port`` to scrape (``/metrics``)."""
        return self.base_url.removeprefix("http://")

    def set_fault(self, delay_ms: float = 0, error_ratio: float = 0) -> dict[str, float]:
        """Make real requests (``/work``, ``POST /jobs``) slow by ``delay_ms`` and fail a share
        ``error_ratio`` of them with a 500, while ``/health`` stays fine (``0, 0``: no fault).
        Returns the app's fault settings as it reports them."""
        if not self.admin_token:
            raise StackError(f"{self.name} was started without an admin token")
        request = urllib.request.Request(
            f"{self.base_url}/admin/fault",
            data=json.dumps({"delay_ms": delay_ms, "error_ratio": error_ratio}).encode(),
            method="PUT",
            headers={"Authorization": f"Bearer {self.admin_token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            answer: dict[str, float] = json.loads(resp.read())
        return answer


def _installed(app_dir: Path) -> bool:
    marker = app_dir / "node_modules" / ".package-lock.json"  # written by npm on every install
    if not marker.exists():
        return False
    newest_input = max((app_dir / f).stat().st_mtime for f in ("package.json", "package-lock.json"))
    return marker.stat().st_mtime >= newest_input


def demo_app_dir() -> Path:
    """The demo's Express app in the kit (raises KitMissing outside a clone)."""
    return kit_dir("demo/app")


def ensure_app_installed(app_dir: Path | None = None, timeout: float = 300.0) -> Path:
    """Install the app's dependencies with ``npm ci`` unless they are up to date; returns ``app_dir``
    (default: the demo app of the kit).

    Raises StackError naming what to install when node or npm is missing, or with npm's output when
    the install fails. Concurrent callers (parallel tests) wait for one another through a file lock.
    """
    app_dir = app_dir or demo_app_dir()
    if not (app_dir / "package-lock.json").exists():
        raise StackError(
            f"{app_dir} has no package-lock.json: run tierwatch from a checkout of the repository"
        )
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        raise StackError(f"{' and '.join(missing)} not found: {NODE_HINT}")
    with open(app_dir / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed(app_dir):
            return app_dir
        try:
            result = subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund"],
                cwd=app_dir,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise StackError(f"npm ci in {app_dir} took longer than {timeout:g}s") from None
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip().splitlines()[-20:]
            raise StackError(f"npm ci in {app_dir} failed ({result.returncode}):\n" + "\n".join(output))
    return app_dir


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return resp.status == 200
    except urllib.error.HTTPError:
        return False


def start_express(
    stack: Stack,
    name: str,
    region: str,
    redis_url: str,
    port: int | None = None,
    host: str = "127.0.0.1",
    redis_password: str | None = None,
    ready_timeout: float = 20.0,
    admin_token: str | None = None,
) -> ExpressApp:
    """Start demo/app/server.js as ``name`` and wait until ``/health`` answers 200.

    ``redis_url`` is the Redis write address (``redis://host:port``); the password goes separately in
    ``redis_password`` (passed in the environment, never on the command line). ``/health`` answers 200
    while Redis is away too (``degraded``), so the app is up whatever Redis does. ``admin_token``
    (default: a random one) enables the app's ``/admin/fault`` for ``ExpressApp.set_fault``.
    """
    app_dir = ensure_app_installed()
    port = port or free_port()
    env = dict(os.environ)
    env.update(
        HOST=host,
        PORT=str(port),
        APP_NAME=name,
        REGION=region,
        REDIS_URL=redis_url,
        NODE_ENV="production",
    )
    env.pop("REDIS_PASSWORD", None)
    if redis_password is not None:
        env["REDIS_PASSWORD"] = redis_password
    env["ADMIN_TOKEN"] = admin_token or secrets.token_urlsafe(16)
    for variable in ("FAULT_DELAY_MS", "FAULT_ERROR_RATIO"):
        env.pop(variable, None)
    proc = stack.spawn(name, ["node", "server.js"], cwd=app_dir, env=env)
    app = ExpressApp(name, region, host, port, proc, env["ADMIN_TOKEN"])
    try:
        wait_for(lambda: proc.check_alive() or _answers(app.url), ready_timeout, f"{name} at {app.url}")
    except StackError as exc:
        raise StackError(f"{exc}\n{proc.log_tail()}") from None
    return app
