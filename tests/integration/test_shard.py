"""``tierwatch serve --shard I/N``: N exporters split the config's clusters by a stable hash of the name,
every cluster probed by exactly one of them, the same after a restart and a reload."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from tierwatch.config import load_config
from tierwatch.config.shard import Shard, parse_shard, shard_of
from tierwatch_lab.stack import Stack, wait_for
from tierwatch_lab.stack.http import start_http_backend
from tierwatch_lab.stack.tierwatch import start_exporter

from helpers import metric_value

NAMES = [f"web-{i}" for i in range(12)]


def test_every_cluster_in_exactly_one_shard_and_the_hash_is_stable() -> None:
    for total in (1, 2, 3, 7):
        owners = {name: [i for i in range(total) if Shard(i, total).owns(name)] for name in NAMES}
        assert all(len(found) == 1 for found in owners.values()), owners
    # fixed values: the hash must not change between releases, or a rollout reshuffles every shard
    assert [shard_of(name, 3) for name in NAMES[:6]] == [1, 1, 1, 2, 0, 2]
    again = subprocess.run(
        [sys.executable, "-c", "from tierwatch.config.shard import shard_of; print(shard_of('web-5', 7))"],
        capture_output=True, text=True, timeout=30, env={"PYTHONHASHSEED": "123"},
    )  # fmt: skip
    assert int(again.stdout) == shard_of("web-5", 7), "another process, another hash seed: same shard"
    # growing from 3 to 4 shards keeps about 1/4 of the clusters where they were, never none
    moved = sum(shard_of(n, 3) != shard_of(n, 4) for n in NAMES)
    assert 0 < moved < len(NAMES)


@pytest.mark.parametrize("text", ["3/3", "1", "-1/2", "a/b", "0/0", "1/2/3", "0/2000"])
def test_bad_shard_values_are_refused_with_the_expectation(text: str) -> None:
    with pytest.raises(ValueError, match="--shard"):
        parse_shard(text)


def test_cli_refuses_a_bad_shard(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tierwatch", "serve", "--config", str(tmp_path / "x.yml"), "--shard", "2/2"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2 and "expected 0 <= I < N" in done.stderr


def test_two_exporters_split_the_clusters_and_keep_the_split_on_reload(stack: Stack) -> None:
    backend = start_http_backend(stack, "app")
    clusters = [
        {"name": name, "tier": "app", "targets": [{"name": f"{name}-1", "region": "r", "url": backend.url}]}
        for name in NAMES
    ]
    config = stack.path("exporter.yml")
    config.write_text(
        yaml.safe_dump({"monitor": {"interval": "1s", "timeout": "500ms"}, "clusters": clusters})
    )
    exporters = [
        start_exporter(stack, config, name=f"exporter-{i}", extra_args=["--shard", f"{i}/2"])
        for i in range(2)
    ]

    def probed(url: str) -> set[str]:
        text = httpx.get(url + "/metrics", timeout=5).text
        return {n for n in NAMES if metric_value(text, "tierwatch_up", cluster=n) == 1}

    seen = [wait_for(lambda e=e: probed(e.url), 20, "clusters probed") for e in exporters]
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(NAMES)
    assert seen[0] == {n for n in NAMES if shard_of(n, 2) == 0}
    assert seen[0] and seen[1], "12 names split 2 ways leave neither shard empty"
    assert Shard(0, 2).apply(load_config(config)).config.clusters == [
        c for c in load_config(config).config.clusters if c.name in seen[0]
    ]

    # a reload with one more cluster: it lands in exactly one shard, the others stay put
    clusters.append(
        {"name": "web-new", "tier": "app", "targets": [{"name": "new-1", "region": "r", "url": backend.url}]}
    )
    config.write_text(
        yaml.safe_dump({"monitor": {"interval": "1s", "timeout": "500ms"}, "clusters": clusters})
    )
    for exporter in exporters:
        assert httpx.post(exporter.url + "/-/reload", timeout=10).status_code == 200
    owner = shard_of("web-new", 2)
    names = [*NAMES, "web-new"]

    def probed_all(url: str) -> set[str]:
        text = httpx.get(url + "/metrics", timeout=5).text
        return {n for n in names if metric_value(text, "tierwatch_up", cluster=n) is not None}

    wait_for(lambda: "web-new" in probed_all(exporters[owner].url), 20, "the new cluster probed by its shard")
    assert "web-new" not in probed_all(exporters[1 - owner].url)
    assert probed_all(exporters[1 - owner].url) == seen[1 - owner]
