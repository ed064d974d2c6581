"""Shared fixtures: a Stack of real servers per test, config files written from dicts."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tierwatch.config import LoadedConfig, load_config
from tierwatch_lab.stack import Stack


@pytest.fixture
def stack() -> Iterator[Stack]:
    """A scratch directory plus every process the test starts in it, all stopped at the end."""
    with Stack() as st:
        yield st


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[dict[str, Any]], Path]:
    """Write a config dict as YAML and return its path."""

    def write(data: dict[str, Any], name: str = "tierwatch.yml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write


@pytest.fixture
def make_config(write_config: Callable[[dict[str, Any]], Path]) -> Callable[..., LoadedConfig]:
    """Build a LoadedConfig from clusters (monitor and breaker settings overridable)."""

    def make(
        clusters: list[dict[str, Any]],
        interval: str = "1s",
        timeout: str = "500ms",
        failure_threshold: int = 5,
        reset_timeout: str = "30s",
        **extra: Any,
    ) -> LoadedConfig:
        data = {
            "monitor": {"interval": interval, "timeout": timeout},
            "circuit_breaker": {"failure_threshold": failure_threshold, "reset_timeout": reset_timeout},
            "clusters": clusters,
            **extra,
        }
        return load_config(write_config(data))

    return make


# Whole files go to one worker each (scripts/test: --dist loadfile --no-loadscope-reorder) in the order
# below: the whole-stack drills first and the longest of them first, so that no worker is left alone with
# a long drill at the end while the others idle. From --durations=0 of a full run; a file not listed
# keeps its place after the listed ones of its folder (the order changes the wall time, never a result).
LONGEST_FIRST = [
    # the longest single test (133 s); it ran last of the drills while its RSS bound was at the mercy
    # of the drills beside it, which the PostgreSQL reply watchdog ended (its peak is VmHWM now)
    "test_soak_hostile.py",
    "test_drills_faults.py",
    "test_drills_ha.py",
    "test_drills_watchers.py",
    "test_drills.py",
    "test_drills_leader.py",
    "test_rules_live.py",
    "test_drills_partition.py",
    "test_demo_scale.py",
    "test_demo.py",
    "test_drills_traffic.py",
    "test_drills_region.py",
    "test_drills_backup.py",
    "test_traffic_demo.py",
    "test_alertmanager_cluster.py",
    "test_dashboards_live.py",
    "test_hosts_dashboard_live.py",
    "test_vantage_live.py",
    "test_failover_cascade.py",
    "test_drills_patroni.py",
    # integration: the files over 25 s of one worker (--durations=0 of tests/integration, 2026-12-07);
    # test_rules.py alone is about 170 s and was dispatched among the last, after the drills
    "test_rules.py",
    "test_action_patroni.py",  # a real Patroni cluster per test (2026-12-07: 127 s for 3 tests)
    "test_patroni_probe.py",
    "test_patroni_lab.py",
    "test_recovery_lease.py",
    "test_recovery_hardening.py",
    "test_reload.py",
    "test_restore_test.py",
    "test_vmalert.py",
    "test_deploy.py",
    "test_web_config.py",
    "test_rules_generated.py",
    "test_sentinel_probe.py",
]
FOLDERS = ("drills", "integration", "unit")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> tuple[int, int]:
        path = item.path
        folder = FOLDERS.index(path.parent.name) if path.parent.name in FOLDERS else len(FOLDERS)
        name = path.name
        return folder, LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the tests of a file stay together and in their order
