"""A real 3-member Patroni cluster over a fresh 3-member lab etcd, and its tierwatch config entry.

Import explicitly in a test module: ``from patroni_fixtures import patroni_cluster,
patroni_cluster_config``. Members are ``pg-1``..``pg-3`` (Patroni's member names, the targets' names
and each replica's ``application_name``); Patroni runs at the fastest timing it accepts (ttl 20,
loop_wait 1, retry_timeout 3) so an election after a dead leader takes about 20 s, not 30-40 s.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tierwatch_lab.stack import Stack
from tierwatch_lab.stack.etcd import start_etcd_cluster
from tierwatch_lab.stack.patroni import FASTEST_TIMING, PatroniCluster, start_patroni_cluster


def start_test_cluster(stack: Stack, scope: str = "main-db") -> PatroniCluster:
    """Start the fixture's etcd and Patroni cluster in ``stack``."""
    etcd = start_etcd_cluster(stack, 3)
    return start_patroni_cluster(stack, etcd, 3, scope=scope, **FASTEST_TIMING)


@pytest.fixture
def patroni_cluster() -> Iterator[PatroniCluster]:
    """A started Patroni cluster of its own, for tests that kill, pause or stop members."""
    with Stack() as stack:
        yield start_test_cluster(stack)


@pytest.fixture(scope="module")
def patroni_cluster_module() -> Iterator[PatroniCluster]:
    """One Patroni cluster shared by a module's tests: they must leave it with a leader and every
    member running (as they found it)."""
    with Stack() as stack:
        yield start_test_cluster(stack)


def patroni_cluster_config(cluster: PatroniCluster, name: str = "main-db") -> dict[str, Any]:
    """The tierwatch config entry of the cluster: one target per member (named after it, the monitor
    role, password in a 0600 file) and the ``patroni:`` block (scope, each member's REST API)."""
    assert cluster.monitor_password_file is not None
    return {
        "name": name,
        "tier": "postgres",
        "targets": [{"name": m.name, "region": "primary", "url": m.url()} for m in cluster.members],
        "password_file": str(cluster.monitor_password_file),
        "patroni": {
            "scope": cluster.scope,
            "members": [{"target": m.name, "url": m.rest_url} for m in cluster.members],
        },
    }
