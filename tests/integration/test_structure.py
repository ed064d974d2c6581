"""Issue 12's structure, checked as the product runs:
- the real `serve`, `recover` and `check-config` under ``python -X importtime`` load no lab module and
  no psycopg/redis for a config without those tiers;
- the package alone, laid out as the wheel installs it, runs the product, and `tierwatch demo` stops
  with one plain sentence;
- the LB probe cut by the monitor's deadline leaves no runtime API call on the connection it resets;
- the action catalogue's tiers hold: the service refuses a mislabelled alert, every rule asks for an
  action of its own tier;
- restart_instance's live check counts a target up exactly as the probe does (expect_status/body).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tierwatch.action_catalog import ACTION_TIERS
from tierwatch.config import LoadedConfig
from tierwatch.config.recovery import ClusterRecovery
from tierwatch.events import EventLog
from tierwatch.monitor import Monitor
from tierwatch.probes.base import TargetInfo
from tierwatch.probes.haproxy import HAProxyProbe
from tierwatch.recovery.actions import load_action
from tierwatch_lab.stack import Stack, free_port, wait_for
from tierwatch_lab.stack.haproxy import start_haproxy
from tierwatch_lab.stack.http import start_http_backend

from action_fixtures import make_context
from recovery_fixtures import RESTART_LABELS, alert, app_cluster, payload, start_recovery

PACKAGE = Path(__file__).resolve().parents[2] / "exporter" / "tierwatch"
IMPORTED = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|( *)(\S+)$", re.MULTILINE)
# -X importtime reports the modules a command imports (the recovery actions and the probes are imported
# inside functions on first use); the command also writes sys.modules at exit, and both are checked.
WRAPPER = (
    "import atexit, json, runpy, sys\n"
    "out = sys.argv.pop(1)\n"
    "atexit.register(lambda: open(out, 'w').write(json.dumps(sorted(sys.modules))))\n"
    "sys.argv[0] = 'tierwatch'\n"
    "runpy.run_module('tierwatch', run_name='__main__', alter_sys=True)\n"
)

CONFIG = """
monitor: {interval: 1s, timeout: 500ms}
listen: 127.0.0.1:EXPORTER_PORT
clusters:
  - name: web
    tier: app
    targets:
      - {name: es-1, region: primary, url: "http://127.0.0.1:1/health"}
recovery:
  listen: 127.0.0.1:RECOVERY_PORT
  state_dir: STATE
  auth: {bearer_token_file: TOKEN}
  allow: {AppInstanceDown: restart_instance}
"""


def _config(tmp_path: Path) -> tuple[Path, int, int]:
    exporter_port, recovery_port = free_port(), free_port()
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    text = (
        CONFIG.replace("EXPORTER_PORT", str(exporter_port))
        .replace("RECOVERY_PORT", str(recovery_port))
        .replace("STATE", str(tmp_path / "state"))
        .replace("TOKEN", str(token))
    )
    path = tmp_path / "tierwatch.yml"
    path.write_text(text)
    return path, exporter_port, recovery_port


def _command(tmp_path: Path, argv: list[str]) -> list[str]:
    """The real CLI under -X importtime, writing its sys.modules to tmp_path/<command>.modules at exit."""
    return [sys.executable, "-X", "importtime", "-c", WRAPPER, str(tmp_path / f"{argv[0]}.modules"), *argv]


def _imported(tmp_path: Path, command: str, stderr: str) -> set[str]:
    """Modules the command loaded: what -X importtime printed and what sys.modules held at exit."""
    printed = {m.group(2) for m in IMPORTED.finditer(stderr)}
    assert "tierwatch.cli" in printed, f"{command}: no importtime output"
    return printed | set(json.loads((tmp_path / f"{command}.modules").read_text()))


def _forbidden(modules: set[str]) -> list[str]:
    heads = ("tierwatch_lab", "psycopg", "redis")
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in heads))


def _run_until(tmp_path: Path, argv: list[str], ready_url: str, ready: str) -> str:
    """Run a service under -X importtime until ``ready_url`` answers containing ``ready``, then stop it
    with SIGINT; its stderr."""
    proc = subprocess.Popen(
        _command(tmp_path, argv),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def answers() -> bool:
            assert proc.poll() is None, f"{argv[0]} exited {proc.returncode}"
            try:
                return ready in httpx.get(ready_url, timeout=2).text
            except httpx.HTTPError:
                return False

        wait_for(answers, 30, f"{argv[0]} ready")
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr[-2000:]
    return stderr


def test_serve_recover_and_check_config_under_importtime_load_no_lab_and_no_tier_client(
    tmp_path: Path,
) -> None:
    config, exporter_port, recovery_port = _config(tmp_path)
    checked = subprocess.run(
        _command(tmp_path, ["check-config", str(config)]),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stderr[-2000:]
    # serve: until a probe of es-1 has run (the probes' modules are loaded by then)
    served = _run_until(
        tmp_path,
        ["serve", "--config", str(config)],
        f"http://127.0.0.1:{exporter_port}/metrics",
        'tierwatch_up{cluster="web"',
    )
    recovered = _run_until(
        tmp_path, ["recover", "--config", str(config)], f"http://127.0.0.1:{recovery_port}/health", ""
    )
    loaded = {
        command: _imported(tmp_path, command, stderr)
        for command, stderr in (("check-config", checked.stderr), ("serve", served), ("recover", recovered))
    }
    for command, modules in loaded.items():
        assert _forbidden(modules) == [], f"{command} loaded {_forbidden(modules)}"
    assert {"tierwatch.monitor", "tierwatch.probes.http"} <= loaded["serve"]
    assert "tierwatch.recovery.service" in loaded["recover"]


def test_an_installed_copy_serves_the_product_and_the_demo_says_it_runs_from_a_clone(tmp_path: Path) -> None:
    site = tmp_path / "site-packages"
    # what the wheel holds (pyproject: packages = ["exporter/tierwatch"]), without the repository around it
    shutil.copytree(PACKAGE, site / "tierwatch", ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k != "TIERWATCH_KIT_DIR"}
    # -S: no .pth file runs, so neither the clone's editable product nor its lab is importable; the
    # dependencies still are, from the environment's site-packages
    env["PYTHONPATH"] = os.pathsep.join([str(site), sysconfig.get_paths()["purelib"]])
    config, _, _ = _config(tmp_path)

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-S", *argv],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )

    where = run("-c", "import tierwatch; print(tierwatch.__file__)")
    assert where.stdout.strip() == str(site / "tierwatch" / "__init__.py"), where
    checked = run("-m", "tierwatch", "check-config", str(config))
    assert checked.returncode == 0, checked.stderr
    for argv in (["demo"], ["demo", "drill", "redis-master"]):
        out = run("-m", "tierwatch", *argv)
        assert out.returncode == 1, (argv, out.stdout, out.stderr)
        assert "tierwatch demo runs from a clone of the tierwatch repository" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
        assert not (tmp_path / "rules").exists()


def test_lb_probe_cut_by_the_monitor_timeout_leaves_no_call_on_the_connection(
    stack: Stack, make_config: Callable[..., LoadedConfig]
) -> None:
    """The health URL answers, ``show stat`` waits on a frozen HAProxy, and the monitor's deadline
    cancels the probe: when the cancellation returns, no runtime API call may still run on the
    connection ``reset()`` is about to close (the gathered-call race of issue 12)."""
    app = start_http_backend(stack, "es-1")
    lb = start_haproxy(stack, "lb-1", [(app.name, app.port)])
    target = {"name": "lb-1", "region": "primary", "url": app.url, "stats_socket": str(lb.stats_socket)}
    loaded = make_config([{"name": "edge", "tier": "lb", "targets": [target]}])
    cluster = loaded.config.clusters[0]
    probe = HAProxyProbe(TargetInfo("lb", cluster, cluster.targets[0], None, 5.0))

    async def scenario() -> tuple[float, list[asyncio.Task[Any]]]:
        started = time.monotonic()
        try:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):  # the monitor's deadline, below the API's own 5 s
                    await probe.probe()
            still_running = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            await probe.reset()
            return time.monotonic() - started, still_running
        finally:
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

    lb.process.pause()
    try:
        took, still_running = asyncio.run(scenario())
    finally:
        lb.process.resume()
    assert still_running == [], still_running
    assert took < 3.0, took


def test_an_action_never_runs_on_a_cluster_of_a_tier_it_does_not_declare(stack: Stack) -> None:
    """The catalogue says which tiers each action works on; a mislabelled alert (RedisMasterDown
    naming the app cluster) is refused as not allowed, and the Redis failover never runs."""
    down = f"http://127.0.0.1:{free_port()}/health"
    clusters = [app_cluster([("es-1", "primary", down), ("es-2", "primary", down)])]
    allow = {"AppInstanceDown": "restart_instance", "RedisMasterDown": "redis_failover"}
    service = start_recovery(stack, clusters, {"allow": allow})
    labels = {**RESTART_LABELS, "action": "redis_failover", "tier": "redis"}
    assert service.post(payload(alert("RedisMasterDown", labels))).status_code == 200
    blocked = wait_for(lambda: service.events("blocked"), 30, "the alert refused")
    assert [(b["action"], b["limit"]) for b in blocked] == [("redis_failover", "not_allowed")], blocked
    time.sleep(1.0)  # an action started by mistake would be audited by now
    assert not service.events("action_started"), service.audit()
    assert not service.events("outcome"), service.audit()
    with sqlite3.connect(service.state_dir / "inbox.sqlite3") as db:
        rows = db.execute("SELECT outcome, detail FROM alerts").fetchall()
    assert rows == [("refused", "redis_failover does not act on app clusters")]


def test_every_alert_asks_for_an_action_of_its_own_tier() -> None:
    """The generated rules' ``action`` labels agree with the catalogue's tiers (rules/<tier>.rules.yml)."""
    rules = PACKAGE.parents[1] / "rules"
    asked = []
    for path in sorted(rules.glob("*.rules.yml")):
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            for rule in group["rules"]:
                action = rule.get("labels", {}).get("action")
                if action is not None:
                    asked.append((rule["alert"], path.name.split(".")[0], action))
    assert len(asked) >= 10, asked
    wrong = [(name, tier, action) for name, tier, action in asked if tier not in ACTION_TIERS.get(action, ())]
    assert wrong == []


def test_restart_live_check_counts_a_target_up_exactly_as_the_probe_does(
    stack: Stack, make_config: Callable[..., LoadedConfig]
) -> None:
    """restart_instance asks the shared "does it answer" check with the target's expect_status and
    expect_body: whatever the exporter counts down is restarted, whatever it counts up is not."""
    backend = start_http_backend(stack, "b")
    targets = [
        {"name": "body-ok", "region": "r", "url": backend.url, "expect_body": "^ok b"},
        {"name": "body-bad", "region": "r", "url": backend.url, "expect_body": "healthy"},
        {"name": "want-503", "region": "r", "url": backend.url, "expect_status": [503]},
        {"name": "plain", "region": "r", "url": backend.url},
    ]
    loaded = make_config([{"name": "web", "tier": "app", "targets": targets}])
    monitor = Monitor(loaded, EventLog(stream=io.StringIO()))

    async def probe_once() -> dict[str, bool | None]:
        await monitor.run_round()
        await monitor.close()
        return {s.info.name: s.up for s in monitor.states}

    up = asyncio.run(probe_once())
    assert up == {"body-ok": True, "body-bad": False, "want-503": False, "plain": True}
    command = ["sh", "-c", "exit 0"]
    settings = ClusterRecovery(restart_commands={t["name"]: command for t in targets})
    for name, is_up in up.items():
        ctx, recorder = make_context(loaded, "web", {"target": name}, settings=settings, dry_run=True)
        outcome = asyncio.run(load_action("restart_instance").run(ctx))
        expected = f"{name} answers; not restarting" if is_up else "dry run: would run the restart command"
        assert outcome.detail.startswith(expected), (name, outcome)
        assert recorder.named("live_check")[0]["answers"] is is_up
