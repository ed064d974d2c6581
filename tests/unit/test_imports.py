"""The product (serve, recover, check-config) never loads the lab wing, nor a tier's client library
unless the config uses that tier. Checked in a fresh interpreter, so other tests' imports don't count."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HTTP_ONLY = """
monitor: {interval: 5s, timeout: 2s}
clusters:
  - name: web
    tier: app
    targets:
      - {name: es-1, region: primary, url: "http://127.0.0.1:1/health"}
  - name: edge
    tier: lb
    targets:
      - {name: lb-1, region: primary, url: "http://127.0.0.1:2/health"}
recovery:
  state_dir: STATE
  auth: {bearer_token_file: TOKEN}
  allow: {AppInstanceDown: restart_instance}
"""

WITH_REDIS = """
monitor: {interval: 5s, timeout: 2s}
clusters:
  - name: cache
    tier: redis
    targets:
      - {name: redis-a, region: primary, url: "redis://127.0.0.1:1"}
"""

# Builds what `serve` and `recover` build (parser, config, monitor with its probes, recovery service)
# without serving, then prints the modules loaded.
PROGRAM = textwrap.dedent(
    """
    import asyncio, json, sys
    from tierwatch.cli import build_parser
    from tierwatch.config import load_config
    from tierwatch.server import ExporterApp
    from tierwatch.monitor import Monitor
    from tierwatch.recovery.service import RecoveryService

    build_parser().parse_args(["serve", "--config", sys.argv[1]])
    loaded = load_config(sys.argv[1])

    async def build():
        ExporterApp(Monitor(loaded))
        if loaded.config.recovery is not None:
            RecoveryService(loaded, loaded.config.recovery).close()

    asyncio.run(build())
    print(json.dumps(sorted(sys.modules)))
    """
)


def _modules(tmp_path: Path, config_text: str) -> set[str]:
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    config = tmp_path / "tierwatch.yml"
    config.write_text(config_text.replace("STATE", str(tmp_path / "state")).replace("TOKEN", str(token)))
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(config)], capture_output=True, text=True, timeout=60, check=True
    )
    return set(json.loads(out.stdout))


def _loaded(modules: set[str], prefix: str) -> list[str]:
    return sorted(m for m in modules if m == prefix or m.startswith(prefix + "."))


def test_product_imports_no_lab_and_no_unused_tier_client(tmp_path: Path) -> None:
    modules = _modules(tmp_path, HTTP_ONLY)
    assert "tierwatch.monitor" in modules and "tierwatch.recovery.service" in modules
    assert _loaded(modules, "tierwatch_lab") == []
    assert _loaded(modules, "psycopg") == []
    assert _loaded(modules, "redis") == []


def test_a_redis_config_loads_redis_but_not_psycopg(tmp_path: Path) -> None:
    modules = _modules(tmp_path, WITH_REDIS)
    assert _loaded(modules, "redis"), "the redis tier needs its client"
    assert _loaded(modules, "psycopg") == []
    assert _loaded(modules, "tierwatch_lab") == []


@pytest.mark.parametrize("argv", [["serve", "--help"], ["recover", "--help"], ["check-config", "--help"]])
def test_cli_help_of_product_commands_loads_no_lab(argv: list[str]) -> None:
    program = (
        "import sys, json\n"
        "from tierwatch.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('tierwatch_lab', 'psycopg')))))\n"
    )
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


WITH_REDIS_FAILOVER = (
    WITH_REDIS
    + """
recovery:
  state_dir: STATE
  auth: {bearer_token_file: TOKEN}
  allow: {RedisMasterDown: redis_failover}
"""
)


def test_the_allowed_actions_are_loaded_when_the_service_starts_not_at_the_first_failover(
    tmp_path: Path,
) -> None:
    """Importing an action's module took 0.2-0.3 s of the first failover of every service process
    (bench/failover_bench.py, 2026-12-07); the allow-list says which ones a run can need."""
    modules = _modules(tmp_path, WITH_REDIS_FAILOVER)
    assert "tierwatch.recovery.actions.redis_failover" in modules
    assert "tierwatch.recovery.actions.pg_promote" not in modules  # not allowed: not loaded
    assert _loaded(modules, "psycopg") == []
