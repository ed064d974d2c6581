"""The tier catalogue is the one place a tier's facts live: the config, the probes and the monitor agree
with it, each tier's probe class is the one its entry names, and each ``backup:`` key has one tier."""

from __future__ import annotations

from typing import get_args

import pytest

from tierwatch.config.cluster_backup import BackupConfig
from tierwatch.config.exporter import Tier
from tierwatch.probes import PROBE_LOADERS, probe_class
from tierwatch.tier_catalog import BACKUP_KEY_TIER, BACKUP_TIERS, CATALOG, CLUSTER_KEY_TIER, TIERS, TierSpec


def test_every_tier_has_a_probe_and_the_config_knows_every_cluster_tier() -> None:
    assert set(PROBE_LOADERS) == set(TIERS)
    assert get_args(Tier) == tuple(spec.name for spec in CATALOG if spec.cluster)


@pytest.mark.parametrize("spec", CATALOG, ids=lambda s: s.name)
def test_each_tier_loads_the_probe_its_entry_names(spec: TierSpec) -> None:
    assert probe_class(spec.name).__module__ == f"tierwatch.probes.{spec.probe}"


def test_every_backup_key_belongs_to_one_tier_and_backup_itself_to_none() -> None:
    assert set(BACKUP_KEY_TIER) == set(BackupConfig.model_fields)
    assert sum(len(spec.backup_keys) for spec in CATALOG) == len(BACKUP_KEY_TIER)  # no key on two tiers
    assert set(BACKUP_TIERS) == {"postgres", "redis"}
    assert "backup" not in CLUSTER_KEY_TIER  # valid on several tiers: its keys say which
